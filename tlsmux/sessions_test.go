package tlsmux

import (
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/certs"
)

// sessionServer serves TLS with sessions kept in store.
func sessionServer(t *testing.T, pki *certs.PKI, store SessionStore, opts TLSOptions) (*Sessions, string) {
	t.Helper()
	s := NewSessions(store, 0, nil)
	opts.Sessions = s
	_, addr := startServer(t, Config{TLS: serverTLS(t, pki, opts), Handoff: echoHandoff(t, loopOpts{})})
	return s, addr
}

// dialResumed handshakes and reports whether the session resumed.
func dialResumed(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := dialTLS(t, addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().DidResume
}

// keepFirst is a client session cache that keeps the first session it is
// given and ignores the later ones: a device that presents the same
// ticket again (or an attacker who copied it).
type keepFirst struct {
	mu      sync.Mutex
	session *tls.ClientSessionState
	tickets [][]byte
}

func (k *keepFirst) Get(string) (*tls.ClientSessionState, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.session, k.session != nil
}

func (k *keepFirst) Put(_ string, cs *tls.ClientSessionState) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cs == nil {
		return
	}
	if ticket, _, err := cs.ResumptionState(); err == nil {
		k.tickets = append(k.tickets, ticket)
	}
	if k.session == nil {
		k.session = cs
	}
}

// A session id resumes once: the device then holds the new one it was
// given, and the same id presented again gets a full handshake. The ticket
// is the 16-byte id, in TLS 1.3 and in TLS 1.2.
func TestSessionsTakeOnce(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			pki := newPKI(t)
			mem, err := NewMemorySessions(1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			s, addr := sessionServer(t, pki, mem, TLSOptions{})
			ccfg := clientTLS(pki)
			ccfg.MaxVersion = version
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			for i, want := range []bool{false, true, true} {
				if got := dialResumed(t, addr, ccfg); got != want {
					t.Fatalf("handshake %d resumed %v, want %v", i, got, want)
				}
			}
			if st := s.Stats(); st.Hits != 2 || st.Misses != 0 || st.Stored != 3 {
				t.Fatalf("stats %+v, want 2 hits, 0 misses, 3 stored", st)
			}
			// Every id taken but the last.
			eventually(t, "one session left", func() bool { return mem.Stats().Entries == 1 })

			replay := &keepFirst{}
			ccfg.ClientSessionCache = replay
			for i, want := range []bool{false, true, false} {
				if got := dialResumed(t, addr, ccfg); got != want {
					t.Fatalf("same ticket, handshake %d: resumed %v, want %v", i, got, want)
				}
			}
			if st := s.Stats(); st.Misses != 1 {
				t.Fatalf("stats %+v, want the replayed id missed", st)
			}
			replay.mu.Lock()
			defer replay.mu.Unlock()
			for _, ticket := range replay.tickets {
				if len(ticket) != SessionIDLen {
					t.Fatalf("ticket of %d bytes, want %d", len(ticket), SessionIDLen)
				}
			}
		})
	}
}

// A client certificate stays with the session: a resumed handshake shows
// the certificate of the full one, and the ticket stays 16 bytes.
func TestSessionsKeepClientCertificate(t *testing.T) {
	pki := newPKI(t)
	mem, err := NewMemorySessions(1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	infos := make(chan ConnInfo, 2)
	opts := TLSOptions{Certificates: []tls.Certificate{pki.Server}, ClientCAs: pki.Pool, Sessions: NewSessions(mem, 0, nil)}
	_, addr := startServer(t, Config{TLS: serverTLS(t, pki, opts), Handoff: echoHandoff(t, loopOpts{infos: infos})})
	ccfg := resumingClientWithCert(t, pki, "car-7")
	for i, want := range []bool{false, true} {
		if got := dialResumed(t, addr, ccfg); got != want {
			t.Fatalf("handshake %d resumed %v, want %v", i, got, want)
		}
		if info := recv(t, infos); info.Resumed != want || len(info.PeerIdentity) != 1 || info.PeerIdentity[0] != "car-7" {
			t.Fatalf("handshake %d: peer %+v, want car-7", i, info)
		}
	}
}

// failingStore answers every call with an error, as Redis away.
type failingStore struct{}

func (failingStore) Put(SessionID, []byte, time.Duration) error { return errors.New("store away") }
func (failingStore) Take(SessionID) ([]byte, error)             { return nil, errors.New("store away") }

// A store that fails makes full handshakes, never failed ones.
func TestSessionsStoreDown(t *testing.T) {
	pki := newPKI(t)
	s, addr := sessionServer(t, pki, failingStore{}, TLSOptions{})
	ccfg := clientTLS(pki)
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i := range 3 {
		if dialResumed(t, addr, ccfg) {
			t.Fatalf("handshake %d resumed without a store", i)
		}
	}
	if st := s.Stats(); st.Errors != 5 || st.Misses != 2 || st.Hits != 0 {
		t.Fatalf("stats %+v, want 5 errors (3 puts, 2 takes), 2 misses", st)
	}
}

// The memory store drops the oldest sessions to stay under its bound, and
// forgets sessions past their lifetime.
func TestMemorySessionsBound(t *testing.T) {
	now := time.Unix(1000, 0)
	mem, err := NewMemorySessions(10*(100+sessionOverhead), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	state := make([]byte, 100)
	id := func(i int) SessionID { return SessionID{byte(i), byte(i >> 8)} }
	for i := range 15 {
		state[0] = byte(i)
		if err := mem.Put(id(i), state, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if st := mem.Stats(); st.Entries != 10 || st.Evicted != 5 || st.Bytes != 10*(100+sessionOverhead) {
		t.Fatalf("stats %+v, want 10 entries, 5 evicted", st)
	}
	for i := range 5 {
		if got, err := mem.Take(id(i)); got != nil || err != nil {
			t.Fatalf("session %d not evicted: %v, %v", i, got, err)
		}
	}
	got, err := mem.Take(id(7))
	if err != nil || len(got) != 100 || got[0] != 7 {
		t.Fatalf("session 7: %v, %v", got, err)
	}
	if got, _ := mem.Take(id(7)); got != nil {
		t.Fatal("session 7 taken twice")
	}

	now = now.Add(time.Hour)
	if got, _ := mem.Take(id(8)); got != nil {
		t.Fatal("an expired session was returned")
	}
	if err := mem.Put(id(100), state, time.Hour); err != nil {
		t.Fatal(err)
	}
	if st := mem.Stats(); st.Entries != 1 || st.Evicted != 5 {
		t.Fatalf("after expiry: stats %+v, want only the new session, no eviction", st)
	}
	if err := mem.Put(id(101), make([]byte, 20<<10), time.Hour); !errors.Is(err, ErrSessionTooLarge) {
		t.Fatalf("a state larger than the store: %v", err)
	}
	if _, err := NewMemorySessions(100, nil); err == nil {
		t.Fatal("a 100-byte store was accepted")
	}
}
