package tlsmux

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// clientHello returns the first record a TLS client sends: its ClientHello.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12}).Handshake()
	}()
	rec, err := readRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// dialHello connects and sends a ClientHello, then nothing: the server
// takes a worker for it and waits for the client's next flight.
func dialHello(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(clientHello(t)); err != nil {
		t.Fatal(err)
	}
	return c
}

// Sockets that send nothing hold no handshake worker: with every worker's
// worth of them (and many more) open, a real client's handshake still runs
// at once instead of waiting in the queue until it is refused.
func TestIdleSocketsHoldNoWorker(t *testing.T) {
	pki := newPKI(t)
	s, addr := startServer(t, Config{
		TLS:                   serverTLS(t, pki, TLSOptions{}),
		MaxHandshakes:         2,
		HandshakeTimeout:      testTimeout,
		HandshakeQueueTimeout: testTimeout / 4,
		HelloTimeout:          testTimeout,
		MaxHelloPerSource:     -1,
		Handoff:               echoHandoff(t, loopOpts{}),
	})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			_ = c.Close()
		}
	}()
	for range 200 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	eventually(t, "the idle sockets to wait for their first record", func() bool { return s.Stats().HelloWaiting == 200 })
	c, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatalf("a real client behind 200 idle sockets: %v (stats %+v)", err, s.Stats())
	}
	_ = c.Close()
	if st := s.Stats(); st.HandshakesRefused != 0 || st.HandshakesFull != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// One source address may have only so many sockets waiting for their first
// record; past that its new sockets are closed at once, and counted.
func TestHelloBoundPerSource(t *testing.T) {
	pki := newPKI(t)
	s, addr := startServer(t, Config{
		TLS:               serverTLS(t, pki, TLSOptions{}),
		HelloTimeout:      testTimeout,
		MaxHelloPerSource: 4,
		Handoff:           echoHandoff(t, loopOpts{}),
	})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			_ = c.Close()
		}
	}()
	for range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	eventually(t, "four sockets to wait", func() bool { return s.Stats().HelloWaiting == 4 })
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = extra.Close() }()
	took, err := readEOF(extra)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || took > testTimeout/2 {
		t.Fatalf("fifth socket from one source: read error %v after %v, want closed at once", err, took)
	}
	eventually(t, "the refusal to be counted", func() bool { return s.Stats().HelloRefused == 1 })
	// Another source is not affected.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, clientTLS(pki))
	_ = tc.SetDeadline(time.Now().Add(testTimeout))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("a client from another source: %v", err)
	}
	_ = tc.Close()
	// The waiting ones are served once they speak.
	_ = idle[0].Close()
	idle = idle[1:]
	eventually(t, "the closed socket to free its place", func() bool { return s.Stats().HelloWaiting == 3 })
	c, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatalf("a client from the first source once a slot freed: %v", err)
	}
	_ = c.Close()
}
