package gateway

import (
	"context"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/tlsmux"
)

// startWatchers starts what follows files: the certificate (when the
// operator gave one; a generated one never changes under the gateway) and
// the shared session ticket keys.
func (g *Gateway) startWatchers() {
	ctx, cancel := context.WithCancel(context.Background())
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		<-g.stop
		cancel()
	}()
	if g.cfg.TLSCert != "" && g.certs != nil {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); g.certs.Watch(ctx, 0) }()
	}
	if g.apiCerts != nil {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); g.apiCerts.Watch(ctx, 0) }()
	}
	if g.tickets != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.tickets.Run(ctx, tlsmux.TicketSchedule{Rotate: g.cfg.TicketRotate})
		}()
	}
}

// ReloadCertificates re-reads the TLS certificate and key, and the API's
// when it has one (SIGHUP). Live connections keep theirs; new handshakes
// get the new one. A bad file leaves the current certificate in use.
func (g *Gateway) ReloadCertificates() error {
	if g.apiCerts != nil {
		if err := g.apiCerts.Reload(); err != nil {
			g.logger.Error("API certificate reload failed; keeping the current one", zap.Error(err))
			return err
		}
	}
	if g.certs == nil {
		return nil
	}
	if err := g.certs.Reload(); err != nil {
		g.logger.Error("certificate reload failed; keeping the current one", zap.Error(err))
		return err
	}
	g.logger.Info("certificate reloaded")
	return nil
}

// Drain moves the devices off this gateway without a stampede: /readyz
// fails at once and no new connection is taken; after --drain-delay the
// sessions are ended at --drain-rate per second (MQTT 5 devices on TLS are
// told where to go with --drain-to; the others are closed and reconnect
// through their load balancer).
// Pending commands stay in the store. It returns when no session is left,
// or when ctx ends.
func (g *Gateway) Drain(ctx context.Context) error {
	if g.draining.Swap(true) {
		return nil
	}
	g.logger.Info("draining: not ready, refusing new connections",
		zap.Int("sessions", g.reg.Len()), zap.Float64("per_second", g.cfg.DrainRate))
	if g.tlsLn != nil {
		_ = g.tlsLn.Close()
	}
	if g.muxLn != nil {
		_ = g.muxLn.Close()
		g.muxTLS.Close()
	}
	// Give the balancer's health check time to see /readyz fail, so the
	// devices moved off do not come straight back here.
	select {
	case <-time.After(g.cfg.DrainDelay):
	case <-ctx.Done():
		return ctx.Err()
	}
	tlsRef, _ := parseDrainTo(g.cfg.DrainTo)
	type target struct {
		s    *session.Session
		mode registry.Mode
	}
	var targets []target
	g.reg.Range(func(s *session.Session) bool {
		targets = append(targets, target{s, s.RegistryEntry().Mode})
		return true
	})
	peers := g.drainPeers(ctx, tlsRef)
	lim := rate.NewLimiter(rate.Limit(g.cfg.DrainRate), 1)
	for i, t := range targets {
		if err := lim.Wait(ctx); err != nil {
			return err
		}
		ref := ""
		if t.mode == registry.ModeTLS {
			ref = tlsRef
			if len(peers) > 0 {
				ref = peers[i%len(peers)]
			}
		}
		t.s.Exec(func(s *session.Session) { s.Drain(ref) })
		g.counters.drained.Add(1)
	}
	g.waitSessions(ctx)
	g.logger.Info("drained", zap.Int("moved", len(targets)), zap.Int("left", g.reg.Len()))
	return ctx.Err()
}

// drainPeers is where TLS devices are sent when --drain-to is not given:
// in a cluster, the live peers' --advertise-tls addresses from their
// heartbeats, in turn. None (one node, no peer advertising TLS, Redis
// away): devices are told the gateway is shutting down, as before.
func (g *Gateway) drainPeers(ctx context.Context, tlsRef string) []string {
	if tlsRef != "" || g.members == nil {
		return nil
	}
	cx, cancel := context.WithTimeout(ctx, g.cfg.ClusterTimeout)
	defer cancel()
	nodes, err := g.members.m.LiveNodes(cx)
	if err != nil {
		g.logger.Warn("draining: the cluster's live nodes cannot be read; TLS devices are not sent to a peer", zap.Error(err))
		return nil
	}
	var out []string
	for _, n := range nodes {
		if n.ID != g.members.m.Node() && n.TLS != "" {
			out = append(out, "tls://"+n.TLS)
		}
	}
	return out
}

// Draining reports whether the gateway is draining or stopping.
func (g *Gateway) Draining() bool { return g.draining.Load() }
