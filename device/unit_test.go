package device

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/internal/control"
)

func TestBackoffBound(t *testing.T) {
	b := Backoff{Initial: 500 * time.Millisecond, Max: 60 * time.Second}
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{0, 500 * time.Millisecond},
		{1, time.Second},
		{2, 2 * time.Second},
		{6, 32 * time.Second},
		{7, 60 * time.Second},
		{8, 60 * time.Second},
		{1000, 60 * time.Second},
	} {
		if got := b.bound(tc.attempt); got != tc.want {
			t.Errorf("bound(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
	}
}

func TestBackoffDelayIsFullJitter(t *testing.T) {
	b := Backoff{Initial: 500 * time.Millisecond, Max: 60 * time.Second}
	lowest := func(int64) int64 { return 0 }
	highest := func(n int64) int64 { return n - 1 }
	for attempt := range 10 {
		if got := b.delay(attempt, lowest); got != 0 {
			t.Errorf("delay(%d) with the lowest draw = %s, want 0", attempt, got)
		}
		if got, want := b.delay(attempt, highest), b.bound(attempt); got != want {
			t.Errorf("delay(%d) with the highest draw = %s, want %s", attempt, got, want)
		}
	}
	// The real source spreads a fleet over the whole window.
	var below, above int
	for range 1000 {
		d := b.delay(3, mrand.Int64N)
		if d < 0 || d > 4*time.Second {
			t.Fatalf("delay(3) = %s, outside [0, 4s]", d)
		}
		if d < 2*time.Second {
			below++
		} else {
			above++
		}
	}
	if below == 0 || above == 0 {
		t.Errorf("delays not spread: %d below 2s, %d above", below, above)
	}
}

func TestParseInstruction(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload string
		want    instruction
		bad     bool
	}{
		{"tls", `{"v":1,"op":"reconnect","mode":"tls","addr":"gw.example.com:8883","reason":"secure-command"}`,
			instruction{mode: ModeTLS, addr: "gw.example.com:8883", reason: "secure-command"}, false},
		{"plain", `{"v":1,"op":"reconnect","mode":"plain","addr":"10.0.0.1:1883","reason":"secure-idle"}`,
			instruction{mode: ModePlain, addr: "10.0.0.1:1883", reason: "secure-idle"}, false},
		{"empty addr: configured endpoint", `{"v":1,"op":"reconnect","mode":"tls","addr":""}`,
			instruction{mode: ModeTLS}, false},
		{"no addr", `{"v":1,"op":"reconnect","mode":"tls"}`, instruction{mode: ModeTLS}, false},
		{"addr without host", `{"v":1,"op":"reconnect","mode":"tls","addr":":8883"}`, instruction{mode: ModeTLS}, false},
		{"addr without port", `{"v":1,"op":"reconnect","mode":"plain","addr":"gw"}`, instruction{mode: ModePlain}, false},
		{"unknown fields are fine", `{"v":1,"op":"reconnect","mode":"tls","addr":"h:1","x":true}`,
			instruction{mode: ModeTLS, addr: "h:1"}, false},
		{"not JSON", `reconnect tls`, instruction{}, true},
		{"empty", ``, instruction{}, true},
		{"version 2", `{"v":2,"op":"reconnect","mode":"tls","addr":"h:1"}`, instruction{}, true},
		{"unknown op", `{"v":1,"op":"reboot","mode":"tls","addr":"h:1"}`, instruction{}, true},
		{"unknown mode", `{"v":1,"op":"reconnect","mode":"quic","addr":"h:1"}`, instruction{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseInstruction([]byte(tc.payload))
			if tc.bad {
				if !errors.Is(got.err, control.ErrBadInstruction) {
					t.Fatalf("err = %v, want ErrBadInstruction", got.err)
				}
				return
			}
			if got.err != nil || got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseServerReference(t *testing.T) {
	for _, tc := range []struct {
		ref  string
		want instruction
		bad  bool
	}{
		{"tls://gw:8883", instruction{mode: ModeTLS, addr: "gw:8883", reason: "r"}, false},
		{"tcp://[::1]:1883", instruction{mode: ModePlain, addr: "[::1]:1883", reason: "r"}, false},
		{"tls://", instruction{mode: ModeTLS, reason: "r"}, false},
		{"tcp://gw", instruction{mode: ModePlain, reason: "r"}, false},
		{"tls://:8883", instruction{mode: ModeTLS, reason: "r"}, false},
		{"mqtts://gw:8883", instruction{}, true},
		{"gw:8883", instruction{}, true},
	} {
		got := parseServerReference(tc.ref, "r")
		if tc.bad {
			if !errors.Is(got.err, control.ErrBadInstruction) {
				t.Errorf("%q: err = %v, want ErrBadInstruction", tc.ref, got.err)
			}
			continue
		}
		if got.err != nil || got != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.ref, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{ClientID: "d1", PlainAddr: "127.0.0.1:1883"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // part of the error; "" for none
	}{
		{"minimal", func(*Config) {}, ""},
		{"everything", func(c *Config) {
			c.Secret = make([]byte, 32)
			c.TLSAddr = "gw:8883"
			c.Version = 5
			c.KeepAlive = time.Hour
			c.Subscriptions = []Subscription{{Filter: "devices/d1/config/#", QoS: 1}}
		}, ""},
		{"no client id", func(c *Config) { c.ClientID = "" }, "ClientID"},
		{"short secret", func(c *Config) { c.Secret = []byte("short") }, "Secret"},
		{"no plain addr", func(c *Config) { c.PlainAddr = "" }, "PlainAddr"},
		{"plain addr without port", func(c *Config) { c.PlainAddr = "gw" }, "PlainAddr"},
		{"bad tls addr", func(c *Config) { c.TLSAddr = "gw:" }, "TLSAddr"},
		{"version 3", func(c *Config) { c.Version = 3 }, "Version"},
		{"keepalive too long", func(c *Config) { c.KeepAlive = 65536 * time.Second }, "KeepAlive"},
		{"negative keepalive", func(c *Config) { c.KeepAlive = -time.Second }, "KeepAlive"},
		{"backoff upside down", func(c *Config) { c.Backoff = Backoff{Initial: time.Minute, Max: time.Second} }, "Backoff"},
		{"cert without key", func(c *Config) { c.CertFile = "c.pem" }, "CertFile"},
		{"reserved subscription", func(c *Config) { c.Subscriptions = []Subscription{{Filter: control.ControlTopic}} }, "subscription"},
		{"empty subscription", func(c *Config) { c.Subscriptions = []Subscription{{}} }, "subscription"},
		{"subscription qos 3", func(c *Config) { c.Subscriptions = []Subscription{{Filter: "a", QoS: 3}} }, "QoS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			_, err := New(c)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New err = %v, want one about %s", err, tc.want)
			}
		})
	}
}

func TestConfigDefaultsCopy(t *testing.T) {
	subs := []Subscription{{Filter: "a/b", QoS: 1}}
	secret := []byte("0123456789abcdef")
	c := Config{ClientID: "d1", PlainAddr: "127.0.0.1:1883", Subscriptions: subs, Secret: secret}
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	subs[0].Filter, secret[0] = "changed", 'X'
	if d.cfg.Subscriptions[0].Filter != "a/b" || d.cfg.Secret[0] != '0' {
		t.Error("the Device shares the caller's slices")
	}
	if c.Version != 0 || c.KeepAlive != 0 || c.Logger != nil {
		t.Error("New wrote defaults into the caller's Config")
	}
	want := Config{Version: DefaultVersion, KeepAlive: DefaultKeepAlive, ConnectTimeout: DefaultConnectTimeout,
		Backoff: Backoff{Initial: DefaultBackoffInitial, Max: DefaultBackoffMax}}
	got := d.cfg
	if got.Version != want.Version || got.KeepAlive != want.KeepAlive ||
		got.ConnectTimeout != want.ConnectTimeout || got.Backoff != want.Backoff {
		t.Errorf("defaults = %d %s %s %+v", got.Version, got.KeepAlive, got.ConnectTimeout, got.Backoff)
	}
}

// certNames reads a certificate's client id as the gateway does: the
// subject common name or a urn:dualgate:client:<id> URI SAN, never a DNS
// SAN.
func TestCertNames(t *testing.T) {
	uri := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		id   string
		want bool
	}{
		{"CN", &x509.Certificate{Subject: pkix.Name{CommonName: "car-1"}}, "car-1", true},
		{"URI SAN", &x509.Certificate{URIs: []*url.URL{uri("urn:dualgate:client:car-1")}}, "car-1", true},
		{"escaped URI SAN", &x509.Certificate{URIs: []*url.URL{certs.ClientURI("meter/3")}}, "meter/3", true},
		{"DNS SAN only", &x509.Certificate{DNSNames: []string{"car-1"}}, "car-1", false},
		{"another CN", &x509.Certificate{Subject: pkix.Name{CommonName: "car-2"}}, "car-1", false},
		{"foreign URI", &x509.Certificate{URIs: []*url.URL{uri("spiffe://fleet/car-1")}}, "car-1", false},
		{"no certificate", nil, "car-1", false},
	} {
		if got := certNames(tc.cert, tc.id); got != tc.want {
			t.Errorf("%s: certNames = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	paths, err := certs.Init(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("nothing here"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := Config{ClientID: "d1", PlainAddr: "127.0.0.1:1883", TLSAddr: "gw.example.com:8883"}
	for _, tc := range []struct {
		name  string
		mod   func(*Config)
		check func(*testing.T, *tls.Config)
		err   string
	}{
		{"defaults", func(*Config) {}, func(t *testing.T, tc *tls.Config) {
			if tc.ServerName != "gw.example.com" || tc.MinVersion != tls.VersionTLS13 ||
				tc.ClientSessionCache == nil || tc.CurvePreferences != nil {
				t.Errorf("got ServerName %q MinVersion %x cache %v curves %v",
					tc.ServerName, tc.MinVersion, tc.ClientSessionCache, tc.CurvePreferences)
			}
		}, ""},
		{"CA file and client certificate", func(c *Config) {
			c.ClientID = certs.DefaultClientID
			c.CAFile, c.CertFile, c.KeyFile = paths.CA, paths.Client, paths.ClientKey
		}, func(t *testing.T, tc *tls.Config) {
			if tc.RootCAs == nil || len(tc.Certificates) != 1 {
				t.Errorf("RootCAs %v, %d certificates", tc.RootCAs, len(tc.Certificates))
			}
		}, ""},
		{"X25519 only", func(c *Config) { c.CurvePreferences = []tls.CurveID{tls.X25519} }, func(t *testing.T, tc *tls.Config) {
			if len(tc.CurvePreferences) != 1 || tc.CurvePreferences[0] != tls.X25519 {
				t.Errorf("curves %v", tc.CurvePreferences)
			}
		}, ""},
		{"no resumption", func(c *Config) { c.DisableResumption = true }, func(t *testing.T, tc *tls.Config) {
			if tc.ClientSessionCache != nil || !tc.SessionTicketsDisabled {
				t.Error("resumption still on")
			}
		}, ""},
		{"given config kept, server name too", func(c *Config) {
			c.TLS = &tls.Config{ServerName: "other", MinVersion: tls.VersionTLS13}
		}, func(t *testing.T, tc *tls.Config) {
			if tc.ServerName != "other" || tc.MinVersion != tls.VersionTLS13 {
				t.Errorf("ServerName %q MinVersion %x", tc.ServerName, tc.MinVersion)
			}
		}, ""},
		{"missing CA file", func(c *Config) { c.CAFile = filepath.Join(dir, "none.pem") }, nil, "CA file"},
		{"CA file without PEM", func(c *Config) { c.CAFile = notPEM }, nil, "no PEM"},
		{"bad key pair", func(c *Config) { c.CertFile, c.KeyFile = paths.Client, paths.CAKey }, nil, "client certificate"},
		{"client certificate of another id", func(c *Config) { c.CertFile, c.KeyFile = paths.Client, paths.ClientKey }, nil,
			`names "dev-client", not the client id "d1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mod(&c)
			d, err := New(c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("New err = %v, want one about %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Stop()
			tc.check(t, d.tls)
		})
	}
	// The caller's tls.Config is not touched.
	given := &tls.Config{}
	d, err := New(Config{ClientID: "d1", PlainAddr: "127.0.0.1:1883", TLSAddr: "gw:8883", TLS: given,
		CurvePreferences: []tls.CurveID{tls.X25519}})
	if err != nil {
		t.Fatal(err)
	}
	d.Stop()
	if given.ServerName != "" || given.ClientSessionCache != nil || given.CurvePreferences != nil {
		t.Error("New changed the caller's tls.Config")
	}
}

func TestTLSServerNameFromInstruction(t *testing.T) {
	d, err := New(Config{ClientID: "d1", PlainAddr: "127.0.0.1:1883"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	a, b := d.tlsFor("gw-a.example.com:8883"), d.tlsFor("[::1]:8883")
	if a.ServerName != "gw-a.example.com" || b.ServerName != "::1" {
		t.Errorf("server names %q %q", a.ServerName, b.ServerName)
	}
	if a.ClientSessionCache != d.tls.ClientSessionCache {
		t.Error("a connection's TLS config does not share the Device's session cache")
	}
}

func TestCheckPublish(t *testing.T) {
	for _, tc := range []struct {
		topic string
		qos   byte
		want  error
	}{
		{"devices/d1/telemetry", 0, nil},
		{"devices/d1/telemetry", 1, nil},
		{"devices/d1/telemetry", 2, ErrBadQoS},
		{"", 0, ErrBadTopic},
		{"devices/+/telemetry", 0, ErrBadTopic},
		{"devices/#", 0, ErrBadTopic},
		{control.QueryTopic, 1, ErrBadTopic},
		{control.ControlTopic, 1, ErrBadTopic},
	} {
		if err := checkPublish(tc.topic, tc.qos); !errors.Is(err, tc.want) {
			t.Errorf("checkPublish(%q, %d) = %v, want %v", tc.topic, tc.qos, err, tc.want)
		}
	}
}

func TestLifecycleWithoutGateway(t *testing.T) {
	d, err := New(Config{ClientID: "d1", PlainAddr: "127.0.0.1:1", Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = d.Start(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Start = %v, want the deadline and the last attempt's error", err)
	}
	if d.Mode() != ModeOffline {
		t.Errorf("Mode = %s", d.Mode())
	}
	if err := d.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after a failed start = %v, want ErrStopped", err)
	}
	if err := d.Publish(context.Background(), "a/+", nil, 0); !errors.Is(err, ErrBadTopic) {
		t.Errorf("Publish to a wildcard = %v, want ErrBadTopic", err)
	}
	if err := d.PublishSensitive(context.Background(), "a/b", nil, 2); !errors.Is(err, ErrBadQoS) {
		t.Errorf("PublishSensitive QoS 2 = %v, want ErrBadQoS", err)
	}
	if err := d.Publish(context.Background(), "a/b", nil, 0); !errors.Is(err, ErrStopped) {
		t.Errorf("Publish after stop = %v, want ErrStopped", err)
	}
	if err := d.PublishSensitive(context.Background(), "a/b", nil, 0); !errors.Is(err, ErrStopped) {
		t.Errorf("PublishSensitive after stop = %v, want ErrStopped", err)
	}
	d.Stop() // twice is fine

	never, err := New(Config{ClientID: "d2", PlainAddr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := never.PublishSensitive(context.Background(), "a/b", nil, 0); !errors.Is(err, ErrNoTLSEndpoint) {
		t.Errorf("PublishSensitive without a TLS endpoint = %v, want ErrNoTLSEndpoint", err)
	}
	never.Stop() // before Start
	if err := never.Start(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("Start after Stop = %v, want ErrStopped", err)
	}
}

func TestEventKindString(t *testing.T) {
	for k, want := range map[EventKind]string{
		EventConnected:        "connected",
		EventConnectFailed:    "connect-failed",
		EventConnectionLost:   "connection-lost",
		EventInstruction:      "instruction",
		EventDowngradeIgnored: "downgrade-ignored",
		EventBadInstruction:   "bad-instruction",
		EventSubscribeFailed:  "subscribe-failed",
		EventQueryFailed:      "query-failed",
		EventKind(99):         "EventKind(99)",
	} {
		if got := k.String(); got != want {
			t.Errorf("%d: %q, want %q", int(k), got, want)
		}
	}
}
