package devwire

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
)

// A device's Close ends a connection whose peer has closed and has
// everything the device sent with a reset, which the peer sees as one
// (not the FIN it would acknowledge); a connection whose peer has not
// closed gets a FIN as before.
func TestCloseResetsOnlyAfterThePeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name      string
		peerFirst bool  // the peer shuts its side before the device closes
		want      error // what the peer's next read returns
	}{
		{"peer still open: FIN", false, io.EOF},
		{"peer closed: reset", true, syscall.ECONNRESET},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			peer, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			if _, err := dev.Write([]byte("PUBACK")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peer, make([]byte, 6)); err != nil {
				t.Fatal(err)
			}
			if tc.peerFirst {
				// The gateway's instruction and FIN; the device reads
				// both. The gateway shuts its side and, unlike the
				// gateway, keeps reading, to see how the device ends.
				if _, err := peer.Write([]byte("DISCONNECT")); err != nil {
					t.Fatal(err)
				}
				if err := peer.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if b, err := io.ReadAll(dev); err != nil || string(b) != "DISCONNECT" {
					t.Fatalf("device read %q, %v", b, err)
				}
			}
			if got := PeerDone(dev.(*net.TCPConn)); got != tc.peerFirst {
				t.Fatalf("PeerDone = %v, want %v", got, tc.peerFirst)
			}
			if err := Close(dev); err != nil {
				t.Fatal(err)
			}
			n, err := peer.Read(make([]byte, 1))
			if n != 0 || !errors.Is(err, tc.want) {
				t.Fatalf("the peer read %d bytes, %v; want %v", n, err, tc.want)
			}
		})
	}
}
