package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A plain listener that stops for good (here: its engine stopped from
// outside, as a fatal error would stop it) makes /healthz and /readyz fail
// at once and closes Failed, on which `dualgate serve` exits non-zero.
func TestStoppedListenerIsReported(t *testing.T) {
	g := startGateway(t, nil)
	var health map[string]string
	if code := getJSON(t, g, "/healthz", "", &health); code != http.StatusOK {
		t.Fatalf("healthz before: %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.plain.eng.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("Failed not closed after the plain listener stopped")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		health = nil
		if code := getJSON(t, g, path, "", &health); code != http.StatusServiceUnavailable ||
			health["status"] != "failed" || !strings.Contains(health["error"], "plain listener") {
			t.Fatalf("%s after the plain listener stopped: %d %v", path, code, health)
		}
	}
}
