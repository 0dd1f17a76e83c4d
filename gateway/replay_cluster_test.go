package gateway

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/mqttcodec"
)

// The tests of this file replay a device's plain token on another node of
// a cluster, and hold the cluster's replay memory (Redis) back while
// token CONNECTs wait for it.

// tokenClusterGateway runs a node of a cluster on srv with --auth token.
func tokenClusterGateway(t *testing.T, srv *testredis.Server, node, secrets string, mod func(*Config)) *Gateway {
	t.Helper()
	return clusterGateway(t, srv, node, func(c *Config) {
		c.Auth, c.Secrets = "token", secrets
		if mod != nil {
			mod(c)
		}
	})
}

var nonces atomic.Int64

// freshToken is a new v1 token of the victim, as its SDK makes one.
func freshToken() []byte {
	return []byte(control.MakeToken(victimSecret, "victim", time.Now(), fmt.Sprintf("replay%06d", nonces.Add(1))))
}

// A v1 token accepted on node A is refused on node B within its window,
// and the reverse; a replay on the same node is still refused; a fresh
// token is accepted on either. In both protocol versions.
func TestClusterTokenReplayedOnAnotherNode(t *testing.T) {
	srv := testredis.Start(t)
	secrets := tokenSecrets(t)
	a := tokenClusterGateway(t, srv, "gw-a", secrets, nil)
	b := tokenClusterGateway(t, srv, "gw-b", secrets, nil)
	for _, v := range []struct {
		version     byte
		notAuthized mqttcodec.ReasonCode
	}{{4, rc311NotAuthorize}, {5, rc5NotAuthorized}} {
		for _, nodes := range [][2]*Gateway{{a, b}, {b, a}} {
			first, other := nodes[0], nodes[1]
			tok := freshToken()
			try := func(g *Gateway, what string, want mqttcodec.ReasonCode) {
				t.Helper()
				if got := (attempt{version: v.version, id: "victim", password: tok}).connack(t, g); got != want {
					t.Fatalf("v%d, %s: CONNACK 0x%02x, want 0x%02x", v.version, what, byte(got), byte(want))
				}
			}
			try(first, "token on its first node", 0)
			try(other, "replayed on another node", v.notAuthized)
			try(first, "replayed on its first node", v.notAuthized)
			tok = freshToken()
			try(other, "a fresh token on the other node", 0)
		}
	}
	for _, g := range []*Gateway{a, b} {
		st := g.replay.Stats()
		if st.Replayed == 0 {
			t.Fatalf("node %s refused no replay through redis: %+v", g.cluster.id, st)
		}
		if m := metric(t, g, "dualgate_cluster_token_replays_total"); m != float64(st.Replayed) {
			t.Fatalf("node %s: dualgate_cluster_token_replays_total %v, the replay memory says %d", g.cluster.id, m, st.Replayed)
		}
		if m := metric(t, g, "dualgate_cluster_token_claims_total"); m < float64(st.Replayed) {
			t.Fatalf("node %s: dualgate_cluster_token_claims_total %v below its replays %d", g.cluster.id, m, st.Replayed)
		}
		// Redis is the memory: no replay log in the data directory.
		if _, err := os.Stat(filepath.Join(g.cfg.Data, auth.ReplayLogFile)); !os.IsNotExist(err) {
			t.Fatalf("node %s keeps a replay log: %v", g.cluster.id, err)
		}
	}
}

// heldReplay passes the claims of the node's replay memory on only once
// gate is closed.
type heldReplay struct {
	inner auth.SharedReplay
	gate  chan struct{}
}

func (h heldReplay) Claim(id string, key [16]byte, expiry, now int64, done func(auth.ReplayClaim)) {
	id = strings.Clone(id)
	go func() {
		<-h.gate
		h.inner.Claim(id, key, expiry, now, done)
	}()
}

// What a device sends right behind a CONNECT that waits for the cluster's
// replay memory is handled after the CONNACK, in order.
func TestClusterTokenConnectPipelined(t *testing.T) {
	srv := testredis.Start(t)
	g := tokenClusterGateway(t, srv, "gw-a", tokenSecrets(t), nil)
	gate := make(chan struct{})
	g.tokens.ShareReplay(heldReplay{inner: g.replay, gate: gate})

	r := dialRaw(t, g.PlainAddr())
	r.ver = mqttcodec.V311
	b := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30,
		ClientID: []byte("victim"), UsernameFlag: true, Username: []byte("victim"), PasswordFlag: true, Password: freshToken()})
	for pid := uint16(1); pid <= 3; pid++ {
		b = mqttcodec.AppendPublish(b, 4, &mqttcodec.Publish{Topic: []byte("tele/victim"), QoS: 1, PacketID: pid, Payload: []byte("m")})
	}
	b = mqttcodec.AppendPingreq(b)
	r.send(b)
	eventually(t, 10*time.Second, "the CONNECT waiting for redis", func() bool { return g.env.Stats.ConnectsWaited.Load() == 1 })
	if p, err := r.next(200 * time.Millisecond); err == nil {
		t.Fatalf("%s before the replay memory answered", p.Type)
	}
	close(gate)
	if p := r.read(10 * time.Second); p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != 0 {
		t.Fatalf("got %s 0x%02x, want CONNACK 0", p.Type, byte(p.Connack.ReasonCode))
	}
	for pid := uint16(1); pid <= 3; pid++ {
		if p := r.read(10 * time.Second); p.Type != mqttcodec.PUBACK || p.Ack.PacketID != pid {
			t.Fatalf("got %s %d, want PUBACK %d", p.Type, p.Ack.PacketID, pid)
		}
	}
	if p := r.read(10 * time.Second); p.Type != mqttcodec.PINGRESP {
		t.Fatalf("got %s, want PINGRESP", p.Type)
	}
}

