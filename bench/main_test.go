package bench

import (
	"context"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// workerEnv, set to "1", makes the test binary act as a worker process:
// fleet tests start this binary as their workers.
const workerEnv = "BENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := RunWorker(context.Background(), os.Stdin, os.Stdout, zap.NewNop()); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m,
		// ants (under gnet) starts its default pool's housekeeping at
		// package initialisation; it lives as long as the process.
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreTopFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
	)
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
