package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dualgate/dualgate/gateway"
	"github.com/dualgate/dualgate/gateway/store"
)

const storeUsage = "usage: dualgate store check [--data DIR]"

// storeCmd runs `dualgate store check`: it reads the command store of a
// data directory without changing it and reports its health. Exit 0:
// healthy; 1: damaged, missing or locked by a running gateway; 2: usage.
func storeCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(stderr, storeUsage)
		return 2
	}
	fs := flag.NewFlagSet("store check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := gateway.Defaults().Data
	if env := os.Getenv("DUALGATE_DATA"); env != "" {
		def = env
	}
	data := fs.String("data", def, "data directory of the gateway (env DUALGATE_DATA)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dualgate store check: unexpected argument %q\n%s\n", fs.Arg(0), storeUsage)
		return 2
	}
	path := filepath.Join(*data, store.FileName)
	r, err := store.Check(path, store.Options{})
	switch {
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(stderr, "dualgate store check: no command store at %s (a gateway creates it at its first start)\n", path)
		return 1
	case err != nil:
		fmt.Fprintln(stderr, "dualgate store check:", err)
		return 1
	}
	fmt.Fprintf(stdout, "store:    %s\nsize:     %d bytes\n", r.Path, r.Size)
	if r.OK() {
		c := r.Counts
		fmt.Fprintf(stdout, "commands: %d pending, %d upgrading, %d sent, %d delivered, %d expired, %d failed, %d cancelled\n",
			c.Pending, c.Upgrading, c.Sent, c.Delivered, c.Expired, c.Failed, c.Cancelled)
		fmt.Fprintf(stdout, "devices:  %d with undelivered commands\nstatus:   ok\n", c.Clients)
		return 0
	}
	fmt.Fprintf(stdout, "status:   DAMAGED (problems found: %d)\n", r.Found)
	for _, p := range r.Problems {
		fmt.Fprintln(stdout, "  -", p)
	}
	if r.Found > len(r.Problems) {
		fmt.Fprintf(stdout, "  ... and %d more\n", r.Found-len(r.Problems))
	}
	fmt.Fprintf(stderr, "dualgate store check: %s is damaged; restore it from a backup (with the gateway stopped), "+
		"or move it aside to start with an empty store, losing the commands it held: mv %s %s.damaged\n", path, path, path)
	return 1
}
