package store

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The test binary re-executes itself as a child process that uses the store
// at the path in childPathEnv, in the mode named by childModeEnv. The child
// reports each step on stdout, one line at a time, after the step returned.
const (
	childModeEnv = "DUALGATE_STORE_TEST_CHILD"
	childPathEnv = "DUALGATE_STORE_TEST_PATH"

	// childHold puts one command, reports "locked", and keeps the file
	// open until its stdin closes.
	childHold = "hold"
	// childPutOne puts one command, reports "pending one", then waits to be
	// killed.
	childPutOne = "put-one"
	// childStream puts commands and moves some of them to sent and
	// delivered, reporting "<status> <id>" after each call, until killed.
	childStream = "stream"

	// childLife bounds how long a child lives if nobody kills it.
	childLife = 30 * time.Second
	// childStreamLen bounds the stream's puts.
	childStreamLen = 500
)

func runChild(mode, path string) int {
	if err := child(mode, path); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

func child(mode, path string) error {
	s, err := OpenBolt(path, Options{Limit: 1000, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer s.Close()
	report := func(format string, args ...any) error {
		_, err := fmt.Fprintf(os.Stdout, format+"\n", args...)
		return err
	}
	now := time.Now()
	switch mode {
	case childHold:
		if err := s.Put(newCmd("held", "holder", 0, 0)); err != nil {
			return err
		}
		if err := report("locked"); err != nil {
			return err
		}
		waitStdin()
		return nil
	case childPutOne:
		if err := s.Put(newCmd("one", "dev", 0, time.Hour)); err != nil {
			return err
		}
		if err := report("%s one", StatusPending); err != nil {
			return err
		}
	case childStream:
		for i := range childStreamLen {
			c := newCmd(fmt.Sprintf("cmd-%04d", i), fmt.Sprintf("dev-%d", i%7), time.Duration(i)*time.Millisecond, time.Hour)
			if err := s.Put(c); err != nil {
				return err
			}
			if err := report("%s %s", StatusPending, c.ID); err != nil {
				return err
			}
			for _, step := range []struct {
				every int
				to    Status
			}{{every: 3, to: StatusSent}, {every: 6, to: StatusDelivered}} {
				if i%step.every != 0 {
					break
				}
				if _, err := s.Transition(c.ID, step.to, now, "child"); err != nil {
					return err
				}
				if err := report("%s %s", step.to, c.ID); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	waitStdin()
	return fmt.Errorf("mode %s: not killed within %s", mode, childLife)
}

// waitStdin returns when stdin closes, or after childLife.
func waitStdin() {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(childLife):
	}
}

// childProc is a running child, seen from the test.
type childProc struct {
	cmd    *exec.Cmd
	stdin  *os.File // the write end of the child's stdin
	lines  chan string
	read   chan struct{} // closed when the child's stdout is drained
	stderr bytes.Buffer
	waited bool
}

func startChild(t *testing.T, mode, path string) *childProc {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &childProc{
		stdin: inW,
		lines: make(chan string, 4*childStreamLen),
		read:  make(chan struct{}),
	}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), childModeEnv+"="+mode, childPathEnv+"="+path)
	c.cmd.Stdin = inR
	c.cmd.Stdout = outW
	c.cmd.Stderr = &c.stderr
	startErr := c.cmd.Start()
	_ = inR.Close()
	_ = outW.Close()
	if startErr != nil {
		_ = inW.Close()
		_ = outR.Close()
		t.Fatalf("start child: %v", startErr)
	}
	go func() {
		defer close(c.read)
		defer outR.Close()
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody will read this many lines
			}
		}
	}()
	t.Cleanup(func() {
		if !c.waited {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
		_ = c.stdin.Close()
		<-c.read
	})
	return c
}

// readLine returns the child's next report.
func (c *childProc) readLine(t *testing.T) string {
	t.Helper()
	select {
	case line := <-c.lines:
		return line
	case <-c.read:
		select {
		case line := <-c.lines:
			return line
		default:
		}
		err := c.cmd.Wait()
		c.waited = true
		t.Fatalf("child ended (%v) without reporting: %s", err, c.errors())
	case <-time.After(10 * time.Second):
		t.Fatalf("child did not report within 10s: %s", c.errors())
	}
	return ""
}

// kill sends SIGKILL and checks that the child died of it.
func (c *childProc) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	_ = c.cmd.Wait()
	c.waited = true
	ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed by SIGKILL but ended with %s: %s", c.cmd.ProcessState, c.errors())
	}
}

// release closes the child's stdin and waits for it to exit cleanly.
func (c *childProc) release(t *testing.T) {
	t.Helper()
	_ = c.stdin.Close()
	err := c.cmd.Wait()
	c.waited = true
	if err != nil {
		t.Fatalf("child: %v: %s", err, c.errors())
	}
}

func (c *childProc) errors() string {
	if c.waited {
		return c.stderr.String()
	}
	return "(still running)"
}
