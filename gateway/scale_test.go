package gateway

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// compactDevice is a device that follows the control protocol with the
// project's codec and nothing else: cheap enough to run a thousand in one
// test process.
type compactDevice struct {
	id       string
	plain    string
	tlsCfg   *tls.Config
	commands atomic.Int32 // command PUBLISHes received
	payload  atomic.Value
}

// run connects on plain, queries, follows the instruction to TLS, queries
// again and acknowledges the command it is given.
func (d *compactDevice) run(ready chan<- struct{}, deadline time.Time) error {
	conn, err := net.Dial("tcp", d.plain)
	if err != nil {
		return err
	}
	in, err := d.session(conn, ready, deadline)
	_ = conn.Close()
	if err != nil {
		return err
	}
	if in.Mode != control.ModeTLS {
		return fmt.Errorf("%s: instruction to %s", d.id, in.Mode)
	}
	tconn, err := tls.DialWithDialer(&net.Dialer{Deadline: deadline}, "tcp", in.Addr, d.tlsCfg)
	if err != nil {
		return err
	}
	defer tconn.Close()
	_, err = d.session(tconn, nil, deadline)
	return err
}

// session speaks MQTT 3.1.1 on conn until it has a command (nil
// instruction) or an instruction.
func (d *compactDevice) session(conn net.Conn, ready chan<- struct{}, deadline time.Time) (*control.Instruction, error) {
	_ = conn.SetDeadline(deadline)
	out := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{ProtocolVersion: 4, CleanStart: true, KeepAlive: 60, ClientID: []byte(d.id)})
	out = mqttcodec.AppendPublish(out, 4, &mqttcodec.Publish{Topic: []byte(control.QueryTopic), QoS: 1, PacketID: 1})
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	var p mqttcodec.Packet
	var buf []byte
	// On TLS the command may come before the query's PUBACK: the gateway
	// delivers as soon as the session is online.
	queryAcked, commanded := false, false
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.id, err)
		}
		buf = append(buf, b)
		n, err := mqttcodec.Decode(buf, 4, 0, &p)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			continue
		}
		buf = buf[:0]
		switch p.Type {
		case mqttcodec.PUBACK:
			queryAcked = true
			if ready != nil {
				ready <- struct{}{}
				ready = nil
			}
		case mqttcodec.PUBLISH:
			ack := mqttcodec.AppendAck(nil, 4, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: p.Publish.PacketID})
			if string(p.Publish.Topic) == control.ControlTopic {
				in, err := control.ParseInstruction(p.Publish.Payload)
				if err != nil {
					return nil, err
				}
				_, _ = conn.Write(append(ack, mqttcodec.AppendDisconnect(nil, 4, &mqttcodec.Disconnect{})...))
				return &in, nil
			}
			if commanded {
				return nil, fmt.Errorf("%s: a second command", d.id)
			}
			commanded = true
			d.commands.Add(1)
			d.payload.Store(string(p.Publish.Payload))
			if _, err := conn.Write(ack); err != nil {
				return nil, err
			}
		}
		if commanded && queryAcked {
			// Stay a moment: a duplicate would show up now.
			_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := r.ReadByte(); err == nil {
				return nil, fmt.Errorf("%s: more bytes after the command", d.id)
			}
			return nil, nil
		}
	}
}

// A thousand plain devices each get one secure command at once: every one
// goes through the upgrade, and every command is delivered and
// acknowledged exactly once.
func TestThousandDevicesUpgrade(t *testing.T) {
	const n = 1000
	g := startGateway(t, func(c *Config) { c.SecureIdle = time.Minute })
	// Every device presents its own certificate from the gateway's CA
	// (--secure-identity cert).
	ca := newGatewayCA(t, g)
	devices := make([]*compactDevice, n)
	ready := make(chan struct{}, n)
	errs := make(chan error, n)
	deadline := time.Now().Add(90 * time.Second)
	var wg sync.WaitGroup
	for i := range devices {
		id := fmt.Sprintf("fleet-%04d", i)
		tlsCfg := clientTLS(t, g)
		tlsCfg.Certificates = []tls.Certificate{ca.device(t, id)}
		d := &compactDevice{id: id, plain: g.PlainAddr(), tlsCfg: tlsCfg}
		devices[i] = d
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.run(ready, deadline); err != nil {
				errs <- err
			}
		}()
	}
	for range n {
		select {
		case <-ready:
		case err := <-errs:
			t.Fatal(err)
		case <-time.After(60 * time.Second):
			t.Fatal("devices did not all connect")
		}
	}

	start := time.Now()
	ids := make([]string, n)
	var pw sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i, d := range devices {
		pw.Add(1)
		sem <- struct{}{}
		go func() {
			defer pw.Done()
			defer func() { <-sem }()
			ids[i], _ = postCommand(t, g, d.id, `{"topic":"devices/`+d.id+`/commands/go","payload":"`+d.id+`"}`)
		}()
	}
	pw.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	took := time.Since(start)
	for _, d := range devices {
		if got := d.commands.Load(); got != 1 {
			t.Fatalf("%s received %d commands, want 1", d.id, got)
		}
		if p, _ := d.payload.Load().(string); p != d.id {
			t.Fatalf("%s received %q", d.id, p)
		}
	}
	var lat []time.Duration
	stages := stageTimes{}
	eventually(t, 30*time.Second, "all commands delivered", func() bool {
		return g.dispatcher.Stats().Delivered.Load() == n
	})
	for _, id := range ids {
		v := commandStatus(t, g, id)
		if v.Status != "delivered" || v.Attempts != 1 {
			t.Fatalf("command %s: %s after %d attempts", id, v.Status, v.Attempts)
		}
		lat = append(lat, v.DeliveredAt.Sub(v.CreatedAt))
		stages.add(v)
	}
	stages.log(t)
	// The round: from the first command accepted to the last PUBACK.
	var first, last time.Time
	for _, id := range ids {
		v := commandStatus(t, g, id)
		if first.IsZero() || v.CreatedAt.Before(first) {
			first = v.CreatedAt
		}
		if v.DeliveredAt.After(last) {
			last = *v.DeliveredAt
		}
	}
	t.Logf("round: first command accepted to last PUBACK %s", last.Sub(first).Round(time.Millisecond))
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d devices upgraded and acknowledged in %s; POST->PUBACK p50 %s p99 %s max %s",
		n, took.Round(time.Millisecond), lat[n/2].Round(time.Millisecond), lat[n*99/100].Round(time.Millisecond), lat[n-1].Round(time.Millisecond))
	if up := g.dispatcher.Stats().Upgrades.Load(); up != n {
		t.Fatalf("upgrades %d, want %d (instructions %d)", up, n, g.dispatcher.Stats().Instructions.Load())
	}
}

// stageTimes collects, per status, how long commands took to reach it from
// their previous one: where a round's time goes (acceptance to the
// instruction, the instruction to the write on TLS, the write to PUBACK).
type stageTimes map[store.Status][]time.Duration

func (st stageTimes) add(v commandView) {
	prev := v.CreatedAt
	for _, h := range v.History {
		st[h.Status] = append(st[h.Status], h.At.Sub(prev))
		prev = h.At
	}
}

func (st stageTimes) log(t *testing.T) {
	for _, s := range []store.Status{store.StatusUpgrading, store.StatusSent, store.StatusDelivered} {
		l := st[s]
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		t.Logf("to %s: p50 %s p99 %s max %s", s, l[len(l)/2].Round(time.Millisecond),
			l[len(l)*99/100].Round(time.Millisecond), l[len(l)-1].Round(time.Millisecond))
	}
}
