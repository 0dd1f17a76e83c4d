package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/store"
)

// A gateway whose commands.db was cut to 8 KiB, or to 0 bytes, does not
// start: Start returns an error that names the file and what to do, and
// neither crashes (SIGBUS) nor takes the file for a new empty store.
func TestStartRefusesDamagedStore(t *testing.T) {
	data := t.TempDir()
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: data, EventLoops: 2}
	g := startGatewayOnce(t, cfg)
	for i := range 40 {
		postCommand(t, g, fmt.Sprintf("dev-%d", i%4),
			fmt.Sprintf(`{"topic":"devices/x/commands/c%d","payload":"%s"}`, i, strings.Repeat("p", 500)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(data, store.FileName)
	for _, tc := range []struct {
		size  int64
		want  error
		words []string
	}{
		{size: 8 << 10, want: store.ErrDamaged, words: []string{"cut short", "backup", "mv " + path}},
		{size: 0, want: store.ErrEmptyFile, words: []string{"0 bytes", "backup", "rm " + path}},
	} {
		if err := os.Truncate(path, tc.size); err != nil {
			t.Fatal(err)
		}
		g, err := New(cfg, Options{Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		err = g.Start()
		if err == nil {
			_ = g.Shutdown(ctx)
			t.Fatalf("started on a store cut to %d bytes", tc.size)
		}
		if !errors.Is(err, tc.want) {
			t.Fatalf("store cut to %d bytes: %v, want %v", tc.size, err, tc.want)
		}
		for _, w := range append([]string{path}, tc.words...) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != tc.size {
			t.Fatalf("the damaged file was changed: %v %v", fi, err)
		}
	}
}

// startGatewayOnce starts a gateway on cfg that the test shuts down itself.
func startGatewayOnce(t *testing.T, cfg Config) *Gateway {
	t.Helper()
	g, err := New(cfg, Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	return g
}
