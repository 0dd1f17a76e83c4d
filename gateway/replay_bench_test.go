package gateway

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/testredis"
	"github.com/dualgate/dualgate/mqttcodec"
)

// BenchmarkTokenConnect measures plain CONNECTs with a fresh v1 token each,
// 64 and 512 at a time (and one at a time, for the latency) over 2,000
// devices,
// on one node (the replay memory in the
// node) and on a node of a cluster (each token also claimed in Redis, in
// pipelined batches); and the same without authentication (allow-all,
// the token ignored), for what the cluster's registry alone costs. It
// reports CONNECTs per second and, for the cluster's token memory, the
// Redis round trips per CONNECT:
//
//	go test -run x -bench TokenConnect -benchtime 20000x ./gateway/
func BenchmarkTokenConnect(b *testing.B) {
	const devices = 2000
	secrets := make(map[string]string, devices)
	secret := []byte("bench-secret-0123456789abcdef!!!")
	for i := range devices {
		secrets[fmt.Sprint("dev-", i)] = hex.EncodeToString(secret)
	}
	cases := []struct {
		name           string
		token, cluster bool
		workers        int
	}{
		{"single", true, false, 64},
		{"cluster", true, true, 64},
		{"single-allow-all", false, false, 64},
		{"cluster-allow-all", false, true, 64},
		{"single-512", true, false, 512},
		{"cluster-512", true, true, 512},
		{"single-one-at-a-time", true, false, 1},
		{"cluster-one-at-a-time", true, true, 1},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			path := writeSecretsTB(b, secrets)
			g := startGateway(b, func(c *Config) {
				if tc.token {
					c.Auth, c.Secrets = "token", path
				}
				if tc.cluster {
					c.Cluster = testredis.Start(b, "appendfsync everysec").URL()
					c.NodeID = "bench"
				}
			})
			var next atomic.Int64
			var failed atomic.Value
			n := int64(b.N)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range tc.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= n {
							return
						}
						if err := tokenConnect(g.PlainAddr(), fmt.Sprint("dev-", i%devices), secret, i); err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			took := time.Since(start)
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/took.Seconds(), "connects/s")
			if g.replay != nil {
				b.ReportMetric(float64(g.replay.Stats().RoundTrips)/float64(b.N), "roundtrips/connect")
			}
		})
	}
}

// writeSecretsTB writes a secrets file for a benchmark.
func writeSecretsTB(b *testing.B, secrets map[string]string) string {
	var sb strings.Builder
	for id, s := range secrets {
		fmt.Fprintf(&sb, "%s %s\n", id, s)
	}
	p := filepath.Join(b.TempDir(), "secrets")
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

// tokenConnect opens a plain connection, sends a CONNECT with a fresh v1
// token and waits for CONNACK 0.
func tokenConnect(addr, id string, secret []byte, n int64) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	tok := control.MakeToken(secret, id, time.Now(), fmt.Sprintf("bench%010d", n))
	if _, err := conn.Write(mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 30,
		ClientID: []byte(id), UsernameFlag: true, Username: []byte(id), PasswordFlag: true, Password: []byte(tok)})); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	var buf []byte
	var p mqttcodec.Packet
	for {
		c, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("%s: no CONNACK: %w", id, err)
		}
		buf = append(buf, c)
		if k, err := mqttcodec.Decode(buf, 4, 0, &p); err != nil {
			return err
		} else if k > 0 {
			break
		}
	}
	if p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode != 0 {
		return fmt.Errorf("%s: %s 0x%02x", id, p.Type, byte(p.Connack.ReasonCode))
	}
	return nil
}
