package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dualgate/dualgate/mqttcodec"
)

// ErrClosed is returned by Start after Stop.
var ErrClosed = errors.New("bridge: stopped")

// Bridge connects the gateway to the upstream broker through a small pool
// of MQTT 5 or MQTT 3.1.1 connections. Build it with New, then Start; Stop ends it.
// Its methods are safe for concurrent use.
type Bridge struct {
	cfg    Config
	up     upstream
	log    *zap.Logger // events that are rare by nature
	hot    *zap.Logger // per-message events, sampled
	cmd    *template   // nil: no command subscription
	cmdSub string      // the command subscription as sent upstream

	lanes   []*lane
	subLane *lane // holds the devices' subscriptions

	mem   budget
	spool atomic.Pointer[spool] // nil: memory only
	// handoff bounds the QoS 1 messages waiting in spillq for the
	// spiller, which writes them to the spool off the devices' loops.
	handoff budget
	spillq  chan *entry

	life     sync.Mutex // serialises Start and Stop
	started  atomic.Bool
	closing  atomic.Bool
	stopOnce sync.Once
	stopErr  error
	stop     chan struct{} // closed by Stop
	wg       sync.WaitGroup

	proto    atomic.Value // string: the protocol of the latest CONNACK
	fellBack atomic.Bool  // the broker refused MQTT 5: every connection speaks 3.1.1

	stats counters
}

// Protocol is the MQTT version the bridge speaks to the broker,
// Protocol5 or Protocol311, or "" before the first CONNACK.
func (b *Bridge) Protocol() string {
	p, _ := b.proto.Load().(string)
	return p
}

// SharedSubscriptions reports whether devices' shared subscriptions can be
// held upstream: the bridge speaks MQTT 5 and the broker's CONNACK did not
// say Shared Subscription Available = 0.
func (b *Bridge) SharedSubscriptions() bool {
	return b.Protocol() == Protocol5 && b.subLane.c().sharedOK()
}

// fallBack makes every connection speak MQTT 3.1.1 from its next attempt.
func (b *Bridge) fallBack() {
	if b.fellBack.CompareAndSwap(false, true) {
		b.log.Warn("the upstream broker refused MQTT 5 as an unsupported protocol version; the bridge speaks MQTT 3.1.1 to it")
	}
}

func (b *Bridge) isStopping() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// New checks cfg and builds a Bridge; nothing is connected before Start.
func New(cfg Config) (*Bridge, error) {
	c := cfg.withDefaults()
	up, err := parseUpstream(&c)
	if err != nil {
		return nil, err
	}
	if c.Protocol != Protocol5 && c.Protocol != Protocol311 {
		return nil, fmt.Errorf("bridge: Protocol %q is neither %q nor %q", c.Protocol, Protocol5, Protocol311)
	}
	if c.PoolSize > maxPoolSize {
		return nil, fmt.Errorf("bridge: PoolSize %d is more than %d", c.PoolSize, maxPoolSize)
	}
	if err := checkPrefix(c.TopicPrefix); err != nil {
		return nil, err
	}
	if strings.ContainsAny(c.ClientIDPrefix, "+#/\x00") {
		return nil, fmt.Errorf("bridge: ClientIDPrefix %q must not hold '+', '#', '/' or NUL", c.ClientIDPrefix)
	}
	b := &Bridge{
		cfg:  c,
		up:   up,
		log:  c.Logger.Named("bridge"),
		stop: make(chan struct{}),
		mem: budget{maxCount: c.BufferMessages, maxBytes: c.BufferBytes,
			shareCount: c.DeviceBufferMessages, shareBytes: c.DeviceBufferBytes},
		handoff: budget{maxCount: c.SpillQueue, maxBytes: c.SpillQueueBytes},
		spillq:  make(chan *entry, c.SpillQueue),
	}
	b.hot = b.log.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(core, time.Second, 5, 1000)
	}))
	if c.SubmitCommand != nil {
		if b.cmd, err = compileTemplate(c.CommandFilter, true); err != nil {
			return nil, fmt.Errorf("bridge: CommandFilter: %w", err)
		}
		if strings.ContainsAny(c.SharedGroup, "/+#\x00") {
			return nil, fmt.Errorf("bridge: SharedGroup %q must not hold '/', '+', '#' or NUL", c.SharedGroup)
		}
		b.cmdSub = "$share/" + c.SharedGroup + "/" + c.TopicPrefix + b.cmd.filter
	}
	if err := compileFilters("PlainAllowed", c.PlainAllowed); err != nil {
		return nil, err
	}
	for i := range c.PoolSize {
		b.lanes = append(b.lanes, newLane(b, i))
	}
	b.subLane = b.lanes[len(b.lanes)-1]
	return b, nil
}

