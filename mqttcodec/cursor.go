package mqttcodec

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"
)

// cursor reads a packet's content front to back. Every read is bounds-checked
// and reports failure instead of panicking; the values it returns are views
// into the packet.
type cursor struct {
	b       []byte
	version byte // the protocol level, for picking statement ids
}

func (c *cursor) empty() bool { return len(c.b) == 0 }

func (c *cursor) readByte(v *byte) bool {
	if len(c.b) < 1 {
		return false
	}
	*v = c.b[0]
	c.b = c.b[1:]
	return true
}

func (c *cursor) readUint16(v *uint16) bool {
	if len(c.b) < 2 {
		return false
	}
	*v = binary.BigEndian.Uint16(c.b)
	c.b = c.b[2:]
	return true
}

func (c *cursor) readUint32(v *uint32) bool {
	if len(c.b) < 4 {
		return false
	}
	*v = binary.BigEndian.Uint32(c.b)
	c.b = c.b[4:]
	return true
}

// readBytes takes the next n bytes.
func (c *cursor) readBytes(n int, v *[]byte) bool {
	if n < 0 || len(c.b) < n {
		return false
	}
	*v = c.b[:n:n]
	c.b = c.b[n:]
	return true
}

// readBinary reads Binary Data: a two-byte length and that many bytes.
func (c *cursor) readBinary(v *[]byte) bool {
	var n uint16
	return c.readUint16(&n) && c.readBytes(int(n), v)
}

// rest takes everything left.
func (c *cursor) rest() []byte {
	r := c.b
	c.b = nil
	return r
}

// readVarint reads a Variable Byte Integer.
func (c *cursor) readVarint(v *uint32) error {
	x, n, err := decodeVarint(c.b)
	if err != nil {
		return err
	}
	if n == 0 {
		return errTruncated("variable byte integer")
	}
	*v = x
	c.b = c.b[n:]
	return nil
}

// readString reads a UTF-8 Encoded String and checks it.
func (c *cursor) readString(v *[]byte, what string) error {
	if !c.readBinary(v) {
		return errTruncated(what)
	}
	return c.checkUTF8(*v, what)
}

// checkUTF8 checks the rules every UTF-8 Encoded String obeys: well-formed,
// no surrogates (utf8.Valid refuses them), no U+0000.
func (c *cursor) checkUTF8(s []byte, what string) error {
	if !utf8.Valid(s) { // [MQTT-1.5.4-1] / 3.1.1 [MQTT-1.5.3-1]
		return malformed(tag(c.version, "MQTT-1.5.3-1", "MQTT-1.5.4-1"), what+" is not well-formed UTF-8")
	}
	if bytes.IndexByte(s, 0) >= 0 { // [MQTT-1.5.4-2] / 3.1.1 [MQTT-1.5.3-2]
		return malformed(tag(c.version, "MQTT-1.5.3-2", "MQTT-1.5.4-2"), what+" contains U+0000")
	}
	return nil
}

func errTruncated(what string) error {
	return malformed(ruleTruncated, what+" runs past the end of the packet")
}

// decodeVarint decodes the Variable Byte Integer at the front of b. n == 0
// with a nil error means b ends inside it.
func decodeVarint(b []byte) (v uint32, n int, err error) {
	var shift uint
	for i := range 4 {
		if i >= len(b) {
			return 0, 0, nil
		}
		x := b[i]
		v |= uint32(x&0x7f) << shift
		if x&0x80 == 0 {
			// [MQTT-1.5.5-1] the fewest bytes: a last byte of 0 after a
			// continuation byte could have been left out.
			if i > 0 && x == 0 {
				return 0, 0, malformed("MQTT-1.5.5-1", "variable byte integer is not in its shortest form")
			}
			return v, i + 1, nil
		}
		shift += 7
	}
	return 0, 0, malformed(ruleVarint, "variable byte integer is longer than four bytes")
}

// VarintLen is the size of v written as a Variable Byte Integer (a
// remaining length, a properties length).
func VarintLen(v int) int { return varintLen(v) }

// varintLen is the encoded size of v as appendVarint writes it.
func varintLen(v int) int {
	switch {
	case v < 1<<7:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<21:
		return 3
	case v < 1<<28:
		return 4
	}
	return 5 // not a valid Variable Byte Integer; written as given
}

func appendVarint(dst []byte, v int) []byte {
	for v >= 0x80 {
		dst = append(dst, byte(v)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// appendBinary writes a two-byte length and b (UTF-8 Encoded String or
// Binary Data).
func appendBinary[S ~string | ~[]byte](dst []byte, b S) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...)
}
