package gateway

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// publishRC publishes at QoS 1 with an MQTT 5 client and returns the
// PUBACK's reason code.
func publishRC(t *testing.T, c *v5client, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(payload)})
	if res == nil {
		t.Fatalf("publish %s: no PUBACK (%v)", topic, err)
	}
	return res.ReasonCode
}

// subscribeRC subscribes with an MQTT 5 client and returns the SUBACK code.
func subscribeRC(t *testing.T, c *v5client, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %v %+v", filter, err, sa)
	}
	return sa.Reasons[0]
}

// A rogue device publishes on another device's command topic, over MQTT 5
// and 3.1.1, at QoS 0 and 1, and sets it as its Will: every attempt is
// refused, and the victim, subscribed to its own commands, receives
// nothing of it, with or without an upstream broker. A later message
// from the same rogue on an allowed topic does arrive, after the refused
// ones in the victim's queue.
func TestCommandSpaceRefused(t *testing.T) {
	for _, upstream := range []bool{false, true} {
		name := "local"
		if upstream {
			name = "upstream"
		}
		t.Run(name, func(t *testing.T) {
			var g *Gateway
			if upstream {
				g = upstreamGateway(t, testbroker.Start(t), nil)
				waitUpstream(t, g)
			} else {
				g = startGateway(t, nil)
			}
			victim := v3(t, "tcp://"+g.PlainAddr(), "victim", nil, nil)
			got := subscribe3(t, victim, "devices/victim/commands/#")
			news := newCollector()
			if tok := victim.Subscribe("news/#", 1, news.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}

			rogue := v5Plain(t, g, &paho.Connect{ClientID: "rogue", KeepAlive: 30, CleanStart: true})
			if rc := publishRC(t, rogue, "devices/victim/commands/unlock", "forged-5"); rc != byte(mqttcodec.NotAuthorized) {
				t.Fatalf("MQTT 5 forged command: PUBACK %#x, want 0x87", rc)
			}
			if rc := publishRC(t, rogue, "devices/rogue/commands/x", "own-space"); rc != byte(mqttcodec.NotAuthorized) {
				t.Fatalf("publish into its own command space: PUBACK %#x, want 0x87", rc)
			}
			if rc := publishRC(t, rogue, "$dualgate/control", "forged-control"); rc != byte(mqttcodec.NotAuthorized) {
				t.Fatalf("publish on $dualgate/control: PUBACK %#x, want 0x87", rc)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if _, err := rogue.Publish(ctx, &paho.Publish{Topic: "devices/victim/commands/unlock", QoS: 0, Payload: []byte("forged-0")}); err != nil {
				t.Fatalf("QoS 0: %v", err)
			}
			cancel()

			lost := make(chan error, 1)
			rogue3 := v3(t, "tcp://"+g.PlainAddr(), "rogue-311", nil, func(o *mqtt.ClientOptions) {
				o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
			})
			rogue3.Publish("devices/victim/commands/unlock", 1, false, "forged-311")
			select {
			case <-lost:
			case <-time.After(10 * time.Second):
				t.Fatal("the 3.1.1 rogue is still connected after a forged command")
			}

			// Wills on the victim's command topic are refused at CONNECT.
			if ack := dialV5Will(t, g.PlainAddr(), "rogue-will-5", "devices/victim/commands/unlock"); ack == nil || ack.ReasonCode != byte(mqttcodec.NotAuthorized) {
				t.Fatalf("MQTT 5 Will on a command topic: CONNACK %+v, want 0x87", ack)
			}
			w3 := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://"+g.PlainAddr()).SetClientID("rogue-will-311").
				SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5*time.Second).
				SetWill("devices/victim/commands/unlock", "forged-will", 1, false))
			tok := w3.Connect()
			if !tok.WaitTimeout(5*time.Second) || tok.Error() == nil || !strings.Contains(tok.Error().Error(), "not Authorized") {
				t.Fatalf("3.1.1 Will on a command topic: %v, want CONNACK 0x05 (not authorized)", tok.Error())
			}

			if rc := publishRC(t, rogue, "news/today", "rogue-news"); rc != 0 {
				t.Fatalf("an allowed publish: PUBACK %#x", rc)
			}
			news.waitFor(t, "rogue-news")
			if p := got.payloads(); len(p) != 0 {
				t.Fatalf("the victim received %q on its command topic", p)
			}
			if n := metric(t, g, "dualgate_wills_refused_total"); n != 2 {
				t.Errorf("wills refused %v, want 2", n)
			}
			if n := metric(t, g, "dualgate_publishes_refused_total"); n != 5 {
				t.Errorf("publishes refused %v, want 5", n)
			}
		})
	}
}

