package bridge

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// broker is a Mosquitto the test runs on a loopback port, with persistence
// in the test's temporary directory, stopped by PID at the end.
type broker struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	conf string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// mosquittoBin finds the broker; the tests need it and say so.
func mosquittoBin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("these tests need the mosquitto broker (not found in PATH or /usr/sbin): install it, e.g. apt-get install mosquitto")
	return ""
}

// freePort returns a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// newBroker prepares a broker on a free port without starting it; extra
// lines go to its configuration, after the listener's.
func newBroker(t testing.TB, extra ...string) *broker {
	t.Helper()
	b := &broker{t: t, bin: mosquittoBin(t), port: freePort(t), dir: t.TempDir()}
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", b.port),
		"allow_anonymous true",
		"persistence true",
		"persistence_location " + b.dir + "/",
		"autosave_interval 0",
		"max_queued_messages 100000",
		"max_inflight_messages 100",
		"set_tcp_nodelay true",
		"sys_interval 1",
		"log_dest file " + filepath.Join(b.dir, "mosquitto.log"),
	}
	if u, err := user.Current(); err == nil && os.Geteuid() == 0 {
		lines = append(lines, "user "+u.Username)
	}
	lines = append(lines, extra...)
	if err := os.WriteFile(b.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatalf("write mosquitto.conf: %v", err)
	}
	t.Cleanup(b.stop)
	return b
}

// startBroker returns a running broker.
func startBroker(t testing.TB, extra ...string) *broker {
	t.Helper()
	b := newBroker(t, extra...)
	b.start()
	return b
}

func (b *broker) url() string { return "tcp://127.0.0.1:" + strconv.Itoa(b.port) }

// start runs mosquitto and waits until it accepts connections.
func (b *broker) start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd != nil {
		b.t.Fatalf("broker already running")
	}
	cmd := exec.Command(b.bin, "-c", b.conf)
	out, err := os.OpenFile(filepath.Join(b.dir, "stderr.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		b.t.Fatalf("broker log: %v", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		b.t.Fatalf("start mosquitto: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = out.Close()
		close(done)
	}()
	b.cmd, b.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(b.port), time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(b.dir, "stderr.log"))
			mlog, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
			b.t.Fatalf("mosquitto exited at start:\n%s\n%s", log, mlog)
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("mosquitto does not accept connections on port %d: %v", b.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the broker gracefully (SIGTERM: it saves its persistence
// file), by its PID, and kills it if it does not leave.
func (b *broker) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
	b.cmd, b.done = nil, nil
}

// peer is a paho client on the broker side: a cloud application.
func peer(t testing.TB, url, id string, clean bool, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectTimeout(2 * time.Second).SetOrderMatters(true).SetKeepAlive(5 * time.Second).
		SetStore(mqtt.NewOrderedMemoryStore())
	if onMsg != nil {
		o.SetDefaultPublishHandler(onMsg)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("peer %s: connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// mustToken waits for a paho token.
func mustToken(t testing.TB, tok mqtt.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("%s: %v", what, tok.Error())
	}
}

// inbox collects the messages a peer receives.
type inbox struct {
	mu   sync.Mutex
	msgs []mqtt.Message
	ch   chan struct{}
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 1)} }

func (in *inbox) handler(_ mqtt.Client, m mqtt.Message) {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
	select {
	case in.ch <- struct{}{}:
	default:
	}
}

func (in *inbox) snapshot() []mqtt.Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]mqtt.Message(nil), in.msgs...)
}

// waitN waits until at least n messages arrived.
func (in *inbox) waitN(t testing.TB, n int, d time.Duration) []mqtt.Message {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		if ms := in.snapshot(); len(ms) >= n {
			return ms
		}
		select {
		case <-in.ch:
		case <-deadline.C:
			t.Fatalf("%d messages after %v, want %d", len(in.snapshot()), d, n)
		}
	}
}

// testConfig is a configuration for a bridge to url with short timers.
func testConfig(t testing.TB, url string) Config {
	return Config{
		URL:            url,
		ClientIDPrefix: "gw-" + strings.NewReplacer("/", "-", " ", "-", "#", "-", "+", "-").Replace(t.Name()),
		Logger:         zap.NewNop(),
		ReconnectMax:   200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second,
		KeepAlive:      5 * time.Second,
	}
}

