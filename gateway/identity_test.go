package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
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
	"github.com/dualgate/dualgate/mqttcodec"
)

// impostor is a hostile device that knows its victim's client id and
// nothing else of it, speaking MQTT 3.1.1 or 5 with a real client. It
// records its plain sockets and keeps everything the gateway sends it.
type impostor struct {
	t       *testing.T
	g       *Gateway
	id      string // the victim's
	version byte
	plain   wire

	mu       sync.Mutex
	received [][]byte // payloads of every PUBLISH, on any connection
	told     chan struct{}
	closers  []func()
}

func newImpostor(t *testing.T, g *Gateway, victim string, version byte) *impostor {
	im := &impostor{t: t, g: g, id: victim, version: version, told: make(chan struct{}, 4)}
	t.Cleanup(func() {
		im.mu.Lock()
		cl := im.closers
		im.mu.Unlock()
		for _, c := range cl {
			c()
		}
	})
	return im
}

func (im *impostor) got(payload []byte, instruction bool) {
	im.mu.Lock()
	im.received = append(im.received, bytes.Clone(payload))
	im.mu.Unlock()
	if instruction {
		select {
		case im.told <- struct{}{}:
		default:
		}
	}
}

// sawPayload reports whether any PUBLISH the impostor received, on any
// connection, carried secret.
func (im *impostor) sawPayload(secret string) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	for _, p := range im.received {
		if bytes.Contains(p, []byte(secret)) {
			return true
		}
	}
	return false
}

// connect opens a session as the victim, on plain (tc nil) or TLS, and
// returns the CONNACK code (0 accepted). An accepted session queries, as
// the protocol says a device does after connecting.
func (im *impostor) connect(tc *tls.Config) byte {
	im.t.Helper()
	if im.version == 5 {
		return im.connect5(tc)
	}
	return im.connect311(tc)
}

func (im *impostor) connect311(tc *tls.Config) byte {
	broker := "tcp://" + im.g.PlainAddr()
	if tc != nil {
		broker = "ssl://" + im.g.TLSAddr()
	}
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(im.id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).SetCleanSession(true).SetTLSConfig(tc).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			im.got(m.Payload(), m.Topic() == control.ControlTopic)
		})
	if tc == nil {
		o.SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
			if err != nil {
				return nil, err
			}
			return im.plain.record(c), nil
		})
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		im.t.Fatalf("impostor %s: no CONNACK", broker)
	}
	ct := tok.(*mqtt.ConnectToken)
	if tok.Error() != nil {
		if ct.ReturnCode() == 0 {
			im.t.Fatalf("impostor %s: %v", broker, tok.Error())
		}
		return ct.ReturnCode()
	}
	im.mu.Lock()
	im.closers = append(im.closers, func() { c.Disconnect(50) })
	im.mu.Unlock()
	if q := c.Publish(control.QueryTopic, 1, false, `{"v":1}`); !q.WaitTimeout(5*time.Second) || q.Error() != nil {
		im.t.Fatalf("impostor query: %v", q.Error())
	}
	return 0
}

func (im *impostor) connect5(tc *tls.Config) byte {
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = tls.Dial("tcp", im.g.TLSAddr(), tc)
	} else {
		conn, err = net.Dial("tcp", im.g.PlainAddr())
		if err == nil {
			conn = im.plain.record(conn)
		}
	}
	if err != nil {
		im.t.Fatalf("impostor dial: %v", err)
	}
	c := paho.NewClient(paho.ClientConfig{
		// paho writes a packet in several Writes: keep packets whole.
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			im.got(pr.Packet.Payload, false)
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			if d.ReasonCode == 0x9C {
				im.got(nil, true)
			}
		},
		OnClientError: func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: im.id, KeepAlive: 30, CleanStart: true})
	if err != nil {
		_ = conn.Close()
		if ack == nil || ack.ReasonCode == 0 {
			im.t.Fatalf("impostor connect: %v", err)
		}
		return ack.ReasonCode
	}
	im.mu.Lock()
	im.closers = append(im.closers, func() {
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(2 * time.Second):
		}
	})
	im.mu.Unlock()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: control.QueryTopic, QoS: 1, Payload: []byte(`{"v":1}`)}); err != nil {
		im.t.Fatalf("impostor query: %v", err)
	}
	return 0
}

