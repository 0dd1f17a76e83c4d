package tlsmux

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// serveLikeALoop plays an event loop serving one handed-off connection: it
// reads the socket in chunks, lends each to the Transport, reads the
// tls.Conn until ErrWouldBlock, and echoes what it got, upper-cased.
// handedOff is what Handoff received.
type handedOff struct {
	c    *tls.Conn
	tr   *Transport
	sock net.Conn
	info ConnInfo
}

func serveLikeALoop(t *testing.T, h handedOff, chunk int, done chan<- string) {
	var got strings.Builder
	defer func() { done <- got.String() }()
	h.tr.SetWriter(h.sock)
	raw := make([]byte, chunk)
	plain := make([]byte, 64)
	lend := []byte(nil)
	for {
		// What the Transport holds from Detach comes first, with nothing
		// lent: the loop's first turn.
		h.tr.Lend(lend)
		for {
			n, err := h.c.Read(plain)
			got.Write(plain[:n])
			if n > 0 {
				if _, werr := h.c.Write(bytes.ToUpper(plain[:n])); werr != nil {
					t.Errorf("write: %v", werr)
					return
				}
			}
			if errors.Is(err, ErrWouldBlock) {
				break
			}
			if err != nil {
				return
			}
		}
		if left := h.tr.Unlend(); left != 0 {
			t.Errorf("%d lent bytes left unread", left)
			return
		}
		n, err := h.sock.Read(raw)
		if err != nil {
			h.tr.SetEOF()
			lend = nil
			if _, err := h.c.Read(plain); err == nil {
				t.Error("read after EOF succeeded")
			}
			return
		}
		lend = raw[:n]
	}
}

// A connection given to Handoff is served over its detached Transport with
// no goroutine of the Server's: bytes lent one at a time or all at once,
// records cut anywhere, are all read, and what the client sent with its
// Finished (read by the handshake) comes first.
func TestHandoffServesOverDetachedTransport(t *testing.T) {
	for _, chunk := range []int{1, 7, 64 << 10} {
		t.Run(fmt.Sprintf("chunks of %d bytes", chunk), func(t *testing.T) {
			pki := newPKI(t)
			handed := make(chan handedOff, 1)
			s, addr := startServer(t, Config{
				TLS: serverTLS(t, pki, TLSOptions{}),
				Handoff: func(c *tls.Conn, tr *Transport, info ConnInfo) {
					sock, err := tr.Detach()
					if err != nil {
						t.Errorf("detach: %v", err)
						return
					}
					if !tr.Detached() {
						t.Error("not detached")
					}
					_ = sock.SetReadDeadline(time.Time{}) // Detach left it in the past
					handed <- handedOff{c: c, tr: tr, sock: sock, info: info}
				},
			})
			ccfg := clientTLS(pki)
			ccfg.MinVersion = tls.VersionTLS13
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			c := tls.Client(nc, ccfg)
			_ = c.SetDeadline(time.Now().Add(testTimeout))
			if err := c.Handshake(); err != nil {
				t.Fatal(err)
			}
			// Written right after the client's Finished: the server's
			// handshake may read it along.
			if _, err := c.Write([]byte("first")); err != nil {
				t.Fatal(err)
			}
			var h handedOff
			select {
			case h = <-handed:
			case <-time.After(testTimeout):
				t.Fatal("no hand-off")
			}
			done := make(chan string, 1)
			go serveLikeALoop(t, h, chunk, done)
			for _, msg := range []string{"second", strings.Repeat("z", 40)} {
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
			}
			want := "FIRSTSECOND" + strings.Repeat("Z", 40)
			buf := make([]byte, len(want))
			for n := 0; n < len(buf); {
				m, err := c.Read(buf[n:])
				if err != nil {
					t.Fatalf("read after %q: %v", buf[:n], err)
				}
				n += m
			}
			if string(buf) != want {
				t.Fatalf("echo %q, want %q", buf, want)
			}
			_ = nc.Close()
			if got := <-done; got != strings.ToLower(want) {
				t.Fatalf("served %q", got)
			}
			_ = h.sock.Close()
			if st := s.Stats(); st.ActiveConns != 0 || st.HandshakesFull != 1 {
				t.Fatalf("stats %+v: a handed-off connection is not the Server's", st)
			}
		})
	}
}

// A detached Transport without bytes answers a temporary, timeout
// net.Error, which crypto/tls does not record.
func TestWouldBlockIsTemporary(t *testing.T) {
	tr := &Transport{}
	_, err := tr.Read(make([]byte, 1))
	var ne net.Error
	//lint:ignore SA1019 crypto/tls decides on Temporary, deprecated or not
	if !errors.As(err, &ne) || !ne.Timeout() || !ne.Temporary() {
		t.Fatalf("Read: %v, want a temporary timeout", err)
	}
	if _, err := tr.Write([]byte("x")); err == nil {
		t.Fatal("write without a writer succeeded")
	}
}

func TestHandlerAndHandoffExclusive(t *testing.T) {
	pki := newPKI(t)
	_, err := New(Config{TLS: serverTLS(t, pki, TLSOptions{}), Handler: echoHandler(nil),
		Handoff: func(*tls.Conn, *Transport, ConnInfo) {}})
	if err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("New: %v, want Handler and Handoff refused together", err)
	}
}
