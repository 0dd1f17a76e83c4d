package gateway

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
)

// startUpstream connects the bridge to the cloud broker when --upstream is
// set. It does not wait for the broker: messages buffer until it answers.
func (g *Gateway) startUpstream() error {
	if g.cfg.Upstream == "" {
		return nil
	}
	cfg := bridge.Config{
		URL:                  g.cfg.Upstream,
		Username:             g.cfg.UpstreamUser,
		Password:             g.cfg.UpstreamPassword,
		ClientIDPrefix:       g.cfg.UpstreamClientID,
		CAFile:               g.cfg.UpstreamCA,
		CertFile:             g.cfg.UpstreamCert,
		KeyFile:              g.cfg.UpstreamKey,
		PoolSize:             g.cfg.UpstreamPool,
		Protocol:             g.cfg.UpstreamProtocol,
		TopicPrefix:          g.cfg.UpstreamPrefix,
		PlainAllowed:         splitList(g.cfg.UpstreamPlain),
		BufferMessages:       g.cfg.UpstreamBuffer,
		DeviceBufferMessages: g.cfg.UpstreamDeviceBuffer,
		BufferDir:            g.spillDir(),
		SpillMessages:        g.cfg.UpstreamSpillMessages,
		SpillBytes:           int64(g.cfg.UpstreamSpillBytes),
		SpillKeepFree:        int64(g.cfg.UpstreamSpillKeepFree),
		Logger:               g.logger.Named("upstream"),
		Throttle:             g.throttleDevice,
		Deliver:              g.router.fromUpstream,
		DeliverRetained:      g.router.retainedFromUpstream,
	}
	if g.cfg.UpstreamCommands != "off" {
		cfg.CommandFilter = g.cfg.UpstreamCommands
		cfg.SubmitCommand = g.submitFromUpstream
		cfg.KnownCommand = g.store.HasOrigin
	}
	b, err := bridge.New(cfg)
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	if err := b.Start(context.Background()); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	g.upstream, g.router.upstream = b, b
	return nil
}

// spillDir is where device messages wait for the broker on disk:
// --upstream-spill-dir, else <data>/bridge. It is a directory of its own,
// locked by the bridge, apart from the command store's file.
func (g *Gateway) spillDir() string {
	if g.cfg.UpstreamSpillDir != "" {
		return g.cfg.UpstreamSpillDir
	}
	return filepath.Join(g.cfg.Data, "bridge")
}

// registerSpillMetrics exports the spill's fill and its refusals.
func registerSpillMetrics(reg *prometheus.Registry, up func() bridge.Stats) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_upstream_spilled_bytes", Help: "Bytes of device messages waiting for the broker in the spill directory.",
	}, func() float64 { return float64(up().SpilledBytes) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "dualgate_upstream_spill_full_total",
		Help: "QoS 1 device publishes refused because the spill directory was at its cap or its disk short of space.",
	}, func() float64 { return float64(up().SpillFull) }))
}

func (g *Gateway) stopUpstream() {
	if g.upstream == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.upstream.Stop(ctx); err != nil {
		g.logger.Warn("upstream stop", zap.Error(err))
	}
}

// submitFromUpstream takes a command published on the broker and hands it
// to the dispatcher exactly as an API command: durable, with the broker
// message's origin in the same transaction, before it returns, so the
// bridge acknowledges the broker's message only then and recognises the
// message if the broker sends it again (store.Store.HasOrigin).
func (g *Gateway) submitFromUpstream(bc bridge.Command) error {
	clientID, topic := bc.ClientID, bc.Topic
	if err := session.CheckClientID(clientID, g.env.MaxClientIDLen); err != nil {
		return fmt.Errorf("%w: %w", bridge.ErrCommandRejected, err)
	}
	now := g.env.Now()
	c := &store.Command{
		ID:        store.NewID(now),
		ClientID:  clientID,
		Topic:     topic,
		Payload:   bc.Payload,
		QoS:       min(bc.QoS, 1),
		Secure:    bc.Secure,
		CreatedAt: now,
		ExpiresAt: now.Add(defaultCommandTTL),
		Origin:    bc.Origin,
	}
	_, err := g.dispatcher.Submit(c)
	switch {
	case errors.Is(err, store.ErrInvalid), errors.Is(err, store.ErrFull):
		g.logger.Warn("command from the broker refused", zap.String("client", clientID), zap.String("topic", topic), zap.Error(err))
		return fmt.Errorf("%w: %w", bridge.ErrCommandRejected, err)
	case err != nil:
		return err
	}
	if g.members != nil {
		g.members.commandStored(clientID)
	}
	return nil
}

// throttleDevice pauses or resumes reading a device for the bridge's QoS 0
// backpressure, in the device's session's own context. A device that
// reconnected meanwhile is a new session, not paused for this: resuming it
// does nothing.
func (g *Gateway) throttleDevice(clientID string, pause bool) {
	s, ok := g.reg.Get(clientID)
	if !ok {
		return
	}
	s.Exec(func(s *session.Session) {
		if pause {
			s.PauseReading(session.PauseUpstream)
		} else {
			s.ResumeReading(session.PauseUpstream)
		}
	})
}
