package device_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// An MQTT 5 reconnect instruction (a server DISCONNECT) is not answered
// with a DISCONNECT: the server closes after it (MQTT-3.14.4-2), so the
// device's packet would only cost it a segment, and the server's kernel a
// reset to answer it with. The device closes its end without a word and
// follows the instruction. The fake broker keeps its end open, so that a
// packet sent after the instruction would arrive.
func TestServerDisconnectNotAnswered(t *testing.T) {
	g := startGateway(t, nil)
	fb, rec, fc := startOnFakePlain(t, g, "d-quiet-close", 5)
	in := mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer}
	in.Properties.SetServerReference([]byte(control.ServerReference(control.ModeTLS, g.TLSAddr())))
	fc.send(mqttcodec.AppendDisconnect(nil, mqttcodec.V5, &in))
	p, err := fc.next(10 * time.Second)
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("the device answered the server's DISCONNECT with %s", p.Type)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatal("the device did not close its connection after the server's DISCONNECT")
	}
	if mc := rec.nextMode(t, 5*time.Second); mc.to != device.ModeTLS {
		t.Fatalf("mode change %+v, want to TLS", mc)
	}
	if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Addr != fb.addr() {
		t.Fatalf("first connection event %+v", ev)
	}
	if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Mode != device.ModeTLS || ev.Addr != g.TLSAddr() {
		t.Fatalf("TLS connection event %+v", ev)
	}
}