// forgeCert signs, with the gateway's own development CA, a client
// certificate with the given subject common name and DNS SANs: what an
// operator might issue for a host, or a careless one for a fleet.
func forgeCert(t *testing.T, g *Gateway, cn string, dns ...string) tls.Certificate {
	t.Helper()
	return newGatewayCA(t, g).issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns})
}

func clientProven(t *testing.T, g *Gateway, id string) (mode string, proven *bool) {
	t.Helper()
	var v clientView
	if code := getJSON(t, g, "/v1/clients/"+id, "", &v); code != http.StatusOK {
		t.Fatalf("GET client %s: %d", id, code)
	}
	return v.Mode, v.Proven
}

// An impostor with the victim's client id, under the default
// --secure-identity cert: it takes the victim's plain session over and is
// told to use TLS; on TLS without a certificate it is accepted but not
// proven, and the victim's secure command is not written to it; with
// another device's valid certificate, or one whose DNS SAN only names the
// victim, it is refused (MQTT 5 CONNACK 0x87, 3.1.1 return code 0x05). The
// command stays pending, the refusal is counted, and the real device with
// its certificate then gets it through the normal upgrade.
func TestImpostorNeverGetsSecureCommand(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("mqtt%d", version), func(t *testing.T) {
			g := startGateway(t, nil)
			victim := fmt.Sprintf("car-victim-%d", version)
			var real interface {
				connect(bool, string)
				query()
			}
			var realCmds chan command
			var realPlain *wire
			if version == 5 {
				d := newDevice5(t, g, victim)
				real, realCmds, realPlain = d, d.cmds, &d.plain
			} else {
				d := newDevice311(t, g, victim)
				real, realCmds, realPlain = d, d.cmds, &d.plain
			}
			real.connect(false, g.PlainAddr())
			real.query()

			// On plain, the impostor takes the session over, and the
			// command for the victim makes the gateway tell it to use TLS.
			im := newImpostor(t, g, victim, version)
			if rc := im.connect(nil); rc != 0 {
				t.Fatalf("plain takeover refused: %#x", rc)
			}
			eventually(t, 5*time.Second, "takeover", func() bool { return g.Stats().Takeovers.Load() >= 1 })
			secret := fmt.Sprintf("UNLOCK-%d-8c1f", version)
			cid, status := postCommand(t, g, victim, `{"topic":"devices/`+victim+`/commands/unlock","payload":"`+secret+`","ttl_seconds":120}`)
			if status != "pending" {
				t.Fatalf("status %q, want pending (the POST answers once the command is stored)", status)
			}
			select {
			case <-im.told:
			case <-time.After(10 * time.Second):
				t.Fatal("the impostor on plain was not told to use TLS")
			}

			// TLS without a certificate: accepted, not proven, nothing
			// written.
			heldBefore := metric(t, g, "dualgate_secure_commands_held_unproven_total")
			if rc := im.connect(clientTLS(t, g)); rc != 0 {
				t.Fatalf("TLS without a certificate refused with %#x; the device may use TLS for everything else", rc)
			}
			eventually(t, 10*time.Second, "the command held for the unproven session", func() bool {
				return metric(t, g, "dualgate_secure_commands_held_unproven_total") > heldBefore
			})
			if mode, proven := clientProven(t, g, victim); mode != "tls" || proven == nil || *proven {
				t.Fatalf("client view: mode %s, proven %v; want tls, false", mode, proven)
			}
			if st := commandStatus(t, g, cid).Status; st != "pending" && st != "upgrading" {
				t.Fatalf("command %s after the unproven session, want pending or upgrading", st)
			}

			// TLS with another device's valid certificate, and with a
			// certificate whose only claim to the id is a DNS SAN: refused.
			want := byte(0x87)
			if version == 4 {
				want = 0x05
			}
			notAuthorized := g.Stats().Refused[0x87].Load()
			other := deviceTLS(t, g, "car-other")
			if rc := im.connect(other); rc != want {
				t.Fatalf("TLS with car-other's certificate: CONNACK %#x, want %#x", rc, want)
			}
			byDNS := clientTLS(t, g)
			byDNS.Certificates = []tls.Certificate{forgeCert(t, g, "fleet-gateway", victim)}
			if rc := im.connect(byDNS); rc != want {
				t.Fatalf("TLS with a DNS SAN naming the victim: CONNACK %#x, want %#x", rc, want)
			}
			if n := g.Stats().Refused[0x87].Load() - notAuthorized; n != 2 {
				t.Fatalf("%d refusals counted as not authorized, want 2", n)
			}
			// No CN and a DNS SAN only: the certificate names no client
			// id, so it proves nothing, and the session is not proven.
			noCN := clientTLS(t, g)
			noCN.Certificates = []tls.Certificate{forgeCert(t, g, "", victim)}
			if rc := im.connect(noCN); rc != 0 {
				t.Fatalf("TLS with a certificate naming no client id: CONNACK %#x, want accepted", rc)
			}
			eventually(t, 10*time.Second, "the DNS-only session registered unproven", func() bool {
				mode, proven := clientProven(t, g, victim)
				return mode == "tls" && proven != nil && !*proven
			})
			if st := commandStatus(t, g, cid).Status; st != "pending" && st != "upgrading" {
				t.Fatalf("command %s after the impostor's attempts, want pending or upgrading", st)
			}
			// The dispatcher held the command rather than try: the reason
			// is in its history and counted.
			if !strings.Contains(fmt.Sprint(commandStatus(t, g, cid).History), "did not prove client id") {
				t.Fatalf("the command's history does not say why it waits: %+v", commandStatus(t, g, cid).History)
			}
			if v := metric(t, g, "dualgate_secure_commands_held_unproven_total"); v == 0 {
				t.Fatal("the held command is not in the metric")
			}

			// The real device comes back on plain, is told to use TLS,
			// presents its certificate and gets the command.
			real.connect(false, g.PlainAddr())
			real.query()
			c := nextCommand(t, realCmds)
			if !c.tls || c.payload != secret {
				t.Fatalf("real device got %+v", c)
			}
			waitStatus(t, g, cid, "delivered")
			if mode, proven := clientProven(t, g, victim); mode != "tls" || proven == nil || !*proven {
				t.Fatalf("real device's view: mode %s, proven %v; want tls, true", mode, proven)
			}

			if im.sawPayload(secret) {
				t.Fatal("the impostor received the victim's secure command")
			}
			if im.plain.bytes() == 0 || realPlain.bytes() == 0 {
				t.Fatal("nothing recorded on the plain sockets")
			}
			if im.plain.contains([]byte(secret)) || realPlain.contains([]byte(secret)) {
				t.Fatal("the secure command crossed a plain socket")
			}
		})
	}
}

