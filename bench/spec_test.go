package bench

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTLSSpecConfig(t *testing.T) {
	files := testCerts(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    TLSSpec
		addr    string
		wantErr bool
		check   func(*tls.Config) bool
	}{
		{
			name: "server name from the address",
			spec: TLSSpec{},
			addr: "gw.example.com:8883",
			check: func(c *tls.Config) bool {
				return c.ServerName == "gw.example.com" && c.RootCAs == nil && c.ClientSessionCache == nil
			},
		},
		{
			name: "explicit SNI, CA, resumption, TLS 1.3",
			spec: TLSSpec{ServerName: "gw", CAFile: files.caFile, Resume: true, Version: "1.3"},
			addr: "127.0.0.1:8883",
			check: func(c *tls.Config) bool {
				return c.ServerName == "gw" && c.RootCAs != nil && c.ClientSessionCache != nil && c.MinVersion == tls.VersionTLS13 && c.MaxVersion == tls.VersionTLS13
			},
		},
		{
			name: "client certificate, TLS 1.2, insecure",
			spec: TLSSpec{CertFile: files.certFile, KeyFile: files.keyFile, Version: "1.2", Insecure: true},
			addr: "127.0.0.1:8883",
			check: func(c *tls.Config) bool {
				return len(c.Certificates) == 1 && c.MaxVersion == tls.VersionTLS12 && c.InsecureSkipVerify
			},
		},
		{name: "TLS 1.1", spec: TLSSpec{Version: "1.1"}, addr: "a:1", wantErr: true},
		{name: "missing CA file", spec: TLSSpec{CAFile: "/nonexistent/ca.pem"}, addr: "a:1", wantErr: true},
		{name: "CA file without certificate", spec: TLSSpec{CAFile: garbage}, addr: "a:1", wantErr: true},
		{name: "key without certificate", spec: TLSSpec{KeyFile: files.keyFile}, addr: "a:1", wantErr: true},
		{name: "address without port", spec: TLSSpec{}, addr: "a", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.spec.Config(tt.addr)
			if tt.wantErr {
				if err == nil {
					t.Fatal("want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config = %+v", c)
			}
		})
	}
}

func TestClientSpec(t *testing.T) {
	tests := []struct {
		name    string
		spec    ClientSpec
		wantErr bool
	}{
		{name: "plain", spec: ClientSpec{Addr: "127.0.0.1:1883", MQTTVersion: 5, KeepAlive: time.Minute, SourceAddrs: []string{"127.0.0.2"}}},
		{name: "no address", spec: ClientSpec{}, wantErr: true},
		{name: "no port", spec: ClientSpec{Addr: "127.0.0.1"}, wantErr: true},
		{name: "MQTT 6", spec: ClientSpec{Addr: "127.0.0.1:1", MQTTVersion: 6}, wantErr: true},
		{name: "MQTT 300", spec: ClientSpec{Addr: "127.0.0.1:1", MQTTVersion: 300}, wantErr: true},
		{name: "bad source address", spec: ClientSpec{Addr: "127.0.0.1:1", SourceAddrs: []string{"x"}}, wantErr: true},
		{name: "bad TLS", spec: ClientSpec{Addr: "127.0.0.1:1", TLS: &TLSSpec{Version: "2"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate = %v, want error %v", err, tt.wantErr)
			}
		})
	}
	if (ClientSpec{}).Transport() != "plain" || (ClientSpec{TLS: &TLSSpec{}}).Transport() != "tls" {
		t.Fatal("Transport")
	}
	cfg, err := ClientSpec{Addr: "127.0.0.1:1883", MQTTVersion: 5, SourceAddrs: []string{"127.0.0.2"}}.ClientConfig()
	if err != nil || cfg.MQTTVersion != 5 || len(cfg.SourceAddrs) != 1 || cfg.SourceAddrs[0].String() != "127.0.0.2" {
		t.Fatalf("ClientConfig = %+v, %v", cfg, err)
	}
}

// A worker's session pool hands each handshake a session of its own:
// dualgate takes a session once, so two handshakes must not share one.
func TestSessionPool(t *testing.T) {
	p := new(sessionPool)
	if _, ok := p.Get("a"); ok {
		t.Fatal("an empty pool gave a session")
	}
	s1, s2 := new(tls.ClientSessionState), new(tls.ClientSessionState)
	p.Put("a", s1)
	p.Put("a", s2)
	p.Put("a", nil) // crypto/tls dropping a refused session: nothing to do
	got := map[*tls.ClientSessionState]bool{}
	for range 2 {
		cs, ok := p.Get("a")
		if !ok || got[cs] {
			t.Fatalf("Get = %p, %v; already given: %v", cs, ok, got[cs])
		}
		got[cs] = true
	}
	if !got[s1] || !got[s2] {
		t.Fatal("the pool lost a session")
	}
	if _, ok := p.Get("a"); ok {
		t.Fatal("a session was given twice")
	}
	for range sessionPoolSize + 10 {
		p.Put("a", new(tls.ClientSessionState))
	}
	if n := len(p.ss); n != sessionPoolSize {
		t.Fatalf("%d sessions kept, bound %d", n, sessionPoolSize)
	}
}
