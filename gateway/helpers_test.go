package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/mqttcodec"
)

func TestMain(m *testing.M) {
	if raw := os.Getenv(gatewayChildEnv); raw != "" {
		os.Exit(runGatewayChild(raw)) // a node of a cluster test, to be killed
	}
	goleak.VerifyTestMain(m,
		// gnet's shared worker pool and paho's logger outlive a test.
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
	)
}

// startGateway runs a gateway on free loopback ports with a fresh data dir.
func startGateway(t testing.TB, mod func(*Config)) *Gateway {
	t.Helper()
	cfg := Config{
		Plain:      "127.0.0.1:0",
		TLS:        "127.0.0.1:0",
		API:        "127.0.0.1:0",
		Data:       t.TempDir(),
		EventLoops: 2,
	}
	if mod != nil {
		mod(&cfg)
	}
	logger := zap.NewNop()
	if os.Getenv("DUALGATE_TEST_LOG") != "" {
		logger, _ = zap.NewDevelopment()
	}
	g, err := New(cfg, Options{Logger: logger})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := g.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return g
}

// clientTLS trusts the gateway's generated development CA.
func clientTLS(t testing.TB, g *Gateway) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(g.CAFile())
	if err != nil {
		t.Fatalf("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// gatewayCA signs client certificates with a gateway's generated
// development CA, in memory, all on one key (cheap enough for a thousand
// devices): what `dualgate certs client --dir <data>/certs` issues, or,
// with another template, what a careless operator might.
type gatewayCA struct {
	ca  tls.Certificate
	key *ecdsa.PrivateKey
}

func newGatewayCA(t testing.TB, g *Gateway) *gatewayCA {
	t.Helper()
	dir := filepath.Join(g.cfg.Data, "certs")
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.CAFile), filepath.Join(dir, certs.CAKeyFile))
	if err != nil {
		t.Fatalf("the gateway's development CA: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &gatewayCA{ca: ca, key: key}
}

var testSerial atomic.Int64

// issue signs tmpl (subject and SANs; the rest is filled in).
func (gc *gatewayCA) issue(t testing.TB, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(testSerial.Add(1))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, gc.ca.Leaf, gc.key.Public(), gc.ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: gc.key}
}

// device issues the certificate of a device: CN and URI SAN naming id.
func (gc *gatewayCA) device(t testing.TB, id string) tls.Certificate {
	return gc.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: id}, URIs: []*url.URL{certs.ClientURI(id)}})
}

// deviceCert is the certificate of device id from the gateway's CA.
func deviceCert(t testing.TB, g *Gateway, id string) tls.Certificate {
	t.Helper()
	return newGatewayCA(t, g).device(t, id)
}

// deviceTLS trusts the gateway's development CA and presents a certificate
// naming id, so that secure commands for id may be delivered on it.
func deviceTLS(t testing.TB, g *Gateway, id string) *tls.Config {
	t.Helper()
	tc := clientTLS(t, g)
	tc.Certificates = []tls.Certificate{deviceCert(t, g, id)}
	return tc
}

// v3 connects a paho.mqtt.golang (MQTT 3.1.1) client.
func v3(t *testing.T, broker, id string, tc *tls.Config, mod func(*mqtt.ClientOptions)) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).SetTLSConfig(tc)
	if mod != nil {
		mod(o)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("v3 connect %s to %s: %v", id, broker, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// v5client is a paho.golang (MQTT 5) client and what the server told it.
type v5client struct {
	*paho.Client
	connack    *paho.Connack
	received   chan *paho.Publish
	disconnect chan *paho.Disconnect
}

// dialV5 connects an MQTT 5 client over conn (plain or TLS).
func dialV5(t *testing.T, conn net.Conn, cp *paho.Connect) (*v5client, error) {
	t.Helper()
	vc := &v5client{
		received:   make(chan *paho.Publish, 64),
		disconnect: make(chan *paho.Disconnect, 1),
	}
	vc.Client = paho.NewClient(paho.ClientConfig{
		// paho writes a packet in several Writes: keep packets whole.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				vc.received <- pr.Packet
				return true, nil
			},
		},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case vc.disconnect <- d:
			default:
			}
		},
		OnClientError: func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := vc.Connect(ctx, cp)
	vc.connack = ack
	if err != nil {
		return vc, err
	}
	t.Cleanup(func() {
		_ = vc.Disconnect(&paho.Disconnect{ReasonCode: 0})
		select {
		case <-vc.Done():
		case <-time.After(2 * time.Second):
		}
	})
	return vc, nil
}

