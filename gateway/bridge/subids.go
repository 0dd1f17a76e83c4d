package bridge

import (
	"encoding/binary"
	"sync"
)

// subIDReader follows the packets the broker sends on an MQTT 5
// connection, as paho reads them, and keeps the Subscription Identifiers
// of each PUBLISH: a PUBLISH may carry several [MQTT-3.3.4-3], and
// paho.golang's decoder keeps only the last one. It sees bytes only once
// paho read them, so a PUBLISH's entry is there before paho hands the
// message over.
type subIDReader struct {
	// Parser state, touched only by paho's reading goroutine.
	state  int
	typ    byte
	remain int // bytes of the current packet's body still to come
	vbi    int
	shift  uint
	body   []byte // the start of a PUBLISH body, until its properties are read
	need   bool   // still collecting body for the properties

	mu    sync.Mutex // guards fifo
	fifo  []publishIDs
	limit int
}

// publishIDs are the identifiers of one PUBLISH.
type publishIDs struct {
	topic string
	id    uint16
	ids   []int
}

const (
	parseHeader = iota
	parseLength
	parseBody
)

func newSubIDReader() *subIDReader { return &subIDReader{limit: 4096} }

// feed parses bytes read from the connection.
func (r *subIDReader) feed(p []byte) {
	for len(p) > 0 {
		switch r.state {
		case parseHeader:
			r.typ = p[0]
			r.vbi, r.shift = 0, 0
			r.state = parseLength
			p = p[1:]
		case parseLength:
			b := p[0]
			p = p[1:]
			r.vbi |= int(b&0x7f) << r.shift
			r.shift += 7
			if b&0x80 != 0 && r.shift < 28 {
				continue
			}
			r.remain = r.vbi
			r.body = r.body[:0]
			r.need = r.typ>>4 == 3 // PUBLISH
			r.state = parseBody
			if r.remain == 0 {
				r.state = parseHeader
			}
		case parseBody:
			n := min(len(p), r.remain)
			if r.need {
				r.body = append(r.body, p[:n]...)
				if r.parse(r.remain == n) {
					r.need = false
				}
			}
			p = p[n:]
			r.remain -= n
			if r.remain == 0 {
				r.state = parseHeader
			}
		}
	}
}

// parse tries to read the properties of the PUBLISH body collected so
// far; it reports true when done with it (read, or not readable).
func (r *subIDReader) parse(last bool) bool {
	b := r.body
	qos := (r.typ >> 1) & 3
	if len(b) < 2 {
		return last
	}
	tl := int(binary.BigEndian.Uint16(b))
	at := 2 + tl
	if len(b) < at {
		return last
	}
	var id uint16
	if qos > 0 {
		if len(b) < at+2 {
			return last
		}
		id = binary.BigEndian.Uint16(b[at:])
		at += 2
	}
	plen, n, ok := readVBI(b[at:])
	if !ok {
		return last
	}
	at += n
	if len(b) < at+plen {
		return last
	}
	ids := propsSubIDs(b[at : at+plen])
	if len(ids) > 1 {
		r.mu.Lock()
		if len(r.fifo) >= r.limit {
			r.fifo = r.fifo[1:]
		}
		r.fifo = append(r.fifo, publishIDs{topic: string(b[2 : 2+tl]), id: id, ids: ids})
		r.mu.Unlock()
	}
	return true
}

// take returns the identifiers recorded for a PUBLISH of topic and packet
// identifier id, if it carried more than one; entries before it are
// dropped (PUBLISH packets paho did not hand over, such as a QoS 2
// duplicate).
func (r *subIDReader) take(topic string, id uint16) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.fifo {
		if e.topic == topic && e.id == id {
			r.fifo = r.fifo[i+1:]
			return e.ids
		}
	}
	return nil
}

func readVBI(b []byte) (v, n int, ok bool) {
	var shift uint
	for n < len(b) && n < 4 {
		c := b[n]
		n++
		v |= int(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, n, true
		}
		shift += 7
	}
	return 0, 0, false
}

// propsSubIDs returns the Subscription Identifiers among a PUBLISH's
// properties (nil if they cannot be read).
func propsSubIDs(b []byte) []int {
	var ids []int
	str := func() bool {
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			return false
		}
		b = b[2+int(binary.BigEndian.Uint16(b)):]
		return true
	}
	for len(b) > 0 {
		p := b[0]
		b = b[1:]
		switch p {
		case 0x01: // payload format
			if len(b) < 1 {
				return nil
			}
			b = b[1:]
		case 0x02: // message expiry
			if len(b) < 4 {
				return nil
			}
			b = b[4:]
		case 0x23: // topic alias
			if len(b) < 2 {
				return nil
			}
			b = b[2:]
		case 0x03, 0x08, 0x09: // content type, response topic, correlation data
			if !str() {
				return nil
			}
		case 0x26: // user property: a key, then a value
			if !str() {
				return nil
			}
			if !str() {
				return nil
			}
		case 0x0B: // subscription identifier
			v, n, ok := readVBI(b)
			if !ok {
				return nil
			}
			ids = append(ids, v)
			b = b[n:]
		default:
			return nil
		}
	}
	return ids
}
