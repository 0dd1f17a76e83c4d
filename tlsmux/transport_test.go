package tlsmux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A connection given to Handoff is served over its detached Transport with
// no goroutine of the Server's: bytes lent one at a time or all at once,
// records cut anywhere, are all read, and what the client sent with its
// Finished (maybe read by the handshake) comes first.
func TestHandoffServesOverDetachedTransport(t *testing.T) {
	for _, chunk := range []int{1, 7, 64 << 10} {
		t.Run(fmt.Sprintf("chunks of %d bytes", chunk), func(t *testing.T) {
			pki := newPKI(t)
			s, addr := startServer(t, Config{
				TLS:     serverTLS(t, pki, TLSOptions{}),
				Handoff: echoHandoff(t, loopOpts{chunk: chunk}),
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
			msgs := []string{"first", "second", strings.Repeat("z", 40)}
			for _, msg := range msgs {
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
			}
			want := greeting + strings.Join(msgs, "")
			buf := make([]byte, len(want))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("read after %q: %v", buf, err)
			}
			if string(buf) != want {
				t.Fatalf("echo %q, want %q", buf, want)
			}
			if st := s.Stats(); st.HandshakesFull != 1 || st.HandshakesInFlight != 0 {
				t.Fatalf("stats %+v", st)
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
