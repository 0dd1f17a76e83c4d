package device_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
)

// The acknowledgement of a command waits for OnCommand: while it runs the
// gateway has the command sent, not delivered. A reply published from
// inside OnCommand goes out too.
func TestAckAfterOnCommand(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		g := startGateway(t, nil)
		id := fmt.Sprintf("lock-%d", version)

		obs := newRecorder()
		ocfg := testConfig(t, g, id+"-backoffice", version)
		ocfg.Subscriptions = []device.Subscription{{Filter: "devices/" + id + "/replies", QoS: 1}}
		obs.hook(&ocfg)
		startDevice(t, ocfg)

		inside, release := make(chan device.Command, 1), make(chan struct{})
		replyErr := make(chan error, 1)
		var d *device.Device
		cfg := testConfig(t, g, id, version)
		cfg.OnCommand = func(c device.Command) {
			inside <- c
			<-release
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			replyErr <- d.Publish(ctx, "devices/"+id+"/replies", []byte("done"), 1)
		}
		d = startDevice(t, cfg)

		cid := postCommand(t, g, id, commandTopic(id, "open"), "o", false)
		select {
		case <-inside:
		case <-time.After(10 * time.Second):
			t.Fatal("OnCommand not called")
		}
		waitStatus(t, g, cid, "sent")
		time.Sleep(settle)
		if s, err := commandStatus(g, cid); err != nil || s != "sent" {
			t.Fatalf("status while OnCommand runs: %q %v, want sent", s, err)
		}
		close(release)
		if err := <-replyErr; err != nil {
			t.Fatalf("Publish inside OnCommand: %v", err)
		}
		waitStatus(t, g, cid, "delivered")
		if c := obs.nextCommand(t); string(c.Payload) != "done" {
			t.Fatalf("reply %+v", c)
		}
	})
}

// With token authentication every CONNECT carries a new token: the
// gateway refuses a token it has seen, so the upgrade's second CONNECT
// proves it, and over TLS it takes only a token bound to the connection, so
// the command arriving over TLS proves the SDK binds it. A wrong secret, or
// none, is refused.
func TestTokenAuth(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	lines := "sedan-4 " + hex.EncodeToString(secret) + "\nsedan-5 " + hex.EncodeToString(secret) + "\n"
	if err := os.WriteFile(secrets, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, func(c *gateway.Config) { c.Auth, c.Secrets = "token", secrets })
	versions(t, func(t *testing.T, version byte) {
		id := fmt.Sprintf("sedan-%d", version)
		rec := newRecorder()
		cfg := testConfig(t, g, id, version)
		cfg.Secret = secret
		rec.hook(&cfg)
		startDevice(t, cfg)
		cid := postCommand(t, g, id, commandTopic(id, "start"), "s", true)
		if c := rec.nextCommand(t); !c.OverTLS {
			t.Fatalf("command %+v", c)
		}
		waitStatus(t, g, cid, "delivered")

		for _, tc := range []struct {
			name   string
			secret []byte
		}{
			{"wrong secret", []byte("fedcba9876543210fedcba9876543210")},
			{"no secret", nil},
		} {
			bad := testConfig(t, g, id, version)
			bad.Secret = tc.secret
			d, err := device.New(bad)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			err = d.Start(ctx)
			cancel()
			if err == nil || !strings.Contains(err.Error(), "MQTT connect") {
				t.Errorf("%s: Start = %v, want a refused CONNECT", tc.name, err)
			}
		}
	})
}