// Start opens the spill files (replaying what the previous run left) and
// connects the pool in the background: an unreachable broker is not an
// error, messages wait (see Ready). ctx bounds the replay.
func (b *Bridge) Start(ctx context.Context) error {
	b.life.Lock()
	defer b.life.Unlock()
	if b.closing.Load() {
		return ErrClosed
	}
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("bridge: already started")
	}
	if dir := b.cfg.BufferDir; dir != "" {
		sp, recs, err := openSpool(ctx, dir, b.cfg.SpillMessages, b.cfg.SpillBytes, b.cfg.SpillKeepFree, b.log)
		if err != nil {
			b.started.Store(false)
			return err
		}
		b.replay(recs)
		b.spool.Store(sp)
		b.wg.Add(1)
		go b.spiller()
	}
	for _, l := range b.lanes {
		l.start()
	}
	b.log.Info("upstream bridge started", zap.String("url", b.up.url.String()),
		zap.Int("pool", len(b.lanes)), zap.String("client_id_prefix", b.cfg.ClientIDPrefix),
		zap.Bool("commands", b.cmd != nil))
	return nil
}

// replay queues the messages the spill files hold, ahead of anything
// published before Start.
func (b *Bridge) replay(recs []spooled) {
	if len(recs) == 0 {
		return
	}
	per := make([][]*entry, len(b.lanes))
	for _, r := range recs {
		e := &entry{clientID: r.clientID, qos: max(r.qos, 1), retain: r.retain, spilled: true, ref: r.ref}
		i := b.laneIndex(r.clientID)
		per[i] = append(per[i], e)
	}
	for i, es := range per {
		b.lanes[i].prepend(es)
	}
	b.stats.replayed.Add(uint64(len(recs)))
	b.log.Info("messages left waiting by the previous run are queued for the broker", zap.Int("messages", len(recs)))
}

// Stop refuses new publishes, waits (until ctx ends) for what is queued
// to reach the broker while it is reachable, and disconnects. Messages still
// waiting are written to the spill directory, fsynced, and acknowledged to
// their devices with Success; without a BufferDir they are refused with
// 0x80 (unspecified error). Stop may be called more than once.
func (b *Bridge) Stop(ctx context.Context) error {
	b.stopOnce.Do(func() { b.stopErr = b.shutdown(ctx) })
	return b.stopErr
}

func (b *Bridge) shutdown(ctx context.Context) error {
	b.life.Lock()
	defer b.life.Unlock()
	b.closing.Store(true)
	started := b.started.Load()
	if started {
		b.drain(ctx)
	}
	close(b.stop)
	for _, l := range b.lanes {
		l.stopTimers()
	}
	b.wg.Wait()
	if started {
		var wg sync.WaitGroup
		for _, l := range b.lanes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.c().disconnect()
			}()
		}
		wg.Wait()
	}
	var left []*entry
	for _, l := range b.lanes {
		left = append(left, l.close()...)
	}
	err := b.save(left)
	b.log.Info("upstream bridge stopped")
	return err
}

