package gateway

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/internal/testutil"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// clusterGateway runs a gateway whose commands live in srv.
func clusterGateway(t *testing.T, srv *testredis.Server, node string, mod func(*Config)) *Gateway {
	t.Helper()
	return startGateway(t, func(c *Config) {
		c.Cluster = srv.URL()
		c.NodeID = node
		c.SecureIdle = time.Minute
		if mod != nil {
			mod(c)
		}
	})
}

func TestClusterConfig(t *testing.T) {
	cases := []struct {
		args []string
		want string // in the error; empty: valid
	}{
		{args: nil},
		{args: []string{"--cluster", "redis://127.0.0.1:6379/0", "--node-id", "gw-1"}},
		{args: []string{"--cluster", "rediss://u:p@redis.example.com:6380/1"}},
		{args: []string{"--cluster", "redis+sentinel://s1:26379/0?master_name=dg&addr=s2:26379", "--node-id", "gw.a_2"}},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-wait-replicas", "1", "--cluster-wait-timeout", "250ms"}},
		{args: []string{"--cluster", "http://h:1"}, want: "--cluster"},
		{args: []string{"--cluster", "redis+sentinel://s1:26379/0"}, want: "master_name"},
		{args: []string{"--cluster", "redis://h:1/0", "--node-id", "gw 1"}, want: "--node-id"},
		{args: []string{"--cluster", "redis://h:1/0", "--node-id", strings.Repeat("n", 65)}, want: "--node-id"},
		{args: []string{"--node-id", "gw-1"}, want: "needs --cluster"},
		{args: []string{"--cluster-wait-replicas", "1"}, want: "needs --cluster"},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-wait-replicas", "-1"}, want: "--cluster-wait-replicas"},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-prefix", "a{b}"}, want: "--cluster-prefix"},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-timeout", "1ms"}, want: "--cluster-timeout"},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-node-ttl", "3s"}},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-node-ttl", "500ms"}, want: "--cluster-node-ttl"},
		{args: []string{"--cluster", "redis://h:1/0", "--cluster-node-ttl", "1h"}, want: "--cluster-node-ttl"},
	}
	for _, tc := range cases {
		_, err := LoadConfig(tc.args, func(string) string { return "" })
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
	if got := redactURL("redis://gw:s3cret@redis.internal:6379/0"); strings.Contains(got, "s3cret") || !strings.Contains(got, "redis.internal:6379") {
		t.Errorf("redactURL = %q", got)
	}
	// Without --cluster nothing changes: the commands are in the bbolt file.
	g := startGateway(t, nil)
	if _, ok := g.store.(*store.Bolt); !ok || g.cluster != nil {
		t.Fatalf("store without --cluster: %T", g.store)
	}
}

