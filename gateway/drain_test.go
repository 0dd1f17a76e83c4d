package gateway

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// departures records when each device was let go during a drain.
type departures struct {
	mu    sync.Mutex
	times map[string]time.Time
}

func (d *departures) mark(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.times[id]; !ok {
		d.times[id] = time.Now()
	}
}

// spread is the time between the first and the last departure.
func (d *departures) spread() (time.Duration, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ts := make([]time.Time, 0, len(d.times))
	for _, at := range d.times {
		ts = append(ts, at)
	}
	if len(ts) < 2 {
		return 0, len(ts)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts[len(ts)-1].Sub(ts[0]), len(ts)
}

// Drain: /readyz fails at once, new connections are refused, MQTT 5
// devices on TLS are sent to the --drain-to reference, devices on plain
// (MQTT 5: DISCONNECT 0x8B; 3.1.1: closed) come back through the balancer,
// at --drain-rate per second; a command waiting for an offline device
// outlives the drain and the shutdown.
func TestDrain(t *testing.T) {
	const (
		tlsRef = "tls://lb.example.net:8883"
		rate   = 20.0
	)
	data := t.TempDir()
	g := startGateway(t, func(c *Config) {
		c.Data = data
		c.DrainTo = tlsRef
		c.DrainRate = rate
		c.DrainDelay = 100 * time.Millisecond
	})
	tlsCfg := clientTLS(t, g)
	if code := getJSON(t, g, "/readyz", "", nil); code != http.StatusOK {
		t.Fatalf("/readyz before the drain: %d", code)
	}
	pendingID, status := postCommand(t, g, "asleep", `{"topic":"devices/asleep/commands/unlock","payload":"later","ttl_seconds":600}`)
	if status != "pending" {
		t.Fatalf("command for an offline device: %q, want pending", status)
	}

	left := &departures{times: make(map[string]time.Time)}
	// MQTT 5 devices and the reference each must be given.
	type mover struct {
		id, wantRef string
		c           *v5client
	}
	var devices5 []mover
	for i := range 4 {
		id := fmt.Sprintf("drain-5-plain-%d", i)
		devices5 = append(devices5, mover{id, "", v5Plain(t, g, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})})
	}
	for i := range 3 {
		id := fmt.Sprintf("drain-5-tls-%d", i)
		devices5 = append(devices5, mover{id, tlsRef, v5TLS(t, g, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})})
	}
	lost := make(chan string, 3)
	for i, broker := range []string{"tcp://" + g.PlainAddr(), "tcp://" + g.PlainAddr(), "ssl://" + g.TLSAddr()} {
		id := fmt.Sprintf("drain-311-%d", i)
		v3(t, broker, id, tlsCfg, func(o *mqtt.ClientOptions) {
			o.SetConnectionLostHandler(func(mqtt.Client, error) {
				left.mark(id)
				lost <- id
			})
		})
	}
	const n = 10
	if g.Registry().Len() != n {
		t.Fatalf("%d sessions before the drain, want %d", g.Registry().Len(), n)
	}
	type verdict struct {
		id  string
		err error
	}
	verdicts := make(chan verdict, len(devices5))
	for _, d := range devices5 {
		go func() {
			id := d.id
			select {
			case p := <-d.c.disconnect:
				left.mark(id)
				var err error
				switch {
				case d.wantRef == "":
					// A plain device is never sent a tcp:// reference over
					// plain: the anti-downgrade rule makes devices ignore it.
					if p.ReasonCode != byte(mqttcodec.ServerShuttingDown) {
						err = fmt.Errorf("DISCONNECT %#x, want 0x8B", p.ReasonCode)
					}
				case p.ReasonCode != byte(mqttcodec.UseAnotherServer):
					err = fmt.Errorf("DISCONNECT %#x, want 0x9C", p.ReasonCode)
				case p.Properties == nil || p.Properties.ServerReference != d.wantRef:
					err = fmt.Errorf("server reference %+v, want %s", p.Properties, d.wantRef)
				case p.Properties.ReasonString != control.ReasonDrain:
					err = fmt.Errorf("reason string %q, want %q", p.Properties.ReasonString, control.ReasonDrain)
				}
				verdicts <- verdict{id, err}
			case <-time.After(10 * time.Second):
				verdicts <- verdict{id, fmt.Errorf("no DISCONNECT")}
			}
		}()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- g.Drain(ctx) }()

	// Not ready at once, while most devices are still connected.
	eventually(t, time.Second, "/readyz 503", func() bool {
		return getJSON(t, g, "/readyz", "", nil) == http.StatusServiceUnavailable
	})
	if still := g.Registry().Len(); still < n/2 {
		t.Fatalf("/readyz failed only when %d of %d sessions were left", still, n)
	}
	if v := metric(t, g, "dualgate_ready"); v != 0 {
		t.Fatalf("dualgate_ready = %v while draining", v)
	}
	// New connections are refused on both listeners.
	r := dialRaw(t, g.PlainAddr())
	r.ver = 4
	r.send(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30, ClientID: []byte("latecomer")}))
	if p, err := r.next(3 * time.Second); err == nil {
		t.Fatalf("a new plain connection got %s while draining", p.Type)
	}
	if _, err := openProxied(g.TLSAddr(), nil, tlsCfg); err == nil {
		t.Fatal("a new TLS connection was served while draining")
	}

	if err := <-drained; err != nil {
		t.Fatalf("Drain: %v", err)
	}
	took := time.Since(start)
	for range devices5 {
		if v := <-verdicts; v.err != nil {
			t.Errorf("%s: %v", v.id, v.err)
		}
	}
	for range 3 {
		select {
		case <-lost:
		case <-time.After(5 * time.Second):
			t.Fatal("a 3.1.1 device was not closed by the drain")
		}
	}
	// n devices at rate per second: the first at once, then one every
	// 1/rate.
	minimum := time.Duration(float64(n-1) / rate * float64(time.Second))
	spread, seen := left.spread()
	t.Logf("drained %d sessions in %s (first to last departure %s)", n, took.Round(time.Millisecond), spread.Round(time.Millisecond))
	if seen != n {
		t.Fatalf("%d departures recorded, want %d", seen, n)
	}
	if took < minimum-50*time.Millisecond || spread < minimum-100*time.Millisecond {
		t.Fatalf("drain took %s, departures spread over %s: not gradual at %v/s (want about %s)", took, spread, rate, minimum)
	}
	if took > 5*time.Second {
		t.Fatalf("drain took %s for %d sessions at %v/s", took, n, rate)
	}
	if g.Registry().Len() != 0 {
		t.Fatalf("%d sessions left after the drain", g.Registry().Len())
	}
	if v := metric(t, g, "dualgate_drained_sessions_total"); v != n {
		t.Fatalf("dualgate_drained_sessions_total = %v, want %d", v, n)
	}
	if v := commandStatus(t, g, pendingID); v.Status != "pending" {
		t.Fatalf("command after the drain: %s, want pending", v.Status)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := g.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The next gateway on the same data dir still has it.
	next := startGateway(t, func(c *Config) { c.Data = data })
	if v := commandStatus(t, next, pendingID); v.Status != "pending" || v.ClientID != "asleep" {
		t.Fatalf("command after a restart: %+v", v)
	}
	var view clientView
	if code := getJSON(t, next, "/v1/clients/asleep", "", &view); code != http.StatusOK || view.Pending != 1 {
		t.Fatalf("client after a restart: %d %+v", code, view)
	}
}
