package dispatch

import (
	"math"
	"time"

	"github.com/dualgate/dualgate/gateway/session"
)

// State is where one device stands in the on-demand protocol. Every device
// the dispatcher tracks is in exactly one state; step is the only code that
// changes it.
type State uint8

// The states of a device.
const (
	// StateIdle: on plain or offline, no instruction outstanding. A device
	// that arrived on TLS without proving its client id waits here for its
	// next instruction (tries > 0, not before nextInstruct).
	StateIdle State = iota
	// StateUpgrading: told to reconnect over TLS, not arrived yet. While it
	// returns on plain it is told again after a backoff.
	StateUpgrading
	// StateLoopProtected: ignored MaxInstructions instructions in a row. It
	// is told nothing more; its secure commands wait for it on TLS.
	StateLoopProtected
	// StateSecure: on TLS with its client id proven: secure commands are
	// delivered; after the quiet period it is told to go back to plain.
	StateSecure
	// StateUnproven: on TLS without a proven client id (--secure-identity):
	// secure commands wait; after the quiet period it is told to go back to
	// plain, and told to use TLS again only after a backoff.
	StateUnproven
	// StateDowngrading: told to go back to plain, not arrived on plain yet.
	StateDowngrading
	// StateTLSOnly: returned on TLS twice in a row when told to use plain;
	// left on TLS until it comes on plain by itself.
	StateTLSOnly
)

var stateNames = [...]string{
	StateIdle:          "idle",
	StateUpgrading:     "upgrading",
	StateLoopProtected: "loop-protected",
	StateSecure:        "secure",
	StateUnproven:      "unproven",
	StateDowngrading:   "downgrading",
	StateTLSOnly:       "tls-only",
}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Event is something that happened to a device, fed to step.
type Event uint8

// The events.
const (
	// EvOnlinePlain: a session on plain connected.
	EvOnlinePlain Event = iota
	// EvOnlineTLS: a TLS session with a proven client id connected.
	EvOnlineTLS
	// EvOnlineUnproven: a TLS session without a proven client id connected.
	EvOnlineUnproven
	// EvOffline: a session ended (its own, or an older one).
	EvOffline
	// EvSecureWaiting: the device is on plain and secure commands wait
	// for it (a new command, its query, a backoff that elapsed).
	EvSecureWaiting
	// EvInstructedTLS: the reconnect instruction with mode tls was sent.
	EvInstructedTLS
	// EvSecureAcked: the device acknowledged a secure command.
	EvSecureAcked
	// EvQuiet: the quiet period may be over; input.secureWaiting says
	// whether secure commands are pending or in flight.
	EvQuiet
	// EvInstructedPlain: the reconnect instruction with mode plain was sent.
	EvInstructedPlain
	// EvNothingWaiting: the device is on plain and no secure command waits
	// for it any more (delivered, expired): instructions start afresh.
	EvNothingWaiting
)

var eventNames = [...]string{
	EvOnlinePlain:     "online-plain",
	EvOnlineTLS:       "online-tls",
	EvOnlineUnproven:  "online-unproven",
	EvOffline:         "offline",
	EvSecureWaiting:   "secure-waiting",
	EvInstructedTLS:   "instructed-tls",
	EvSecureAcked:     "secure-acked",
	EvQuiet:           "quiet",
	EvInstructedPlain: "instructed-plain",
	EvNothingWaiting:  "nothing-waiting",
}

func (e Event) String() string {
	if int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "unknown"
}

// Action is what a transition asks the dispatcher to do; perform does it.
// Several may be set at once.
type Action uint8

