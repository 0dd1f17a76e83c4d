package tlsmux

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/dualgate/dualgate/certs"
)

func TestFIFO(t *testing.T) {
	var q fifo
	conns := make([]net.Conn, 10)
	for i := range conns {
		a, b := net.Pipe()
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		conns[i] = a
	}
	at := time.Unix(0, 0)
	next := 0 // next conn expected out
	push := func(i int) { q.push(pending{conn: conns[i], deadline: at.Add(time.Duration(i))}) }
	pop := func() {
		t.Helper()
		if q.head().conn != conns[next] {
			t.Fatalf("head is not conn %d", next)
		}
		if p := q.pop(); p.conn != conns[next] || !p.deadline.Equal(at.Add(time.Duration(next))) {
			t.Fatalf("pop returned the wrong entry, want %d", next)
		}
		next++
	}
	// Interleaved pushes and pops exercise the compaction of the front.
	for i := range 6 {
		push(i)
	}
	for range 4 {
		pop()
	}
	for i := 6; i < 9; i++ {
		push(i)
	}
	if q.len() != 5 {
		t.Fatalf("len %d, want 5", q.len())
	}
	for range 3 {
		pop()
	}
	push(9)
	rest := q.drain()
	if q.len() != 0 || len(rest) != 3 {
		t.Fatalf("drain: len %d, returned %d", q.len(), len(rest))
	}
	for i, p := range rest {
		if p.conn != conns[next+i] {
			t.Fatalf("drain entry %d is not conn %d", i, next+i)
		}
	}
	push(0)
	if q.len() != 1 || q.pop().conn != conns[0] || q.len() != 0 {
		t.Fatal("queue unusable after drain")
	}
}

func TestPeerIdentity(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		want []string
	}{
		{
			name: "CN and its URI once; DNS and foreign URIs left out",
			cert: &x509.Certificate{
				Subject:  pkix.Name{CommonName: "car-1"},
				DNSNames: []string{"car-9", "car-1.fleet.example.com"},
				URIs:     []*url.URL{mustURL("urn:dualgate:client:car-1"), mustURL("spiffe://fleet/car-2"), mustURL("urn:other:car-3")},
			},
			want: []string{"car-1"},
		},
		{
			name: "escaped URI id, empty CN skipped",
			cert: &x509.Certificate{URIs: []*url.URL{certs.ClientURI("meter/3"), mustURL("urn:dualgate:client:")}},
			want: []string{"meter/3"},
		},
		{
			name: "CN and a different URI id: both",
			cert: &x509.Certificate{Subject: pkix.Name{CommonName: "a"}, URIs: []*url.URL{certs.ClientURI("b")}},
			want: []string{"a", "b"},
		},
		{
			name: "only DNS names: no client id",
			cert: &x509.Certificate{DNSNames: []string{"m.example.com", "m.example.com"}},
			want: []string{},
		},
		{name: "nothing", cert: &x509.Certificate{}, want: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := peerIdentity(tc.cert); !slices.Equal(got, tc.want) {
				t.Fatalf("peerIdentity = %q, want %q", got, tc.want)
			}
		})
	}
}
