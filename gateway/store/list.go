package store

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"hash/fnv"
	"time"
)

// A List cursor is the position of the last command of a page: a version
// byte, its creation time as 8 bytes in time order (appendTimeKey), its
// id, and a 4-byte FNV-1a sum of what precedes, base64url without
// padding. The bbolt and Redis indexes sort by the same pair (time, id), so
// one cursor format serves every store; the sum tells a cursor from text
// that merely decodes.
const cursorVersion = 1

// cursorOf is the cursor after c.
func cursorOf(c *Command) string {
	return encodeCursor(listKey(c.CreatedAt, c.ID))
}

// encodeCursor makes the cursor of a position (time key, id).
func encodeCursor(pos []byte) string {
	b := make([]byte, 0, 1+len(pos)+4)
	b = append(b, cursorVersion)
	b = append(b, pos...)
	h := fnv.New32a()
	_, _ = h.Write(b)
	return base64.RawURLEncoding.EncodeToString(h.Sum(b))
}

// parseCursor returns the position (time key, id) a cursor holds; ok is
// false for the first page ("").
func parseCursor(cursor string) (pos []byte, ok bool, err error) {
	if cursor == "" {
		return nil, false, nil
	}
	bad := fmt.Errorf("%w: cursor %q was not made by this store", ErrInvalid, cursor)
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil || len(b) < 1+8+1+4 || len(b) > 1+8+MaxIDLen+4 || b[0] != cursorVersion {
		return nil, false, bad
	}
	body := b[:len(b)-4]
	h := fnv.New32a()
	_, _ = h.Write(body)
	if !bytes.Equal(h.Sum(nil), b[len(b)-4:]) {
		return nil, false, bad
	}
	return body[1:], true, nil
}

// checkLimit refuses a page size below 1.
func checkLimit(limit int) error {
	if limit < 1 {
		return fmt.Errorf("%w: list limit %d, want at least 1", ErrInvalid, limit)
	}
	return nil
}

// listKey is c's position in List's order as bytes: time key, id.
func listKey(created time.Time, id string) []byte {
	k := appendTimeKey(make([]byte, 0, 8+len(id)), created)
	return append(k, id...)
}

// before reports whether the command at key k comes after pos in List's
// order (newest first), that is, sorts below it.
func before(k, pos []byte) bool { return bytes.Compare(k, pos) < 0 }
