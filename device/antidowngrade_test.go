package device_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dualgate/dualgate/device"
	"github.com/dualgate/dualgate/internal/control"
)

// instruct sends in the way the version carries instructions: a PUBLISH on
// the control topic (3.1.1) or DISCONNECT 0x9C (5, which also closes).
func instruct(fc *fakeConn, in control.Instruction) {
	fc.t.Helper()
	if fc.version == 5 {
		fc.disconnect5(control.ServerReference(in.Mode, in.Addr), in.Reason)
		return
	}
	fc.expectPuback(fc.publish(control.ControlTopic, in.Marshal()))
}

// An instruction to use plain that arrives over plain is reported, never
// obeyed: its address is not dialed, and the device stays on (3.1.1) or
// comes back to (5) the endpoint it was configured with.
func TestDowngradeOverPlainIgnored(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		fb := startFakeBroker(t, version)
		evil := startHoneypot(t)
		rec := newRecorder()
		cfg := device.Config{
			ClientID:      "victim",
			PlainAddr:     fb.addr(),
			Version:       version,
			Backoff:       device.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
			Subscriptions: []device.Subscription{{Filter: "devices/victim/config/#", QoS: 1}},
		}
		rec.hook(&cfg)
		d, err := device.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Stop)
		started := make(chan error, 1)
		go func() { started <- d.Start(context.Background()) }()
		fc := fb.next(5 * time.Second)
		if subs := fc.expectQuery(1); len(subs) != 1 || subs[0] != "devices/victim/config/#" {
			t.Fatalf("subscribed to %q after the query", subs)
		}
		if err := <-started; err != nil {
			t.Fatalf("Start: %v", err)
		}

		instruct(fc, control.Instruction{V: control.Version, Op: control.OpReconnect,
			Mode: control.ModePlain, Addr: evil.addr(), Reason: "trust-me"})
		ev := rec.waitEvent(t, device.EventDowngradeIgnored, 5*time.Second)
		if ev.Addr != evil.addr() || ev.Reason != "trust-me" || ev.Mode != device.ModePlain {
			t.Fatalf("event %+v", ev)
		}
		if version == 5 {
			// The fake server closed the connection: the device comes back
			// to its configured endpoint, after the backoff, subscribes
			// again and queries.
			fc = fb.next(5 * time.Second)
			if subs := fc.expectQuery(1); len(subs) != 1 {
				t.Fatalf("subscribed to %q after reconnecting", subs)
			}
		} else {
			fc.quiet(200 * time.Millisecond)
		}
		// The connection (3.1.1) or the new one (5) still carries commands.
		fc.expectPuback(fc.publish(commandTopic("victim", "ping"), []byte("ping")))
		if c := rec.nextCommand(t); c.Topic != commandTopic("victim", "ping") || c.OverTLS {
			t.Fatalf("command %+v", c)
		}
		if evil.dialed() != 0 {
			t.Fatalf("the device dialed the address of an instruction it must ignore")
		}
		if m := d.Mode(); m != device.ModePlain {
			t.Fatalf("Mode = %s", m)
		}
		select {
		case mc := <-rec.modes:
			t.Fatalf("mode changed: %+v", mc)
		default:
		}
	})
}

// Control messages that cannot be understood are reported and ignored;
// they never reach OnCommand.
func TestBadInstruction(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		fb := startFakeBroker(t, version)
		_, rec, fc := startOnFake(t, fb, device.Config{
			ClientID:  "d-bad",
			PlainAddr: fb.addr(),
			Version:   version,
			Backoff:   device.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		})

		if version == 5 {
			fc.disconnect5("", "no reference")
			rec.waitEvent(t, device.EventBadInstruction, 5*time.Second)
			fc = fb.next(5 * time.Second)
			fc.expectQuery(0)
		}
		// A control PUBLISH is understood on both versions.
		for _, payload := range []string{`not json`, `{"v":2,"op":"reconnect","mode":"tls","addr":"h:1"}`, `{"v":1,"op":"reboot"}`} {
			fc.expectPuback(fc.publish(control.ControlTopic, []byte(payload)))
			rec.waitEvent(t, device.EventBadInstruction, 5*time.Second)
		}
		// A TLS instruction with no usable address, on a device that knows
		// no TLS endpoint.
		fc.expectPuback(fc.publish(control.ControlTopic, []byte(`{"v":1,"op":"reconnect","mode":"tls","addr":""}`)))
		if ev := rec.waitEvent(t, device.EventBadInstruction, 5*time.Second); ev.Err == nil {
			t.Fatalf("event %+v without an error", ev)
		}
		// Other reserved topics are not commands either.
		fc.expectPuback(fc.publish(control.ReservedPrefix+"other", []byte("x")))
		fc.expectPuback(fc.publish(commandTopic("d-bad", "after"), []byte("x")))
		if c := rec.nextCommand(t); c.Topic != commandTopic("d-bad", "after") {
			t.Fatalf("OnCommand got %+v", c)
		}
		fc.quiet(100 * time.Millisecond)
	})
}

