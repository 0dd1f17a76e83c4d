package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Status is where a command stands in its delivery.
type Status string

// The statuses of a command. Delivered, expired, failed and cancelled are
// final.
const (
	// StatusPending: stored, waiting for the device (or for a transport it
	// may receive the command on).
	StatusPending Status = "pending"
	// StatusUpgrading: the device was told to reconnect over TLS.
	StatusUpgrading Status = "upgrading"
	// StatusSent: written to the device, waiting for its PUBACK.
	StatusSent Status = "sent"
	// StatusDelivered: the device acknowledged the command.
	StatusDelivered Status = "delivered"
	// StatusExpired: the TTL ran out before delivery.
	StatusExpired Status = "expired"
	// StatusFailed: the gateway gave up on the command.
	StatusFailed Status = "failed"
	// StatusCancelled: withdrawn (DELETE /v1/commands/{id}) before it was
	// written to the device; it is never written afterwards.
	StatusCancelled Status = "cancelled"
)

// Statuses returns every status, in the order of the state machine.
func Statuses() []Status {
	return []Status{StatusPending, StatusUpgrading, StatusSent, StatusDelivered, StatusExpired, StatusFailed, StatusCancelled}
}

// Valid reports whether s is one of the seven statuses.
func (s Status) Valid() bool {
	return statusCode(s) != 0
}

// Final reports whether s ends a command's life: delivered, expired,
// failed, cancelled.
func (s Status) Final() bool {
	return s == StatusDelivered || s == StatusExpired || s == StatusFailed || s == StatusCancelled
}

// CanMoveTo reports whether a command in status s may move to status to:
//
//	pending   -> upgrading, sent
//	upgrading -> pending, sent
//	sent      -> delivered, pending
//	pending, upgrading -> cancelled (never once written: sent is too late)
//	any non-final -> expired, failed
func (s Status) CanMoveTo(to Status) bool {
	if !s.Valid() || s.Final() {
		return false
	}
	switch to {
	case StatusExpired, StatusFailed:
		return true
	case StatusPending:
		return s == StatusUpgrading || s == StatusSent
	case StatusUpgrading:
		return s == StatusPending
	case StatusSent:
		return s == StatusPending || s == StatusUpgrading
	case StatusDelivered:
		return s == StatusSent
	case StatusCancelled:
		return s == StatusPending || s == StatusUpgrading
	}
	return false
}

// Transition is one step of a command's history.
type Transition struct {
	Status Status
	At     time.Time
	Note   string
}

// MaxHistory bounds Command.History: the first entry and the latest
// MaxHistory-1 are kept.
const MaxHistory = 64

// Limits on the text fields of a command, in bytes. A client id and an id
// together must fit a bbolt key (32 KiB).
const (
	MaxIDLen       = 128
	MaxClientIDLen = 16384
	MaxTopicLen    = 65535
	MaxOriginLen   = 128
)

// Command is a remote-control message for one device.
type Command struct {
	// ID is unique in the store; NewID makes one that sorts by creation.
	ID string
	// ClientID is the MQTT client id of the device the command is for.
	ClientID string
	// Topic is the topic the command is published on.
	Topic   string
	Payload []byte
	QoS     byte
	// Secure commands are written only to TLS connections.
	Secure bool

	CreatedAt time.Time
	// ExpiresAt is when the command expires; zero means never.
	ExpiresAt time.Time
	// DeliveredAt is set by the move to delivered.
	DeliveredAt time.Time

	Status Status
	// Attempts counts moves to sent; a retry goes out with DUP set.
	Attempts int
	History  []Transition

	// Origin names the message the command was taken from, for a source
	// that may hand the same message over again (the upstream broker
	// redelivers a message whose acknowledgement it did not get): the
	// source asks HasOrigin before taking a redelivery. Empty for API
	// commands. At most MaxOriginLen bytes.
	Origin string
}

// Clone returns a deep copy of c.
func (c *Command) Clone() *Command {
	d := *c
	d.Payload = bytes.Clone(c.Payload)
	if c.History != nil {
		d.History = append([]Transition(nil), c.History...)
	}
	return &d
}

// FinishedAt is the time of the move to a final status, or zero while the
// command is not final.
func (c *Command) FinishedAt() time.Time {
	if !c.Status.Final() || len(c.History) == 0 {
		return time.Time{}
	}
	return c.History[len(c.History)-1].At
}

