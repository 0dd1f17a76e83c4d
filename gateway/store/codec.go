package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// recordVersion is the first byte of every record.
const recordVersion = 1

const (
	flagSecure = 1 << 0
	flagOrigin = 1 << 1 // the record ends with the origin
)

// statusCode is a status's byte in a record; 0 is no status.
func statusCode(s Status) byte {
	switch s {
	case StatusPending:
		return 1
	case StatusUpgrading:
		return 2
	case StatusSent:
		return 3
	case StatusDelivered:
		return 4
	case StatusExpired:
		return 5
	case StatusFailed:
		return 6
	case StatusCancelled:
		return 7
	}
	return 0
}

func statusOf(b byte) (Status, bool) {
	switch b {
	case 1:
		return StatusPending, true
	case 2:
		return StatusUpgrading, true
	case 3:
		return StatusSent, true
	case 4:
		return StatusDelivered, true
	case 5:
		return StatusExpired, true
	case 6:
		return StatusFailed, true
	case 7:
		return StatusCancelled, true
	}
	return "", false
}

// appendCommand appends the record of c to dst:
//
//	version      1 byte
//	id           uvarint length, bytes
//	client id    uvarint length, bytes
//	topic        uvarint length, bytes
//	payload      uvarint length, bytes
//	qos, flags   1 byte each (flag 0: secure; flag 1: origin follows history)
//	created, expires, delivered   time each
//	status       1 byte
//	attempts     uvarint
//	history      uvarint count, then per entry: status byte, time, note
//	origin       uvarint length, bytes; only with flag 1
//
// A time is 0x00 for the zero time, or 0x01 and 8 bytes of big-endian Unix
// nanoseconds.
func appendCommand(dst []byte, c *Command) []byte {
	dst = append(dst, recordVersion)
	dst = appendString(dst, c.ID)
	dst = appendString(dst, c.ClientID)
	dst = appendString(dst, c.Topic)
	dst = binary.AppendUvarint(dst, uint64(len(c.Payload)))
	dst = append(dst, c.Payload...)
	var flags byte
	if c.Secure {
		flags |= flagSecure
	}
	if c.Origin != "" {
		flags |= flagOrigin
	}
	dst = append(dst, c.QoS, flags)
	dst = appendTime(dst, c.CreatedAt)
	dst = appendTime(dst, c.ExpiresAt)
	dst = appendTime(dst, c.DeliveredAt)
	dst = append(dst, statusCode(c.Status))
	dst = binary.AppendUvarint(dst, uint64(c.Attempts))
	dst = binary.AppendUvarint(dst, uint64(len(c.History)))
	for _, h := range c.History {
		dst = append(dst, statusCode(h.Status))
		dst = appendTime(dst, h.At)
		dst = appendString(dst, h.Note)
	}
	if c.Origin != "" {
		dst = appendString(dst, c.Origin)
	}
	return dst
}

// recordSize is an upper bound of the length of c's record.
func recordSize(c *Command) int {
	n := 1 + 5*binary.MaxVarintLen64 + len(c.Origin) + len(c.ID) + len(c.ClientID) + len(c.Topic) + len(c.Payload) + 2 + 3*9 + 1 + 2*binary.MaxVarintLen64
	for _, h := range c.History {
		n += 1 + 9 + binary.MaxVarintLen64 + len(h.Note)
	}
	return n
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	return binary.BigEndian.AppendUint64(dst, uint64(t.UnixNano()))
}

// decodeCommand decodes a record. It copies everything it keeps: b may be
// bbolt's memory, valid only inside the transaction.
func decodeCommand(b []byte) (*Command, error) {
	r := reader{b: b}
	if v := r.byte(); r.err == nil && v != recordVersion {
		return nil, fmt.Errorf("%w: record version %d", ErrCorrupt, v)
	}
	c := &Command{
		ID:       r.string(),
		ClientID: r.string(),
		Topic:    r.string(),
	}
	if p := r.bytes(); len(p) > 0 {
		c.Payload = bytes.Clone(p)
	}
	c.QoS = r.byte()
	flags := r.byte()
	c.Secure = flags&flagSecure != 0
	c.CreatedAt = r.time()
	c.ExpiresAt = r.time()
	c.DeliveredAt = r.time()
	c.Status = r.status()
	c.Attempts = r.int()
	if n := r.int(); n > 0 {
		// Each entry takes at least 3 bytes: a corrupt count cannot make
		// us allocate more than the record's size.
		if n > len(r.b)/3 {
			return nil, fmt.Errorf("%w: %d history entries in %d bytes", ErrCorrupt, n, len(r.b))
		}
		c.History = make([]Transition, n)
		for i := range c.History {
			c.History[i] = Transition{Status: r.status(), At: r.time(), Note: r.string()}
		}
	}
	if flags&flagOrigin != 0 {
		c.Origin = r.string()
	}
	switch {
	case r.err != nil:
		return nil, r.err
	case len(r.b) != 0:
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	case flags&^(flagSecure|flagOrigin) != 0:
		return nil, fmt.Errorf("%w: flags %#x", ErrCorrupt, flags)
	}
	return c, nil
}

// reader is a bounds-checked cursor over a record. The first error sticks;
// after it every read returns a zero value.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail("short record")
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	// A canonical varint of more than one byte never ends in 0x00.
	if n <= 0 || (n > 1 && r.b[n-1] == 0) {
		r.fail("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) int() int {
	v := r.uvarint()
	if v > math.MaxInt32 {
		r.fail("number %d too large", v)
		return 0
	}
	return int(v)
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail("length %d beyond the %d bytes left", n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	return string(r.bytes())
}

func (r *reader) time() time.Time {
	switch r.byte() {
	case 0:
		return time.Time{}
	case 1:
		if len(r.b) < 8 {
			r.fail("short time")
			return time.Time{}
		}
		ns := int64(binary.BigEndian.Uint64(r.b))
		r.b = r.b[8:]
		return time.Unix(0, ns).UTC()
	default:
		r.fail("bad time marker")
		return time.Time{}
	}
}

func (r *reader) status() Status {
	b := r.byte()
	if r.err != nil {
		return ""
	}
	s, ok := statusOf(b)
	if !ok {
		r.fail("status %d", b)
	}
	return s
}

// Index keys.

// timeKey is t as 8 bytes whose byte order is time order.
func appendTimeKey(dst []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(t.UnixNano())^(1<<63))
}

// pendingKey is client id, 0x00, created, id.
func pendingKey(c *Command) []byte {
	k := make([]byte, 0, len(c.ClientID)+1+8+len(c.ID))
	k = append(k, c.ClientID...)
	k = append(k, 0)
	k = appendTimeKey(k, c.CreatedAt)
	return append(k, c.ID...)
}

// clientPrefix is the prefix of a client's keys in the pending index.
func clientPrefix(clientID string) []byte {
	k := make([]byte, 0, len(clientID)+1)
	k = append(k, clientID...)
	return append(k, 0)
}

// timeIDKey is t, id: the key of the expiry and finished indexes.
func timeIDKey(t time.Time, id string) []byte {
	k := make([]byte, 0, 8+len(id))
	k = appendTimeKey(k, t)
	return append(k, id...)
}
