package dispatch

import (
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
)

// On a cluster, Start takes back what this node's previous run and the
// nodes that are gone left in flight, and leaves what a live node has in
// flight to it; a note without a node (a gateway alone) is this node's.
func TestStartTakesBackOnlyWhatNoLiveNodeHolds(t *testing.T) {
	st := store.NewMemory(store.Options{})
	at := time.Unix(1_700_000_000, 0)
	put := func(id, client string, to store.Status, note string) {
		t.Helper()
		if err := st.Put(&store.Command{ID: id, ClientID: client, Topic: "t", QoS: 1, Secure: true, CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
		if to == store.StatusSent {
			if _, err := st.Transition(id, store.StatusUpgrading, at, "reconnect instruction sent (node b)"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.Transition(id, to, at, note); err != nil {
			t.Fatal(err)
		}
	}
	put("own", "c1", store.StatusSent, "written to the tls connection (node b)")
	put("alone", "c2", store.StatusSent, "written to the tls connection")
	put("live", "c3", store.StatusSent, "written to the tls connection (node a)")
	put("dead", "c4", store.StatusUpgrading, "reconnect instruction sent (node gone-1)")
	asked := map[string]int{}
	d, err := New(Config{Store: st, Registry: registry.New[*session.Session](), Node: "b",
		Advertise: func(*session.Session, control.Mode) string { return "" },
		Executor:  func(string, func()) {},
		NodeLive: func(n string) (bool, error) {
			asked[n]++
			return n == "a", nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	for id, want := range map[string]string{
		"own":   "pending: gateway restarted",
		"alone": "pending: gateway restarted",
		"live":  "sent: written to the tls connection (node a)",
		"dead":  "pending: node gone-1 that had it in flight is gone",
	} {
		c, err := st.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		last := c.History[len(c.History)-1]
		if got := string(c.Status) + ": " + last.Note; got != want {
			t.Errorf("%s: %q, want %q", id, got, want)
		}
	}
	if asked["b"] != 0 || asked["a"] != 1 || asked["gone-1"] != 1 {
		t.Errorf("asked %v: only about other nodes, once per command", asked)
	}
	if n := heldBy(&store.Command{Status: store.StatusSent, History: []store.Transition{{Status: store.StatusSent, Note: "x (node y) (node z-2)"}}}); n != "z-2" {
		t.Errorf("heldBy = %q", n)
	}
	if n := heldBy(&store.Command{Status: store.StatusPending, History: []store.Transition{{Status: store.StatusSent, Note: "x (node y)"}}}); n != "" {
		t.Errorf("heldBy of a moved command = %q", n)
	}
}
