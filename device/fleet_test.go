package device_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
)

// fleetSize devices, half on MQTT 3.1.1 and half on MQTT 5, each go
// through one upgrade for one secure command; started and commanded in
// batches of fleetBatch.
const (
	fleetSize  = 500
	fleetBatch = 50
)

func TestFleetUpgrade(t *testing.T) {
	g := startGateway(t, func(c *gateway.Config) { c.SecureIdle = time.Minute })
	start := time.Now()

	var mu sync.Mutex
	got := make(map[string]int) // commands by topic
	overPlain := 0
	arrived := make(chan struct{}, fleetSize)
	onCommand := func(c device.Command) {
		mu.Lock()
		got[c.Topic]++
		if !c.OverTLS {
			overPlain++
		}
		mu.Unlock()
		arrived <- struct{}{}
	}

	devices := make([]*device.Device, fleetSize)
	cids := make([]string, fleetSize)
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, d := range devices {
			if d != nil {
				wg.Go(d.Stop)
			}
		}
		wg.Wait()
	})
	for first := 0; first < fleetSize; first += fleetBatch {
		batch := min(fleetBatch, fleetSize-first)
		errs := make(chan error, batch)
		var wg sync.WaitGroup
		for i := first; i < first+batch; i++ {
			cfg := testConfig(t, g, fmt.Sprintf("fleet-%03d", i), byte(4+i%2))
			cfg.OnCommand = onCommand
			d, err := device.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			devices[i] = d
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := d.Start(ctx); err != nil {
					errs <- fmt.Errorf("%s: %w", cfg.ClientID, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i := first; i < first+batch; i++ {
			id := fmt.Sprintf("fleet-%03d", i)
			cids[i] = postCommand(t, g, id, commandTopic(id, "unlock"), "open-"+id, true)
		}
		for range batch {
			select {
			case <-arrived:
			case <-time.After(30 * time.Second):
				t.Fatalf("batch at %d: commands stopped arriving", first)
			}
		}
	}
	elapsed := time.Since(start)

	// A device's OnCommand runs before its PUBACK reaches the gateway:
	// the last commands may still be "sent" for a moment.
	for _, cid := range cids {
		waitStatus(t, g, cid, "delivered")
	}
	for i, d := range devices {
		if m := d.Mode(); m != device.ModeTLS {
			t.Errorf("fleet-%03d: Mode = %s, want tls", i, m)
		}
	}
	time.Sleep(settle)
	mu.Lock()
	defer mu.Unlock()
	if overPlain != 0 {
		t.Errorf("%d secure commands arrived over plain", overPlain)
	}
	for i := range fleetSize {
		id := fmt.Sprintf("fleet-%03d", i)
		if n := got[commandTopic(id, "unlock")]; n != 1 {
			t.Errorf("%s: unlock arrived %d times", id, n)
		}
	}
	t.Logf("%d devices connected on plain, upgraded to TLS and got their command in %s", fleetSize, elapsed.Round(time.Millisecond))
}