// drain waits until nothing is queued or in flight, ctx ends, or no
// connection that has work is up.
func (b *Bridge) drain(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		pending, moving := false, false
		for _, l := range b.lanes {
			if l.pending() {
				pending = true
				moving = moving || l.c().open()
			}
		}
		if !pending || !moving {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// save keeps the messages still waiting at Stop for the next start.
func (b *Bridge) save(left []*entry) error {
	keep := left[:0]
	for _, e := range left {
		if e.qos == 0 {
			b.stats.dropped[dropStopping].Add(1)
			b.release(e)
			continue
		}
		keep = append(keep, e)
	}
	sp := b.spool.Load()
	if sp == nil {
		if len(keep) > 0 {
			b.log.Warn("messages still waiting for the broker at stop are refused to their devices; set a buffer directory to keep them",
				zap.Int("messages", len(keep)))
		}
		for _, e := range keep {
			b.stats.abandoned.Add(1)
			b.finish(e, mqttcodec.UnspecifiedError)
		}
		return nil
	}
	defer sp.close()
	recs := make([][]byte, 0, len(keep))
	saved := keep[:0]
	for _, e := range keep {
		if !e.spilled {
			recs = append(recs, appendRecordMeta(nil, e.clientID, e.topic, e.payload, e.qos, e.retain,
				recMeta{props: e.props, expires: e.expires}))
			saved = append(saved, e)
			continue
		}
		rec, err := sp.readRaw(e.ref)
		if err != nil {
			b.log.Error("a spilled message cannot be read back; refusing it", zap.String("client", e.clientID), zap.Error(err))
			b.stats.abandoned.Add(1)
			b.finish(e, mqttcodec.UnspecifiedError)
			continue
		}
		recs = append(recs, rec)
		saved = append(saved, e)
	}
	if err := sp.persist(recs); err != nil {
		for _, e := range saved {
			b.stats.abandoned.Add(1)
			b.finish(e, mqttcodec.UnspecifiedError)
		}
		return fmt.Errorf("bridge: keeping %d waiting messages: %w", len(saved), err)
	}
	for _, e := range saved {
		b.stats.saved.Add(1)
		b.finish(e, mqttcodec.Success)
	}
	if len(saved) > 0 {
		b.log.Info("messages still waiting for the broker are kept for the next start",
			zap.Int("messages", len(saved)), zap.String("dir", b.cfg.BufferDir))
	}
	return nil
}

// Ready reports whether every connection of the pool is up.
func (b *Bridge) Ready() bool {
	if !b.started.Load() || b.closing.Load() {
		return false
	}
	for _, l := range b.lanes {
		if !l.c().open() {
			return false
		}
	}
	return true
}

// Stats is a snapshot of the bridge's state and counters.
type Stats struct {
	// Pool is the number of connections; Connected how many are up.
	Pool, Connected int
	// Protocol is the MQTT version spoken to the broker (Bridge.Protocol).
	Protocol string
	// Buffered counts the messages waiting for the broker (queued or sent
	// and not yet acknowledged), BufferedBytes their topics and payloads;
	// Spilled and SpilledBytes the part of them in the spill files.
	Buffered      int
	BufferedBytes int64
	Spilled       int
	SpilledBytes  int64
	// InFlight counts publishes sent and not yet acknowledged.
	InFlight int
	// Subscriptions counts the filters held upstream for devices.
	Subscriptions int
	// CommandsSubscribed reports that the broker acknowledged the command
	// subscription on the current connection.
	CommandsSubscribed bool

	// ForwardedUp counts device messages the broker took: acknowledged
	// (QoS 1 and 2) or written (QoS 0).
	ForwardedUp uint64
	// ForwardedDown counts broker messages handed to Deliver and
	// DeliverRetained.
	ForwardedDown uint64
	// RetainedDelivered counts retained messages handed to
	// DeliverRetained; RetainedSkipped those no new subscriber waited for.
	RetainedDelivered, RetainedSkipped uint64
	// Unrouted counts broker messages for nobody (outside the prefix, or
	// on a connection that holds no subscription for them).
	Unrouted uint64
	// CommandCopies counts command messages that arrived through a
	// device's subscription and were dropped: commands enter only through
	// the command subscription.
	CommandCopies uint64

	// Commands counts commands SubmitCommand accepted; CommandErrors its
	// failures (the broker sends those again); CommandsRejected the
	// commands dropped for good (no client id, ErrCommandRejected).
	Commands, CommandErrors, CommandsRejected uint64
	// CommandCycles counts connections cycled to have the broker send
	// unaccepted commands again.
	CommandCycles uint64
	// CommandsRetained counts retained messages on the command topic,
	// dropped: a retained message is never a command. CommandsDuplicate
	// counts redeliveries of commands already stored, dropped.
	CommandsRetained, CommandsDuplicate uint64

	// DroppedQoS0 counts QoS 0 messages dropped, the sum of the reasons
	// below. DroppedDisconnected: the device's connection to the broker
	// was down. DroppedDeviceShare: the device held its whole share of the
	// memory buffer (it publishes faster than the broker takes).
	// DroppedBufferFull: the memory buffer was full. DroppedStopping: the
	// bridge was stopping.
	DroppedQoS0                             uint64
	DroppedDisconnected, DroppedDeviceShare uint64
	DroppedBufferFull, DroppedStopping      uint64
	// Handoff counts QoS 1 messages waiting for the spiller to write them
	// to the spill files (part of Buffered); HandoffFull the publishes
	// refused with QuotaExceeded because the spiller was that far behind.
	Handoff     int
	HandoffFull uint64
	// Throttled counts the times a device was paused for filling its QoS
	// 0 share (Config.Throttle).
	Throttled uint64
	// SpilledTotal counts messages written to the spill files.
	SpilledTotal uint64
	// Refused counts publishes refused for their topic (0x87, 0x90), by
	// the bridge or, on MQTT 5, by the broker's acknowledgement (its
	// reason goes to the device).
	Refused uint64
	// QuotaExceeded counts QoS 1 publishes pushed back because the buffer
	// was full (0x97).
	QuotaExceeded uint64
	// SpillFull counts the part of QuotaExceeded refused because the spill
	// files were at a cap (SpillMessages, SpillBytes) or their file system
	// short of space (SpillKeepFree, or full).
	SpillFull uint64
	// Abandoned counts QoS 1 messages given up and refused to their device
	// (0x80): resent too often, unreadable spill record, or stopped
	// without a BufferDir.
	Abandoned uint64
	// TooLarge counts messages refused (0x95) or, at QoS 0, dropped
	// because their PUBLISH was larger than the broker's Maximum Packet
	// Size (MQTT 5 CONNACK).
	TooLarge uint64
	// Saved counts messages written to the spill directory at Stop;
	// Replayed those read back at Start.
	Saved, Replayed uint64

	// Reconnects counts connections re-established after a loss;
	// ConnectionLosses the losses.
	Reconnects, ConnectionLosses uint64
	// SubscribeFailures counts filters the broker refused in a SUBACK.
	SubscribeFailures uint64
	// Expired counts device messages whose Message Expiry Interval ran
	// out before they could be sent: acknowledged to the device as taken,
	// and not sent.
	Expired uint64
}

type counters struct {
	forwardedUp, forwardedDown              atomic.Uint64
	retainedDelivered, retainedSkipped      atomic.Uint64
	unrouted, commandCopies                 atomic.Uint64
	commands, commandErrors, commandsReject atomic.Uint64
	commandCycles                           atomic.Uint64
	commandsRetained, commandsDuplicate     atomic.Uint64
	dropped                                 [dropReasonCount]atomic.Uint64
	refused, quotaExceeded                  atomic.Uint64
	spillFull, handoffFull, spilledTotal    atomic.Uint64
	throttled                               atomic.Uint64
	abandoned, saved, replayed              atomic.Uint64
	tooLarge                                atomic.Uint64
	reconnects, losses, subscribeFailures   atomic.Uint64
	expired                                 atomic.Uint64
}

// Stats returns a snapshot.
func (b *Bridge) Stats() Stats {
	s := Stats{Pool: len(b.lanes), Protocol: b.Protocol()}
	for _, l := range b.lanes {
		if l.c().open() {
			s.Connected++
		}
		s.InFlight += l.c().inflight()
	}
	s.Buffered, s.BufferedBytes = b.mem.usage()
	var hb int64
	s.Handoff, hb = b.handoff.usage()
	s.Buffered += s.Handoff
	s.BufferedBytes += hb
	if sp := b.spool.Load(); sp != nil {
		s.Spilled, s.SpilledBytes = sp.usage()
		s.Buffered += s.Spilled
		s.BufferedBytes += s.SpilledBytes
	}
	s.Subscriptions = b.subLane.subs.size()
	s.CommandsSubscribed = b.cmd != nil && b.lanes[0].cmdHeld.Load() && b.lanes[0].c().open()
	c := &b.stats
	s.ForwardedUp = c.forwardedUp.Load()
	s.ForwardedDown = c.forwardedDown.Load()
	s.RetainedDelivered = c.retainedDelivered.Load()
	s.RetainedSkipped = c.retainedSkipped.Load()
	s.Unrouted = c.unrouted.Load()
	s.CommandCopies = c.commandCopies.Load()
	s.Commands = c.commands.Load()
	s.CommandErrors = c.commandErrors.Load()
	s.CommandsRejected = c.commandsReject.Load()
	s.CommandCycles = c.commandCycles.Load()
	s.CommandsRetained = c.commandsRetained.Load()
	s.CommandsDuplicate = c.commandsDuplicate.Load()
	s.DroppedDisconnected = c.dropped[dropDisconnected].Load()
	s.DroppedDeviceShare = c.dropped[dropDeviceShare].Load()
	s.DroppedBufferFull = c.dropped[dropBufferFull].Load()
	s.DroppedStopping = c.dropped[dropStopping].Load()
	s.DroppedQoS0 = s.DroppedDisconnected + s.DroppedDeviceShare + s.DroppedBufferFull + s.DroppedStopping
	s.HandoffFull = c.handoffFull.Load()
	s.Throttled = c.throttled.Load()
	s.SpilledTotal = c.spilledTotal.Load()
	s.Refused = c.refused.Load()
	s.QuotaExceeded = c.quotaExceeded.Load()
	s.SpillFull = c.spillFull.Load()
	s.Abandoned = c.abandoned.Load()
	s.TooLarge = c.tooLarge.Load()
	s.Saved = c.saved.Load()
	s.Replayed = c.replayed.Load()
	s.Reconnects = c.reconnects.Load()
	s.ConnectionLosses = c.losses.Load()
	s.SubscribeFailures = c.subscribeFailures.Load()
	s.Expired = c.expired.Load()
	return s
}

// Why a QoS 0 message was dropped.
const (
	dropNone = iota
	dropDisconnected
	dropDeviceShare
	dropBufferFull
	dropStopping
	dropReasonCount
)

// dropReasons names the reasons, as in dualgate_upstream_dropped_total.
var dropReasons = [dropReasonCount]string{"", "disconnected", "device_share", "buffer_full", "stopping"}

// DropReasons lists the reasons a QoS 0 message is dropped, with their
// counts in s, for metrics.
func (s Stats) DropReasons() map[string]uint64 {
	return map[string]uint64{
		dropReasons[dropDisconnected]: s.DroppedDisconnected,
		dropReasons[dropDeviceShare]:  s.DroppedDeviceShare,
		dropReasons[dropBufferFull]:   s.DroppedBufferFull,
		dropReasons[dropStopping]:     s.DroppedStopping,
	}
}

// budget bounds the messages held in memory, in total and, for QoS 0,
// per device.
type budget struct {
	mu       sync.Mutex // guards count, bytes and devices
	count    int
	bytes    int64
	maxCount int
	maxBytes int64
	// shareCount and shareBytes bound what one device's QoS 0 messages
	// hold; devices counts them, for the devices holding any.
	shareCount int
	shareBytes int64
	devices    map[string]*share
}

type share struct {
	count int
	bytes int64
	// throttled: the device was asked to pause (Config.Throttle) and not
	// yet to resume.
	throttled bool
}

// Throttle marks returned by reserveShared and releaseShared: what to tell
// Config.Throttle, outside the budget's lock.
const (
	throttleNone = iota
	throttlePause
	throttleResume
)

// high reports a share at three quarters of its bound, low one down to a
// quarter: the hysteresis of the backpressure.
func (m *budget) high(d *share) bool {
	return d.count*4 >= m.shareCount*3 || d.bytes*4 >= m.shareBytes*3
}

func (m *budget) low(d *share) bool {
	return d.count*4 <= m.shareCount && d.bytes*4 <= m.shareBytes
}

func (m *budget) reserve(n int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.count+1 > m.maxCount || m.bytes+n > m.maxBytes {
		return false
	}
	m.count++
	m.bytes += n
	return true
}

func (m *budget) release(n int64) {
	m.mu.Lock()
	m.count--
	m.bytes -= n
	m.mu.Unlock()
}

// reserveShared takes room for a QoS 0 message of client, within its
// share; it returns why not (or dropNone), and whether the device must now
// be paused.
func (m *budget) reserveShared(client string, n int64) (why, throttle int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.devices[client]
	if d != nil && (d.count+1 > m.shareCount || d.bytes+n > m.shareBytes) {
		if !d.throttled {
			d.throttled = true
			return dropDeviceShare, throttlePause
		}
		return dropDeviceShare, throttleNone
	}
	if m.count+1 > m.maxCount || m.bytes+n > m.maxBytes {
		return dropBufferFull, throttleNone
	}
	if d == nil {
		if n > m.shareBytes {
			return dropDeviceShare, throttleNone
		}
		if m.devices == nil {
			m.devices = make(map[string]*share)
		}
		d = &share{}
		m.devices[client] = d
	}
	d.count++
	d.bytes += n
	m.count++
	m.bytes += n
	if !d.throttled && m.high(d) {
		d.throttled = true
		return dropNone, throttlePause
	}
	return dropNone, throttleNone
}

// releaseShared gives back a QoS 0 message's room, and reports whether its
// device may now be read again.
func (m *budget) releaseShared(client string, n int64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.count--
	m.bytes -= n
	d := m.devices[client]
	if d == nil {
		return throttleNone
	}
	d.count--
	d.bytes -= n
	resume := d.throttled && m.low(d)
	if resume {
		d.throttled = false
	}
	if d.count <= 0 {
		delete(m.devices, client)
	}
	if resume {
		return throttleResume
	}
	return throttleNone
}

func (m *budget) usage() (int, int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.count, m.bytes
}

// signal wakes the goroutine waiting on ch, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// throttle tells Config.Throttle to pause or resume reading a device.
func (b *Bridge) throttle(client string, pause bool) {
	if b.cfg.Throttle == nil {
		return
	}
	if pause {
		b.stats.throttled.Add(1)
	}
	b.cfg.Throttle(client, pause)
}
