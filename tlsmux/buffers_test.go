package tlsmux

import (
	"bytes"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"
)

// This Go release's crypto/tls still has the fields ReleaseBuffers resets.
// If this fails after a Go upgrade, find the new names of tls.Conn's read
// and handshake buffers and update connBuffers.
func TestBuffersReleasable(t *testing.T) {
	if !BuffersReleasable() {
		t.Fatal("crypto/tls.Conn no longer has rawInput, input and hand: idle TLS connections keep their handshake buffers")
	}
}

// bufferCaps reads the capacity of c's read and handshake buffers.
func bufferCaps(c *tls.Conn) int {
	base := unsafe.Pointer(c)
	return (*bytes.Buffer)(unsafe.Add(base, connBuffers.rawInput)).Cap() +
		(*bytes.Buffer)(unsafe.Add(base, connBuffers.hand)).Cap()
}

// An idle connection gives back what the handshake and large records left
// in its buffers, and goes on working: records that arrive afterwards, and
// several records waiting at once, are read in full and in order.
func TestReleaseBuffers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		x25519    bool
		handshake int // at least this much released after the handshake
	}{
		// The hybrid key share alone is 1,216 bytes, held twice.
		{name: "hybrid post-quantum ClientHello", handshake: 2400},
		{name: "X25519 ClientHello", x25519: true, handshake: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			var (
				afterHandshake, held atomic.Int64
				handedOver           atomic.Bool
			)
			_, addr := startServer(t, Config{
				TLS: serverTLS(t, pki, TLSOptions{X25519Only: tc.x25519}),
				Handoff: echoHandoff(t, loopOpts{idle: func(c *tls.Conn) {
					// Released before the greeting and before each echo
					// goes back: once the client has them, held is what
					// the idle connection keeps.
					n := ReleaseBuffers(c)
					if !handedOver.Swap(true) {
						afterHandshake.Store(int64(n))
					}
					held.Store(int64(bufferCaps(c)))
				}}),
			})
			c, err := dialTLS(t, addr, clientTLS(pki))
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			if n := afterHandshake.Load(); n < int64(tc.handshake) {
				t.Fatalf("released %d bytes after the handshake, want at least %d", n, tc.handshake)
			}
			if n := held.Load(); n != 0 {
				t.Fatalf("%d bytes of buffers held after the handshake", n)
			}
			for _, msg := range []string{
				"small",
				strings.Repeat("x", 12<<10), // several records, read in several Reads
				"after",
				strings.Repeat("y", 40<<10),
				"one" + strings.Repeat("-", 3000) + "two" + strings.Repeat("+", 3000) + "three",
				"last",
			} {
				echo(t, c, msg)
				if n := held.Load(); n > keepReadBuffer {
					t.Fatalf("after a %d-byte message the idle connection holds %d bytes of buffers", len(msg), n)
				}
			}
		})
	}
}

// This Go release's crypto/tls still has the fields ReleasePeerCertificates
// clears. If this fails after a Go upgrade, find the new names of
// tls.Conn's peer certificates and verified chains.
func TestPeerCertificatesReleasable(t *testing.T) {
	if !PeerCertificatesReleasable() {
		t.Fatal("crypto/tls.Conn no longer has peerCertificates and verifiedChains: idle TLS connections keep their device certificate")
	}
}

// After the handshake the connection is handed over with what the client
// certificate proves,
// and the connection no longer holds the certificate; a resumed session
// proves the same from its ticket.
func TestReleasePeerCertificates(t *testing.T) {
	pki := newPKI(t)
	caFile := t.TempDir() + "/clients-ca.pem"
	writeAtomic(t, caFile, pki.CAPEM)
	infos := make(chan ConnInfo, 2)
	var kept atomic.Int64 // certificates the connection holds once handed over
	_, addr := startServer(t, Config{
		TLS: serverTLS(t, pki, TLSOptions{ClientCAFile: caFile}),
		Handoff: echoHandoff(t, loopOpts{infos: infos, idle: func(c *tls.Conn) {
			kept.Store(int64(len(c.ConnectionState().PeerCertificates) + len(c.ConnectionState().VerifiedChains)))
		}}),
	})
	ccfg := resumingClientWithCert(t, pki, "car-7")
	for _, resumed := range []bool{false, true} {
		kept.Store(-1)
		c, err := dialTLS(t, addr, ccfg)
		if err != nil {
			t.Fatal(err)
		}
		info := recv(t, infos)
		if c.ConnectionState().DidResume != resumed {
			t.Fatalf("resumed %v, want %v", c.ConnectionState().DidResume, resumed)
		}
		// The greeting the client read came after the count was kept.
		certs := kept.Load()
		_ = c.Close()
		if strings.Join(info.PeerIdentity, ",") != "car-7" || certs != 0 {
			t.Fatalf("resumed %v: PeerIdentity %q and %d certificates kept; want car-7 and none", resumed, info.PeerIdentity, certs)
		}
	}
}
