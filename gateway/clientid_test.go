package gateway

import (
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// A client id with spaces is a client id: MQTT lets a server allow it,
// Mosquitto does, and conformance suites use one. Both versions connect,
// the API finds the device by its id (URL-encoded), and a command posted
// for it arrives on its own command topic.
func TestClientIDWithSpaces(t *testing.T) {
	g := startGateway(t, nil)

	// MQTT 3.1.1, paho.mqtt.golang.
	got := newCollector()
	id3 := "meter 3 1 1"
	v3(t, "tcp://"+g.PlainAddr(), id3, nil, func(o *mqtt.ClientOptions) { o.SetDefaultPublishHandler(got.handler) })
	postCommand(t, g, url.PathEscape(id3), `{"topic":"devices/meter 3 1 1/commands/read","payload":"now","secure":false}`)
	if m := got.next(t, 10*time.Second); m.Topic() != "devices/meter 3 1 1/commands/read" || string(m.Payload()) != "now" {
		t.Fatalf("3.1.1 device got %s %q", m.Topic(), m.Payload())
	}

	// MQTT 5, paho.golang.
	id5 := "car 42"
	conn, err := net.Dial("tcp", g.PlainAddr())
	if err != nil {
		t.Fatal(err)
	}
	c5, err := dialV5(t, conn, &paho.Connect{ClientID: id5, KeepAlive: 30, CleanStart: true})
	if err != nil {
		t.Fatalf("MQTT 5 connect with %q: %v", id5, err)
	}
	if c5.connack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x for %q", c5.connack.ReasonCode, id5)
	}
	var view struct {
		ClientID  string `json:"client_id"`
		Connected bool   `json:"connected"`
	}
	if code := getJSON(t, g, "/v1/clients/"+url.PathEscape(id5), "", &view); code != 200 || view.ClientID != id5 || !view.Connected {
		t.Fatalf("GET /v1/clients/car%%2042: %d %+v", code, view)
	}
	postCommand(t, g, url.PathEscape(id5), `{"topic":"devices/car 42/commands/honk","payload":"beep","secure":false}`)
	select {
	case p := <-c5.received:
		if p.Topic != "devices/car 42/commands/honk" || string(p.Payload) != "beep" {
			t.Fatalf("MQTT 5 device got %s %q", p.Topic, p.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the MQTT 5 device with a space in its id got no command")
	}
}
