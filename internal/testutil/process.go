package testutil

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Process is a program a test runs beside it (a broker, a database): its
// output goes to a log file, it is waited for until it is ready, and it is
// signalled and stopped by its own PID only.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the program has exited
}

// StartProcess runs bin with args, its output appended to logFile, and
// waits (10 s at most) until ready reports nil. If the program exits first,
// or never gets ready, the test fails with the contents of logFile and of
// the other logs named.
func StartProcess(t testing.TB, logFile string, logs []string, ready func() error, bin string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatalf("%s log: %v", bin, err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = out.Close()
		close(p.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ready()
		if err == nil {
			return p
		}
		select {
		case <-p.done:
			text := ""
			for _, name := range append([]string{logFile}, logs...) {
				b, _ := os.ReadFile(name)
				text += "\n" + string(b)
			}
			t.Fatalf("%s exited at start:%s", bin, text)
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			t.Fatalf("%s is not ready after 10 s: %v", bin, err)
		}
		time.Sleep(10 * time.Millisecond) // polling readiness: the program tells nothing else
	}
}

// Signal sends sig to the program.
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill ends the program at once (SIGKILL), as a crash would, and waits for it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop ends the program gracefully (SIGTERM) and kills it if it has not
// left within 10 s.
func (p *Process) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}