// Commands posted for an offline device through a gateway on --cluster
// survive Redis being killed (AOF on) and the gateway being replaced by one
// with an empty data directory: the device connects to the new gateway,
// upgrades and gets every one, in order.
func TestClusterRestartKeepsCommands(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	if _, ok := g1.store.(*store.Redis); !ok {
		t.Fatalf("store on --cluster: %T", g1.store)
	}
	var ids []string
	for i := range 5 {
		id, status := postCommand(t, g1, "car-7", fmt.Sprintf(`{"topic":"devices/car-7/commands/n","payload":"%c"}`, 'a'+i))
		if status != "pending" {
			t.Fatalf("status %q for an offline device", status)
		}
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	srv.Start()

	g2 := clusterGateway(t, srv, "gw-1", nil)
	if v := commandStatus(t, g2, ids[0]); v.Status != store.StatusPending {
		t.Fatalf("command after the restarts: %+v", v)
	}
	d := newDevice311(t, g2, "car-7")
	d.connect(false, g2.PlainAddr())
	d.query()
	for i := range 5 {
		c := nextCommand(t, d.cmds)
		if want := string(rune('a' + i)); c.payload != want || !c.tls {
			t.Fatalf("command %d: %+v, want %s over TLS", i, c, want)
		}
	}
	for _, id := range ids {
		waitStatus(t, g2, id, "delivered")
	}
}

// Redis away (hung, then killed): devices keep their connections and
// their telemetry reaches the broker, a new command is refused with 503
// and a JSON error that says Redis is unavailable; once Redis is back,
// commands are accepted and delivered again, without restarting the
// gateway.
func TestClusterRedisAway(t *testing.T) {
	srv := testredis.Start(t)
	br := testbroker.Start(t)
	g := clusterGateway(t, srv, "gw-1", func(c *Config) {
		c.Upstream = br.URL()
		c.UpstreamClientID = "gw-cluster-test"
		c.ClusterTimeout = 300 * time.Millisecond
	})
	waitUpstream(t, g)
	up := newCounter()
	app := cloudApp(t, br, "cloud-app", true)
	if tok := app.Subscribe("tele/#", 1, up.handler); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	dev := newDevice311(t, g, "sensor-1")
	dev.connect(false, g.PlainAddr())
	publish := func(n int) {
		t.Helper()
		if tok := dev.client.Publish("tele/sensor-1", 1, false, fmt.Sprint("m", n)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("device publish: %v", tok.Error())
		}
	}
	n := 0
	for _, away := range []struct {
		name        string
		stop, start func()
	}{
		{name: "hung", stop: srv.Pause, start: srv.Resume},
		{name: "killed", stop: srv.Kill, start: srv.Start},
	} {
		away.stop()
		for range 3 {
			code, out := post(t, g, "/v1/clients/sensor-1/commands", `{"topic":"devices/sensor-1/commands/x","payload":"p","secure":false}`, "")
			if code != http.StatusServiceUnavailable || !strings.Contains(out["error"], "redis unavailable") {
				t.Fatalf("%s: POST answered %d %v, want 503 naming redis", away.name, code, out)
			}
			publish(n)
			n++
		}
		want := n
		eventually(t, 10*time.Second, "telemetry at the broker while redis is "+away.name, func() bool { return up.distinct() == want })
		if !dev.client.IsConnectionOpen() || g.reg.Len() != 1 {
			t.Fatalf("%s: the device lost its connection", away.name)
		}
		away.start()
		id, _ := postCommand(t, g, "sensor-1", `{"topic":"devices/sensor-1/commands/x","payload":"back-`+away.name+`","secure":false}`)
		if c := nextCommand(t, dev.cmds); c.payload != "back-"+away.name {
			t.Fatalf("%s: command after redis came back: %+v", away.name, c)
		}
		waitStatus(t, g, id, "delivered")
	}
}

// Two running gateways cannot share a node id; the id is free again once
// its gateway stops.
func TestClusterNodeIDUnique(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	cfg := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir(),
		EventLoops: 1, Cluster: srv.URL(), NodeID: "gw-1"}
	g2, err := New(cfg, Options{Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	err = g2.Start()
	if err == nil {
		_ = g2.Shutdown(context.Background())
		t.Fatal("a second gateway started with the same node id")
	}
	if !strings.Contains(err.Error(), `node id "gw-1" is held by another running gateway`) {
		t.Fatalf("error %v", err)
	}
	clusterGateway(t, srv, "gw-2", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	clusterGateway(t, srv, "gw-1", nil)
}

// resumes connects over TLS with tc, sends CONNECT and reads the CONNACK
// (by then a TLS 1.3 session ticket has arrived), and reports whether the
// handshake resumed a session.
func resumes(t *testing.T, addr string, tc *tls.Config, id string) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true,
		KeepAlive: 60, ClientID: []byte(id)})); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[3] != 0 {
		t.Fatalf("CONNACK % x, %v", ack, err)
	}
	return c.ConnectionState().DidResume
}