// The actions.
const (
	// ActInstructTLS: send the reconnect instruction with mode tls, then
	// feed EvInstructedTLS.
	ActInstructTLS Action = 1 << iota
	// ActInstructPlain: send the reconnect instruction with mode plain
	// (over TLS), then feed EvInstructedPlain.
	ActInstructPlain
	// ActReportLoop: the device just tripped loop protection.
	ActReportLoop
	// ActCountUpgrade: the device arrived on TLS after an instruction.
	ActCountUpgrade
	// ActReportTLSOnly: the device was just found not to switch to plain.
	ActReportTLSOnly
	// ActNoteUnproven: its upgrading commands go back to pending with the
	// reason they wait (the TLS session did not prove the client id).
	ActNoteUnproven
)

// maxUpgrades bounds the upgrade times a device keeps: the quiet period
// counts at most three.
const maxUpgrades = 4

// device is the dispatcher's memory of one device. Its fields change only
// in step (state, counters, times) and in the worker that owns the device
// (dirty, retry); the API reads a copy under Dispatcher.mu. The zero
// record, seen now, is the state of every device not tracked: a record
// that says no more (blank) is not kept. A device on TLS keeps one while it
// is there, so it is small: the small fields first, in one word, times as
// stamps, and what few devices have (upgrade times, commands to retry)
// behind one pointer; 48 B a record, not 144 (TestDeviceRecordSize).
type device struct {
	state State
	// proven: its TLS session (tls) proved the client id.
	proven bool
	// dirty: a store operation for the device failed; the ticker looks at
	// its commands again (retry, below).
	dirty bool
	// ignoredPlain counts arrivals on TLS right after a plain instruction
	// (2 makes it tls-only: it never counts further).
	ignoredPlain uint8
	// tries counts TLS instructions not yet answered by an arrival on TLS
	// with a proven client id (at most MaxInstructions); nextInstruct is
	// the earliest next one.
	tries        int32
	nextInstruct stamp

	// tls is its live TLS session, if any.
	tls *session.Session
	// lastSecure is the later of the TLS CONNECT and the last secure
	// PUBACK: the quiet period runs from it.
	lastSecure stamp
	lastSeen   stamp

	// more is nil unless the device has upgrade times or commands to retry.
	more *more
}

// more is what few devices' records hold.
type more struct {
	// upgrades are the device's latest arrivals on TLS after an
	// instruction (at most maxUpgrades).
	upgrades []stamp
	// retry lists commands left in flight by a session that ended, whose
	// move back to pending failed.
	retry []string
}

// upgrades are the device's latest arrivals on TLS after an instruction.
func (dv *device) upgrades() []stamp {
	if dv.more == nil {
		return nil
	}
	return dv.more.upgrades
}

// retry lists the commands whose move back to pending failed.
func (dv *device) retry() []string {
	if dv.more == nil {
		return nil
	}
	return dv.more.retry
}

// setMore sets the upgrade times and the commands to retry; with neither,
// the record holds nothing more.
func (dv *device) setMore(upgrades []stamp, retry []string) {
	if len(upgrades) == 0 && len(retry) == 0 {
		dv.more = nil
		return
	}
	if dv.more == nil {
		dv.more = new(more)
	}
	dv.more.upgrades, dv.more.retry = upgrades, retry
}

// stamp is a time on the dispatcher's clock, as nanoseconds since
// rules.epoch plus one: 8 bytes in a record instead of a time.Time's 24,
// and 0 for never. Stamps of the same clock compare and subtract as the
// times do (the monotonic reading when the clock has one).
type stamp int64

// at is t's stamp.
func (r *rules) at(t time.Time) stamp { return stamp(t.Sub(r.epoch)) + 1 }

// time is s's time (the zero time for never).
func (r *rules) time(s stamp) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return r.epoch.Add(time.Duration(s - 1))
}

// since is how long before now s was; for never, longer than anything.
func since(now, s stamp) time.Duration {
	if s == 0 {
		return math.MaxInt64
	}
	return time.Duration(now - s)
}

// input is one event with what step needs to know about it.
type input struct {
	ev  Event
	now time.Time
	// s is the session of EvOnline* and EvOffline.
	s *session.Session
	// secureWaiting, for EvQuiet: secure commands are pending or in
	// flight for the device.
	secureWaiting bool
}