// With Redis hung, a token CONNECT is refused with server unavailable
// (3.1.1 0x03, MQTT 5 0x88) within --cluster-timeout, while the same
// event loop goes on serving its other connections: a connected device's
// PINGREQ, a CONNECT refused at once. Once Redis is back, tokens are
// accepted again.
func TestClusterTokenRedisHung(t *testing.T) {
	srv := testredis.Start(t)
	const bound = 2 * time.Second
	g := tokenClusterGateway(t, srv, "gw-a", tokenSecrets(t), func(c *Config) {
		c.EventLoops = 1 // every plain connection on one loop
		c.ClusterTimeout = bound
		// The client waits on a hung Redis longer than the bound: the
		// bound is the replay memory's own.
		c.Cluster += "?read_timeout=30s"
	})
	connected := dialRaw(t, g.PlainAddr())
	if ack := connected.connect(&mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60,
		ClientID: []byte("victim"), UsernameFlag: true, Username: []byte("victim"), PasswordFlag: true, Password: freshToken()}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x before the pause", byte(ack.ReasonCode))
	}
	srv.Pause()
	defer srv.Resume()
	for _, v := range []struct {
		version byte
		want    mqttcodec.ReasonCode
	}{{4, rc311Unavailable}, {5, mqttcodec.ServerUnavailable}} {
		waited := g.env.Stats.ConnectsWaited.Load()
		conn, err := net.Dial("tcp", g.PlainAddr())
		if err != nil {
			t.Fatal(err)
		}
		waiting := &raw{t: t, conn: conn, r: bufio.NewReader(conn), ver: v.version}
		start := time.Now()
		waiting.send(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: v.version, CleanStart: true, KeepAlive: 30,
			ClientID: []byte("victim"), UsernameFlag: true, Username: []byte("victim"), PasswordFlag: true, Password: freshToken()}))
		eventually(t, 10*time.Second, "the CONNECT waiting for redis", func() bool { return g.env.Stats.ConnectsWaited.Load() == waited+1 })

		// The loop serves the others meanwhile.
		connected.send(mqttcodec.AppendPingreq(nil))
		if p := connected.read(10 * time.Second); p.Type != mqttcodec.PINGRESP {
			t.Fatalf("connected device got %s, want PINGRESP", p.Type)
		}
		if got := (attempt{version: 4, id: "flooder"}).connack(t, g); got != rc311NotAuthorize {
			t.Fatalf("a CONNECT without a token: 0x%02x, want 0x05", byte(got))
		}
		served := time.Since(start)
		// A loop that waited on Redis would have written this CONNACK
		// before it could answer the others.
		if p, err := waiting.next(50 * time.Millisecond); err == nil {
			t.Fatalf("the token CONNECT was answered (%s) before the others were served", p.Type)
		}

		p, err := waiting.next(bound + 10*time.Second)
		if err != nil || p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != v.want {
			t.Fatalf("v%d token CONNECT with redis hung: %v %v, want CONNACK 0x%02x", v.version, p, err, byte(v.want))
		}
		took := time.Since(start)
		t.Logf("v%d: others served within %v, token CONNECT refused after %v (bound %v)", v.version, served, took, bound)
		_ = conn.Close()
	}
	srv.Resume()
	eventually(t, 20*time.Second, "a token accepted once redis is back", func() bool {
		return (attempt{version: 4, id: "victim", password: freshToken()}).connack(t, g) == 0
	})
}

// With --token-replay-unavailable local, a token Redis cannot check in
// time is taken on the node's own word: accepted once, and its replay on
// the same node still refused. The flag takes refuse or local only.
func TestClusterTokenRedisHungLocal(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-replay-unavailable", "local"}, ""},
		{[]string{"--token-replay-unavailable", "refuse"}, ""},
		{[]string{"--token-replay-unavailable", "open"}, "--token-replay-unavailable"},
	} {
		_, err := LoadConfig(c.args, func(string) string { return "" })
		if (c.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
	if d := Defaults().TokenReplayUnavailable; d != "refuse" {
		t.Fatalf("default --token-replay-unavailable %q, want refuse", d)
	}

	srv := testredis.Start(t)
	g := tokenClusterGateway(t, srv, "gw-a", tokenSecrets(t), func(c *Config) {
		c.ClusterTimeout = 500 * time.Millisecond
		c.Cluster += "?read_timeout=30s"
		c.TokenReplayUnavailable = "local"
	})
	srv.Pause()
	defer srv.Resume()
	tok := freshToken()
	for _, want := range []mqttcodec.ReasonCode{0, rc311NotAuthorize} {
		if got := (attempt{version: 4, id: "victim", password: tok}).connack(t, g); got != want {
			t.Fatalf("redis hung, local: CONNACK 0x%02x, want 0x%02x", byte(got), byte(want))
		}
	}
	if g.env.Stats.ConnectsWaited.Load() != 1 || g.replay.Stats().TimedOut != 1 {
		t.Fatalf("waited %d, timed out %d: want the first CONNECT to wait for redis, in vain",
			g.env.Stats.ConnectsWaited.Load(), g.replay.Stats().TimedOut)
	}
}