// The nodes of a cluster share TLS sessions through Redis: a session made
// on one node resumes on another; a gateway outside the cluster cannot
// resume it. With server-side sessions (the default) a session resumes
// once, on any node, and Redis away makes full handshakes, not failed
// ones. With stateless tickets (--tls-sessions tickets, no
// --tls-ticket-keys) the nodes share the ticket keys, and a session
// resumes right after a rotation that the other node has not read yet.
func TestClusterTLSResumesOnAnotherNode(t *testing.T) {
	for _, mode := range []string{"server", "tickets"} {
		t.Run(mode, func(t *testing.T) {
			srv := testredis.Start(t)
			data := t.TempDir() // one server certificate and CA for all
			mod := func(c *Config) { c.Data, c.TLSSessions, c.ClusterTimeout = data, mode, 500*time.Millisecond }
			g1 := clusterGateway(t, srv, "gw-1", mod)
			g2 := clusterGateway(t, srv, "gw-2", mod)
			alone := startGateway(t, func(c *Config) { c.Data, c.TLSSessions = data, mode })

			tc := deviceTLS(t, g1, "car-1")
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if resumes(t, g1.TLSAddr(), tc, "car-1") {
				t.Fatal("the first handshake resumed")
			}
			if !resumes(t, g2.TLSAddr(), tc, "car-1") {
				t.Fatal("a session made on gw-1 did not resume on gw-2")
			}
			if resumes(t, alone.TLSAddr(), tc, "car-1") {
				t.Fatal("a gateway outside the cluster resumed the session")
			}
			if mode == "server" {
				clusterSessionsTakeOnce(t, srv, g1, g2, tc)
			} else {
				clusterTicketsRotate(t, srv, g1, g2, tc)
			}
		})
	}
}

// clusterSessionsTakeOnce: sessions are Redis keys with their lifetime; a
// session taken on one node is gone for the others; with Redis away a
// handshake is a full one (its read waits --cluster-timeout, its write
// does not wait again), and sessions resume once Redis is back.
func clusterSessionsTakeOnce(t *testing.T, srv *testredis.Server, g1, g2 *Gateway, tc *tls.Config) {
	t.Helper()
	replay := &oneSessionCache{keepFirst: true}
	tc.ClientSessionCache = replay
	if resumes(t, g1.TLSAddr(), tc, "car-1") {
		t.Fatal("an empty cache resumed")
	}
	ticket := replay.ticket()
	key := "dg:tls:{" + hex.EncodeToString(ticket) + "}:session"
	if ttl, err := strconv.Atoi(strings.TrimPrefix(srv.Do("PTTL", key), ":")); err != nil || ttl <= 0 || ttl > int(tlsmux.DefaultSessionLifetime/time.Millisecond) {
		t.Fatalf("session key %s: PTTL %d, %v; want up to %s", key, ttl, err, tlsmux.DefaultSessionLifetime)
	}
	if !resumes(t, g2.TLSAddr(), tc, "car-1") {
		t.Fatal("the session did not resume on gw-2")
	}
	if got := srv.Do("EXISTS", key); got != ":0" {
		t.Fatalf("the session taken on gw-2 is still in redis: EXISTS %s", got)
	}
	if resumes(t, g1.TLSAddr(), tc, "car-1") {
		t.Fatal("a session id resumed twice")
	}
	if v := metric(t, g1, `dualgate_tls_sessions_lookups_total{result="miss"}`); v != 1 {
		t.Fatalf("gw-1 misses %v, want 1", v)
	}

	tc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if resumes(t, g1.TLSAddr(), tc, "car-1") {
		t.Fatal("a fresh cache resumed")
	}
	errs := metric(t, g2, "dualgate_tls_sessions_errors_total")
	srv.Pause()
	if resumes(t, g2.TLSAddr(), tc, "car-1") {
		t.Fatal("a session resumed while redis was away")
	}
	srv.Resume()
	if v := metric(t, g2, "dualgate_tls_sessions_errors_total"); v < errs+2 {
		t.Fatalf("redis errors %v, want the read and the write of that handshake counted (%v before)", v, errs)
	}
	if resumes(t, g1.TLSAddr(), tc, "car-1") {
		t.Fatal("the session stored while redis was away resumed")
	}
	// After an error gw-2 leaves Redis alone for --cluster-timeout.
	eventually(t, 5*time.Second, "gw-2 asking redis again", g2.clusterSessions.usable)
	if !resumes(t, g2.TLSAddr(), tc, "car-1") {
		t.Fatal("no resumption once redis was back")
	}
}

