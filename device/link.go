package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/dualgate/dualgate/internal/control"
)

// ErrConnectionLost is returned for an operation cut short because the
// connection it used ended.
var ErrConnectionLost = errors.New("device: connection lost")

// ErrRefused is returned for a SUBSCRIBE or PUBLISH the gateway refused
// (a failure reason code): trying again does not help.
var ErrRefused = errors.New("device: refused by the gateway")

// link is one MQTT connection in one mode, on either client library. Its
// mode never changes: a secure payload is written only to a link whose
// mode is ModeTLS.
type link interface {
	mode() Mode
	addr() string
	publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	subscribe(ctx context.Context, subs []Subscription) error
	// close sends DISCONNECT (when the connection is still up) and waits
	// for the client's goroutines.
	close()
	// lost is closed when the connection has ended, for any reason.
	lost() <-chan struct{}
	lostErr() error
	// sessionPresent reports the CONNACK's Session Present: the gateway
	// kept the device's session, subscriptions included.
	sessionPresent() bool
	// instructions carries the reconnect instructions received on it.
	instructions() <-chan instruction
	// ready lets commands through to OnCommand: the Device calls it once
	// it has announced the connection (OnModeChange, EventConnected), so
	// a command delivered at once on a new connection is seen after them.
	ready()
}

// instruction is a reconnect instruction as received.
type instruction struct {
	mode    Mode
	addr    string // "" when the instruction named no usable address
	reason  string
	overTLS bool  // it arrived on a TLS connection
	err     error // the control message could not be understood
}

// linkState is what both link implementations share.
type linkState struct {
	m       Mode
	at      string
	present bool // CONNACK Session Present; set before the link is used
	instr   chan instruction
	// up is closed by ready; commands wait for it.
	up     chan struct{}
	upOnce sync.Once
	// life ends when the connection has ended, for any reason.
	life    context.Context
	endLife context.CancelFunc

	mu  sync.Mutex // guards why
	why error
}

func newLinkState(m Mode, addr string) linkState {
	life, end := context.WithCancel(context.Background())
	return linkState{m: m, at: addr, instr: make(chan instruction, 4), up: make(chan struct{}), life: life, endLife: end}
}

func (s *linkState) ready() { s.upOnce.Do(func() { close(s.up) }) }

// waitReady holds a command until the Device has announced the
// connection, or the connection has ended.
func (s *linkState) waitReady() {
	select {
	case <-s.up:
	case <-s.life.Done():
	}
}

func (s *linkState) mode() Mode                       { return s.m }
func (s *linkState) addr() string                     { return s.at }
func (s *linkState) sessionPresent() bool             { return s.present }
func (s *linkState) lost() <-chan struct{}            { return s.life.Done() }
func (s *linkState) instructions() <-chan instruction { return s.instr }

func (s *linkState) lostErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why
}

// markLost records that the connection ended; the first cause wins.
func (s *linkState) markLost(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.why != nil {
		return
	}
	if err == nil {
		err = ErrConnectionLost
	}
	s.why = err
	s.endLife()
}

// opContext is ctx, also cancelled when the connection ends.
func (s *linkState) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// failed wraps err from an operation: ErrConnectionLost when the
// connection ended under it.
func (s *linkState) failed(op string, err error) error {
	if s.life.Err() != nil && !errors.Is(err, ErrConnectionLost) {
		return fmt.Errorf("device: %s: %w: %w", op, ErrConnectionLost, err)
	}
	return fmt.Errorf("device: %s: %w", op, err)
}

// received queues an instruction for the Device's goroutine. It never
// blocks: a link leaves after the first instruction it obeys, so when four
// are waiting the rest do not matter.
func (s *linkState) received(in instruction) {
	in.overTLS = s.m == ModeTLS
	select {
	case s.instr <- in:
	default:
	}
}

// parseInstruction reads a 3.1.1 control message. An instruction whose only
// fault is its address is kept with addr "": the device then uses its
// configured endpoint for the mode.
func parseInstruction(b []byte) instruction {
	in, err := control.ParseInstruction(b)
	if err != nil {
		var loose control.Instruction
		if json.Unmarshal(b, &loose) != nil || loose.V != control.Version || loose.Op != control.OpReconnect ||
			(loose.Mode != control.ModePlain && loose.Mode != control.ModeTLS) {
			return instruction{err: err}
		}
		in = loose
	}
	out := instruction{mode: in.Mode, addr: in.Addr, reason: in.Reason}
	if !usableAddr(out.addr) {
		out.addr = ""
	}
	return out
}

// parseServerReference reads an MQTT 5 Server Reference the same way.
func parseServerReference(ref, reason string) instruction {
	m, addr, err := control.ParseServerReference(ref)
	if err != nil {
		// A reference naming a mode but no usable address still says where
		// to go: the configured endpoint of that mode.
		for _, mode := range []Mode{ModeTLS, ModePlain} {
			if strings.HasPrefix(ref, control.ServerReference(mode, "")) {
				return instruction{mode: mode, reason: reason}
			}
		}
		return instruction{err: fmt.Errorf("DISCONNECT 0x9C: %w", err)}
	}
	if !usableAddr(addr) {
		addr = ""
	}
	return instruction{mode: m, addr: addr, reason: reason}
}
