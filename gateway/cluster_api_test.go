package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/mqttcodec"
)

// On a cluster, GET /v1/clients without node lists the devices of every
// node, page by page, each once with its node; the mode filter holds
// across nodes, and a cursor that no node gave out is refused.
func TestClusterListEveryNode(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	want := map[string]string{}
	for i := range 3 {
		id := fmt.Sprint("on-1-", i)
		v3(t, "tcp://"+g1.PlainAddr(), id, nil, nil)
		want[id] = "gw-1"
	}
	for i := range 4 {
		id := fmt.Sprint("on-2-", i)
		v3(t, "tcp://"+g2.PlainAddr(), id, nil, nil)
		want[id] = "gw-2"
	}
	v3(t, "ssl://"+g2.TLSAddr(), "secure-2", deviceTLS(t, g2, "secure-2"), nil)
	want["secure-2"] = "gw-2"
	eventually(t, 10*time.Second, "every device in the registry", func() bool {
		n := 0
		for _, node := range []string{"gw-1", "gw-2"} {
			recs, _, err := g1.members.m.List(context.Background(), node, "", "", 100)
			if err != nil {
				return false
			}
			n += len(recs)
		}
		return n == len(want)
	})

	type item struct {
		ClientID string `json:"client_id"`
		Node     string `json:"node"`
		Mode     string `json:"mode"`
	}
	list := func(g *Gateway, query string) map[string]item {
		t.Helper()
		seen := map[string]item{}
		cursor := ""
		for pages := 0; ; pages++ {
			var page struct {
				Clients    []item `json:"clients"`
				NextCursor string `json:"next_cursor"`
			}
			if code := getJSON(t, g, "/v1/clients?limit=3"+query+"&cursor="+url.QueryEscape(cursor), "", &page); code != http.StatusOK {
				t.Fatalf("list page %d: %d", pages, code)
			}
			if len(page.Clients) > 3 {
				t.Fatalf("a page of %d, limit 3", len(page.Clients))
			}
			for _, c := range page.Clients {
				if _, dup := seen[c.ClientID]; dup {
					t.Fatalf("%s listed twice", c.ClientID)
				}
				seen[c.ClientID] = c
			}
			if page.NextCursor == "" {
				return seen
			}
			if pages > 10 {
				t.Fatal("the listing does not end")
			}
			cursor = page.NextCursor
		}
	}
	for _, g := range []*Gateway{g1, g2} {
		all := list(g, "")
		if len(all) != len(want) {
			t.Fatalf("listed %v, want %v", all, want)
		}
		for id, node := range want {
			wantMode := "plain"
			if id == "secure-2" {
				wantMode = "tls"
			}
			if c := all[id]; c.Node != node || c.Mode != wantMode {
				t.Fatalf("%s listed as %+v, want node %s mode %s", id, c, node, wantMode)
			}
		}
		if tls := list(g, "&mode=tls"); len(tls) != 1 || tls["secure-2"].Node != "gw-2" {
			t.Fatalf("mode=tls listed %v", tls)
		}
	}
	var out map[string]string
	if code := getJSON(t, g1, "/v1/clients?cursor=AVt3", "", &out); code != http.StatusBadRequest || !strings.Contains(out["error"], "cursor") {
		t.Fatalf("a made-up cursor: %d %v", code, out)
	}
}

// DELETE /v1/commands/{id} on one node cancels a command whose device is
// on another node on that node, ordered with its deliveries: the device's
// node runs the cancel (its counters say so), the asking node answers
// with the cancelled command; a command already written is answered 409
// from any node.
func TestClusterCancelOnDevicesNode(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	// A device on gw-2 that does not follow instructions: its secure
	// command waits for it, upgrading.
	r := dialRaw(t, g2.PlainAddr())
	if ack := r.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, CleanStart: true, ClientID: []byte("car-x"), KeepAlive: 300}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %+v", ack)
	}
	eventually(t, 10*time.Second, "car-x in the cluster registry", func() bool {
		rec, ok, err := g1.members.m.Get(context.Background(), "car-x")
		return err == nil && ok && rec.Node == "gw-2"
	})
	id, _ := postCommand(t, g1, "car-x", `{"topic":"devices/car-x/commands/unlock","payload":"open"}`)
	waitStatus(t, g1, id, "upgrading")
	code, out := cancel(t, g1, id)
	if code != http.StatusOK || out["status"] != "cancelled" || out["id"] != id {
		t.Fatalf("DELETE on gw-1: %d %v", code, out)
	}
	onDemand := func(g *Gateway) map[string]uint64 {
		var st statsView
		getJSON(t, g, "/v1/stats", "", &st)
		return st.OnDemand
	}
	if n1, n2 := onDemand(g1)["cancelled"], onDemand(g2)["cancelled"]; n1 != 0 || n2 != 1 {
		t.Fatalf("cancels run: gw-1 %d, gw-2 %d; want the device's node only", n1, n2)
	}
	if sent, recv := metric(t, g1, "dualgate_cluster_events_sent_total"), metric(t, g2, "dualgate_cluster_events_received_total"); sent < 1 || recv < 1 {
		t.Fatalf("cluster events: gw-1 sent %v, gw-2 received %v", sent, recv)
	}
	v := commandStatus(t, g2, id)
	if last := v.History[len(v.History)-1]; v.Status != "cancelled" || last.Status != "cancelled" || last.Note == "" {
		t.Fatalf("the command as gw-2 reads it: %+v", v)
	}

	// A command written already cannot be cancelled, whichever node is asked.
	dev := newDevice311(t, g2, "car-y")
	dev.connect(false, g2.PlainAddr())
	eventually(t, 10*time.Second, "car-y in the cluster registry", func() bool {
		rec, ok, err := g1.members.m.Get(context.Background(), "car-y")
		return err == nil && ok && rec.Node == "gw-2"
	})
	sent, _ := postCommand(t, g1, "car-y", `{"topic":"devices/car-y/commands/lights","payload":"on","secure":false}`)
	if c := nextCommand(t, dev.cmds); c.payload != "on" {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g1, sent, "delivered")
	for _, g := range []*Gateway{g1, g2} {
		code, out := cancel(t, g, sent)
		if msg, _ := out["error"].(string); code != http.StatusConflict || out["status"] != "delivered" || !strings.Contains(msg, "already written") {
			t.Fatalf("DELETE of a delivered command: %d %v", code, out)
		}
	}
}
