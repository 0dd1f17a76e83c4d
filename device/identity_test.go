package device_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
	"github.com/dualgate/dualgate/internal/control"
)

// clientProven is the gateway's word on whether the device's TLS session
// proved its client id (nil: not on TLS).
func clientProven(t *testing.T, g interface{ APIAddr() string }, id string) *bool {
	t.Helper()
	resp, err := http.Get("http://" + g.APIAddr() + "/v1/clients/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Proven *bool `json:"proven"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Proven
}

// The SDK presents Config.CertFile on TLS: under the gateway's default
// --secure-identity cert the device's TLS session is proven and gets its
// secure command. Without a certificate the same device moves to TLS when
// told, but the gateway writes nothing secure to it.
func TestPresentsClientCertificate(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		g := startGateway(t, nil)

		id := fmt.Sprintf("cert-car-%d", version)
		rec := newRecorder()
		cfg := testConfig(t, g, id, version)
		rec.hook(&cfg)
		startDevice(t, cfg)
		cid := postCommand(t, g, id, commandTopic(id, "unlock"), "open", true)
		if c := rec.nextCommand(t); !c.OverTLS || string(c.Payload) != "open" {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")
		if p := clientProven(t, g, id); p == nil || !*p {
			t.Fatalf("proven %v with the certificate, want true", p)
		}

		bare := fmt.Sprintf("bare-car-%d", version)
		rec2 := newRecorder()
		cfg2 := testConfig(t, g, bare, version)
		cfg2.CertFile, cfg2.KeyFile = "", ""
		rec2.hook(&cfg2)
		d2 := startDevice(t, cfg2)
		cid2 := postCommand(t, g, bare, commandTopic(bare, "unlock"), "open", true)
		if mc := rec2.nextMode(t, 10*time.Second); mc != (modeChange{device.ModePlain, device.ModeTLS, control.ReasonSecureCommand}) {
			t.Fatalf("mode change %+v", mc)
		}
		eventually(t, 10*time.Second, func() bool { return d2.Mode() == device.ModeTLS && clientMode(g, bare) == "tls" },
			func() string { return "the device without a certificate did not reach TLS" })
		eventually(t, 10*time.Second, func() bool { return heldUnproven(t, g, cid2) },
			func() string { return "the command's history does not say it waits for a proven session" })
		if p := clientProven(t, g, bare); p == nil || *p {
			t.Fatalf("proven %v without a certificate, want false", p)
		}
		if st, err := commandStatus(g, cid2); err != nil || (st != "upgrading" && st != "pending") {
			t.Fatalf("command %q, %v; want it still waiting", st, err)
		}
		select {
		case c := <-rec2.cmds:
			t.Fatalf("the device without a certificate got %+v", c)
		default:
		}
	})
}

// heldUnproven reports whether a command's history (GET /v1/commands/{id})
// says it waits because the device's TLS session proved no client id.
func heldUnproven(t *testing.T, g *gateway.Gateway, cid string) bool {
	t.Helper()
	resp, err := http.Get("http://" + g.APIAddr() + "/v1/commands/" + cid)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		History []struct {
			Note string `json:"note"`
		} `json:"history"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	for _, h := range out.History {
		if strings.Contains(h.Note, "did not prove client id") {
			return true
		}
	}
	return false
}
