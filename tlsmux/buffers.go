package tlsmux

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"reflect"
	"unsafe"
)

// A tls.Conn keeps its read buffers for as long as it lives, at the size of
// the largest record it has received and the largest handshake message it
// has parsed. After a handshake that is the ClientHello twice over (about
// 2 KB for a ClientHello without a post-quantum key share, 4 to 7 KB with
// Go's default X25519MLKEM768), and after a large PUBLISH it is that
// PUBLISH: memory an idle connection keeps that only its past needed.
// crypto/tls offers no way to give it back, so ReleaseBuffers resets the
// three fields concerned when they hold nothing unread. The fields are
// found by name and type when the package loads; if a Go release changes
// them, ReleaseBuffers does nothing (BuffersReleasable reports false, and
// the package's tests fail on it).
var connBuffers struct {
	ok                    bool
	rawInput, input, hand uintptr // offsets in tls.Conn
	// The client certificate a server-side tls.Conn keeps parsed for its
	// whole life (about 4 KiB for a P-256 device certificate), for
	// ConnectionState: see ReleasePeerCertificates.
	certsOK             bool
	peerCerts, verified uintptr
}

func init() {
	t := reflect.TypeFor[tls.Conn]()
	buf, rd := reflect.TypeFor[bytes.Buffer](), reflect.TypeFor[bytes.Reader]()
	offset := func(name string, typ reflect.Type) (uintptr, bool) {
		f, ok := t.FieldByName(name)
		return f.Offset, ok && f.Type == typ && len(f.Index) == 1
	}
	var ok1, ok2, ok3 bool
	connBuffers.rawInput, ok1 = offset("rawInput", buf)
	connBuffers.input, ok2 = offset("input", rd)
	connBuffers.hand, ok3 = offset("hand", buf)
	connBuffers.ok = ok1 && ok2 && ok3
	var ok4, ok5 bool
	connBuffers.peerCerts, ok4 = offset("peerCertificates", reflect.TypeFor[[]*x509.Certificate]())
	connBuffers.verified, ok5 = offset("verifiedChains", reflect.TypeFor[[][]*x509.Certificate]())
	connBuffers.certsOK = ok4 && ok5
}

// PeerCertificatesReleasable reports whether ReleasePeerCertificates works
// with this Go release's crypto/tls.
func PeerCertificatesReleasable() bool { return connBuffers.certsOK }

// ReleasePeerCertificates drops the parsed client certificate and its
// verified chains that c keeps after the handshake, once what it proves
// was read (ConnInfo.PeerIdentity); c.ConnectionState() then reports none.
// crypto/tls needs them only during the handshake, when it also puts them
// into the session tickets it sends, so a resumed session still knows
// them. Call it only before anyone else uses c after the handshake.
func ReleasePeerCertificates(c *tls.Conn) {
	if !connBuffers.certsOK {
		return
	}
	base := unsafe.Pointer(c)
	*(*[]*x509.Certificate)(unsafe.Add(base, connBuffers.peerCerts)) = nil
	*(*[][]*x509.Certificate)(unsafe.Add(base, connBuffers.verified)) = nil
}

// BuffersReleasable reports whether ReleaseBuffers works with this Go
// release's crypto/tls.
func BuffersReleasable() bool { return connBuffers.ok }

// keepReadBuffer is the read buffer capacity left alone: what crypto/tls
// allocates anyway to wait for the next record (a header plus
// bytes.MinRead, in a 576-byte size class), so that a connection that only
// ever sees small records does not reallocate it on every call.
const keepReadBuffer = 1024

// ReleaseBuffers drops c's read and handshake buffers if they hold no
// unread bytes, and reports how many bytes of capacity it let go. Call it
// only from the goroutine that reads c, between two Reads, after the
// handshake: those are the only times crypto/tls does not use the fields.
func ReleaseBuffers(c *tls.Conn) int {
	if !connBuffers.ok {
		return 0
	}
	base := unsafe.Pointer(c)
	raw := (*bytes.Buffer)(unsafe.Add(base, connBuffers.rawInput))
	input := (*bytes.Reader)(unsafe.Add(base, connBuffers.input))
	hand := (*bytes.Buffer)(unsafe.Add(base, connBuffers.hand))
	released := 0
	if raw.Len() == 0 && input.Len() == 0 && raw.Cap() > keepReadBuffer {
		// input reads from rawInput's array: both go, or the array stays.
		released += raw.Cap()
		*raw, *input = bytes.Buffer{}, bytes.Reader{}
	}
	if hand.Len() == 0 && hand.Cap() > 0 {
		released += hand.Cap()
		*hand = bytes.Buffer{}
	}
	return released
}
