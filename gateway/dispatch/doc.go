// Package dispatch is dualgate's on-demand TLS: it takes remote-control
// commands, keeps them durable, and gets each one to its device over the
// right transport.
//
// A command is secure unless it says otherwise. Secure commands are written
// to TLS connections only (session.CheckTransport enforces it where the
// bytes are encoded); for a device on plain TCP the dispatcher sends a
// reconnect instruction with mode tls and keeps the command pending until
// the device is back on TLS and queries. A TLS device with nothing secure
// pending or in flight for its quiet period is sent back to plain.
//
// # Work and ordering
//
// Session hooks run on event loops and must not block, and the store
// writes to disk. So every event is queued on one of a fixed set of
// workers, chosen by client id: a device's events are handled in order,
// different devices' in parallel, and store writes from concurrent workers
// share disk syncs. Submit returns once the command is stored; status
// writes run behind the worker (writeBehind), in order per device, and a
// device's next event waits for them. An event that would find no record
// and do nothing (an idle device's plain CONNECT, a disconnect with
// nothing in flight) is not queued when nothing of the device is queued
// or running (Dispatcher.skip): an idle fleet's reconnect storm costs the
// dispatcher a lookup per CONNECT.
//
// # The rules, per device
//
// Each tracked device is in one State (machine.go); rules.step is the only
// code that changes it, from an Event and the time it happened, and
// returns the Actions that Dispatcher.perform carries out. In outline:
//
//   - New command: on TLS, or not secure, deliver now. Secure for a plain
//     device: reconnect instruction (mode tls), status upgrading. Offline:
//     pending.
//   - A TLS session that proved the client id comes online, a query, or
//     (on TLS) a SUBSCRIBE: deliver what the transport allows, in
//     order; on plain with secure commands waiting, instruct.
//   - PUBACK: delivered; the next waiting command goes out.
//   - A command larger than the Maximum Packet Size the device declared
//     can never be written to it: failed (NoteTooLarge), and the next one
//     goes out.
//   - Connection lost with commands unacknowledged: back to pending, sent
//     again with DUP later.
//   - Loop protection: a device told to use TLS that keeps returning on
//     plain is told again after 2 s, 4 s, 8 s ... (at most MaxBackoff);
//     after MaxInstructions in a row it is reported and its secure commands
//     wait for it to come on TLS by itself.
//   - Quiet period (downgrade): from the later of the TLS CONNECT and the
//     last secure PUBACK. It is SecureIdle times 1 + the number of other
//     upgrades of the device within the last 10 x SecureIdle, at most 3 x
//     SecureIdle, so a device that needs TLS often stays on it longer.
//   - A device told to go plain that comes back on TLS twice in a row
//     (a client that cannot switch) is left on TLS.
//   - A TLS session that did not prove the client id (--secure-identity)
//     gets no secure command (its session refuses them, counted as
//     RefusedUnproven): they stay pending, with the reason once in
//     their history; the device is sent back to plain after the quiet
//     period, and its arrival counts as an ignored instruction.
//   - A session that ends with commands unacknowledged while a newer one
//     is live hands them to it at once; a command in flight on an older
//     session holds back those after it, so commands arrive in order.
//   - A device gone longer than DeviceRetention is forgotten, in any state.
//   - A device with nothing going on has no record at all: one whose
//     record is blank (rules.blank: idle, no instruction unanswered, no
//     TLS session, no upgrade the quiet period still counts, nothing to
//     retry) is dropped after every step, and by the ticker once its last
//     upgrade is out of the quiet period's window. A device not tracked is
//     in exactly the state of a new record, so dropping changes no
//     decision (TestSim runs every schedule both ways and compares).
//   - Cancel (DELETE /v1/commands/{id}) runs on the device's worker like
//     its events, after their status writes: a command written before it
//     is refused (ErrWritten), one cancelled is final in the store and
//     never written afterwards. A delivery whose session did not run the
//     writes within WaitSession writes nothing later, so that every write
//     is known to the worker before the next event. A cancel changes a
//     command, not the device: no event of the state machine; the device's
//     commands are looked at again (a device told to use TLS for a
//     command now cancelled is on its way to Idle by EvNothingWaiting).
//
// # Deterministic tests
//
// With Config.Executor the dispatcher runs no goroutine of its own: the
// caller runs its work and calls Tick, which is how the simulation in the
// tests drives it step by step from a seed.
package dispatch
