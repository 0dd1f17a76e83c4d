package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Server is a server process started for a measurement.
type Server struct {
	cmd     *exec.Cmd
	command string
	done    chan struct{} // closed once the process has been reaped
	err     error         // exit status; read after done
}

// SpawnServer starts command through /bin/sh (so that quoting works) with
// exec, so the PID is the server's own. Its output goes to output (nil
// discards it). The server gets its own process group and SIGTERM if this
// process dies.
func SpawnServer(command string, output io.Writer) (*Server, error) {
	command = strings.TrimSpace(command)
	if command == "" {
		return nil, errors.New("bench: spawn: empty command")
	}
	cmd := exec.Command("/bin/sh", "-c", "exec "+command)
	cmd.Stdout, cmd.Stderr = output, output
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: spawn %q: %w", command, err)
	}
	s := &Server{cmd: cmd, command: command, done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Command is the command line the server was started with.
func (s *Server) Command() string { return s.command }

// Exited reports whether the server has exited, and its exit status.
func (s *Server) Exited() (bool, error) {
	select {
	case <-s.done:
		return true, s.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL. It reports an
// error only if the process could not be ended.
func (s *Server) Stop(grace time.Duration) error {
	return s.StopWith(syscall.SIGTERM, grace)
}

// StopWith is Stop with another first signal (dualgate drains its devices
// on SIGTERM and stops at once on SIGINT).
func (s *Server) StopWith(sig syscall.Signal, grace time.Duration) error {
	if exited, _ := s.Exited(); exited {
		return nil
	}
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("bench: stop server pid %d: %w", s.PID(), err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
	}
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("bench: kill server pid %d: %w", s.PID(), err)
	}
	<-s.done
	return nil
}

// WaitListening dials addr until it accepts a connection, the server exits
// (when s is not nil) or ctx ends.
func WaitListening(ctx context.Context, addr string, s *Server) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c.Close()
		}
		if s != nil {
			if exited, werr := s.Exited(); exited {
				if werr == nil {
					werr = errors.New("exit status 0")
				}
				return fmt.Errorf("bench: server %q exited before listening on %s: %w", s.command, addr, werr)
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("bench: %s not listening: %w (last: %w)", addr, ctx.Err(), err)
		}
	}
}
