package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/dualgate/dualgate/certs"
	"github.com/dualgate/dualgate/gateway/acl"
	"github.com/dualgate/dualgate/gateway/auth"
	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/gateway/cluster"
	"github.com/dualgate/dualgate/gateway/dispatch"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// Options are the collaborators a Gateway can be given instead of its
// defaults. The zero value is fine.
type Options struct {
	Logger *zap.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Gateway is a running dualgate: plain and TLS listeners, the sessions, the
// HTTP API. Create it with New, start it with Start, stop it with Shutdown.
type Gateway struct {
	cfg    Config
	logger *zap.Logger
	// rare is logger sampled (sampled): one table of counters for every
	// line a device can cause at will (routing, PROXY headers, the API).
	rare   *zap.Logger
	env    *session.Env
	reg    *registry.Registry[*session.Session]
	router *router
	acl    *acl.Authorizer
	routes routeStats

	store      store.Store
	dispatcher *dispatch.Dispatcher

	// With --cluster: this node's lease, and the session ticket keys
	// shared through Redis (without --tls-ticket-keys); nil otherwise.
	cluster *clusterNode
	// members is this node's part of the cluster's registry of devices
	// (nil without --cluster).
	members        *clusterRegistry
	clusterTickets *tlsmux.TicketKeys
	// clusterSessions keeps the TLS sessions in the cluster's Redis
	// (--tls-sessions server with --cluster); nil otherwise.
	clusterSessions *redisSessions

	upstream   *bridge.Bridge
	latency    prometheus.Histogram
	handshakes *prometheus.HistogramVec
	start      time.Time

	plain    *plainServer
	plainErr chan error
	// plainWatched is closed once the plain listener's end was seen.
	plainWatched chan struct{}
	fds          *fdBudget

	// failure is why the gateway cannot serve any more (a listener
	// stopped): /healthz and /readyz fail and Failed is closed.
	failure  atomic.Pointer[error]
	failed   chan struct{}
	failOnce sync.Once
	// plainAt and tlsAt are the listeners' addresses, set once they are
	// bound and read from any goroutine (instructions name them).
	plainAt atomic.Pointer[string]
	tlsAt   atomic.Pointer[string]

	// tokens is the token Authenticator (--auth token), closed last so
	// that its replay log is complete; nil otherwise.
	tokens *auth.Tokens
	// replay is the token replay memory shared in Redis (--cluster with
	// --auth token); nil otherwise.
	replay *cluster.Replay
	// replaySweep stops, and replaySwept reports the end of, the sweep of
	// the local replay cache in cluster mode (shareReplay).
	replaySweep, replaySwept chan struct{}

	tlsSrv *tlsmux.Server
	tlsLn  net.Listener
	caPath string // the generated dev CA, when there is one
	// identityPolicy is --secure-identity; with cert and no --client-ca,
	// the generated dev CA verifies device certificates.
	identityPolicy auth.IdentityPolicy
	certs          *tlsmux.CertReloader

	api      *http.Server
	apiLn    net.Listener
	apiCerts *tlsmux.CertReloader // --api-tls-cert, when given

	counters counters
	proxy    *proxyGate
	mem      *memReleaser
	sources  *sourceLimiter
	tickets  *tlsmux.TicketKeys
	// sessions are the server-side TLS sessions (--tls-sessions server),
	// in memSessions without --cluster; nil with stateless tickets.
	sessions    *tlsmux.Sessions
	memSessions *tlsmux.MemorySessions
	muxLn       net.Listener
	muxTLS      *chanListener
	muxGate     *muxGate

	draining atomic.Bool
	stop     chan struct{}
	wg       sync.WaitGroup
	closed   sync.Once
}

// New builds a gateway from cfg (defaults filled into a copy). It opens
// nothing yet.
func New(cfg Config, opts Options) (*Gateway, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	g := &Gateway{
		cfg:      cfg,
		logger:   logger,
		reg:      registry.New[*session.Session](),
		plainErr: make(chan error, 1),
		stop:     make(chan struct{}),
		failed:   make(chan struct{}),
		fds:      newFDBudget(logger),
	}
	authn, err := g.authenticator()
	if err != nil {
		return nil, err
	}
	if g.acl, err = newAuthorizer(&cfg); err != nil {
		return nil, err
	}
	identity, err := g.identity()
	if err != nil {
		return nil, err
	}
	g.rare = sampled(logger)
	g.router = newRouter(g.acl, g.reg, g.rare, &g.routes)
	sink := session.Sink(g.router)
	var limiter *rate.Limiter
	if cfg.ConnectRate > 0 {
		limiter = rate.NewLimiter(rate.Limit(cfg.ConnectRate), max(cfg.ConnectBurst, 1))
	}
	var sources interface {
		Allow(string, time.Time) bool
	}
	if cfg.PerIPRate > 0 {
		g.sources = newSourceLimiter(cfg.PerIPRate, cfg.PerIPBurst)
		sources = g.sources
	}
	defer func() {
		if err != nil && g.tokens != nil {
			_ = g.tokens.Close()
		}
	}()
	overflow := session.OverflowDropNew
	if cfg.OfflineOverflow == "drop-oldest" {
		overflow = session.OverflowDropOldest
	}
	kept := session.NewStore(sink, session.StoreLimits{Sessions: cfg.MaxKeptSessions, Bytes: cfg.MaxKeptSessionSize,
		Messages: cfg.MaxOffline, Overflow: overflow})
	kept.OnEnd(g.router.keptEnded)
	g.router.kept = kept
	g.env, err = session.NewEnv(session.Env{
		Logger:            logger,
		Registry:          g.reg,
		Auth:              authn,
		Identity:          identity,
		Sink:              sink,
		ACL:               g.acl,
		Sessions:          kept,
		Now:               opts.Now,
		ConnectTimeout:    cfg.ConnectTimeout,
		MaxPacketSize:     uint32(cfg.MaxPacketSize),
		MaxOutbound:       cfg.MaxOutbound,
		MaxKeepAlive:      uint16(cfg.MaxKeepAlive),
		MaxConnections:    cfg.MaxConnections,
		MaxPlain:          cfg.MaxPlain,
		MaxTLS:            cfg.MaxTLS,
		ConnectLimiter:    limiter,
		SourceLimiter:     sources,
		ControlGrace:      cfg.ControlGrace,
		ReceiveMaximum:    uint16(cfg.ReceiveMaximum),
		MaxQoS2Unreleased: cfg.MaxQoS2Unreleased,
		MaxQueued:         cfg.MaxQueued,
		MaxSubscriptions:  cfg.MaxSubscriptions,
		MaxTopicLen:       cfg.MaxTopicLen,
		MaxSessionExpiry:  cfg.SessionExpiry,
		TopicAliasMaximum: 16,
		// A 3.1.1 broker cannot say which subscription a message answers.
		NoSharedSubscriptions: cfg.Upstream != "" && cfg.UpstreamProtocol == "3.1.1",
	})
	if err != nil {
		return nil, err
	}
	if cfg.Upstream != "" {
		g.router.origins = newOriginSet(originMax, originTTL, g.env.Now)
		g.router.publishers = newOriginSet(originMax, originTTL, g.env.Now)
	}
	g.handshakes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "dualgate_tls_handshake_seconds",
		Help:    "TLS handshake duration, by whether the session was resumed.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"resumed"})
	g.mem = newMemReleaser(logger)
	g.proxy = newProxyGate(cfg, &g.counters, g.rare)
	g.plain = newPlainServer(g.env, logger, &g.counters, g.proxy, &g.draining)
	g.plain.fds = g.fds
	return g, nil
}

func (g *Gateway) authenticator() (auth.Authenticator, error) {
	switch g.cfg.Auth {
	case "token":
		secrets, err := auth.LoadSecretsFile(g.cfg.Secrets)
		if err != nil {
			return nil, err
		}
		tokens, err := auth.NewTokens(auth.TokenConfig{
			Secrets:          secrets,
			Window:           g.cfg.TokenWindow,
			AcceptClientCert: true,
			// The replay log: a restart does not reopen a token's
			// window. In cluster mode Redis is the memory (shareReplay).
			Dir: replayLogDir(g.cfg),
			// In cluster mode, a token Redis cannot check in time.
			ReplayUnavailableLocal: g.cfg.TokenReplayUnavailable == "local",
			OnLogError: func(err error) {
				g.logger.Error("device token replay log cannot be written: plain devices will be refused (0x89) once its last mark passes", zap.Error(err))
			},
		})
		if err != nil {
			return nil, err
		}
		if floor := tokens.ReplayFloor(); time.Until(floor) > 0 {
			g.logger.Warn("the last run stopped without writing its token replay log (a crash?): plain devices' tokens dated up to the floor are refused with 0x89 until then",
				zap.Time("floor", floor))
		}
		if g.cfg.Cluster != "" && g.cfg.TokenReplayUnavailable == "local" {
			g.logger.Warn("plain tokens are accepted on this node's word while redis does not answer (--token-replay-unavailable local): meanwhile a token recorded at another node can be replayed here once")
		}
		g.tokens = tokens
		return tokens, nil
	default:
		g.logger.Warn("device authentication is off (--auth allow-all): any device may connect with any client id")
		return auth.AllowAll(), nil
	}
}

// replayLogDir is where the token replay log is kept: the data directory
// of a single gateway; none in cluster mode, where the memory of the
// tokens is Redis (with its append-only file), shared by the nodes.
func replayLogDir(cfg Config) string {
	if cfg.Cluster != "" {
		return ""
	}
	return cfg.Data
}

// identity is the session's Env.Identity hook for --secure-identity: nil
// for none (every TLS session may receive secure commands), which is
// logged as the warning it is.
func (g *Gateway) identity() (func(*auth.Request, auth.Result) (bool, auth.Result, bool), error) {
	p, err := auth.ParseIdentityPolicy(g.cfg.SecureIdentity)
	if err != nil {
		return nil, err
	}
	g.identityPolicy = p
	if p == auth.IdentityNone {
		g.logger.Warn("secure commands go to any TLS session that claims the client id (--secure-identity none): " +
			"a device that knows another's id receives its secure commands; use --secure-identity cert or token")
		return nil, nil
	}
	return p.Decide, nil
}

// Start opens the listeners and returns once all accept connections.
func (g *Gateway) Start() (err error) {
	defer func() {
		if err != nil && g.tokens != nil {
			_ = g.tokens.Close() // a failed start leaves the replay log closed cleanly
		}
	}()
	g.start = time.Now()
	if err := os.MkdirAll(g.cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	tlsCfg, err := g.serverTLSConfig()
	if err != nil {
		return err
	}
	if err := g.startDispatch(); err != nil {
		return err
	}
	if err := g.startUpstream(); err != nil {
		g.stopDispatch()
		return err
	}
	if err := g.startPlain(); err != nil {
		g.stopUpstream()
		g.stopDispatch()
		return err
	}
	if err := g.startTLS(tlsCfg); err != nil {
		g.stopPlain()
		g.stopUpstream()
		g.stopDispatch()
		return err
	}
	if err := g.startAPI(); err != nil {
		_ = g.tlsSrv.Close()
		g.stopPlain()
		g.stopUpstream()
		g.stopDispatch()
		return err
	}
	g.wg.Add(1)
	go g.forgetSources()
	if g.cfg.MemRelease > 0 {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.mem.run(g.cfg.MemRelease, g.stop)
		}()
	}
	g.startWatchers()
	g.logger.Info("dualgate serving",
		zap.String("plain", g.PlainAddr()), zap.String("tls", g.TLSAddr()), zap.String("api", g.APIAddr()))
	return nil
}

func (g *Gateway) serverTLSConfig() (*tls.Config, error) {
	cert, key := g.cfg.TLSCert, g.cfg.TLSKey
	if cert == "" {
		dir := filepath.Join(g.cfg.Data, "certs")
		paths, created, err := certs.EnsureDev(dir, splitList(g.cfg.TLSHosts))
		if err != nil {
			return nil, fmt.Errorf("dev certificates: %w", err)
		}
		cert, key, g.caPath = paths.Server, paths.ServerKey, paths.CA
		if abs, err := filepath.Abs(paths.CA); err == nil {
			paths.CA = abs
		}
		verb := "using"
		if created {
			verb = "generated"
		}
		g.logger.Warn("no --tls-cert given: "+verb+" a development CA; devices must trust "+paths.CA,
			zap.String("ca", paths.CA), zap.String("server_cert", paths.Server))
	}
	clientCA := g.cfg.ClientCA
	if clientCA == "" && g.caPath != "" && (g.identityPolicy&auth.IdentityCert != 0 || g.cfg.RequireCert) {
		// Devices prove their id with certificates from the development
		// CA (dualgate certs client --dir <data>/certs ID); asked for,
		// not required, unless --require-client-cert.
		clientCA = g.caPath
	}
	reloader, err := tlsmux.NewCertReloader(cert, key, g.logger)
	if err != nil {
		return nil, err
	}
	g.certs = reloader
	curves, err := parseCurves(g.cfg.TLSCurves)
	if err != nil {
		return nil, err
	}
	minVersion := uint16(tls.VersionTLS12)
	if g.cfg.TLSMin == "1.3" {
		minVersion = tls.VersionTLS13
	}
	var ciphers []uint16
	if g.cfg.TLSCiphers != "" {
		if ciphers, err = tlsmux.CipherSuitesByName(splitList(g.cfg.TLSCiphers)); err != nil {
			return nil, fmt.Errorf("--tls-ciphers: %w", err)
		}
	}
	tickets, err := g.resumption()
	if err != nil {
		return nil, err
	}
	return tlsmux.ServerTLSConfig(tlsmux.TLSOptions{
		GetCertificate:    reloader.GetCertificate,
		ClientCAFile:      clientCA,
		RequireClientCert: g.cfg.RequireCert,
		MinVersion:        minVersion,
		CurvePreferences:  curves,
		CipherSuites:      ciphers,
		TicketKeys:        tickets,
		Sessions:          g.sessions,
	})
}

// resumption sets up TLS session resumption: server-side sessions
// (g.sessions, in memory or in the cluster's Redis), or stateless tickets
// whose keys it returns (the --tls-ticket-keys file, or with --cluster
// the keys shared through Redis).
func (g *Gateway) resumption() (*tlsmux.TicketKeys, error) {
	if g.cfg.serverSessions() {
		var store tlsmux.SessionStore
		if g.cfg.Cluster != "" {
			// The client is set by openCluster, before the listeners open.
			g.clusterSessions = &redisSessions{prefix: g.cfg.ClusterPrefix, timeout: g.cfg.ClusterTimeout}
			store = g.clusterSessions
		} else {
			mem, err := tlsmux.NewMemorySessions(int64(g.cfg.TLSSessionMB)<<20, nil)
			if err != nil {
				return nil, fmt.Errorf("--tls-session-cache-mb: %w", err)
			}
			g.memSessions, store = mem, mem
		}
		g.sessions = tlsmux.NewSessions(store, tlsmux.DefaultSessionLifetime, g.logger)
		return nil, nil
	}
	if g.cfg.TicketKeys != "" {
		if _, err := os.Stat(g.cfg.TicketKeys); errors.Is(err, os.ErrNotExist) {
			if _, err := tlsmux.RotateTicketKeyFile(g.cfg.TicketKeys, tlsmux.DefaultTicketKeysKept); err != nil {
				return nil, fmt.Errorf("--tls-ticket-keys: %w", err)
			}
		}
		var err error
		if g.tickets, err = tlsmux.LoadTicketKeys(g.cfg.TicketKeys, g.logger); err != nil {
			return nil, fmt.Errorf("--tls-ticket-keys: %w", err)
		}
		return g.tickets, nil
	}
	if g.cfg.Cluster != "" {
		// Shared through Redis, read before the listeners open.
		var err error
		if g.clusterTickets, err = newClusterTickets(g.logger); err != nil {
			return nil, err
		}
		return g.clusterTickets, nil
	}
	return nil, nil
}

// parseCurves turns --tls-curves names into key exchange groups.
func parseCurves(s string) ([]tls.CurveID, error) {
	var out []tls.CurveID
	for _, name := range splitList(s) {
		switch strings.ToLower(name) {
		case "x25519":
			out = append(out, tls.X25519)
		case "x25519mlkem768":
			out = append(out, tls.X25519MLKEM768)
		case "p256":
			out = append(out, tls.CurveP256)
		case "p384":
			out = append(out, tls.CurveP384)
		default:
			return nil, fmt.Errorf("--tls-curves: unknown group %q (want x25519, x25519mlkem768, p256, p384)", name)
		}
	}
	return out, nil
}

// startDispatch opens the command store and starts the dispatcher; the
// sessions' hooks are wired to it before any listener opens.
func (g *Gateway) startDispatch() error {
	st, err := g.openStore()
	if err != nil {
		return err
	}
	g.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "dualgate_command_delivery_seconds",
		Help:    "Time from a command's acceptance to its device's acknowledgement.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	})
	dcfg := dispatch.Config{
		Store:      st,
		Registry:   g.reg,
		Logger:     g.logger,
		Now:        g.env.Now,
		Advertise:  g.advertise,
		SecureIdle: g.cfg.SecureIdle,
		FixedQuiet: g.cfg.SecureIdleFixed,
		// Quiet periods are checked four times per period, at least once a second.
		Tick:            min(time.Second, g.cfg.SecureIdle/4),
		MaxInstructions: g.cfg.MaxInstructions,
		InstructBackoff: g.cfg.InstructBackoff,
		Retention:       g.cfg.CommandRetention,
		OnDelivered: func(_ *store.Command, lat time.Duration) {
			g.latency.Observe(lat.Seconds())
		},
	}
	if g.cluster != nil {
		// Which node has a command in flight, and whether it still runs:
		// the registry's heartbeats (joined below, before Start asks).
		dcfg.Node = g.cluster.id
		dcfg.NodeLive = func(node string) (bool, error) { return g.members.nodeLive(node) }
	}
	d, err := dispatch.New(dcfg)
	if err != nil {
		g.closeStore(st)
		return err
	}
	g.store, g.dispatcher = st, d
	if g.cluster != nil {
		if err := g.joinCluster(); err != nil {
			g.closeStore(st)
			g.store, g.dispatcher = nil, nil
			return err
		}
		if err := g.shareReplay(); err != nil {
			g.members.close(g.cfg.ClusterTimeout)
			d.Stop()
			g.closeStore(st)
			return err
		}
	}
	if err := d.Start(); err != nil {
		if g.members != nil {
			g.members.close(g.cfg.ClusterTimeout)
			g.members = nil
		}
		d.Stop()
		g.closeStore(st)
		g.store, g.dispatcher = nil, nil
		return err
	}
	g.env.Hooks = hooks{router: g.router, dispatcher: d, members: g.members}
	return nil
}

func (g *Gateway) stopDispatch() {
	g.stopReplay()
	if g.members != nil {
		g.members.close(g.cfg.ClusterTimeout)
	}
	if g.dispatcher != nil {
		g.dispatcher.Stop()
	}
	if g.members != nil {
		g.members.cancels.Wait() // they end once the dispatcher stopped
	}
	if g.store != nil {
		g.closeStore(g.store)
	}
}

// openStore opens the command store: the bbolt file in the data directory,
// or with --cluster the Redis shared by the cluster's nodes.
func (g *Gateway) openStore() (store.Store, error) {
	if g.cfg.Cluster != "" {
		node, st, err := g.openCluster()
		if err != nil {
			return nil, err
		}
		g.cluster = node
		return st, nil
	}
	st, err := store.OpenBolt(filepath.Join(g.cfg.Data, store.FileName), store.Options{
		Limit: g.cfg.CommandLimit,
		// Commands and transitions of different devices share disk syncs.
		BatchDelay: 2 * time.Millisecond,
		Logger:     g.logger,
	})
	if err != nil {
		return nil, fmt.Errorf("command store: %w", err)
	}
	return st, nil
}

// closeStore closes the store, after giving back the cluster node's name
// (the node shares the store's Redis client).
func (g *Gateway) closeStore(st store.Store) {
	if g.cluster != nil {
		g.cluster.close(g.cfg.ClusterTimeout)
	}
	if err := st.Close(); err != nil {
		g.logger.Warn("command store close", zap.Error(err))
	}
}

// advertise is the address a device is told to reconnect to: the
// configured one, else the address the device reached the gateway on with
// the port of the other listener. It runs in the session's owner context.
func (g *Gateway) advertise(s *session.Session, m control.Mode) string {
	if m == control.ModeTLS && g.cfg.AdvertiseTLS != "" {
		return g.cfg.AdvertiseTLS
	}
	if m == control.ModePlain && g.cfg.AdvertisePlain != "" {
		return g.cfg.AdvertisePlain
	}
	listener := g.PlainAddr()
	if m == control.ModeTLS {
		listener = g.TLSAddr()
	}
	_, port, _ := net.SplitHostPort(listener)
	host, _, err := net.SplitHostPort(s.LocalAddr())
	if err != nil || host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func (g *Gateway) startPlain() error {
	loops := g.cfg.EventLoops
	if loops <= 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	go func() { g.plainErr <- g.plain.run(g.cfg.Plain, loops) }()
	select {
	case <-g.plain.running:
	case err := <-g.plainErr:
		return fmt.Errorf("plain listener %s: %w", g.cfg.Plain, err)
	}
	at := g.cfg.Plain
	if fd, err := g.plain.eng.Dup(); err == nil {
		if sa, err := unix.Getsockname(fd); err == nil {
			if in4, ok := sa.(*unix.SockaddrInet4); ok {
				at = net.JoinHostPort(net.IP(in4.Addr[:]).String(), strconv.Itoa(in4.Port))
			} else if in6, ok := sa.(*unix.SockaddrInet6); ok {
				at = net.JoinHostPort(net.IP(in6.Addr[:]).String(), strconv.Itoa(in6.Port))
			}
		}
		_ = unix.Close(fd)
	}
	g.plainAt.Store(&at)
	g.plainWatched = make(chan struct{})
	go func() {
		defer close(g.plainWatched)
		err := <-g.plainErr
		select {
		case <-g.stop:
			return // shutting down
		default:
		}
		if err == nil {
			err = errors.New("engine stopped")
		}
		g.fail(fmt.Errorf("plain listener %s stopped: %w", g.cfg.Plain, err))
	}()
	return nil
}

// fail records that the gateway cannot serve any more: /healthz and
// /readyz fail from now on, and Failed is closed so that the process can
// exit and its supervisor restart it.
func (g *Gateway) fail(err error) {
	g.failOnce.Do(func() {
		g.failure.Store(&err)
		g.logger.Error("the gateway cannot serve any more; exiting so that it is restarted", zap.Error(err))
		close(g.failed)
	})
}

// Failed is closed when a listener stopped for good (see Err).
func (g *Gateway) Failed() <-chan struct{} { return g.failed }

// Err is why the gateway stopped serving, or nil.
func (g *Gateway) Err() error {
	if p := g.failure.Load(); p != nil {
		return *p
	}
	return nil
}

func (g *Gateway) stopPlain() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.plain.stop(ctx); err != nil {
		g.logger.Warn("plain listener stop", zap.Error(err))
	}
	done := g.plain.stopped
	if g.plainWatched != nil {
		done = g.plainWatched
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (g *Gateway) startTLS(cfg *tls.Config) error {
	srv, err := tlsmux.New(tlsmux.Config{
		TLS:                   cfg,
		HandshakeTimeout:      g.cfg.HandshakeTimeout,
		MaxHandshakes:         g.cfg.MaxHandshakes,
		HandshakeQueueTimeout: g.cfg.HandshakeQueue,
		HelloTimeout:          g.cfg.TLSHello,
		MaxHelloPerSource:     g.cfg.TLSHelloPerIP,
		Logger:                g.logger,
		Handoff:               g.handoffTLS,
	})
	if err != nil {
		return err
	}
	if !tlsmux.BuffersReleasable() || !tlsmux.PeerCertificatesReleasable() {
		// A Go release changed crypto/tls's fields: everything works, but
		// an idle TLS device keeps what its handshake needed.
		g.logger.Warn("this Go release's crypto/tls buffers cannot be given back: an idle TLS connection keeps its handshake buffers and client certificate (a few KiB more each)",
			zap.Bool("buffers", tlsmux.BuffersReleasable()), zap.Bool("peer_certificates", tlsmux.PeerCertificatesReleasable()))
	}
	ln, err := net.Listen("tcp", g.cfg.TLS) // SO_REUSEADDR is set by Go on Unix
	if err != nil {
		return fmt.Errorf("tls listener: %w", err)
	}
	g.tlsSrv, g.tlsLn = srv, ln
	at := ln.Addr().String()
	g.tlsAt.Store(&at)
	g.serveTLSOn(g.fds.listener(ln))
	if g.cfg.ListenMux != "" {
		if err := g.startMux(); err != nil {
			_ = srv.Close()
			return err
		}
	}
	return nil
}

// serveTLSOn serves TLS connections accepted by ln, behind the PROXY
// header reader when one is configured.
func (g *Gateway) serveTLSOn(ln net.Listener) {
	if g.proxy.mode != ProxyOff {
		ln = g.proxy.listener(ln)
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.tlsSrv.Serve(ln); err != nil && !errors.Is(err, tlsmux.ErrServerClosed) && !g.draining.Load() {
			g.fail(fmt.Errorf("tls listener stopped: %w", err))
		}
	}()
}

// forgetSources drops, once a minute, the sources not seen for a minute.
// (Every session's deadlines, TLS ones included, are swept on the event
// loops: plainServer.OnTick.)
func (g *Gateway) forgetSources() {
	defer g.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			if g.sources != nil {
				g.sources.forget(g.env.Now().Add(-time.Minute))
			}
		}
	}
}

// Shutdown stops the gateway: /readyz fails, listeners stop accepting,
// sessions are closed cleanly (MQTT 5: DISCONNECT 0x8B Server shutting
// down), then the API stops. It returns when done or when ctx ends.
func (g *Gateway) Shutdown(ctx context.Context) error {
	var err error
	g.closed.Do(func() {
		g.draining.Store(true)
		close(g.stop)
		if g.tlsLn != nil {
			_ = g.tlsLn.Close()
		}
		if g.muxLn != nil {
			_ = g.muxLn.Close()
			g.muxTLS.Close()
		}
		kick := func(s *session.Session) { s.Kick(mqttcodec.ServerShuttingDown, "server shutting down") }
		g.plain.each(kick) // plain and TLS sessions alike
		g.waitSessions(ctx)
		// The handshake workers end before the loops: every hand-off is
		// queued before the engine's stop, so a loop opens it (and the
		// stop closes it) rather than dropping it (gnet's EnrollFD).
		if g.tlsSrv != nil {
			if e := g.tlsSrv.Shutdown(ctx); e != nil {
				err = errors.Join(err, e)
			}
		}
		g.stopPlain()
		if g.api != nil {
			if e := g.api.Shutdown(ctx); e != nil {
				err = errors.Join(err, e)
			}
		}
		g.wg.Wait()
		g.stopUpstream()
		g.stopDispatch()
		if g.tokens != nil {
			if e := g.tokens.Close(); e != nil {
				err = errors.Join(err, e)
			}
		}
	})
	return err
}

// waitSessions waits until no session is registered, or ctx ends.
func (g *Gateway) waitSessions(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for g.reg.Len() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PlainAddr is the plain listener's address (the real port when :0 was asked).
func (g *Gateway) PlainAddr() string {
	if p := g.plainAt.Load(); p != nil {
		return *p
	}
	return ""
}

// TLSAddr is the TLS listener's address.
func (g *Gateway) TLSAddr() string {
	if p := g.tlsAt.Load(); p != nil {
		return *p
	}
	return ""
}

// APIAddr is the HTTP API's address.
func (g *Gateway) APIAddr() string {
	if g.apiLn == nil {
		return ""
	}
	return g.apiLn.Addr().String()
}

// CAFile is the generated development CA's certificate ("" when the gateway
// runs on a given certificate).
func (g *Gateway) CAFile() string { return g.caPath }

// Registry is the live-connection registry.
func (g *Gateway) Registry() *registry.Registry[*session.Session] { return g.reg }

// Stats are the session counters.
func (g *Gateway) Stats() *session.Stats { return g.env.Stats }

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