// clusterTicketsRotate: gw-1 rotates (the last rotation made as old as can
// be) and encrypts with the key that was next; gw-2, which has not read
// the rotation, already decrypts with it.
func clusterTicketsRotate(t *testing.T, srv *testredis.Server, g1, g2 *Gateway, tc *tls.Config) {
	t.Helper()
	if got := srv.Do("HSET", "dg:tls:ticket-keys", "at", "0"); got != ":0" {
		t.Fatalf("HSET at: %s", got)
	}
	before := g1.clusterTickets.Keys()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g1.cluster.syncTickets(ctx); err != nil {
		t.Fatal(err)
	}
	after := g1.clusterTickets.Keys()
	if len(after) != len(before)+1 || after[0] != before[1] || after[1] == before[0] {
		t.Fatalf("rotation: %d keys -> %d", len(before), len(after))
	}
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if resumes(t, g1.TLSAddr(), tc, "car-1") {
		t.Fatal("a fresh cache resumed")
	}
	if !resumes(t, g2.TLSAddr(), tc, "car-1") {
		t.Fatal("a session made with the rotated key on gw-1 did not resume on gw-2")
	}
}

// Two nodes on one Redis share the commands: one posted on gw-1 for a
// device that is offline is seen pending on gw-2; the device connects to
// gw-2, is moved to TLS there and gets it; gw-1 then reports it delivered.
func TestClusterCommandAcrossNodes(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	id, status := postCommand(t, g1, "car-9", `{"topic":"devices/car-9/commands/unlock","payload":"open"}`)
	if status != "pending" {
		t.Fatalf("status %q", status)
	}
	if v := commandStatus(t, g2, id); v.Status != store.StatusPending || v.ClientID != "car-9" {
		t.Fatalf("gw-2 sees %+v", v)
	}
	var view clientView
	if code := getJSON(t, g2, "/v1/clients/car-9", "", &view); code != http.StatusOK || view.Pending != 1 {
		t.Fatalf("gw-2 client view %d %+v", code, view)
	}
	d := newDevice311(t, g2, "car-9")
	d.connect(false, g2.PlainAddr())
	d.query()
	if c := nextCommand(t, d.cmds); c.payload != "open" || !c.tls {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g1, id, "delivered")
}

// With --cluster-wait-replicas 1, a POST is answered 202 once the replica
// has the command, and 503 naming the replicas when it does not confirm.
func TestClusterWaitReplicas(t *testing.T) {
	primary := testredis.Start(t)
	replica := testredis.Start(t, fmt.Sprint("replicaof 127.0.0.1 ", primary.Port))
	eventually(t, 10*time.Second, "replica in sync", func() bool {
		return replica.Info("replication")["master_link_status"] == "up"
	})
	g := clusterGateway(t, primary, "gw-1", func(c *Config) {
		c.ClusterWaitReplicas = 1
		c.ClusterWaitTimeout = 2 * time.Second // a fresh replica may be slow
	})
	id, _ := postCommand(t, g, "car-3", `{"topic":"devices/car-3/commands/a","payload":"x"}`)
	if got := replica.Do("HGET", "dg:ids", id); got != "car-3" {
		t.Fatalf("replica does not have the command answered 202: %q", got)
	}
	replica.Pause()
	code, out := post(t, g, "/v1/clients/car-3/commands", `{"topic":"devices/car-3/commands/b","payload":"y"}`, "")
	if code != http.StatusServiceUnavailable || !strings.Contains(out["error"], "replicas") {
		t.Fatalf("POST with the replica hung: %d %v", code, out)
	}
	replica.Resume()
	postCommand(t, g, "car-3", `{"topic":"devices/car-3/commands/c","payload":"z"}`)
}