// rules are the settings step decides with.
type rules struct {
	// epoch is the origin of stamps: the dispatcher's clock when it was
	// made.
	epoch           time.Time
	secureIdle      time.Duration
	fixedQuiet      bool
	maxInstructions int
	instructBackoff time.Duration
	maxBackoff      time.Duration
	// retention is how long a device that is gone is remembered.
	retention time.Duration
}

// step is the transition function: it moves dv to its next state for in
// and returns the actions the dispatcher must perform. It does no I/O and
// reads no clock.
func (r *rules) step(dv *device, in input) Action {
	now := r.at(in.now)
	var act Action
	switch in.ev {
	case EvOnlinePlain:
		dv.lastSeen = now
		dv.tls, dv.proven = nil, false
		// A device on plain can switch: its arrivals on TLS against a
		// plain instruction are no longer in a row, whatever came
		// between (an offline spell from Secure leaves Idle).
		dv.ignoredPlain = 0
		switch dv.state {
		case StateDowngrading, StateTLSOnly, StateSecure, StateUnproven:
			// Back on plain as told, or by itself: whatever it did on
			// TLS is over.
			dv.state = StateIdle
		}
		// Idle, Upgrading and LoopProtected stay: the backoff and the
		// count of instructions carry on.

	case EvOnlineTLS, EvOnlineUnproven:
		proven := in.ev == EvOnlineTLS
		dv.lastSeen, dv.lastSecure = now, now
		dv.tls, dv.proven = in.s, proven
		if dv.state == StateUpgrading {
			act |= ActCountUpgrade
			ups := append(dv.upgrades(), now)
			if n := len(ups); n > maxUpgrades {
				ups = append(ups[:0], ups[n-maxUpgrades:]...)
			}
			dv.setMore(ups, dv.retry())
		}
		next := StateSecure
		switch {
		case dv.state == StateTLSOnly:
			next = StateTLSOnly
		case dv.state == StateDowngrading:
			dv.ignoredPlain++
			if dv.ignoredPlain >= 2 {
				next = StateTLSOnly
				act |= ActReportTLSOnly
			}
		}
		if proven {
			dv.tries, dv.nextInstruct = 0, 0
		} else {
			// Arriving on TLS without proof answers no instruction: it
			// counts as one ignored, and the next waits for the backoff.
			if dv.state == StateUpgrading {
				act |= ActNoteUnproven
			}
			if dv.tries > 0 {
				dv.nextInstruct = max(dv.nextInstruct, now+stamp(r.backoff(int(dv.tries))))
			}
			if next == StateSecure {
				next = StateUnproven
			}
		}
		dv.state = next

	case EvOffline:
		dv.lastSeen = now
		if in.s == nil || in.s != dv.tls {
			break // an older session, or a plain one: nothing changes
		}
		dv.tls, dv.proven = nil, false
		if dv.state == StateSecure || dv.state == StateUnproven {
			dv.state = StateIdle
		}
		// Downgrading waits for the device on plain; TLSOnly stays
		// until the device comes on plain by itself.

	case EvSecureWaiting:
		switch {
		case dv.state == StateLoopProtected:
		case now < dv.nextInstruct:
			// Backing off.
		case int(dv.tries) >= r.maxInstructions:
			dv.state = StateLoopProtected
			act |= ActReportLoop
		default:
			act |= ActInstructTLS
		}

	case EvInstructedTLS:
		dv.lastSeen = now
		dv.tries++
		dv.nextInstruct = now + stamp(r.backoff(int(dv.tries)))
		dv.state = StateUpgrading

	case EvSecureAcked:
		if dv.tls != nil {
			dv.lastSecure = now
		}

	case EvQuiet:
		if dv.tls == nil || !r.quietOver(dv, in.now) {
			break
		}
		switch dv.state {
		case StateSecure:
			if !in.secureWaiting {
				act |= ActInstructPlain
			}
		case StateUnproven:
			// Secure commands cannot reach it on this session: it
			// costs TLS for nothing, and is told TLS again only after
			// the backoff.
			act |= ActInstructPlain
		}

	case EvInstructedPlain:
		if dv.state == StateSecure || dv.state == StateUnproven {
			dv.state = StateDowngrading
		}

	case EvNothingWaiting:
		switch dv.state {
		case StateIdle, StateUpgrading, StateLoopProtected:
			// Loop protection and backoff are about commands that wait;
			// none does.
			dv.state, dv.tries, dv.nextInstruct = StateIdle, 0, 0
		}
	}
	return act
}

