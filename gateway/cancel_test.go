package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// cancel sends DELETE /v1/commands/{id} as a program does (no body, no
// Content-Type) and returns the status and answer.
func cancel(t *testing.T, g *Gateway, id string) (int, map[string]any) {
	t.Helper()
	return apiDo(t, nil, http.MethodDelete, "http://"+g.APIAddr()+"/v1/commands/"+id, "", nil)
}

// expectOnly waits for the next command a device receives and checks it
// is the one wanted: commands reach a device in order, so one cancelled
// before it would have come first.
func expectOnly(t *testing.T, cmds chan command, payload string) {
	t.Helper()
	if c := nextCommand(t, cmds); c.payload != payload || !c.tls {
		t.Fatalf("the device received %+v first, want %q over TLS", c, payload)
	}
	select {
	case c := <-cmds:
		t.Fatalf("the device also received %+v", c)
	default:
	}
}

// A pending command is cancelled, with its history entry, and is never
// delivered when its device comes on TLS; the command after it is.
// Cancelling it again, or one delivered, is answered 409 with the status;
// an unknown id 404.
func TestCancelPending(t *testing.T) {
	g := startGateway(t, nil)
	first, _ := postCommand(t, g, "car-c", `{"topic":"devices/car-c/commands/unlock","payload":"CANCELLED-ONE"}`)
	code, out := cancel(t, g, first)
	if code != http.StatusOK || out["status"] != "cancelled" || out["id"] != first {
		t.Fatalf("DELETE: %d %v", code, out)
	}
	v := commandStatus(t, g, first)
	last := v.History[len(v.History)-1]
	if v.Status != "cancelled" || last.Status != "cancelled" || last.Note == "" || v.DeliveredAt != nil {
		t.Fatalf("cancelled command %+v", v)
	}

	second, _ := postCommand(t, g, "car-c", `{"topic":"devices/car-c/commands/unlock","payload":"SECOND"}`)
	d := newDevice311(t, g, "car-c")
	d.connect(true, g.TLSAddr())
	d.query()
	expectOnly(t, d.cmds, "SECOND")
	waitStatus(t, g, second, "delivered")

	code, out = cancel(t, g, second)
	if msg, _ := out["error"].(string); code != http.StatusConflict || out["status"] != "delivered" || !strings.Contains(msg, "already written to the device") {
		t.Fatalf("DELETE of a delivered command: %d %v", code, out)
	}
	code, out = cancel(t, g, first)
	if msg, _ := out["error"].(string); code != http.StatusConflict || out["status"] != "cancelled" || !strings.Contains(msg, "already ended") {
		t.Fatalf("DELETE of a cancelled command: %d %v", code, out)
	}
	if code, out := cancel(t, g, "no-such-command"); code != http.StatusNotFound || out["error"] == nil {
		t.Fatalf("DELETE of an unknown command: %d %v", code, out)
	}
	// A page elsewhere cannot make the browser cancel.
	code, _ = apiDo(t, nil, http.MethodDelete, "http://"+g.APIAddr()+"/v1/commands/"+second, "",
		map[string]string{"Origin": "http://evil.example"})
	if code != http.StatusForbidden {
		t.Fatalf("cross-site DELETE: %d, want 403", code)
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.OnDemand["cancelled"] != 1 || st.Commands["cancelled"] != 1 {
		t.Fatalf("stats: on_demand %v, commands %v", st.OnDemand, st.Commands)
	}
}

// A command whose device was told to reconnect over TLS (upgrading) is
// cancelled; the device, arriving on TLS, gets only what follows.
func TestCancelUpgrading(t *testing.T) {
	g := startGateway(t, nil)
	r := dialDevice(t, g, "van-u", false)
	r.send(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{Topic: []byte(control.QueryTopic), QoS: 1, PacketID: 1}))
	id, _ := postCommand(t, g, "van-u", `{"topic":"devices/van-u/commands/open","payload":"NEVER"}`)
	for {
		// The PUBACK of the query, then the instruction.
		p := r.read(10 * time.Second)
		if p.Type == mqttcodec.PUBLISH && string(p.Publish.Topic) == control.ControlTopic {
			break
		}
	}
	waitStatus(t, g, id, "upgrading")
	if code, out := cancel(t, g, id); code != http.StatusOK || out["status"] != "cancelled" {
		t.Fatalf("DELETE of an upgrading command: %d %v", code, out)
	}
	_ = r.conn.Close()
	next, _ := postCommand(t, g, "van-u", `{"topic":"devices/van-u/commands/open","payload":"AFTER"}`)
	d := newDevice311(t, g, "van-u")
	d.connect(true, g.TLSAddr())
	d.query()
	expectOnly(t, d.cmds, "AFTER")
	waitStatus(t, g, next, "delivered")
}

// A cancel outlives a restart: the gateway started again on the same data
// never delivers the command.
func TestCancelSurvivesRestart(t *testing.T) {
	data := t.TempDir()
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: data, EventLoops: 2}
	g1 := startGatewayOnce(t, cfg)
	id, _ := postCommand(t, g1, "truck-r", `{"topic":"devices/truck-r/commands/a","payload":"NEVER"}`)
	if code, out := cancel(t, g1, id); code != http.StatusOK {
		t.Fatalf("DELETE: %d %v", code, out)
	}
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := g1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	g2 := startGateway(t, func(c *Config) { c.Data = data })
	if v := commandStatus(t, g2, id); v.Status != "cancelled" {
		t.Fatalf("after the restart: %s", v.Status)
	}
	next, _ := postCommand(t, g2, "truck-r", `{"topic":"devices/truck-r/commands/a","payload":"AFTER"}`)
	d := newDevice311(t, g2, "truck-r")
	d.connect(true, g2.TLSAddr())
	d.query()
	expectOnly(t, d.cmds, "AFTER")
	waitStatus(t, g2, next, "delivered")
}