// --secure-identity none keeps the old behaviour: a TLS session without a
// certificate is proven, and gets secure commands.
func TestSecureIdentityNone(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.SecureIdentity = "none" })
	vc := v5TLS(t, g, &paho.Connect{ClientID: "anyone", KeepAlive: 30, CleanStart: true})
	if mode, proven := clientProven(t, g, "anyone"); mode != "tls" || proven == nil || !*proven {
		t.Fatalf("mode %s, proven %v; want tls, true", mode, proven)
	}
	cid, _ := postCommand(t, g, "anyone", `{"topic":"devices/anyone/commands/x","payload":"go"}`)
	select {
	case p := <-vc.received:
		if string(p.Payload) != "go" {
			t.Fatalf("payload %q", p.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no command under --secure-identity none")
	}
	waitStatus(t, g, cid, "delivered")
}

func TestSecureIdentityConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" accepted, else part of the error
	}{
		{name: "default is cert", mod: func(*Config) {}},
		{name: "token without --auth token", mod: func(c *Config) { c.SecureIdentity = "token" }, want: "--auth token"},
		{name: "cert,token without --auth token", mod: func(c *Config) { c.SecureIdentity = "cert,token" }, want: "--auth token"},
		{name: "token with --auth token", mod: func(c *Config) { c.SecureIdentity, c.Auth, c.Secrets = "token", "token", "s" }},
		{name: "unknown value", mod: func(c *Config) { c.SecureIdentity = "password" }, want: "want cert, token, cert,token or none"},
		{name: "cert with --tls-cert and no --client-ca", mod: func(c *Config) { c.TLSCert, c.TLSKey = "c.pem", "k.pem" }, want: "--client-ca"},
		{name: "cert with --tls-cert and --client-ca", mod: func(c *Config) { c.TLSCert, c.TLSKey, c.ClientCA = "c.pem", "k.pem", "ca.pem" }},
		{name: "none with --tls-cert", mod: func(c *Config) { c.TLSCert, c.TLSKey, c.SecureIdentity = "c.pem", "k.pem", "none" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Data: dir}
			tc.mod(&cfg)
			cfg = cfg.withDefaults()
			err := cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	if Defaults().SecureIdentity != "cert" {
		t.Fatalf("default --secure-identity %q, want cert", Defaults().SecureIdentity)
	}
}

// countingConn counts the bytes a TLS client sends and receives (the TLS
// payload of its TCP connection).
type countingConn struct {
	net.Conn
	up, down int
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.down += n
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.up += n
	return n, err
}

// A device's proof holds on a resumed TLS session: the session (kept on
// the server, the default) carries the certificate of the full handshake,
// and a resumed session whose certificate names another id is refused.
// The test also logs the TLS bytes of a session (handshake, CONNECT,
// CONNACK) with and without the certificate, the figures of
// docs/benchmarks.md section 8.
func TestResumedSessionKeepsProof(t *testing.T) {
	for _, policy := range []string{"none", "cert"} {
		g := startGateway(t, func(c *Config) { c.SecureIdentity, c.TLSCurves = policy, "x25519" })
		for _, withCert := range []bool{false, true} {
			id := fmt.Sprintf("resume-%s-%v", policy, withCert)
			tc := clientTLS(t, g)
			tc.CurvePreferences = []tls.CurveID{tls.X25519}
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			if withCert {
				tc.Certificates = []tls.Certificate{deviceCert(t, g, id)}
			}
			for _, resumed := range []bool{false, true} {
				raw, err := net.Dial("tcp", g.TLSAddr())
				if err != nil {
					t.Fatal(err)
				}
				cc := &countingConn{Conn: raw}
				c := tls.Client(cc, tc)
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{
					ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(id)})); err != nil {
					t.Fatal(err)
				}
				ack := make([]byte, 4)
				if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
					t.Fatalf("%s: CONNACK % x, %v", id, ack, err)
				}
				if c.ConnectionState().DidResume != resumed {
					t.Fatalf("%s: resumed %v, want %v", id, c.ConnectionState().DidResume, resumed)
				}
				wantProven := policy == "none" || withCert
				if mode, proven := clientProven(t, g, id); mode != "tls" || proven == nil || *proven != wantProven {
					t.Fatalf("%s, resumed %v: mode %s, proven %v; want tls, %v", id, resumed, mode, proven, wantProven)
				}
				t.Logf("--secure-identity %-4s certificate %-5v resumed %-5v: TLS bytes up %4d, down %4d, total %4d",
					policy, withCert, resumed, cc.up, cc.down, cc.up+cc.down)
				_ = c.Close()
				eventually(t, 5*time.Second, id+" gone", func() bool { _, ok := g.Registry().Get(id); return !ok })
			}
			if policy == "cert" && withCert {
				// The certificate restored from the session names id,
				// not another: refused (3.1.1 return code 5), as on a
				// full handshake.
				c, err := tls.Dial("tcp", g.TLSAddr(), tc)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{
					ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(id + "-other")})); err != nil {
					t.Fatal(err)
				}
				ack := make([]byte, 4)
				if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 5 {
					t.Fatalf("%s's resumed session claiming another id: CONNACK % x, %v; want return code 5", id, ack, err)
				}
				if !c.ConnectionState().DidResume {
					t.Fatal("the session claiming another id did not resume")
				}
				_ = c.Close()
			}
		}
	}
}

// With --auth token, a client certificate replaces the token only when it
// names the client id by CN or urn:dualgate:client URI SAN: a DNS SAN
// naming it opens nothing.
func TestTokenAuthCertificateByCNOrURIOnly(t *testing.T) {
	path := writeSecrets(t, map[string]string{"car-t": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"})
	g := startGateway(t, func(c *Config) { c.Auth, c.Secrets = "token", path })
	im := newImpostor(t, g, "car-t", 5)
	dnsOnly := clientTLS(t, g)
	dnsOnly.Certificates = []tls.Certificate{forgeCert(t, g, "", "car-t")}
	if rc := im.connect(dnsOnly); rc != 0x87 {
		t.Fatalf("a DNS SAN naming the client id, no token: CONNACK %#x, want 0x87", rc)
	}
	if rc := im.connect(deviceTLS(t, g, "car-t")); rc != 0 {
		t.Fatalf("the device's own certificate: CONNACK %#x, want accepted", rc)
	}
	if mode, proven := clientProven(t, g, "car-t"); mode != "tls" || proven == nil || !*proven {
		t.Fatalf("mode %s, proven %v; want tls, true", mode, proven)
	}
}
