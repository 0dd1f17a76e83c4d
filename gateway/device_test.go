package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/control"
)

// recordingConn keeps every byte read from and written to a connection.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordingConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.buf.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// wire collects the plain sockets of a test device.
type wire struct {
	mu    sync.Mutex
	conns []*recordingConn
}

func (w *wire) record(c net.Conn) net.Conn {
	rc := &recordingConn{Conn: c}
	w.mu.Lock()
	w.conns = append(w.conns, rc)
	w.mu.Unlock()
	return rc
}

// contains reports whether secret crossed any recorded plain socket.
func (w *wire) contains(secret []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		c.mu.Lock()
		found := bytes.Contains(c.buf.Bytes(), secret)
		c.mu.Unlock()
		if found {
			return true
		}
	}
	return false
}

func (w *wire) bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.conns {
		c.mu.Lock()
		n += c.buf.Len()
		c.mu.Unlock()
	}
	return n
}

// followers tracks the goroutines a test device starts to follow
// instructions, so closing the device waits for them.
type followers struct {
	fmu  sync.Mutex // orders track against end
	stop chan struct{}
	wg   sync.WaitGroup
}

func newFollowers() followers { return followers{stop: make(chan struct{})} }

// track counts a follow-up goroutine, unless the device is closing.
func (f *followers) track() bool {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	select {
	case <-f.stop:
		return false
	default:
		f.wg.Add(1)
		return true
	}
}

// end stops new follow-ups and waits for the running ones.
func (f *followers) end() {
	f.fmu.Lock()
	close(f.stop)
	f.fmu.Unlock()
	f.wg.Wait()
}

// command is what a test device received.
type command struct {
	topic   string
	payload string
	tls     bool
}

// device311 is a device on paho.mqtt.golang that follows the control
// protocol the way docs/protocol.md says: on an instruction it disconnects,
// reconnects in the named mode at the named address, and queries.
type device311 struct {
	t      *testing.T
	id     string
	g      *Gateway
	tlsCfg *tls.Config
	plain  wire
	// obey false makes the device return on plain after a TLS instruction.
	obey bool

	followers
	mu       sync.Mutex
	client   mqtt.Client
	onTLS    bool
	cmds     chan command
	controls chan control.Instruction
}

func newDevice311(t *testing.T, g *Gateway, id string) *device311 {
	d := &device311{t: t, id: id, g: g, tlsCfg: deviceTLS(t, g, id), obey: true,
		cmds: make(chan command, 100), controls: make(chan control.Instruction, 100), followers: newFollowers()}
	t.Cleanup(d.close)
	return d
}

func (d *device311) connect(overTLS bool, addr string) {
	d.t.Helper()
	broker := "tcp://" + addr
	if overTLS {
		broker = "ssl://" + addr
	}
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(d.id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).SetTLSConfig(d.tlsCfg).SetCleanSession(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { d.received(m, overTLS) })
	if !overTLS {
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
			if err != nil {
				return nil, err
			}
			return d.plain.record(c), nil
		})
	}
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		d.t.Errorf("%s: connect %s: %v", d.id, broker, tok.Error())
		return
	}
	d.mu.Lock()
	d.client, d.onTLS = c, overTLS
	d.mu.Unlock()
}

func (d *device311) query() {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if tok := c.Publish(control.QueryTopic, 1, false, `{"v":1}`); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		d.t.Errorf("%s: query: %v", d.id, tok.Error())
	}
}

func (d *device311) received(m mqtt.Message, overTLS bool) {
	if m.Topic() == control.ControlTopic {
		in, err := control.ParseInstruction(m.Payload())
		if err != nil {
			d.t.Errorf("%s: bad instruction %s: %v", d.id, m.Payload(), err)
			return
		}
		if in.Mode == control.ModePlain && !overTLS {
			d.t.Errorf("%s: told to go plain over plain", d.id)
			return
		}
		d.controls <- in
		if d.track() {
			go d.follow(in)
		}
		return
	}
	d.cmds <- command{topic: m.Topic(), payload: string(m.Payload()), tls: overTLS}
}

// follow obeys an instruction, off paho's goroutine.
func (d *device311) follow(in control.Instruction) {
	defer d.wg.Done()
	select {
	case <-d.stop:
		return
	default:
	}
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	c.Disconnect(50)
	toTLS := in.Mode == control.ModeTLS
	addr := in.Addr
	if toTLS && !d.obey {
		toTLS, addr = false, d.g.PlainAddr()
	}
	d.connect(toTLS, addr)
	d.query()
}

