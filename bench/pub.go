package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// pubHeader is what every payload of `dualbench pub` starts with: the
// send time (nanoseconds since the run's start, on this process's
// monotonic clock), the publisher's index and the message's sequence
// number. The subscriber is in the same process, so the two ends read one
// clock.
const pubHeader = 16

// PubConfig is a run of `dualbench pub`: publishers sending at a rate to
// one server, one subscriber receiving everything on another (or the
// same) server.
type PubConfig struct {
	// PubAddr is the server the publishers connect to; SubAddr the one
	// the subscriber connects to (empty: PubAddr). Through a gateway to a
	// broker, PubAddr is the gateway and SubAddr the broker.
	PubAddr, SubAddr string
	// Label names the path in the report, e.g. "dualgate -> mosquitto".
	Label string
	// Publishers is the number of publishing connections.
	Publishers int
	// Rate is messages per second per publisher; 0 sends as fast as the
	// server takes them (QoS 1 and 2: as fast as InFlight allows).
	Rate float64
	// Count is the number of messages per publisher.
	Count int
	// QoS of the publishes and of the subscription: 0, 1 or 2.
	QoS byte
	// PayloadSize in bytes, at least 16 (the header carrying the send time).
	PayloadSize int
	// Topic is the publishers' topic; "{i}" stands for the publisher's
	// index. Default "dualbench/pub/{i}".
	Topic string
	// SubTopic is the subscriber's filter (default "dualbench/pub/#"); a
	// gateway's --upstream-prefix is on the broker's side of the filter.
	SubTopic string
	// MQTTVersion is mqttcodec.V311 (default) or mqttcodec.V5.
	MQTTVersion byte
	// InFlight bounds the unacknowledged QoS 1 and 2 messages per
	// publisher (default 64), and an MQTT 5 server's Receive Maximum
	// bounds it too. Mosquitto's default for 3.1.1 is 20
	// (max_inflight_messages): beyond it, QoS 2 messages may be dropped.
	InFlight int
	// WriteEach makes every packet a write(2) of its own, as the tool did
	// before it coalesced: a publisher's messages that may leave at once
	// (free window slots, or due at the rate) and the subscriber's
	// acknowledgements of one read then go out one by one, which costs
	// the tool a system call per packet.
	WriteEach bool
	// ClientIDPrefix prefixes the client ids (default "dualbench-pub-").
	ClientIDPrefix string
	// Drain is the longest wait for the subscriber to receive the last
	// messages once every publisher is done (default 5 s).
	Drain time.Duration
	// ConnectTimeout bounds each connection's dial and CONNACK (default 10 s).
	ConnectTimeout time.Duration
	// OutDir receives report.md, report.json and latency.png; empty writes none.
	OutDir string
	// Progress receives a line per second while the run lasts; nil: none.
	Progress io.Writer
}