// A subscription to another device's commands is refused (0x87, 3.1.1
// 0x80); wildcards that merely overlap them are accepted, and a command
// for another device published on the broker never reaches a wildcard
// subscriber, while a telemetry message next to it does.
// With --upstream-command-filter off the broker's command topics are not
// taken as commands, and the topic authorization alone keeps them from
// wildcard subscribers.
func TestSubscribeToOthersCommands(t *testing.T) {
	for _, commands := range []string{"", "off"} {
		t.Run("commands="+commands, func(t *testing.T) { testSubscribeToOthersCommands(t, commands) })
	}
}

func testSubscribeToOthersCommands(t *testing.T, commands string) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, func(c *Config) { c.UpstreamCommands = commands })
	waitUpstream(t, g)
	snoop := v5Plain(t, g, &paho.Connect{ClientID: "snoop", KeepAlive: 30, CleanStart: true})
	for filter, want := range map[string]byte{
		"devices/car1/commands/#":      0x87,
		"devices/car1/commands/unlock": 0x87,
		"$dualgate/control":            0x87,
		"devices/snoop/commands/#":     1,
		"devices/+/commands/#":         1,
		"#":                            1,
	} {
		if rc := subscribeRC(t, snoop, filter); rc != want {
			t.Errorf("subscribe %s: SUBACK %#x, want %#x", filter, rc, want)
		}
	}
	s3 := v3(t, "tcp://"+g.PlainAddr(), "snoop-311", nil, nil)
	tok := s3.Subscribe("devices/car1/commands/#", 1, func(mqtt.Client, mqtt.Message) {})
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("no SUBACK")
	}
	if st, ok := tok.(*mqtt.SubscribeToken); !ok || st.Result()["devices/car1/commands/#"] != 0x80 {
		t.Fatalf("3.1.1 subscription to another device's commands: %v, want 0x80", tok.(*mqtt.SubscribeToken).Result())
	}

	app := cloudApp(t, br, "cloud-app", true)
	for _, m := range [][2]string{{"devices/car1/commands/unlock", "cmd-for-car1"}, {"devices/car1/telemetry", "car1-telemetry"}} {
		if tok := app.Publish(m[0], 1, false, m[1]); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("cloud publish: %v", tok.Error())
		}
	}
	var seen []string
	for {
		select {
		case p := <-snoop.received:
			seen = append(seen, string(p.Payload))
			if string(p.Payload) == "cmd-for-car1" {
				t.Fatalf("the wildcard subscriber received another device's command")
			}
			if string(p.Payload) != "car1-telemetry" {
				continue
			}
			// The telemetry came after the command on the broker and
			// in the gateway's queue to this session.
			if n := metric(t, g, "dualgate_subscriptions_refused_total"); n != 4 {
				t.Errorf("subscriptions refused %v, want 4", n)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatalf("no telemetry; got %q", seen)
		}
	}
}