// A command posted on one node reaches a device connected to another at
// once: the node holding it is told through the cluster registry, without
// the device having to ask.
func TestClusterCommandRoutedToDevicesNode(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	d := newDevice311(t, g2, "car-r")
	d.connect(false, g2.PlainAddr())
	eventually(t, 10*time.Second, "car-r in the cluster registry", func() bool {
		rec, ok, err := g1.members.m.Get(context.Background(), "car-r")
		return err == nil && ok && rec.Node == "gw-2"
	})
	var view clientView
	if code := getJSON(t, g1, "/v1/clients/car-r", "", &view); code != http.StatusOK || !view.Connected || view.Node != "gw-2" || view.Mode != "plain" {
		t.Fatalf("gw-1 answers for car-r on gw-2: %d %+v", code, view)
	}
	id, _ := postCommand(t, g1, "car-r", `{"topic":"devices/car-r/commands/unlock","payload":"open"}`)
	if c := nextCommand(t, d.cmds); c.payload != "open" || !c.tls {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g1, id, "delivered")
}

// The same client id connecting to a second node closes its session on
// the first: the newer connection wins, across nodes.
func TestClusterTakeoverAcrossNodes(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	old := v5Plain(t, g1, &paho.Connect{ClientID: "car-twice", KeepAlive: 30, CleanStart: true})
	eventually(t, 10*time.Second, "car-twice in the cluster registry", func() bool {
		rec, ok, err := g2.members.m.Get(context.Background(), "car-twice")
		return err == nil && ok && rec.Node == "gw-1"
	})
	v5Plain(t, g2, &paho.Connect{ClientID: "car-twice", KeepAlive: 30, CleanStart: true})
	select {
	case d := <-old.disconnect:
		if d.ReasonCode != byte(mqttcodec.SessionTakenOver) {
			t.Fatalf("the older session got DISCONNECT %#x, want 0x8E", d.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older session on gw-1 was not closed")
	}
	eventually(t, 10*time.Second, "gw-1 no longer holds car-twice", func() bool {
		_, ok := g1.reg.Get("car-twice")
		return !ok
	})
	if _, ok := g2.reg.Get("car-twice"); !ok {
		t.Fatal("the newer session on gw-2 is gone")
	}
}

// Drained without --drain-to, a node sends its MQTT 5 devices on TLS to a
// live peer's TLS address, read from the peers' heartbeats.
func TestClusterDrainToPeer(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", func(c *Config) { c.DrainDelay = 10 * time.Millisecond })
	clusterGateway(t, srv, "gw-2", func(c *Config) { c.AdvertiseTLS = "gw-2.example.net:8883" })
	dev := v5TLS(t, g1, &paho.Connect{ClientID: "car-drain", KeepAlive: 30, CleanStart: true})
	eventually(t, 10*time.Second, "gw-2 live with its TLS address", func() bool {
		nodes, err := g1.members.m.LiveNodes(context.Background())
		for _, n := range nodes {
			if n.ID == "gw-2" && n.TLS != "" {
				return err == nil
			}
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g1.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-dev.disconnect:
		if d.ReasonCode != byte(mqttcodec.UseAnotherServer) || d.Properties == nil ||
			d.Properties.ServerReference != "tls://gw-2.example.net:8883" {
			t.Fatalf("DISCONNECT %#x %+v, want 0x9C to gw-2", d.ReasonCode, d.Properties)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the device was not moved")
	}
}

// Any node lists another node's devices from the cluster registry, page by
// page, each once.
func TestClusterListAnotherNode(t *testing.T) {
	srv := testredis.Start(t)
	g1 := clusterGateway(t, srv, "gw-1", nil)
	g2 := clusterGateway(t, srv, "gw-2", nil)
	for i := range 5 {
		v3(t, "tcp://"+g2.PlainAddr(), fmt.Sprint("lister-", i), nil, nil)
	}
	eventually(t, 10*time.Second, "gw-2's devices in the registry", func() bool {
		recs, _, err := g1.members.m.List(context.Background(), "gw-2", "", "", 100)
		return err == nil && len(recs) == 5
	})
	seen := map[string]int{}
	cursor := ""
	for pages := 0; ; pages++ {
		var page struct {
			Clients []struct {
				ClientID string `json:"client_id"`
				Node     string `json:"node"`
				Mode     string `json:"mode"`
			} `json:"clients"`
			NextCursor string `json:"next_cursor"`
		}
		if code := getJSON(t, g1, "/v1/clients?node=gw-2&limit=2&cursor="+cursor, "", &page); code != http.StatusOK {
			t.Fatalf("list: %d", code)
		}
		for _, c := range page.Clients {
			if c.Node != "gw-2" || c.Mode != "plain" {
				t.Fatalf("item %+v", c)
			}
			seen[c.ClientID]++
		}
		if page.NextCursor == "" {
			break
		}
		if pages > 5 {
			t.Fatal("the listing does not end")
		}
		cursor = url.QueryEscape(page.NextCursor)
	}
	if len(seen) != 5 {
		t.Fatalf("listed %v, want 5 devices once each", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s listed %d times", id, n)
		}
	}
}

// Three gateways of one cluster behind a real HAProxy balancing round
// robin, without stickiness: a device connects through the balancer, a
// command posted to another node reaches it (the node holding it is told),
// and its TLS reconnect, wherever the balancer sends it, gets the command.
func TestClusterBehindHAProxyRoundRobin(t *testing.T) {
	srv := testredis.Start(t)
	lbPlain, lbTLS := testutil.FreeAddr(t), testutil.FreeAddr(t)
	base := func(c *Config) {
		c.ProxyProtocol, c.ProxyTrusted = string(ProxyRequired), "127.0.0.1/32"
		c.AdvertisePlain, c.AdvertiseTLS = lbPlain, lbTLS
	}
	g1 := clusterGateway(t, srv, "gw-1", base)
	dev := certs.PathsIn(filepath.Dir(g1.CAFile()))
	gws := []*Gateway{g1}
	for _, node := range []string{"gw-2", "gw-3"} {
		gws = append(gws, clusterGateway(t, srv, node, func(c *Config) {
			base(c)
			c.TLSCert, c.TLSKey, c.ClientCA = dev.Server, dev.ServerKey, dev.CA
		}))
	}
	setup := lbSetup{Plain: lbPlain, TLS: lbTLS, Socket: filepath.Join(t.TempDir(), "admin.sock"), Balance: "roundrobin"}
	for i, g := range gws {
		setup.Servers = append(setup.Servers, lbBackend{Name: fmt.Sprintf("gw%d", i+1),
			Plain: g.PlainAddr(), TLS: g.TLSAddr(), Port: portOf(t, g.APIAddr())})
	}
	lb := startHAProxy(t, setup)
	for i := range gws {
		lb.waitServer(t, fmt.Sprintf("gw%d", i+1), "UP")
	}

	for round := range 3 {
		id := fmt.Sprint("rr-car-", round)
		d := newDevice311(t, g1, id)
		d.connect(false, lbPlain)
		at := holder(t, gws, id)
		eventually(t, 10*time.Second, id+" in the cluster registry", func() bool {
			rec, ok, err := g1.members.m.Get(context.Background(), id)
			return err == nil && ok && rec.Node == fmt.Sprint("gw-", at+1)
		})
		other := gws[(at+1)%len(gws)]
		secret := fmt.Sprint("UNLOCK-rr-", round)
		cid, _ := postCommand(t, other, id, `{"topic":"devices/`+id+`/commands/unlock","payload":"`+secret+`"}`)
		if c := nextCommand(t, d.cmds); !c.tls || c.payload != secret {
			t.Fatalf("round %d: command %+v", round, c)
		}
		waitStatus(t, other, cid, "delivered")
	}
}