func (c PubConfig) withDefaults() (PubConfig, error) {
	if c.SubAddr == "" {
		c.SubAddr = c.PubAddr
	}
	if c.PubAddr == "" {
		return c, errors.New("bench: pub: no server address")
	}
	if c.Publishers < 1 || c.Count < 1 {
		return c, fmt.Errorf("bench: pub: %d publishers x %d messages: want at least 1 of each", c.Publishers, c.Count)
	}
	if c.QoS > 2 {
		return c, fmt.Errorf("bench: pub: QoS %d: want 0, 1 or 2", c.QoS)
	}
	if c.Rate < 0 || math.IsInf(c.Rate, 0) || math.IsNaN(c.Rate) {
		return c, fmt.Errorf("bench: pub: rate %v: want 0 or more", c.Rate)
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = 64
	}
	if c.PayloadSize < pubHeader || c.PayloadSize > 1<<20 {
		return c, fmt.Errorf("bench: pub: payload %d bytes: want %d..%d", c.PayloadSize, pubHeader, 1<<20)
	}
	if c.Topic == "" {
		c.Topic = "dualbench/pub/{i}"
	}
	if c.SubTopic == "" {
		c.SubTopic = "dualbench/pub/#"
	}
	if c.MQTTVersion == 0 {
		c.MQTTVersion = mqttcodec.V311
	}
	if c.MQTTVersion != mqttcodec.V311 && c.MQTTVersion != mqttcodec.V5 {
		return c, fmt.Errorf("bench: pub: MQTT version %d: want 4 or 5", c.MQTTVersion)
	}
	if c.InFlight <= 0 {
		c.InFlight = 64
	}
	c.InFlight = min(c.InFlight, 32768)
	if c.ClientIDPrefix == "" {
		c.ClientIDPrefix = "dualbench-pub-"
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	return c, nil
}

// PubReport is the outcome of a `dualbench pub` run. In JSON the
// durations are nanoseconds.
type PubReport struct {
	Started     time.Time `json:"started"`
	Label       string    `json:"label,omitempty"`
	PubAddr     string    `json:"pub_addr"`
	SubAddr     string    `json:"sub_addr"`
	MQTTVersion byte      `json:"mqtt_version"`
	QoS         byte      `json:"qos"`
	Publishers  int       `json:"publishers"`
	// RatePerPublisher is the requested rate, 0 for as fast as possible.
	RatePerPublisher float64 `json:"rate_per_publisher"`
	CountPerPub      int     `json:"count_per_publisher"`
	PayloadSize      int     `json:"payload_size"`
	InFlight         int     `json:"inflight"`

	// Sent counts PUBLISH packets written; Acked those the server
	// acknowledged (PUBACK, or PUBCOMP for QoS 2). Received counts the
	// subscriber's distinct messages, Duplicates the copies beyond the
	// first, Lost what was sent and never received.
	Sent       int64 `json:"sent"`
	Acked      int64 `json:"acked"`
	Received   int64 `json:"received"`
	Duplicates int64 `json:"duplicates"`
	Lost       int64 `json:"lost"`
	// Rejected counts acknowledgements with an error reason (MQTT 5).
	Rejected int64 `json:"rejected"`

	// SendSeconds runs from the first send to the last; ReceiveSeconds
	// from the first send to the last message received.
	SendSeconds    float64 `json:"send_seconds"`
	ReceiveSeconds float64 `json:"receive_seconds"`
	// SendRate is Sent / SendSeconds, ReceiveRate Received / ReceiveSeconds:
	// messages per second, all publishers together.
	SendRate    float64 `json:"send_rate"`
	ReceiveRate float64 `json:"receive_rate"`

	// EndToEnd is the latency from the send to the subscriber's receipt;
	// Ack from the send to the server's acknowledgement (QoS 1 and 2).
	EndToEnd     LatencySummary `json:"end_to_end"`
	Ack          LatencySummary `json:"ack"`
	Distribution []Quantile     `json:"end_to_end_distribution,omitempty"`

	// Complete is true when every publisher sent its count and, for QoS 1
	// and 2, every message was acknowledged and received; StoppedBy says
	// what ended an incomplete run.
	Complete  bool   `json:"complete"`
	StoppedBy string `json:"stopped_by,omitempty"`
}

// RunPub runs publishers and a subscriber as cfg says, writes the summary
// to out and the report files to cfg.OutDir, and returns the report. A run
// cut short by ctx still reports what it measured.
func RunPub(ctx context.Context, cfg PubConfig, out io.Writer, log *zap.Logger) (*PubReport, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &pubRun{cfg: cfg, log: log, e2e: NewLatency(), ack: NewLatency(), base: time.Now()}
	r.seen = make([][]uint64, cfg.Publishers)
	for i := range r.seen {
		r.seen[i] = make([]uint64, (cfg.Count+63)/64)
	}
	rep := &PubReport{
		Started: r.base.UTC(), Label: cfg.Label, PubAddr: cfg.PubAddr, SubAddr: cfg.SubAddr,
		MQTTVersion: cfg.MQTTVersion, QoS: cfg.QoS, Publishers: cfg.Publishers, RatePerPublisher: cfg.Rate,
		CountPerPub: cfg.Count, PayloadSize: cfg.PayloadSize, InFlight: cfg.InFlight,
	}
	stoppedBy := r.run(ctx)
	r.fill(rep)
	rep.StoppedBy = stoppedBy
	want := int64(cfg.Publishers) * int64(cfg.Count)
	rep.Complete = stoppedBy == "" && rep.Sent == want && (cfg.QoS == 0 || (rep.Acked == want && rep.Received == want))
	if rep.StoppedBy == "" && !rep.Complete {
		rep.StoppedBy = "messages missing after the drain period"
	}
	if out != nil {
		writePubText(out, rep)
	}
	if cfg.OutDir != "" {
		if err := rep.WriteFiles(cfg.OutDir, r.e2e, r.ack); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

type pubRun struct {
	cfg  PubConfig
	log  *zap.Logger
	base time.Time // the run's clock: payload times are time.Since(base)

	e2e, ack *Latency

	sent, acked, rejected atomic.Int64
	firstSend, lastSend   atomic.Int64 // ns since base; firstSend 0 = none yet
	lastRecv              atomic.Int64

	mu         sync.Mutex // guards seen, received, duplicates
	seen       [][]uint64 // per publisher, a bit per sequence number
	received   int64
	duplicates int64
}

func (r *pubRun) now() int64 { return max(1, int64(time.Since(r.base))) }

// run connects the subscriber, then the publishers, sends, waits for the
// last messages, and returns what stopped the run early ("" for nothing).
func (r *pubRun) run(ctx context.Context) string {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := r.dial(ctx, r.cfg.SubAddr, r.cfg.ClientIDPrefix+"sub")
	if err != nil {
		return err.Error()
	}
	if err := sub.subscribe(r.cfg.SubTopic, r.cfg.QoS); err != nil {
		sub.close()
		return err.Error()
	}
	subDone := make(chan error, 1)
	var subWG sync.WaitGroup
	subWG.Add(1)
	go func() {
		defer subWG.Done()
		subDone <- r.receive(sub)
	}()
	defer func() {
		sub.close()
		subWG.Wait()
	}()

	pubs := make([]*mqttConn, r.cfg.Publishers)
	for i := range pubs {
		if pubs[i], err = r.dial(ctx, r.cfg.PubAddr, r.cfg.ClientIDPrefix+strconv.Itoa(i)); err != nil {
			for _, p := range pubs[:i] {
				p.close()
			}
			return err.Error()
		}
	}
	stopProgress := r.progress()
	defer stopProgress()

	var wg sync.WaitGroup
	errs := make(chan error, len(pubs))
	for i, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.publish(ctx, i, p); err != nil {
				errs <- fmt.Errorf("publisher %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	stopped := ""
	for err := range errs {
		if stopped == "" {
			stopped = err.Error()
		}
	}
	if ctx.Err() != nil {
		return "the run's time limit (--max-duration)"
	}

	// Wait for the subscriber: everything sent (QoS 1 and 2) or nothing
	// new for the drain period.
	want := r.sent.Load()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last, lastChange := r.receivedCount(), time.Now()
	for r.receivedCount() < want {
		select {
		case <-ctx.Done():
			return "the run's time limit (--max-duration)"
		case err := <-subDone:
			if stopped == "" && err != nil {
				stopped = "subscriber: " + err.Error()
			}
			return stopped
		case <-tick.C:
		}
		if n := r.receivedCount(); n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > r.cfg.Drain {
			break
		}
	}
	return stopped
}

func (r *pubRun) receivedCount() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received
}

// progress prints sent and received counts once a second.
func (r *pubRun) progress() func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(r.cfg.Progress, "%6.1fs  sent %d  acked %d  received %d\n",
					time.Since(r.base).Seconds(), r.sent.Load(), r.acked.Load(), r.receivedCount())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// dial connects one client and waits for its CONNACK.
func (r *pubRun) dial(ctx context.Context, addr, id string) (*mqttConn, error) {
	d := net.Dialer{Timeout: r.cfg.ConnectTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &mqttConn{nc: nc, version: r.cfg.MQTTVersion, rd: make([]byte, 64<<10)}
	pkt := mqttcodec.AppendConnect(nil, &mqttcodec.Connect{
		ProtocolVersion: r.cfg.MQTTVersion, CleanStart: true, KeepAlive: 300, ClientID: []byte(id),
	})
	_ = nc.SetDeadline(time.Now().Add(r.cfg.ConnectTimeout))
	if err := c.write(pkt); err != nil {
		c.close()
		return nil, err
	}
	p, err := c.next()
	if err == nil && (p.Type != mqttcodec.CONNACK || p.Connack.ReasonCode.IsError()) {
		err = fmt.Errorf("CONNACK refused (%s, reason 0x%02x)", p.Type, byte(p.Connack.ReasonCode))
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("%s as %s: %w", addr, id, err)
	}
	if props := &p.Connack.Properties; props.Has(mqttcodec.PropReceiveMaximum) {
		c.receiveMax = int(props.ReceiveMaximum)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// publish sends publisher i's messages at the configured rate, at most
// InFlight unacknowledged, and waits for the last acknowledgements.
func (r *pubRun) publish(ctx context.Context, i int, c *mqttConn) error {
	topic := []byte(strings.ReplaceAll(r.cfg.Topic, "{i}", strconv.Itoa(i)))
	payload := make([]byte, r.cfg.PayloadSize)
	for j := pubHeader; j < len(payload); j++ {
		payload[j] = byte('a' + j%26)
	}
	inflight := r.cfg.InFlight
	if c.receiveMax > 0 {
		inflight = min(inflight, c.receiveMax) // the server's Receive Maximum (MQTT 5)
	}
	window := make(chan struct{}, inflight)
	sentAt := make([]int64, 65536) // by packet id
	ackErr := make(chan error, 1)
	var acks sync.WaitGroup
	if r.cfg.QoS > 0 {
		acks.Add(1)
		go func() {
			defer acks.Done()
			ackErr <- r.readAcks(c, window, sentAt)
		}()
	}
	// Close the socket when the run ends, so that reads and writes
	// return; the acknowledgement reader ends with it.
	stop := context.AfterFunc(ctx, c.close)
	defer func() {
		stop()
		c.close()
		acks.Wait()
	}()

	// What may leave at once leaves in one write: the messages whose
	// window slots are free (QoS 1 and 2) or that are due (a rate), at
	// most maxBatch bytes; the batch is written before the publisher
	// waits for a slot or for the next message's time. A message's send
	// time is taken as it joins the batch.
	var buf []byte
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		err := c.write(buf)
		buf = buf[:0]
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	// take waits for a window slot.
	take := func() error {
		select {
		case window <- struct{}{}:
			return nil
		case err := <-ackErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var id uint16
	start := time.Now()
	for seq := 0; seq < r.cfg.Count; seq++ {
		if r.cfg.Rate > 0 {
			due := start.Add(time.Duration(float64(seq) / r.cfg.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				if err := flush(); err != nil {
					return err
				}
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
		}
		if r.cfg.QoS > 0 {
			select {
			case window <- struct{}{}:
			default:
				if err := flush(); err != nil {
					return err
				}
				if err := take(); err != nil {
					return err
				}
			}
			if id++; id == 0 {
				id = 1
			}
		}
		now := r.now()
		binary.BigEndian.PutUint64(payload[0:], uint64(now))
		binary.BigEndian.PutUint32(payload[8:], uint32(i))
		binary.BigEndian.PutUint32(payload[12:], uint32(seq))
		if r.cfg.QoS > 0 {
			atomic.StoreInt64(&sentAt[id], now)
		}
		buf = mqttcodec.AppendPublish(buf, r.cfg.MQTTVersion, &mqttcodec.Publish{
			QoS: r.cfg.QoS, Topic: topic, PacketID: id, Payload: payload,
		})
		r.sent.Add(1)
		storeMin(&r.firstSend, now)
		storeMax(&r.lastSend, now)
		if r.cfg.WriteEach || len(buf) >= maxBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if r.cfg.QoS == 0 {
		return nil
	}
	// Every slot back: every message acknowledged.
	for range inflight {
		if err := take(); err != nil {
			return err
		}
	}
	return nil
}

// readAcks reads a publisher's PUBACKs (QoS 1) or PUBRECs and PUBCOMPs
// (QoS 2), freeing a window slot per completed message. The PUBRELs
// answering one read leave in one write, before the next read.
func (r *pubRun) readAcks(c *mqttConn, window chan struct{}, sentAt []int64) error {
	for {
		p, err := c.next()
		if err != nil {
			return err
		}
		switch p.Type {
		case mqttcodec.PUBACK, mqttcodec.PUBCOMP:
			if p.Ack.ReasonCode.IsError() {
				r.rejected.Add(1)
			}
			if at := atomic.LoadInt64(&sentAt[p.Ack.PacketID]); at > 0 {
				r.ack.Record(time.Duration(r.now() - at))
			}
			r.acked.Add(1)
			<-window
		case mqttcodec.PUBREC:
			if p.Ack.ReasonCode.IsError() {
				r.rejected.Add(1)
				r.acked.Add(1)
				<-window
				continue
			}
			c.answers = mqttcodec.AppendAck(c.answers, c.version, mqttcodec.PUBREL, &mqttcodec.Ack{PacketID: p.Ack.PacketID})
			if r.cfg.WriteEach {
				if err := c.answer(); err != nil {
					return err
				}
			}
		case mqttcodec.DISCONNECT:
			return fmt.Errorf("server disconnected (reason 0x%02x)", byte(p.Disconnect.ReasonCode))
		}
	}
}

// maxBatch bounds what the tool gathers for one write: a publisher's
// messages, or the acknowledgements of what one read brought.
const maxBatch = 64 << 10

// receive reads the subscriber's messages until its connection closes.
// The acknowledgements of what one read brought leave in one write, made
// before the next read (WriteEach: one write each).
func (r *pubRun) receive(c *mqttConn) error {
	for {
		p, err := c.next()
		if err != nil {
			return err
		}
		n := len(c.answers)
		switch p.Type {
		case mqttcodec.PUBLISH:
			pub := &p.Publish
			r.record(pub.Payload)
			switch pub.QoS {
			case 1:
				c.answers = mqttcodec.AppendAck(c.answers, c.version, mqttcodec.PUBACK, &mqttcodec.Ack{PacketID: pub.PacketID})
			case 2:
				c.answers = mqttcodec.AppendAck(c.answers, c.version, mqttcodec.PUBREC, &mqttcodec.Ack{PacketID: pub.PacketID})
			}
		case mqttcodec.PUBREL:
			c.answers = mqttcodec.AppendAck(c.answers, c.version, mqttcodec.PUBCOMP, &mqttcodec.Ack{PacketID: p.Ack.PacketID})
		case mqttcodec.DISCONNECT:
			return fmt.Errorf("server disconnected (reason 0x%02x)", byte(p.Disconnect.ReasonCode))
		}
		if len(c.answers) > n && (r.cfg.WriteEach || len(c.answers) >= maxBatch) {
			if err := c.answer(); err != nil {
				return err
			}
		}
	}
}

// record counts one received payload and its latency; payloads of other
// senders (too short, or out of range) are ignored.
func (r *pubRun) record(payload []byte) {
	if len(payload) < pubHeader {
		return
	}
	now := r.now()
	at := int64(binary.BigEndian.Uint64(payload[0:]))
	pub := int(binary.BigEndian.Uint32(payload[8:]))
	seq := int(binary.BigEndian.Uint32(payload[12:]))
	if pub >= r.cfg.Publishers || seq >= r.cfg.Count || at <= 0 || at > now {
		return
	}
	r.mu.Lock()
	word, bit := &r.seen[pub][seq/64], uint64(1)<<(seq%64)
	dup := *word&bit != 0
	*word |= bit
	if dup {
		r.duplicates++
	} else {
		r.received++
	}
	r.mu.Unlock()
	if !dup {
		r.e2e.Record(time.Duration(now - at))
		storeMax(&r.lastRecv, now)
	}
}

func (r *pubRun) fill(rep *PubReport) {
	rep.Sent, rep.Acked, rep.Rejected = r.sent.Load(), r.acked.Load(), r.rejected.Load()
	r.mu.Lock()
	rep.Received, rep.Duplicates = r.received, r.duplicates
	r.mu.Unlock()
	rep.Lost = max(0, rep.Sent-rep.Received)
	first := r.firstSend.Load()
	if first > 0 {
		rep.SendSeconds = float64(r.lastSend.Load()-first) / 1e9
		if last := r.lastRecv.Load(); last > first {
			rep.ReceiveSeconds = float64(last-first) / 1e9
		}
	}
	if rep.SendSeconds > 0 {
		rep.SendRate = float64(rep.Sent) / rep.SendSeconds
	}
	if rep.ReceiveSeconds > 0 {
		rep.ReceiveRate = float64(rep.Received) / rep.ReceiveSeconds
	}
	rep.EndToEnd, rep.Ack = r.e2e.Summary(), r.ack.Summary()
	rep.Distribution = r.e2e.Distribution(DistributionPercentiles())
}

// mqttConn is a minimal MQTT client connection: writes are serialized,
// reads belong to one goroutine.
type mqttConn struct {
	nc      net.Conn
	version byte
	// receiveMax is the server's Receive Maximum (MQTT 5), 0 when unsaid.
	receiveMax int
	wmu        sync.Mutex // serializes writes
	rd         []byte
	buf        []byte // bytes read and not yet decoded
	pkt        mqttcodec.Packet
	once       sync.Once
	// answers are acknowledgements the reading goroutine has gathered;
	// next writes them in one write before it blocks on a read.
	answers []byte
}

// answer writes the gathered acknowledgements; only the reading
// goroutine calls it.
func (c *mqttConn) answer() error {
	if len(c.answers) == 0 {
		return nil
	}
	err := c.write(c.answers)
	c.answers = c.answers[:0]
	return err
}

func (c *mqttConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(b)
	return err
}

// next returns the next packet; its byte slices are valid until the next
// call.
func (c *mqttConn) next() (*mqttcodec.Packet, error) {
	for {
		if len(c.buf) > 0 {
			n, err := mqttcodec.Decode(c.buf, c.version, DefaultMaxPacket, &c.pkt)
			if err != nil {
				return nil, fmt.Errorf("decode: %w", err)
			}
			if n > 0 {
				// Keep the rest; the packet's views stay valid because the
				// consumed bytes are only overwritten by the next read.
				c.buf = c.buf[n:]
				return &c.pkt, nil
			}
		}
		if len(c.buf) == 0 {
			c.buf = c.rd[:0]
		} else if cap(c.buf)-len(c.buf) < 4096 {
			c.buf = append(make([]byte, 0, max(len(c.rd), 2*len(c.buf))), c.buf...)
		}
		if err := c.answer(); err != nil {
			return nil, err
		}
		n, err := c.nc.Read(c.buf[len(c.buf):cap(c.buf)])
		if n > 0 {
			c.buf = c.buf[:len(c.buf)+n]
		}
		if err != nil && n == 0 {
			return nil, err
		}
	}
}

func (c *mqttConn) subscribe(filter string, qos byte) error {
	pkt := mqttcodec.AppendSubscribe(nil, c.version, &mqttcodec.Subscribe{
		PacketID: 1, Subscriptions: []mqttcodec.Subscription{{Filter: []byte(filter), QoS: qos}},
	})
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	if err := c.write(pkt); err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	p, err := c.next()
	if err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	if p.Type != mqttcodec.SUBACK || len(p.Suback.ReasonCodes) != 1 || p.Suback.ReasonCodes[0].IsError() {
		return fmt.Errorf("subscribe %q: refused (%s)", filter, p.Type)
	}
	return nil
}

// close disconnects cleanly and closes the socket; safe to call twice and
// from any goroutine.
func (c *mqttConn) close() {
	c.once.Do(func() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.write(mqttcodec.AppendDisconnect(nil, c.version, &mqttcodec.Disconnect{}))
		_ = c.nc.Close()
	})
}

// WriteFiles writes report.json, report.md and latency.png (when a chart
// renderer is registered) into dir.
func (r *PubReport) WriteFiles(dir string, e2e, ack *Latency) error {
	if err := writeReportFiles(dir, r, r.WriteMarkdown); err != nil {
		return err
	}
	series := []LatencySeries{{Name: "end to end (send -> subscriber)", Quantiles: e2e.ChartQuantiles()}}
	if r.QoS > 0 {
		series = append(series, LatencySeries{Name: fmt.Sprintf("publisher's QoS %d acknowledgement", r.QoS), Quantiles: ack.ChartQuantiles()})
	}
	err := LatencyChart(filepath.Join(dir, "latency.png"), "Publish latency: "+r.path()+", "+r.shape(), series)
	if errors.Is(err, ErrEmptyChart) {
		return nil
	}
	return err
}

func (r *PubReport) path() string {
	p := r.PubAddr
	if r.SubAddr != r.PubAddr {
		p += " -> " + r.SubAddr
	}
	if r.Label != "" {
		p = r.Label + " (" + p + ")"
	}
	return p
}

func (r *PubReport) shape() string {
	rate := "as fast as possible"
	if r.RatePerPublisher > 0 {
		rate = fmt.Sprintf("%g msg/s each", r.RatePerPublisher)
	}
	return fmt.Sprintf("QoS %d, %d B, %d publishers x %d at %s, MQTT %s", r.QoS, r.PayloadSize, r.Publishers, r.CountPerPub, rate, mqttName(int(r.MQTTVersion)))
}

// WriteMarkdown renders the report as Markdown.
func (r *PubReport) WriteMarkdown(w io.Writer) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Publish throughput and latency\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| path | publishers -> %s |\n", r.path())
	fmt.Fprintf(&b, "| load | %s, in flight %d |\n", r.shape(), r.InFlight)
	fmt.Fprintf(&b, "| started | %s |\n", r.Started.Format(time.RFC3339))
	complete := "yes"
	if !r.Complete {
		complete = "no: " + r.StoppedBy
	}
	fmt.Fprintf(&b, "| complete | %s |\n\n", complete)
	fmt.Fprintf(&b, "| sent | acked | received | lost | duplicates | rejected | send rate | receive rate |\n")
	fmt.Fprintf(&b, "|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| %d | %d | %d | %d | %d | %d | %.0f msg/s | %.0f msg/s |\n\n",
		r.Sent, r.Acked, r.Received, r.Lost, r.Duplicates, r.Rejected, r.SendRate, r.ReceiveRate)
	fmt.Fprintf(&b, "| latency | samples | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| end to end (send -> subscriber) | %s |\n", latencyCells(r.EndToEnd))
	if r.QoS > 0 {
		fmt.Fprintf(&b, "| QoS %d acknowledgement | %s |\n", r.QoS, latencyCells(r.Ack))
	}
	fmt.Fprintf(&b, "\nA percentile is shown only from the samples it needs (p90: 10, p99: 100).\n")
	_, _ = io.WriteString(w, b.String())
}

// latencyCells formats a summary's cells, leaving out the percentiles the
// sample count cannot support.
func latencyCells(s LatencySummary) string {
	cell := func(d time.Duration, need int64) string {
		if s.Count < need {
			return "–"
		}
		return fmtMs(d)
	}
	return fmt.Sprintf("%d | %s | %s | %s | %s", s.Count, cell(s.P50, 1), cell(s.P90, 10), cell(s.P99, 100), cell(s.Max, 1))
}

func writePubText(w io.Writer, r *PubReport) {
	fmt.Fprintf(w, "publishers -> %s\n%s\n", r.path(), r.shape())
	fmt.Fprintf(w, "sent %d  acked %d  received %d  lost %d  duplicates %d  rejected %d\n",
		r.Sent, r.Acked, r.Received, r.Lost, r.Duplicates, r.Rejected)
	fmt.Fprintf(w, "send rate %.0f msg/s  receive rate %.0f msg/s\n", r.SendRate, r.ReceiveRate)
	fmt.Fprintf(w, "end to end: %s\n", r.EndToEnd)
	if r.QoS > 0 {
		fmt.Fprintf(w, "ack:        %s\n", r.Ack)
	}
	if !r.Complete {
		fmt.Fprintf(w, "incomplete: %s\n", r.StoppedBy)
	}
}

// storeMin lowers v to n when n is smaller or v is still 0 (unset).
func storeMin(v *atomic.Int64, n int64) {
	for {
		old := v.Load()
		if old != 0 && old <= n {
			return
		}
		if v.CompareAndSwap(old, n) {
			return
		}
	}
}
