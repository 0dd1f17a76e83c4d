package bridge

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/mqttcodec"
)

func TestTLSUpstream(t *testing.T) { bothProtocols(t, testTLSUpstream) }

func testTLSUpstream(t *testing.T) {
	pki, err := certs.NewTestPKI()
	if err != nil {
		t.Fatalf("NewTestPKI: %v", err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		return p
	}
	ca := write("ca.pem", pki.CAPEM)
	srv := write("server.pem", pki.ServerPEM)
	srvKey := write("server.key", pki.ServerKeyPEM)
	cliPEM, cliKeyPEM, err := pki.IssueClient("gateway")
	if err != nil {
		t.Fatalf("IssueClient: %v", err)
	}
	cli := write("client.pem", cliPEM)
	cliKey := write("client.key", cliKeyPEM)

	for _, tc := range []struct {
		name       string
		clientCert bool // the broker requires one
		trust      bool // the bridge is given the CA
		ready      bool
	}{
		{name: "server verified", trust: true, ready: true},
		{name: "client certificate", clientCert: true, trust: true, ready: true},
		{name: "unknown authority", trust: false, ready: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := startBroker(t, "cafile "+ca, "certfile "+srv, "keyfile "+srvKey,
				"require_certificate "+strconv.FormatBool(tc.clientCert))
			cfg := testConfig(t, "tls://127.0.0.1:"+strconv.Itoa(br.Port))
			if tc.trust {
				cfg.CAFile = ca
			}
			if tc.clientCert {
				cfg.CertFile, cfg.KeyFile = cli, cliKey
			}
			b := startBridge(t, cfg)
			if !tc.ready {
				time.Sleep(time.Second)
				if s := b.Stats(); b.Ready() || s.Connected != 0 {
					t.Fatalf("connected to a broker whose certificate it cannot verify: %+v", s)
				}
				return
			}
			waitReady(t, b)
			a := newAcks()
			publish(b, "car1", "devices/car1/t", "x", 1, a.fn(t, 0))
			a.waitN(t, 1, 10*time.Second)
			if rc, _ := a.get(0); rc != mqttcodec.Success {
				t.Fatalf("ack %v over TLS, want Success", rc)
			}
		})
	}
}
