package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestRunWorkerInProcess(t *testing.T) {
	srv := newFakeServer(t, fakeAccept)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := RunWorker(context.Background(), inR, outW, zap.NewNop())
		_ = outW.CloseWithError(err)
		done <- err
	}()

	spec := WorkerSpec{
		Index: 3, First: 100, Count: 5,
		Client:        ClientSpec{Addr: srv.addr(), MQTTVersion: 5, ClientIDPrefix: "w-"},
		ProgressEvery: 20 * time.Millisecond,
	}
	line, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = inW.Write(append(line, '\n')) }()

	events := bufio.NewScanner(outR)
	next := func() WorkerEvent {
		t.Helper()
		if !events.Scan() {
			t.Fatalf("worker output ended: %v", events.Err())
		}
		var ev WorkerEvent
		if err := json.Unmarshal(events.Bytes(), &ev); err != nil {
			t.Fatalf("event %q: %v", events.Bytes(), err)
		}
		if ev.Worker != 3 {
			t.Fatalf("event from worker %d, want 3", ev.Worker)
		}
		return ev
	}
	var ev WorkerEvent
	for ev = next(); ev.Type == EventProgress; ev = next() {
	}
	if ev.Type != EventReady || ev.Stats.Connected != 5 || ev.Stats.Live != 5 {
		t.Fatalf("ready event = %+v", ev)
	}

	go func() {
		_, _ = io.WriteString(inW, StopCommand+"\n")
	}()
	for ev = next(); ev.Type == EventProgress; ev = next() {
	}
	if ev.Type != EventFinal || ev.Stats.Connected != 5 || ev.Stats.Live != 0 || ev.Stats.Dropped != 0 {
		t.Fatalf("final event = %+v", ev)
	}
	connack := NewLatency()
	if err := connack.MergeEncoded(ev.Connack); err != nil || connack.Count() != 5 {
		t.Fatalf("final CONNACK histogram: %d samples, %v", connack.Count(), err)
	}
	if ev.Handshake != "" {
		t.Fatal("plain worker sent a TLS handshake histogram")
	}
	if err := <-done; err != nil {
		t.Fatalf("RunWorker: %v", err)
	}
	_ = inW.Close()
	// Client ids follow the global index.
	if peers, _, _ := srv.snapshot(); len(peers) != 5 {
		t.Fatalf("server saw %d connections", len(peers))
	}
}

func TestRunWorkerBadSpec(t *testing.T) {
	tests := []struct {
		name  string
		input string
	}{
		{name: "not JSON", input: "hello\n"},
		{name: "bad MQTT version", input: `{"count":1,"client":{"addr":"127.0.0.1:1","mqtt_version":3}}` + "\n"},
		{name: "bad TLS version", input: `{"count":1,"client":{"addr":"127.0.0.1:1","tls":{"version":"1.1"}}}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := RunWorker(context.Background(), strings.NewReader(tt.input), &out, zap.NewNop())
			if err == nil {
				t.Fatal("want error")
			}
			var ev WorkerEvent
			if jerr := json.Unmarshal([]byte(out.String()), &ev); jerr != nil || ev.Type != EventError || ev.Error == "" {
				t.Fatalf("output %q: want one error event", out.String())
			}
		})
	}
	if err := RunWorker(context.Background(), strings.NewReader(""), io.Discard, nil); err == nil {
		t.Fatal("empty input: want error")
	}
}

func TestFleetWorkerThatDies(t *testing.T) {
	cfg := testFleet("127.0.0.1:1", 10, 2)
	cfg.WorkerCommand = []string{"/bin/false"}
	f, err := StartFleet(cfg, zap.NewNop())
	if err != nil {
		// Writing the spec may already fail on the closed pipe.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.WaitReady(ctx, nil); !errors.Is(err, ErrWorkerFailed) {
		t.Fatalf("WaitReady = %v, want ErrWorkerFailed", err)
	}
	if _, err := f.Stop(ctx); !errors.Is(err, ErrWorkerFailed) {
		t.Fatalf("Stop = %v, want ErrWorkerFailed (no final report)", err)
	}
}

func TestFleetConfigDefaults(t *testing.T) {
	base := func(count, workers, per int) FleetConfig {
		return FleetConfig{Client: ClientSpec{Addr: "127.0.0.1:1883"}, Count: count, Workers: workers, PerWorker: per, WorkerCommand: []string{"x"}}
	}
	tests := []struct {
		name        string
		cfg         FleetConfig
		wantErr     bool
		workers     int
		sourceAddrs int
	}{
		{name: "one worker", cfg: base(200, 0, 0), workers: 1},
		{name: "15,001 needs two", cfg: base(15001, 0, 0), workers: 2},
		{name: "explicit workers", cfg: base(200, 2, 0), workers: 2},
		{name: "more workers than connections", cfg: base(3, 8, 0), workers: 3},
		{name: "too few workers", cfg: base(40000, 2, 0), wantErr: true},
		{name: "50,000 spread over three source addresses", cfg: base(50000, 0, 0), workers: 4, sourceAddrs: 3},
		{name: "negative", cfg: base(-1, 0, 0), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults("127.0.0.1")
			if tt.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Workers != tt.workers || len(got.Client.SourceAddrs) != tt.sourceAddrs {
				t.Fatalf("workers %d, source addresses %v; want %d, %d", got.Workers, got.Client.SourceAddrs, tt.workers, tt.sourceAddrs)
			}
		})
	}
}