// startBridge builds and starts a bridge, stopped at the end of the test.
func startBridge(t testing.TB, cfg Config) *Bridge {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stopBridge(t, b) })
	return b
}

func stopBridge(t testing.TB, b *Bridge) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitReady(t testing.TB, b *Bridge) {
	t.Helper()
	waitFor(t, 10*time.Second, "the bridge to be connected", b.Ready)
}

// acks records the answers Publish gives, by message number.
type acks struct {
	mu  sync.Mutex
	got map[int]mqttcodec.ReasonCode
	ch  chan struct{}
}

func newAcks() *acks {
	return &acks{got: make(map[int]mqttcodec.ReasonCode), ch: make(chan struct{}, 1)}
}

// fn returns the ack callback of message i; a second call fails the test.
func (a *acks) fn(t testing.TB, i int) func(mqttcodec.ReasonCode) {
	return func(rc mqttcodec.ReasonCode) {
		a.mu.Lock()
		_, dup := a.got[i]
		a.got[i] = rc
		a.mu.Unlock()
		if dup {
			t.Errorf("message %d acknowledged twice", i)
		}
		select {
		case a.ch <- struct{}{}:
		default:
		}
	}
}

func (a *acks) get(i int) (mqttcodec.ReasonCode, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rc, ok := a.got[i]
	return rc, ok
}

func (a *acks) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.got)
}

// waitN waits until n acks arrived.
func (a *acks) waitN(t testing.TB, n int, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for a.count() < n {
		select {
		case <-a.ch:
		case <-deadline.C:
			t.Fatalf("%d acks after %v, want %d", a.count(), d, n)
		}
	}
}

// publish sends one device message through the bridge.
func publish(b *Bridge, client, topic, payload string, qos byte, ack func(mqttcodec.ReasonCode)) {
	b.Publish(&session.Message{ClientID: client, Topic: topic, Payload: []byte(payload), QoS: qos}, ack)
}

// deliveries records what the bridge hands to the gateway.
type deliveries struct {
	mu       sync.Mutex
	msgs     []Message
	retained []retainedCall
	ch       chan struct{}
}

type retainedCall struct {
	filter string
	subs   []any
	msg    Message
}

func newDeliveries() *deliveries { return &deliveries{ch: make(chan struct{}, 1)} }

func (d *deliveries) deliver(m Message) {
	d.mu.Lock()
	d.msgs = append(d.msgs, m)
	d.mu.Unlock()
	d.poke()
}

func (d *deliveries) deliverRetained(filter string, subs []any, m Message) {
	d.mu.Lock()
	d.retained = append(d.retained, retainedCall{filter: filter, subs: subs, msg: m})
	d.mu.Unlock()
	d.poke()
}

func (d *deliveries) poke() {
	select {
	case d.ch <- struct{}{}:
	default:
	}
}

func (d *deliveries) snapshot() ([]Message, []retainedCall) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Message(nil), d.msgs...), append([]retainedCall(nil), d.retained...)
}

// waitFor waits until cond holds on the deliveries so far.
func (d *deliveries) waitFor(t testing.TB, dur time.Duration, what string, cond func(msgs []Message, ret []retainedCall) bool) ([]Message, []retainedCall) {
	t.Helper()
	deadline := time.NewTimer(dur)
	defer deadline.Stop()
	for {
		msgs, ret := d.snapshot()
		if cond(msgs, ret) {
			return msgs, ret
		}
		select {
		case <-d.ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; have %d messages, %d retained", dur, what, len(msgs), len(ret))
		}
	}
}

// hasTopic reports whether msgs hold one on topic.
func hasTopic(msgs []Message, topic string) bool {
	for _, m := range msgs {
		if m.Topic == topic {
			return true
		}
	}
	return false
}

// countTopic counts the messages on topic.
func countTopic(msgs []Message, topic string) int {
	n := 0
	for _, m := range msgs {
		if m.Topic == topic {
			n++
		}
	}
	return n
}
