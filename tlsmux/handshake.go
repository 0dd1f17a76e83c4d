package tlsmux

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
)

// pending is a connection waiting for a handshake worker.
type pending struct {
	conn     net.Conn
	deadline time.Time // closed by the reaper when still queued then
}

// fifo is the queue of pending connections. The zero value is empty. It has
// no lock of its own: Server.mu guards it.
type fifo struct {
	items []pending
	first int // index of the head in items
}

func (q *fifo) len() int { return len(q.items) - q.first }

func (q *fifo) push(p pending) {
	// Reclaim the consumed front once it is most of the slice.
	if q.first > 0 && q.first >= len(q.items)/2 {
		n := copy(q.items, q.items[q.first:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.first = 0
	}
	q.items = append(q.items, p)
}

// head returns the oldest entry; the queue must not be empty.
func (q *fifo) head() pending { return q.items[q.first] }

// pop removes and returns the oldest entry; the queue must not be empty.
func (q *fifo) pop() pending {
	p := q.items[q.first]
	q.items[q.first] = pending{}
	q.first++
	if q.first == len(q.items) {
		q.items = q.items[:0]
		q.first = 0
	}
	return p
}

// drain empties the queue and returns what it held, and drops the backing
// array so a burst does not keep it.
func (q *fifo) drain() []pending {
	out := slices.Clone(q.items[q.first:])
	q.items, q.first = nil, 0
	return out
}

// handshake runs the TLS handshake of c on worker slot, then hands the
// connection over (Handoff). Nothing the handshake needed outlives it: the
// next owner gets the *tls.Conn, its Transport and a ConnInfo.
func (s *Server) handshake(slot int, c net.Conn) {
	start := time.Now()
	tr := &Transport{Conn: c}
	tc := tls.Server(tr, s.cfg.TLS)
	err := c.SetDeadline(start.Add(s.cfg.HandshakeTimeout))
	if err == nil {
		err = tc.Handshake()
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	elapsed := time.Since(start)
	if err != nil {
		s.mu.Lock()
		s.inflight[slot] = nil
		s.mu.Unlock()
		s.failed.Add(1)
		_ = c.Close()
		if s.log.Core().Enabled(zap.DebugLevel) {
			s.log.Debug("tlsmux: handshake failed",
				zap.Stringer("remote", c.RemoteAddr()),
				zap.Bool("timeout", errors.Is(err, os.ErrDeadlineExceeded)),
				zap.Duration("elapsed", elapsed), zap.Error(err))
		}
		return
	}
	st := tc.ConnectionState()
	info := ConnInfo{
		Remote:            c.RemoteAddr(),
		Resumed:           st.DidResume,
		Version:           st.Version,
		HandshakeDuration: elapsed,
	}
	if len(st.VerifiedChains) > 0 && len(st.PeerCertificates) > 0 {
		info.PeerIdentity = peerIdentity(st.PeerCertificates[0])
	}
	// What the certificate proves is in info; an idle connection need not
	// keep the certificate itself.
	ReleasePeerCertificates(tc)

	s.mu.Lock()
	s.inflight[slot] = nil
	if s.closing {
		s.mu.Unlock()
		s.refused.Add(1)
		_ = c.Close()
		return
	}
	s.mu.Unlock()
	if info.Resumed {
		s.resumed.Add(1)
	} else {
		s.full.Add(1)
	}
	s.handoff(c, tc, tr, info)
}

// handoff gives the connection to Config.Handoff, containing a panic: then
// the accepted connection c is closed, whether Handoff had detached the
// Transport from it or not (a detached Transport's Close does nothing).
func (s *Server) handoff(c net.Conn, tc *tls.Conn, tr *Transport, info ConnInfo) {
	defer func() {
		if r := recover(); r != nil {
			s.panics.Add(1)
			s.log.Error("tlsmux: handoff panic; connection closed",
				zap.Stringer("remote", info.Remote), zap.Any("panic", r), zap.StackSkip("stack", 1))
			_ = c.Close()
		}
	}()
	s.cfg.Handoff(tc, tr, info)
}

// peerIdentity lists the client ids a verified client certificate names,
// without duplicates: its subject common name, then the id of each URI SAN
// urn:dualgate:client:<id> (certs.ClientURI). DNS SANs and other URIs name
// hosts and services, never a device's client id, so they are left out:
// a certificate issued for a host name must not prove a client id that
// happens to equal it.
func peerIdentity(cert *x509.Certificate) []string {
	ids := make([]string, 0, 1+len(cert.URIs))
	add := func(s string) {
		if s != "" && !slices.Contains(ids, s) {
			ids = append(ids, s)
		}
	}
	add(cert.Subject.CommonName)
	for _, u := range cert.URIs {
		if id, ok := certs.ClientIDFromURI(u.String()); ok {
			add(id)
		}
	}
	return slices.Clip(ids)
}