func v5Plain(t *testing.T, g *Gateway, cp *paho.Connect) *v5client {
	t.Helper()
	conn, err := net.Dial("tcp", g.PlainAddr())
	if err != nil {
		t.Fatal(err)
	}
	vc, err := dialV5(t, conn, cp)
	if err != nil {
		t.Fatalf("v5 plain connect: %v", err)
	}
	return vc
}

func v5TLS(t *testing.T, g *Gateway, cp *paho.Connect) *v5client {
	t.Helper()
	conn, err := tls.Dial("tcp", g.TLSAddr(), clientTLS(t, g))
	if err != nil {
		t.Fatal(err)
	}
	vc, err := dialV5(t, conn, cp)
	if err != nil {
		t.Fatalf("v5 tls connect: %v", err)
	}
	return vc
}

// raw is a hand-driven MQTT connection, for what real clients never send.
type raw struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	p    mqttcodec.Packet
	ver  byte
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (r *raw) send(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

// connect sends CONNECT and expects a successful CONNACK.
func (r *raw) connect(c *mqttcodec.Connect) *mqttcodec.Connack {
	r.t.Helper()
	r.ver = c.ProtocolVersion
	r.send(mqttcodec.AppendConnect(nil, c))
	p := r.read(5 * time.Second)
	if p.Type != mqttcodec.CONNACK {
		r.t.Fatalf("got %s, want CONNACK", p.Type)
	}
	return &p.Connack
}

// read returns the next packet, failing the test on timeout or EOF.
func (r *raw) read(timeout time.Duration) *mqttcodec.Packet {
	r.t.Helper()
	p, err := r.next(timeout)
	if err != nil {
		r.t.Fatalf("raw read: %v", err)
	}
	return p
}

func (r *raw) next(timeout time.Duration) (*mqttcodec.Packet, error) {
	_ = r.conn.SetReadDeadline(time.Now().Add(timeout))
	var buf []byte
	for {
		if len(buf) > 0 {
			n, err := mqttcodec.Decode(buf, r.ver, 0, &r.p)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				return &r.p, nil
			}
		}
		b, err := r.r.ReadByte()
		if err != nil {
			return nil, err
		}
		buf = append(buf, b)
	}
}

// closedWithin waits for the server to close the connection, reading and
// discarding what it sends first, and returns how long that took.
func (r *raw) closedWithin(limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	_ = r.conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, r.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return time.Since(start), false
	}
	return time.Since(start), true
}

// getJSON fetches an API path and decodes the JSON answer.
func getJSON(t *testing.T, g *Gateway, path, token string, into any) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+g.APIAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: bad JSON: %v", path, err)
		}
	}
	return resp.StatusCode
}

// eventually polls cond until it holds or the time is up.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// collector gathers messages a paho v3 client receives.
type collector struct {
	mu   sync.Mutex
	msgs []mqtt.Message
	ch   chan mqtt.Message
}

func newCollector() *collector { return &collector{ch: make(chan mqtt.Message, 64)} }

func (c *collector) handler(_ mqtt.Client, m mqtt.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	c.ch <- m
}

func (c *collector) next(t *testing.T, within time.Duration) mqtt.Message {
	t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-time.After(within):
		t.Fatal("no message arrived")
		return nil
	}
}