// prepare checks c for Put, fills in the status and first history entry on c
// when they are missing, and returns the normalised copy to store.
func prepare(c *Command) (*Command, error) {
	switch {
	case c == nil:
		return nil, fmt.Errorf("%w: nil command", ErrInvalid)
	case c.ID == "" || len(c.ID) > MaxIDLen:
		return nil, fmt.Errorf("%w: id must be 1 to %d bytes, got %d", ErrInvalid, MaxIDLen, len(c.ID))
	case c.ClientID == "" || len(c.ClientID) > MaxClientIDLen:
		return nil, fmt.Errorf("%w: client id must be 1 to %d bytes, got %d", ErrInvalid, MaxClientIDLen, len(c.ClientID))
	case strings.IndexByte(c.ClientID, 0) >= 0:
		return nil, fmt.Errorf("%w: client id %q holds a NUL byte", ErrInvalid, c.ClientID)
	case c.Topic == "" || len(c.Topic) > MaxTopicLen:
		return nil, fmt.Errorf("%w: topic must be 1 to %d bytes, got %d", ErrInvalid, MaxTopicLen, len(c.Topic))
	case c.QoS > 2:
		return nil, fmt.Errorf("%w: qos %d", ErrInvalid, c.QoS)
	case len(c.Origin) > MaxOriginLen || strings.IndexByte(c.Origin, 0) >= 0:
		return nil, fmt.Errorf("%w: origin must be at most %d bytes without NUL", ErrInvalid, MaxOriginLen)
	case c.Attempts < 0:
		return nil, fmt.Errorf("%w: attempts %d", ErrInvalid, c.Attempts)
	case c.CreatedAt.IsZero():
		return nil, fmt.Errorf("%w: no creation time", ErrInvalid)
	case c.Status != "" && !c.Status.Valid():
		return nil, fmt.Errorf("%w: unknown status %q", ErrInvalid, c.Status)
	case c.Status.Final():
		return nil, fmt.Errorf("%w: cannot put a command in final status %q", ErrInvalid, c.Status)
	}
	for _, t := range []time.Time{c.CreatedAt, c.ExpiresAt, c.DeliveredAt} {
		if !storable(t) {
			return nil, fmt.Errorf("%w: time %s out of range", ErrInvalid, t)
		}
	}
	for _, h := range c.History {
		if !h.Status.Valid() || !storable(h.At) {
			return nil, fmt.Errorf("%w: history entry %q at %s", ErrInvalid, h.Status, h.At)
		}
	}
	if c.Status == "" {
		c.Status = StatusPending
	}
	if len(c.History) == 0 {
		c.History = []Transition{{Status: c.Status, At: c.CreatedAt}}
	}
	d := c.Clone()
	normalise(d)
	trimHistory(d)
	return d, nil
}

// move applies the transition to c, which is the store's own copy.
func move(c *Command, to Status, at time.Time, note string) error {
	if !c.Status.CanMoveTo(to) {
		return fmt.Errorf("%w: %s %s -> %s", ErrBadTransition, c.ID, c.Status, to)
	}
	if at.IsZero() || !storable(at) {
		return fmt.Errorf("%w: transition time %s", ErrInvalid, at)
	}
	at = normTime(at)
	c.Status = to
	c.History = append(c.History, Transition{Status: to, At: at, Note: note})
	trimHistory(c)
	switch to {
	case StatusSent:
		c.Attempts++
	case StatusDelivered:
		c.DeliveredAt = at
	}
	return nil
}

func trimHistory(c *Command) {
	if n := len(c.History); n > MaxHistory {
		keep := c.History[n-(MaxHistory-1):]
		c.History = append(c.History[:1], keep...)
	}
}

// normalise makes a stored command compare equal to its decoded record:
// times in UTC without a monotonic reading, empty slices nil.
func normalise(c *Command) {
	c.CreatedAt = normTime(c.CreatedAt)
	c.ExpiresAt = normTime(c.ExpiresAt)
	c.DeliveredAt = normTime(c.DeliveredAt)
	if len(c.Payload) == 0 {
		c.Payload = nil
	}
	for i := range c.History {
		c.History[i].At = normTime(c.History[i].At)
	}
}

func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

// storable reports whether t survives the round trip through Unix
// nanoseconds (years 1678 to 2262), or is zero.
func storable(t time.Time) bool {
	return t.IsZero() || time.Unix(0, t.UnixNano()).Equal(t)
}

// idAlphabet is base32hex in lower case: its order is the byte order, so IDs
// of equal length sort like the bytes they encode.
const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

// IDLen is the length of an ID made by NewID.
const IDLen = 26

// NewID returns a new command id: 48 bits of Unix milliseconds of now
// followed by 80 random bits, as 26 lower-case base32hex characters. IDs sort
// by creation to the millisecond.
func NewID(now time.Time) string {
	var b [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(now.UnixMilli()))
	copy(b[:6], ms[2:])
	_, _ = rand.Read(b[6:]) // never fails: crypto/rand crashes the program instead
	var out [IDLen]byte
	for i := range out {
		bit := i * 5
		k := bit / 8
		w := uint16(b[k]) << 8
		if k+1 < len(b) {
			w |= uint16(b[k+1])
		}
		out[i] = idAlphabet[(w>>(11-bit%8))&0x1f]
	}
	return string(out[:])
}
