package gateway

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/mqttcodec"
)

// redisClusterGateway runs a gateway whose commands and registry live in
// a Redis Cluster.
func redisClusterGateway(t *testing.T, rc *testredis.Cluster, node, data string) *Gateway {
	t.Helper()
	return startGateway(t, func(c *Config) {
		if data != "" {
			c.Data = data
		}
		c.Cluster = rc.URL()
		c.NodeID = node
		c.SecureIdle = time.Minute
	})
}

// Two gateways on a 3-primary Redis Cluster: a command posted on one
// reaches a device connected to the other at once, the same client id
// connecting to the first closes its session on the second, and a TLS
// session made on one resumes on the other.
func TestRedisClusterTwoGateways(t *testing.T) {
	rc := testredis.StartCluster(t, 3)
	data := t.TempDir() // one server certificate and CA for both
	g1 := redisClusterGateway(t, rc, "gw-1", data)
	g2 := redisClusterGateway(t, rc, "gw-2", data)
	if _, ok := g1.store.(*store.Redis); !ok {
		t.Fatalf("store on a Redis Cluster: %T", g1.store)
	}

	d := newDevice311(t, g2, "car-rc")
	d.connect(false, g2.PlainAddr())
	eventually(t, 10*time.Second, "car-rc in the cluster registry", func() bool {
		rec, ok, err := g1.members.m.Get(context.Background(), "car-rc")
		return err == nil && ok && rec.Node == "gw-2"
	})
	id, _ := postCommand(t, g1, "car-rc", `{"topic":"devices/car-rc/commands/unlock","payload":"open"}`)
	if c := nextCommand(t, d.cmds); c.payload != "open" || !c.tls {
		t.Fatalf("command %+v", c)
	}
	waitStatus(t, g1, id, "delivered")
	if v := commandStatus(t, g2, id); v.Status != store.StatusDelivered || v.ClientID != "car-rc" {
		t.Fatalf("gw-2 sees %+v", v)
	}
	var view clientView
	if code := getJSON(t, g1, "/v1/clients/car-rc", "", &view); code != http.StatusOK || !view.Connected || view.Node != "gw-2" {
		t.Fatalf("gw-1 answers for car-rc: %d %+v", code, view)
	}

	old := v5Plain(t, g2, &paho.Connect{ClientID: "car-twice", KeepAlive: 30, CleanStart: true})
	eventually(t, 10*time.Second, "car-twice in the cluster registry", func() bool {
		rec, ok, err := g1.members.m.Get(context.Background(), "car-twice")
		return err == nil && ok && rec.Node == "gw-2"
	})
	v5Plain(t, g1, &paho.Connect{ClientID: "car-twice", KeepAlive: 30, CleanStart: true})
	select {
	case dc := <-old.disconnect:
		if dc.ReasonCode != byte(mqttcodec.SessionTakenOver) {
			t.Fatalf("the older session got DISCONNECT %#x, want 0x8E", dc.ReasonCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older session on gw-2 was not closed")
	}
	eventually(t, 10*time.Second, "gw-2 no longer holds car-twice", func() bool {
		_, ok := g2.reg.Get("car-twice")
		return !ok
	})

	tc := deviceTLS(t, g1, "car-rc-tls")
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i, step := range []struct {
		g    *Gateway
		want bool
	}{{g1, false}, {g2, true}, {g1, true}, {g2, true}} {
		if got := resumes(t, step.g.TLSAddr(), tc, "car-rc-tls"); got != step.want {
			t.Fatalf("TLS handshake %d: resumed %v, want %v", i, got, step.want)
		}
	}
}