// quietOver reports whether dv's quiet period is over at now.
func (r *rules) quietOver(dv *device, now time.Time) bool {
	return since(r.at(now), dv.lastSecure) >= r.quietPeriod(dv.upgrades(), now)
}

// retryDue reports whether a device on plain or offline is due another
// TLS instruction (the ticker then looks at its commands).
func (r *rules) retryDue(dv *device, now time.Time) bool {
	return (dv.state == StateUpgrading || dv.state == StateIdle) && dv.tries > 0 &&
		r.at(now) >= dv.nextInstruct
}

// forgettable reports whether a device not online may be forgotten: gone
// past the retention, in whatever state, with nothing left to retry.
func (r *rules) forgettable(dv *device, now time.Time) bool {
	return dv.tls == nil && len(dv.retry()) == 0 && since(r.at(now), dv.lastSeen) > r.retention
}

// blank reports whether dv holds nothing the rules would decide
// differently with than with no record at all: a device that is not
// tracked is in exactly the state of a new record (step creates it so), so
// a blank record is dropped after every step, and an idle fleet, on plain
// or gone, costs the dispatcher nothing. Blank is Idle with no instruction
// unanswered (loop protection counts on tries), no TLS session, no arrival
// on TLS after a plain instruction to count, no upgrade the quiet period
// still counts, and nothing for the ticker to retry. What a record alone
// says beyond that (lastSeen) is what the API shows of a device: a blank
// one shows nothing worth its memory. Past the upgrades' window a record
// may become blank without an event: the ticker drops it then.
func (r *rules) blank(dv *device, now time.Time) bool {
	if dv.state != StateIdle || dv.tries != 0 || dv.nextInstruct != 0 ||
		dv.tls != nil || dv.proven || dv.ignoredPlain != 0 || dv.dirty || len(dv.retry()) != 0 {
		return false
	}
	return r.fixedQuiet || r.recentUpgrades(dv.upgrades(), now) == 0
}

// backoff is the wait after the n-th instruction before the next one.
func (r *rules) backoff(n int) time.Duration {
	b := r.instructBackoff
	for i := 1; i < n && b < r.maxBackoff; i++ {
		b *= 2
	}
	return min(b, r.maxBackoff)
}

// quietPeriod is how long a TLS device with nothing secure to do stays on
// TLS: secureIdle x (1 + its other upgrades within 10 x secureIdle), at
// most 3 x secureIdle.
func (r *rules) quietPeriod(upgrades []stamp, now time.Time) time.Duration {
	base := r.secureIdle
	if r.fixedQuiet {
		return base
	}
	k := max(r.recentUpgrades(upgrades, now)-1, 0) // not counting the upgrade that brought it here
	return base * time.Duration(min(1+k, 3))
}

// recentUpgrades counts the upgrades the quiet period counts at now: those
// within 10 x secureIdle. One older than that is never counted again.
func (r *rules) recentUpgrades(upgrades []stamp, now time.Time) int {
	recent, at := 0, r.at(now)
	for _, u := range upgrades {
		if since(at, u) <= 10*r.secureIdle {
			recent++
		}
	}
	return recent
}