// An --acl file with pattern rules confines each device to its own space;
// a reload on SIGHUP widens it; a malformed file keeps the gateway from
// starting, with the line at fault.
func TestACLFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "acl")
	write := func(body string) {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# each device in its own space\npattern readwrite devices/%c/#\ntopic read fleet/#\n")
	g := startGateway(t, func(c *Config) { c.ACL = path })
	car1 := v5Plain(t, g, &paho.Connect{ClientID: "car1", KeepAlive: 30, CleanStart: true})
	car2 := v5Plain(t, g, &paho.Connect{ClientID: "car2", KeepAlive: 30, CleanStart: true})
	for filter, want := range map[string]byte{"devices/car1/#": 1, "fleet/#": 1, "#": 1, "other/#": 0x87} {
		if rc := subscribeRC(t, car1, filter); rc != want {
			t.Errorf("car1 subscribe %s: %#x, want %#x", filter, rc, want)
		}
	}
	if rc := publishRC(t, car2, "devices/car1/state", "car2-intrudes"); rc != 0x87 {
		t.Errorf("car2 publishing in car1's space: %#x, want 0x87", rc)
	}
	if rc := publishRC(t, car2, "fleet/all", "car2-fleet"); rc != 0x87 {
		t.Errorf("car2 publishing on a read-only topic: %#x, want 0x87", rc)
	}
	if rc := publishRC(t, car2, "devices/car2/state", "car2-own"); rc != 0 {
		t.Errorf("car2 publishing in its own space: %#x, want 0", rc)
	}
	if rc := publishRC(t, car1, "devices/car1/state", "car1-own"); rc != 0 {
		t.Errorf("car1 publishing in its own space: %#x, want 0", rc)
	}
	// car1 is subscribed to "#": it gets its own message, never car2's.
	for own := false; !own; {
		select {
		case p := <-car1.received:
			if string(p.Payload) == "car2-own" {
				t.Fatal("car1 read car2's space through '#'")
			}
			own = string(p.Payload) == "car1-own"
		case <-time.After(10 * time.Second):
			t.Fatal("car1 did not get its own message")
		}
	}

	write("pattern readwrite devices/%c/#\ntopic readwrite fleet/#\n")
	if err := g.ReloadACL(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if rc := publishRC(t, car2, "fleet/all", "car2-fleet"); rc != 0 {
		t.Errorf("after the reload, fleet/all: %#x, want 0", rc)
	}
	write("pattern readwrite devices/%c/#\ntopic readwrite\n")
	if err := g.ReloadACL(); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("reload of a bad file: %v, want an error on line 2", err)
	}
	if rc := publishRC(t, car2, "fleet/all", "car2-fleet"); rc != 0 {
		t.Errorf("a bad reload changed the rules in force: %#x", rc)
	}

	for i, body := range []string{"topic readwrite a/#\npattern write devices/car-%c/#\n", "user ops\ntopic bogus x y\n"} {
		bad := filepath.Join(dir, fmt.Sprintf("bad%d", i))
		if err := os.WriteFile(bad, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := New(Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(), ACL: bad}, Options{})
		if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), bad) {
			t.Errorf("New with %q: %v, want an error naming the file and line 2", body, err)
		}
	}
}

// --secure-topics is checked with the other settings; --acl and
// --secure-topics come from flags, the environment and the file alike.
func TestTopicSettings(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if _, err := LoadConfig([]string{"--secure-topics", "vault/#,a/#/b"}, env(nil)); err == nil || !strings.Contains(err.Error(), "a/#/b") {
		t.Fatalf("a bad secure topic: %v", err)
	}
	if _, err := LoadConfig([]string{"--secure-topics", "$dualgate/#"}, env(nil)); err == nil {
		t.Fatal("a '$' secure topic accepted")
	}
	cfg, err := LoadConfig(nil, env(map[string]string{"DUALGATE_ACL": "/etc/dualgate/acl", "DUALGATE_SECURE_TOPICS": "vault/#, keys"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ACL != "/etc/dualgate/acl" || fmt.Sprint(splitList(cfg.SecureTopics)) != "[vault/# keys]" {
		t.Fatalf("from the environment: acl %q, secure topics %q", cfg.ACL, cfg.SecureTopics)
	}
}
