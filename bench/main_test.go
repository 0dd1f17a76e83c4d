package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// workerEnv, set to "1", makes the test binary act as a worker process:
// fleet tests start this binary as their workers.
const workerEnv = "BENCH_TEST_WORKER"

// leakOptions are the goroutines that outlive every test by design.
func leakOptions() []goleak.Option {
	return []goleak.Option{
		// ants (under gnet) starts its default pool's housekeeping at
		// package initialisation; it lives as long as the process.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := RunWorker(context.Background(), os.Stdin, os.Stdout, zap.NewNop()); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	gatewayBuild.cleanup()
	if code == 0 {
		if err := goleak.Find(leakOptions()...); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testFleet returns a FleetConfig whose workers are this test binary.
func testFleet(addr string, count, workers int) FleetConfig {
	return FleetConfig{
		Client:        ClientSpec{Addr: addr, MQTTVersion: 4, KeepAlive: 0, ConnectTimeout: 10e9},
		Count:         count,
		Workers:       workers,
		WorkerCommand: []string{os.Args[0]},
		WorkerEnv:     append(os.Environ(), workerEnv+"=1"),
		WorkerStderr:  os.Stderr,
		ProgressEvery: 100e6,
	}
}

// builtGateway is the dualgate executable, built once for the whole test
// run from this module's ./cmd/dualgate (dualbench measures the gateway by
// PID, so it runs as its own process), or the one named by gatewayEnv.
type builtGateway struct {
	once sync.Once
	dir  string
	path string
	err  error
}

var gatewayBuild builtGateway

// gatewayEnv names a dualgate executable to use instead of building one.
const gatewayEnv = "DUALBENCH_TEST_DUALGATE"

func (b *builtGateway) build() (string, error) {
	b.once.Do(func() {
		if p := os.Getenv(gatewayEnv); p != "" {
			b.path = p
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			b.err = fmt.Errorf("go tool not found: %w", err)
			return
		}
		if b.dir, err = os.MkdirTemp("", "bench-dualgate-"); err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(b.dir, "dualgate")
		cmd := exec.Command(goBin, "build", "-o", b.path, "./cmd/dualgate")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/dualgate: %w\n%s", err, out)
		}
	})
	return b.path, b.err
}

func (b *builtGateway) cleanup() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
}

// dualgateBinary builds (once) and returns the dualgate executable.
func dualgateBinary(t *testing.T) string {
	t.Helper()
	p, err := gatewayBuild.build()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startDualgate starts a gateway for the test and stops it at the end.
func startDualgate(t *testing.T, cfg DualgateConfig) *Dualgate {
	t.Helper()
	cfg.Binary = dualgateBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := StartDualgate(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Stop(10 * time.Second); err != nil {
			t.Errorf("stop dualgate: %v", err)
		}
	})
	return g
}
