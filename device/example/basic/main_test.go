package main

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/gateway"

	"github.com/dualgate/dualgate/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The in-process gateway's gnet worker pool outlives a test.
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*goWorker).run.func1"),
	)
}

// The example device runs against a gateway, follows an upgrade for a
// secure command and the downgrade after the quiet period, on both MQTT
// versions, and ends when its context does.
func TestRunAgainstGateway(t *testing.T) {
	g, err := gateway.New(gateway.Config{
		Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0",
		Data: t.TempDir(), SecureIdle: time.Second,
	}, gateway.Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = g.Shutdown(ctx)
	})
	for _, version := range []string{"4", "5"} {
		t.Run("v"+version, func(t *testing.T) {
			id := "example-" + version
			// The device's certificate, as `dualgate certs client --dir
			// <data>/certs ID` issues it: version 4 finds it next to the CA
			// file, version 5 is given it.
			dir := filepath.Dir(g.CAFile())
			if _, err := certs.IssueClients(dir, []string{id}); err != nil {
				t.Fatal(err)
			}
			args := []string{"-id", id, "-plain", g.PlainAddr(), "-tls", g.TLSAddr(),
				"-ca", g.CAFile(), "-version", version, "-interval", "50ms", "-curves", "x25519"}
			if version == "5" {
				cert, key := certs.ClientFiles(dir, id)
				args = append(args, "-cert", cert, "-key", key)
			}
			var out, errs testutil.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, args, &out, &errs) }()
			waitFor(t, &out, "connected to "+g.PlainAddr()+" over plain")
			body := `{"topic":"devices/` + id + `/commands/unlock","payload":"open"}`
			resp, err := http.Post("http://"+g.APIAddr()+"/v1/clients/"+id+"/commands", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			waitFor(t, &out, "mode plain -> tls (secure-command)")
			waitFor(t, &out, "key exchange X25519)")
			waitFor(t, &out, `command devices/`+id+`/commands/unlock "open" over tls`)
			waitFor(t, &out, "mode tls -> plain (secure-idle)")
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("run: %v\n%s", err, errs.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatal("run did not end with its context")
			}
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-version", "3"},
		{"-curves", "p521"},
		{"-secret", "not-hex"},
		{"-nosuchflag"},
	} {
		var out, errs testutil.Buffer
		if err := run(context.Background(), args, &out, &errs); err == nil {
			t.Errorf("run %q: no error", args)
		}
	}
}

func waitFor(t *testing.T, out *testutil.Buffer, line string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), line) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output:\n%s", line, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
