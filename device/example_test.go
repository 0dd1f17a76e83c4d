package device_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/gateway"
)

// A car waits on plain TCP; the back office sends it a secure command
// through the gateway's HTTP API; the car moves to TLS and gets it there.
func Example() {
	g, stopGateway := exampleGateway()
	defer stopGateway()

	// The car's certificate, from the gateway's development CA, as
	// `dualgate certs client --dir <data>/certs car-0042` issues it: on
	// TLS the car presents it to prove its client id, without which the
	// gateway writes no secure command to it (--secure-identity cert).
	dir := filepath.Dir(g.CAFile())
	if _, err := certs.IssueClients(dir, []string{"car-0042"}); err != nil {
		fmt.Println(err)
		return
	}
	certFile, keyFile := certs.ClientFiles(dir, "car-0042")

	commands := make(chan device.Command, 1)
	car, err := device.New(device.Config{
		ClientID:  "car-0042",
		PlainAddr: g.PlainAddr(),
		TLSAddr:   g.TLSAddr(),
		CAFile:    g.CAFile(), // the gateway's generated development CA
		CertFile:  certFile,
		KeyFile:   keyFile,
		OnCommand: func(c device.Command) { commands <- c },
		OnModeChange: func(from, to device.Mode, reason string) {
			fmt.Printf("moved from %s to %s: %s\n", from, to, reason)
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := car.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer car.Stop()
	fmt.Println("idle on", car.Mode())

	// The back office's side.
	resp, err := http.Post("http://"+g.APIAddr()+"/v1/clients/car-0042/commands", "application/json",
		strings.NewReader(`{"topic":"devices/car-0042/commands/unlock","payload":"open","secure":true}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()

	c := <-commands
	fmt.Printf("%s %q over TLS: %v\n", c.Topic, c.Payload, c.OverTLS)
	// Output:
	// idle on plain
	// moved from plain to tls: secure-command
	// devices/car-0042/commands/unlock "open" over TLS: true
}

// exampleGateway runs a gateway on loopback in a temporary data directory.
func exampleGateway() (*gateway.Gateway, func()) {
	dir, err := os.MkdirTemp("", "dualgate-example-")
	if err != nil {
		panic(err)
	}
	g, err := gateway.New(gateway.Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: dir},
		gateway.Options{Logger: zap.NewNop()})
	if err == nil {
		err = g.Start()
	}
	if err != nil {
		panic(err)
	}
	return g, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = g.Shutdown(ctx)
		_ = os.RemoveAll(dir)
	}
}