func (d *device311) close() {
	d.end()
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if c != nil {
		c.Disconnect(50)
	}
}

// device5 is the same device on paho.golang (MQTT 5): it follows DISCONNECT
// 0x9C and its Server Reference.
type device5 struct {
	t      *testing.T
	id     string
	g      *Gateway
	tlsCfg *tls.Config // presents a certificate for id
	plain  wire

	mu     sync.Mutex
	client *paho.Client
	cmds   chan command
	refs   chan string
	// gone receives the reason code of any other server DISCONNECT.
	gone chan byte
	followers
}

func newDevice5(t *testing.T, g *Gateway, id string) *device5 {
	d := &device5{t: t, id: id, g: g, tlsCfg: deviceTLS(t, g, id), cmds: make(chan command, 100), refs: make(chan string, 100),
		gone: make(chan byte, 10), followers: newFollowers()}
	t.Cleanup(d.close)
	return d
}

func (d *device5) connect(overTLS bool, addr string) {
	d.t.Helper()
	var conn net.Conn
	var err error
	if overTLS {
		conn, err = tls.Dial("tcp", addr, d.tlsCfg)
	} else {
		conn, err = net.Dial("tcp", addr)
		if err == nil {
			conn = d.plain.record(conn)
		}
	}
	if err != nil {
		d.t.Errorf("%s: dial %s: %v", d.id, addr, err)
		return
	}
	c := paho.NewClient(paho.ClientConfig{
		// paho writes a packet in several Writes: keep packets whole.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.cmds <- command{topic: pr.Packet.Topic, payload: string(pr.Packet.Payload), tls: overTLS}
			return true, nil
		}},
		OnServerDisconnect: func(p *paho.Disconnect) {
			if p.ReasonCode != 0x9C || p.Properties == nil {
				select {
				case d.gone <- p.ReasonCode:
				default:
				}
				return
			}
			d.refs <- p.Properties.ServerReference
			if d.track() {
				go d.follow(p.Properties.ServerReference, overTLS)
			}
		},
		OnClientError: func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: d.id, KeepAlive: 30, CleanStart: true}); err != nil {
		d.t.Errorf("%s: connect: %v", d.id, err)
		return
	}
	d.mu.Lock()
	d.client = c
	d.mu.Unlock()
}

func (d *device5) query() {
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: control.QueryTopic, QoS: 1, Payload: []byte(`{"v":1}`)}); err != nil {
		d.t.Errorf("%s: query: %v", d.id, err)
	}
}

func (d *device5) follow(ref string, cameOverTLS bool) {
	defer d.wg.Done()
	select {
	case <-d.stop:
		return
	default:
	}
	mode, addr, err := control.ParseServerReference(ref)
	if err != nil {
		d.t.Errorf("%s: server reference %q: %v", d.id, ref, err)
		return
	}
	if mode == control.ModePlain && !cameOverTLS {
		d.t.Errorf("%s: told to go plain over plain", d.id)
		return
	}
	d.connect(mode == control.ModeTLS, addr)
	d.query()
}

func (d *device5) close() {
	d.end()
	d.mu.Lock()
	c := d.client
	d.mu.Unlock()
	if c != nil {
		_ = c.Disconnect(&paho.Disconnect{})
	}
}

// postCommand sends a command through the API and returns id and status.
func postCommand(t *testing.T, g *Gateway, client, body string) (string, string) {
	t.Helper()
	code, out := post(t, g, "/v1/clients/"+client+"/commands", body, "")
	if code != http.StatusAccepted {
		t.Fatalf("POST command: %d %v", code, out)
	}
	return out["id"], out["status"]
}

func post(t *testing.T, g *Gateway, path, body, token string) (int, map[string]string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+g.APIAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: bad JSON answer: %v", path, err)
	}
	return resp.StatusCode, out
}

func commandStatus(t *testing.T, g *Gateway, id string) commandView {
	t.Helper()
	var v commandView
	if code := getJSON(t, g, "/v1/commands/"+id, "", &v); code != http.StatusOK {
		t.Fatalf("GET command %s: %d", id, code)
	}
	return v
}

func waitStatus(t *testing.T, g *Gateway, id, want string) commandView {
	t.Helper()
	var v commandView
	eventually(t, 10*time.Second, fmt.Sprintf("command %s %s", id, want), func() bool {
		v = commandStatus(t, g, id)
		return string(v.Status) == want
	})
	return v
}

func nextCommand(t *testing.T, ch chan command) command {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no command arrived")
		return command{}
	}
}
