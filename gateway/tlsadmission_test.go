package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// clientHelloRecord returns the first record a TLS client sends, its
// ClientHello: a client that sends it and then nothing holds a handshake
// slot until the handshake timeout.
func clientHelloRecord(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	go func() {
		_ = tls.Client(a, &tls.Config{ServerName: "localhost", MinVersion: tls.VersionTLS12}).Handshake()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+int(hdr[3])<<8|int(hdr[4]))
	copy(rec, hdr)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// 1,000 sockets held open on the TLS port, sending nothing, from 20 source
// addresses: they wait for their first record without holding a handshake
// slot, so a real device still connects over TLS at once instead of
// queueing behind them until it is refused (the old behaviour with 8 such
// sockets).
func TestIdleTLSSocketsDoNotBlockDevices(t *testing.T) {
	g := startGateway(t, func(c *Config) {
		c.MaxHandshakes = 2
		c.HandshakeQueue = 5 * time.Second
		c.HandshakeTimeout = 30 * time.Second
		c.TLSHello = 60 * time.Second
	})
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			_ = c.Close()
		}
	})
	for i := range 1000 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%20))}}
		c, err := d.Dial("tcp", g.TLSAddr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	eventually(t, 20*time.Second, "1,000 sockets waiting for their first record", func() bool {
		return g.tlsSrv.Stats().HelloWaiting == 1000
	})
	start := time.Now()
	c := v3(t, "tls://"+g.TLSAddr(), "real-device", clientTLS(t, g), nil)
	took := time.Since(start)
	if !c.IsConnectionOpen() {
		t.Fatal("the real device is not connected")
	}
	// The limit the device would have hit before: the handshake queue
	// timeout. The figure itself is a benchmark's business.
	if took >= 5*time.Second {
		t.Fatalf("TLS connect behind 1,000 idle sockets took %v", took)
	}
	t.Logf("TLS connect behind 1,000 idle sockets: %v", took)
	if st := g.tlsSrv.Stats(); st.HandshakesRefused != 0 || st.HelloWaiting != 1000 {
		t.Fatalf("tls stats %+v", st)
	}
}
