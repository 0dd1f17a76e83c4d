package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/dualgate/dualgate/gateway/dispatch"
)

// A command larger than the Maximum Packet Size an MQTT 5 device declared
// can never be written to it [MQTT-3.1.2-24]. It used to stay pending,
// retried at every look, and every command after it waited behind it
// until their TTLs ran out. Now it fails, with the reason in its history,
// and the next command is delivered.
func TestCommandLargerThanDeviceMaximum(t *testing.T) {
	g := startGateway(t, nil)
	max := uint32(256)
	dev := v5Plain(t, g, &paho.Connect{ClientID: "m5", KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{MaximumPacketSize: &max}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dev.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/m5/commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	big, _ := postCommand(t, g, "m5", `{"topic":"devices/m5/commands/big","payload":"`+strings.Repeat("x", 1000)+`","secure":false}`)
	small, _ := postCommand(t, g, "m5", `{"topic":"devices/m5/commands/small","payload":"ok","secure":false}`)

	v := waitStatus(t, g, big, "failed")
	if last := v.History[len(v.History)-1]; last.Note != dispatch.NoteTooLarge {
		t.Errorf("history of the failed command ends with %q, want %q", last.Note, dispatch.NoteTooLarge)
	}
	waitStatus(t, g, small, "delivered")
	select {
	case p := <-dev.received:
		if p.Topic != "devices/m5/commands/small" {
			t.Fatalf("the device got %s, want only the small command", p.Topic)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the small command did not reach the device")
	}
	var st statsView
	if code := getJSON(t, g, "/v1/stats", "", &st); code != http.StatusOK || st.OnDemand["failed"] != 1 {
		t.Fatalf("stats %d %+v: want on_demand.failed 1", code, st.OnDemand)
	}
}