// An instruction without a usable address sends the device to its
// configured endpoint for the mode: here a real gateway's TLS listener,
// whose quiet period then sends it to the gateway's plain listener.
func TestInstructionWithoutAddress(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		g := startGateway(t, nil)
		id := "d-noaddr"
		fb, rec, fc := startOnFakePlain(t, g, id, version)

		instruct(fc, control.Instruction{V: control.Version, Op: control.OpReconnect, Mode: control.ModeTLS, Reason: "go-secure"})
		if version == 4 {
			fc.expectDisconnect()
		}
		if mc := rec.nextMode(t, 5*time.Second); mc != (modeChange{device.ModePlain, device.ModeTLS, "go-secure"}) {
			t.Fatalf("mode change %+v", mc)
		}
		if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Addr != fb.addr() {
			t.Fatalf("first connection event %+v", ev)
		}
		if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Mode != device.ModeTLS || ev.Addr != g.TLSAddr() {
			t.Fatalf("TLS connection event %+v", ev)
		}
		// The gateway's instruction names its own plain listener.
		if mc := rec.nextMode(t, 10*time.Second); mc != (modeChange{device.ModeTLS, device.ModePlain, control.ReasonSecureIdle}) {
			t.Fatalf("mode change %+v", mc)
		}
		if ev := rec.waitEvent(t, device.EventConnected, 5*time.Second); ev.Mode != device.ModePlain || ev.Addr != g.PlainAddr() {
			t.Fatalf("plain connection event %+v", ev)
		}
		eventually(t, 5*time.Second, func() bool { return clientMode(g, id) == "plain" },
			func() string { return "gateway sees the device " + clientMode(g, id) })
	})
}

// Stop ends the connection with a DISCONNECT, on both versions, also
// while PublishSensitive waits for a TLS connection that cannot come.
func TestStopDisconnects(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		fb := startFakeBroker(t, version)
		closed := startHoneypot(t) // accepts and hangs up: TLS never comes up
		d, err := device.New(device.Config{
			ClientID:  "d-stop",
			PlainAddr: fb.addr(),
			TLSAddr:   closed.addr(),
			Version:   version,
			Backoff:   device.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Stop)
		go func() { _ = d.Start(context.Background()) }()
		fc := fb.next(5 * time.Second)
		fc.expectQuery(0)

		// A sensitive publish takes the device off plain (cleanly) and
		// waits for TLS.
		sensitive := make(chan error, 1)
		go func() { sensitive <- d.PublishSensitive(context.Background(), "devices/d-stop/keys", []byte("k"), 1) }()
		fc.expectDisconnect()
		eventually(t, 5*time.Second, func() bool { return closed.dialed() > 1 },
			func() string { return "the device does not retry TLS" })
		d.Stop()
		if err := <-sensitive; !errors.Is(err, device.ErrStopped) {
			t.Fatalf("PublishSensitive after Stop = %v, want ErrStopped", err)
		}

		// A second device, stopped while connected.
		d2, err := device.New(device.Config{ClientID: "d-stop-2", PlainAddr: fb.addr(), Version: version})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = d2.Start(context.Background()) }()
		fc = fb.next(5 * time.Second)
		fc.expectQuery(0)
		// The query leaves with the CONNECT: stopped before its CONNACK,
		// the device would close without DISCONNECT.
		eventually(t, 5*time.Second, func() bool { return d2.Mode() == device.ModePlain },
			func() string { return "Mode " + string(d2.Mode()) })
		d2.Stop()
		fc.expectDisconnect()
		if m := d2.Mode(); m != device.ModeOffline {
			t.Fatalf("Mode after Stop = %s", m)
		}
	})
}

// A device that went for TLS by itself, for a sensitive publish that has
// given up, goes back to plain when TLS cannot be reached.
func TestSensitiveGivesUp(t *testing.T) {
	fb := startFakeBroker(t, 4)
	closed := startHoneypot(t)
	d, rec, fc := startOnFake(t, fb, device.Config{
		ClientID:  "d-giveup",
		PlainAddr: fb.addr(),
		TLSAddr:   closed.addr(),
		Backoff:   device.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := d.PublishSensitive(ctx, "devices/d-giveup/keys", []byte("k"), 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PublishSensitive = %v, want the deadline", err)
	}
	fc.expectDisconnect()
	if ev := rec.waitEvent(t, device.EventConnectFailed, 5*time.Second); ev.Mode != device.ModeTLS {
		t.Fatalf("failed attempt %+v", ev)
	}
	// Back on plain, where nothing was written but the usual.
	fc = fb.next(5 * time.Second)
	fc.expectQuery(0)
	eventually(t, 5*time.Second, func() bool { return d.Mode() == device.ModePlain },
		func() string { return "Mode " + string(d.Mode()) })
}

// A subscription the server refuses is reported; the device still queries
// and stays connected.
func TestSubscribeRefused(t *testing.T) {
	versions(t, func(t *testing.T, version byte) {
		fb := startFakeBroker(t, version)
		d, rec := startRecorded(t, device.Config{
			ClientID:      "d-sub",
			PlainAddr:     fb.addr(),
			Version:       version,
			Subscriptions: []device.Subscription{{Filter: "devices/d-sub/config", QoS: 1}},
		})
		fc := fb.next(5 * time.Second)
		fc.refuse = true
		fc.expectQuery(1)
		ev := rec.waitEvent(t, device.EventSubscribeFailed, 5*time.Second)
		if !errors.Is(ev.Err, device.ErrRefused) {
			t.Fatalf("event %+v, want ErrRefused", ev)
		}
		fc.quiet(100 * time.Millisecond)
		if m := d.Mode(); m != device.ModePlain {
			t.Fatalf("Mode = %s", m)
		}
	})
}
