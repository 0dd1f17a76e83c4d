package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/gateway/cluster"
	"github.com/dualgate/dualgate/gateway/registry"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/mqttcodec"
	"github.com/dualgate/dualgate/tlsmux"
)

// maxBodyBytes bounds an API request body.
const maxBodyBytes = 1 << 20

func (g *Gateway) startAPI() error {
	var tlsCfg *tls.Config
	if g.cfg.APITLSCert != "" {
		r, err := tlsmux.NewCertReloader(g.cfg.APITLSCert, g.cfg.APITLSKey, g.logger)
		if err != nil {
			return fmt.Errorf("--api-tls-cert: %w", err)
		}
		g.apiCerts = r
		tlsCfg = &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", g.cfg.API)
	if err != nil {
		return fmt.Errorf("api listener: %w", err)
	}
	if g.cfg.APIToken == "" && !isLoopback(g.cfg.API) {
		g.logger.Warn("the API listens beyond this machine without a token (--api-insecure): anyone who reaches "+
			ln.Addr().String()+" can send commands to devices", zap.String("api", ln.Addr().String()))
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	g.apiLn = ln
	g.api = &http.Server{
		Handler:           g.apiHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(g.logger.Named("http")),
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.logger.Error("api server stopped", zap.Error(err))
		}
	}()
	return nil
}

// validateAPI refuses the settings that would open the API to anyone who
// reaches it.
func (c *Config) validateAPI() error {
	if (c.APITLSCert == "") != (c.APITLSKey == "") {
		return errors.New("--api-tls-cert and --api-tls-key go together")
	}
	if c.Pprof && c.APIToken == "" {
		return errors.New("--pprof needs --api-token: profiles show the gateway's memory and code paths, " +
			"so they are never served without a token")
	}
	if c.APIToken == "" && !c.APIInsecure && !isLoopback(c.API) {
		return fmt.Errorf("--api %q listens beyond this machine without --api-token, so anyone who reaches it could "+
			"send commands to devices: set --api-token (or DUALGATE_API_TOKEN), or bind the API to a loopback "+
			"address such as 127.0.0.1:8080, or accept the risk with --api-insecure", c.API)
	}
	return nil
}

// isLoopback reports whether a listen address binds only this machine's
// loopback interface. An empty host (all interfaces), a wildcard and any
// host name other than localhost count as reachable from outside.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func (g *Gateway) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := g.Err(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "failed", "error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := g.Err(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "failed", "error": err.Error()})
			return
		}
		if g.draining.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
			return
		}
		if g.upstream != nil && g.upstream.Stats().Connected == 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "no upstream connection"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	var metrics http.Handler = promhttp.HandlerFor(g.metricsRegistry(), promhttp.HandlerOpts{})
	if !g.cfg.MetricsPublic {
		metrics = g.requireToken(metrics)
	}
	mux.Handle("GET /metrics", metrics)

	v1 := http.NewServeMux()
	v1.HandleFunc("GET /v1/clients", g.listClients)
	v1.HandleFunc("GET /v1/clients/{id}", g.getClient)
	v1.HandleFunc("POST /v1/clients/{id}/commands", g.postCommand)
	v1.HandleFunc("GET /v1/clients/{id}/commands", g.listCommands)
	v1.HandleFunc("GET /v1/commands/{cid}", g.getCommand)
	v1.HandleFunc("DELETE /v1/commands/{cid}", g.cancelCommand)
	v1.HandleFunc("GET /v1/stats", g.getStats)
	v1.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	mux.Handle("/v1/", g.requireToken(v1))
	if g.cfg.Pprof && g.cfg.APIToken != "" { // Validate refuses --pprof without a token
		mux.Handle("/debug/pprof/", g.requireToken(http.HandlerFunc(pprof.Index)))
		// Index serves the named profiles only: the CPU profile, the
		// trace and the symbol lookup have handlers of their own.
		mux.Handle("/debug/pprof/profile", g.requireToken(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/trace", g.requireToken(http.HandlerFunc(pprof.Trace)))
		mux.Handle("/debug/pprof/symbol", g.requireToken(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/cmdline", g.requireToken(http.HandlerFunc(pprof.Cmdline)))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return sameOriginWrites(mux, g.rare)
}

// sameOriginWrites refuses state-changing requests that a web page could
// have sent from another site: a browser lets any page POST a "simple"
// request (text/plain, form data) to any address, the operator's loopback
// API included, without asking the server first. Requiring
// application/json forces a CORS preflight, which this API never answers
// with permission; Sec-Fetch-Site and Origin, set by browsers and not
// settable by page scripts, catch the rest. Clients that are not browsers
// (curl, the SDK, automation) send neither header.
// Refusals are logged through log, a sampled logger.
func sameOriginWrites(next http.Handler, log *zap.Logger) http.Handler {
	refuse := func(w http.ResponseWriter, r *http.Request, code int, msg string) {
		log.Info("API request refused", zap.String("method", r.Method), zap.String("path", r.URL.Path),
			zap.String("peer", r.RemoteAddr), zap.Int("status", code), zap.String("reason", msg))
		writeError(w, code, msg)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		switch r.Header.Get("Sec-Fetch-Site") {
		case "cross-site", "same-site":
			refuse(w, r, http.StatusForbidden, "cross-site request refused (Sec-Fetch-Site: "+r.Header.Get("Sec-Fetch-Site")+")")
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			u, err := url.Parse(origin)
			if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
				refuse(w, r, http.StatusForbidden, "cross-origin request refused: Origin "+strconv.Quote(origin)+" is not this API ("+r.Host+")")
				return
			}
		}
		// A browser sends DELETE (never a "simple" request) only after a
		// preflight this API never grants: it needs no body, so no type.
		if r.Method == http.MethodDelete && r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			refuse(w, r, http.StatusUnsupportedMediaType, "a "+r.Method+" request needs Content-Type: application/json")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requireToken enforces --api-token. The comparison runs over SHA-256
// digests, so its time tells nothing about the token, not even its length.
func (g *Gateway) requireToken(next http.Handler) http.Handler {
	want := sha256.Sum256([]byte("Bearer " + g.cfg.APIToken))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
		if g.cfg.APIToken != "" && subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="dualgate"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

// clientView is the answer of GET /v1/clients/{id}.
type clientView struct {
	ClientID     string    `json:"client_id"`
	Connected    bool      `json:"connected"`
	Mode         string    `json:"mode"`
	Protocol     byte      `json:"protocol,omitempty"`
	Remote       string    `json:"remote,omitempty"`
	Since        time.Time `json:"since,omitzero"`
	LastActivity time.Time `json:"last_activity,omitzero"`
	// Node is the gateway node the device is connected to; empty while
	// it is not connected.
	Node    string `json:"node,omitempty"`
	Pending int    `json:"pending"`
	// Instructions is the number of TLS instructions sent since the device
	// was last on TLS; LoopProtected says it ignored too many of them.
	Instructions  int  `json:"instructions"`
	LoopProtected bool `json:"loop_protected"`
	TLSOnly       bool `json:"tls_only,omitempty"`
	// Proven, for a TLS session only, says whether its client id was
	// proven on that connection (--secure-identity), so that secure
	// commands may be written to it.
	Proven *bool `json:"proven,omitempty"`
	// State is the dispatcher's on-demand state of the device; empty for
	// a device it does not track (idle on plain, or gone long ago).
	State string `json:"state,omitempty"`
}

func (g *Gateway) getClient(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	pending, err := g.store.CountPending(id)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	dev, known := g.dispatcher.Device(id)
	v := clientView{ClientID: id, Mode: "offline", Pending: pending,
		Instructions: dev.Instructions, LoopProtected: dev.LoopProtected, TLSOnly: dev.TLSOnly}
	if known {
		v.State = dev.State.String()
	}
	if s, ok := g.reg.Get(id); ok {
		e := s.RegistryEntry()
		v.Connected = true
		v.Node = g.apiNode()
		v.Mode = e.Mode.String()
		v.Protocol = e.Protocol
		facts := factsOf(s)
		v.Remote = facts.remote
		if e.Mode == registry.ModeTLS {
			v.Proven = &facts.proven
		}
		v.Since = e.Since().UTC().Truncate(time.Millisecond)
		v.LastActivity = e.LastActive().UTC().Truncate(time.Millisecond)
	} else if rec, ok := g.elsewhere(r.Context(), id); ok {
		// Connected to another node of the cluster.
		v.Connected, v.Node, v.Mode, v.Protocol = true, rec.Node, string(rec.Mode), rec.Protocol
		v.Since = time.UnixMilli(rec.Since).UTC()
	} else if !known && pending == 0 {
		writeError(w, http.StatusNotFound, "client "+id+" is not known")
		return
	} else {
		v.LastActivity = dev.LastSeen.UTC().Truncate(time.Millisecond)
	}
	writeJSON(w, http.StatusOK, v)
}

// elsewhere looks a device up in the cluster's registry: connected to
// another live node. A registry Redis cannot answer reads as not there.
func (g *Gateway) elsewhere(ctx context.Context, id string) (cluster.Record, bool) {
	if g.members == nil {
		return cluster.Record{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.ClusterTimeout)
	defer cancel()
	rec, ok, err := g.members.m.Get(ctx, id)
	if err != nil || !ok || rec.Node == g.members.m.Node() {
		return cluster.Record{}, false
	}
	return rec, true
}

// Paging of the API's lists.
const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
)

// pageQuery reads the query of a paginated list: cursor, limit, and the
// other parameters the endpoint takes (filters), refusing any other.
func pageQuery(r *http.Request, filters ...string) (q url.Values, cursor string, limit int, err error) {
	q, err = url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, "", 0, fmt.Errorf("query: %v", err)
	}
	known := append([]string{"cursor", "limit"}, filters...)
	for k, v := range q {
		if !slices.Contains(known, k) {
			return nil, "", 0, fmt.Errorf("unknown parameter %q (this list takes %s)", k, strings.Join(known, ", "))
		}
		if len(v) > 1 {
			return nil, "", 0, fmt.Errorf("parameter %q given %d times", k, len(v))
		}
	}
	limit = defaultPageLimit
	if s := q.Get("limit"); s != "" || q.Has("limit") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxPageLimit {
			return nil, "", 0, fmt.Errorf("limit: %q, want a whole number from 1 to %d (default %d)", s, maxPageLimit, defaultPageLimit)
		}
		limit = n
	}
	return q, q.Get("cursor"), limit, nil
}

// apiNode is the node id the API reports: --node-id in a cluster, else
// the host name, as a cluster node would be named by default.
func (g *Gateway) apiNode() string {
	if g.cluster != nil {
		return g.cluster.id
	}
	if id, err := g.cfg.nodeID(); err == nil {
		return id
	}
	host, _ := os.Hostname()
	return host
}

// clientItem is one connected device in GET /v1/clients.
type clientItem struct {
	ClientID string    `json:"client_id"`
	Mode     string    `json:"mode"`
	Protocol byte      `json:"protocol"`
	Since    time.Time `json:"since"`
	Node     string    `json:"node"`
}

// clientList is the answer of GET /v1/clients.
type clientList struct {
	Clients    []clientItem `json:"clients"`
	NextCursor string       `json:"next_cursor"`
}

// listClients answers GET /v1/clients?mode=&node=&cursor=&limit=: the
// devices connected to this node (node= this node, or one node), a page at
// a time in the registry's scan order (registry.Scan), which is stable for
// the life of the process: a device connected for the whole listing is in
// exactly one page. In a cluster, node=N lists node N's devices and no
// node every node's, from the cluster's registry.
func (g *Gateway) listClients(w http.ResponseWriter, r *http.Request) {
	q, cursor, limit, err := pageQuery(r, "mode", "node")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var keep func(*session.Session) bool
	switch m := q.Get("mode"); m {
	case "":
	case "plain", "tls":
		want := registry.ModePlain
		if m == "tls" {
			want = registry.ModeTLS
		}
		keep = func(s *session.Session) bool { return s.RegistryEntry().Mode == want }
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("mode: %q, want plain or tls", m))
		return
	}
	node := g.apiNode()
	out := clientList{Clients: []clientItem{}}
	if q.Get("node") == "" && g.members != nil {
		// Every node's devices, from the cluster's registry.
		g.listCluster(w, r, q.Get("mode"), cursor, limit)
		return
	}
	if n := q.Get("node"); n != "" && n != node {
		if g.members != nil {
			// Another node's devices, from the cluster's registry.
			g.listElsewhere(w, r, n, q.Get("mode"), cursor, limit)
			return
		}
		// One node: none is on node n.
		writeJSON(w, http.StatusOK, out)
		return
	}
	pos, err := registry.ParsePosition(cursor)
	if err != nil {
		writeError(w, http.StatusBadRequest, "cursor: not one this gateway gave out since it started (cursors do not outlive a restart); list again without cursor")
		return
	}
	page, next, more := g.reg.Scan(pos, limit, keep)
	for _, s := range page {
		e := s.RegistryEntry()
		out.Clients = append(out.Clients, clientItem{
			ClientID: e.ClientID, Mode: e.Mode.String(), Protocol: e.Protocol,
			Since: e.Since().UTC().Truncate(time.Millisecond), Node: node,
		})
	}
	if more {
		out.NextCursor = next.String()
	}
	writeJSON(w, http.StatusOK, out)
}

// listElsewhere pages through another node's devices in the cluster's
// registry (a dead node has none).
func (g *Gateway) listElsewhere(w http.ResponseWriter, r *http.Request, node, mode, cursor string, limit int) {
	ctx, cancel := context.WithTimeout(r.Context(), g.cfg.ClusterTimeout)
	defer cancel()
	recs, next, err := g.members.m.List(ctx, node, mode, cursor, limit)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cluster registry: "+err.Error())
		return
	}
	out := clientList{Clients: []clientItem{}, NextCursor: next}
	for _, rec := range recs {
		out.Clients = append(out.Clients, clientItem{ClientID: rec.ClientID, Mode: string(rec.Mode), Protocol: rec.Protocol,
			Since: time.UnixMilli(rec.Since).UTC(), Node: rec.Node})
	}
	writeJSON(w, http.StatusOK, out)
}

// sessionFacts are what the API reads from a session in its owner context.
type sessionFacts struct {
	remote string
	proven bool
}

// factsOf asks the session's owner for the device's address, which
// sessions do not keep (it costs memory on every idle connection, and the
// API asks for it rarely), and whether its client id is proven. It returns
// the zero value if the owner does not answer within a second.
func factsOf(s *session.Session) sessionFacts {
	ch := make(chan sessionFacts, 1)
	s.Exec(func(s *session.Session) { ch <- sessionFacts{remote: s.Remote(), proven: s.IdentityProven()} })
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case f := <-ch:
		return f
	case <-t.C:
		return sessionFacts{}
	}
}

// statsView is the answer of GET /v1/stats.
type statsView struct {
	Connections map[string]int    `json:"connections"`
	Commands    map[string]int    `json:"commands"`
	Upstream    *upstreamView     `json:"upstream,omitempty"`
	OnDemand    map[string]uint64 `json:"on_demand"`
	Sessions    map[string]uint64 `json:"sessions"`
	Memory      map[string]uint64 `json:"memory"`
	Goroutines  int               `json:"goroutines"`
	Uptime      string            `json:"uptime"`
}

// upstreamView is bridge.Stats in the API's JSON naming (snake_case),
// field by field: a field added to bridge.Stats must be added here
// (TestAPIStatsUpstreamEveryField says so).
type upstreamView struct {
	Protocol            string `json:"protocol"`
	Expired             uint64 `json:"expired"`
	Pool                int    `json:"pool"`
	Connected           int    `json:"connected"`
	Buffered            int    `json:"buffered"`
	BufferedBytes       int64  `json:"buffered_bytes"`
	Spilled             int    `json:"spilled"`
	SpilledBytes        int64  `json:"spilled_bytes"`
	InFlight            int    `json:"in_flight"`
	Subscriptions       int    `json:"subscriptions"`
	CommandsSubscribed  bool   `json:"commands_subscribed"`
	ForwardedUp         uint64 `json:"forwarded_up"`
	ForwardedDown       uint64 `json:"forwarded_down"`
	RetainedDelivered   uint64 `json:"retained_delivered"`
	RetainedSkipped     uint64 `json:"retained_skipped"`
	Unrouted            uint64 `json:"unrouted"`
	CommandCopies       uint64 `json:"command_copies"`
	Commands            uint64 `json:"commands"`
	CommandErrors       uint64 `json:"command_errors"`
	CommandsRejected    uint64 `json:"commands_rejected"`
	CommandCycles       uint64 `json:"command_cycles"`
	CommandsRetained    uint64 `json:"commands_retained"`
	CommandsDuplicate   uint64 `json:"commands_duplicate"`
	DroppedQoS0         uint64 `json:"dropped_qos0"`
	DroppedDisconnected uint64 `json:"dropped_disconnected"`
	DroppedDeviceShare  uint64 `json:"dropped_device_share"`
	DroppedBufferFull   uint64 `json:"dropped_buffer_full"`
	DroppedStopping     uint64 `json:"dropped_stopping"`
	Handoff             int    `json:"handoff"`
	HandoffFull         uint64 `json:"handoff_full"`
	Throttled           uint64 `json:"throttled"`
	SpilledTotal        uint64 `json:"spilled_total"`
	Refused             uint64 `json:"refused"`
	QuotaExceeded       uint64 `json:"quota_exceeded"`
	SpillFull           uint64 `json:"spill_full"`
	Abandoned           uint64 `json:"abandoned"`
	TooLarge            uint64 `json:"too_large"`
	Saved               uint64 `json:"saved"`
	Replayed            uint64 `json:"replayed"`
	Reconnects          uint64 `json:"reconnects"`
	ConnectionLosses    uint64 `json:"connection_losses"`
	SubscribeFailures   uint64 `json:"subscribe_failures"`
}

func viewOfUpstream(s bridge.Stats) *upstreamView {
	return &upstreamView{
		Protocol:            s.Protocol,
		Expired:             s.Expired,
		Pool:                s.Pool,
		Connected:           s.Connected,
		Buffered:            s.Buffered,
		BufferedBytes:       s.BufferedBytes,
		Spilled:             s.Spilled,
		SpilledBytes:        s.SpilledBytes,
		InFlight:            s.InFlight,
		Subscriptions:       s.Subscriptions,
		CommandsSubscribed:  s.CommandsSubscribed,
		ForwardedUp:         s.ForwardedUp,
		ForwardedDown:       s.ForwardedDown,
		RetainedDelivered:   s.RetainedDelivered,
		RetainedSkipped:     s.RetainedSkipped,
		Unrouted:            s.Unrouted,
		CommandCopies:       s.CommandCopies,
		Commands:            s.Commands,
		CommandErrors:       s.CommandErrors,
		CommandsRejected:    s.CommandsRejected,
		CommandCycles:       s.CommandCycles,
		CommandsRetained:    s.CommandsRetained,
		CommandsDuplicate:   s.CommandsDuplicate,
		DroppedQoS0:         s.DroppedQoS0,
		DroppedDisconnected: s.DroppedDisconnected,
		DroppedDeviceShare:  s.DroppedDeviceShare,
		DroppedBufferFull:   s.DroppedBufferFull,
		DroppedStopping:     s.DroppedStopping,
		Handoff:             s.Handoff,
		HandoffFull:         s.HandoffFull,
		Throttled:           s.Throttled,
		SpilledTotal:        s.SpilledTotal,
		Refused:             s.Refused,
		QuotaExceeded:       s.QuotaExceeded,
		SpillFull:           s.SpillFull,
		Abandoned:           s.Abandoned,
		TooLarge:            s.TooLarge,
		Saved:               s.Saved,
		Replayed:            s.Replayed,
		Reconnects:          s.Reconnects,
		ConnectionLosses:    s.ConnectionLosses,
		SubscribeFailures:   s.SubscribeFailures,
	}
}

func (g *Gateway) getStats(w http.ResponseWriter, _ *http.Request) {
	counts, err := g.store.Stats()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	ds := g.dispatcher.Stats()
	plain, tlsN := g.reg.CountByMode()
	st := g.env.Stats
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var up *upstreamView
	if g.upstream != nil {
		up = viewOfUpstream(g.upstream.Stats())
	}
	writeJSON(w, http.StatusOK, statsView{
		Upstream:    up,
		Connections: map[string]int{"plain": plain, "tls": tlsN, "total": plain + tlsN},
		Commands: map[string]int{
			"pending": counts.Pending, "upgrading": counts.Upgrading, "sent": counts.Sent,
			"delivered": counts.Delivered, "expired": counts.Expired, "failed": counts.Failed,
			"cancelled": counts.Cancelled, "clients_waiting": counts.Clients,
		},
		OnDemand: map[string]uint64{
			"accepted":            ds.Accepted.Load(),
			"delivered":           ds.Delivered.Load(),
			"upgrades":            ds.Upgrades.Load(),
			"instructions":        ds.Instructions.Load(),
			"instruction_retries": ds.InstructionRetries.Load(),
			"downgrades":          ds.Downgrades.Load(),
			"cancelled":           ds.Cancelled.Load(),
			"failed":              ds.Failed.Load(),
			"loop_protected":      uint64(g.dispatcher.LoopProtected()),
		},
		Sessions: map[string]uint64{
			"connects":           st.Connects.Load(),
			"refused":            st.RefusedTotal(),
			"disconnects":        st.Disconnects.Load(),
			"takeovers":          st.Takeovers.Load(),
			"connect_timeouts":   st.ConnectTimeouts.Load(),
			"keepalive_timeouts": st.KeepAliveTimeouts.Load(),
			"protocol_errors":    st.ProtocolErrors.Load(),
			"malformed_packets":  st.MalformedPackets.Load(),
			"publishes_in":       st.PublishesIn.Load(),
			"deliveries":         st.Deliveries.Load(),
			"instructions":       st.Instructions.Load(),
			"panics":             st.Panics.Load(),
			// Secure payloads CheckTransport kept off a socket.
			"secure_refused_on_plain": st.RefusedOnPlain.Load(),
			"secure_refused_unproven": st.RefusedUnproven.Load(),
		},
		Memory: map[string]uint64{
			"rss_bytes":        readRSS(),
			"heap_inuse_bytes": ms.HeapInuse,
			"heap_alloc_bytes": ms.HeapAlloc,
			"sys_bytes":        ms.Sys,
		},
		Goroutines: runtime.NumGoroutine(),
		Uptime:     time.Since(g.start).Round(time.Second).String(),
	})
}

// metricsRegistry builds the Prometheus registry: Go and process
// collectors, and the gateway's own figures read at scrape time.
func (g *Gateway) metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.fds.register(reg)
	reg.MustRegister(g.plain.lag)
	st := g.env.Stats
	for _, m := range []registry.Mode{registry.ModePlain, registry.ModeTLS} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_connections", Help: "Live device sessions by transport mode.",
			ConstLabels: prometheus.Labels{"mode": m.String()},
		}, func() float64 {
			plain, tlsN := g.reg.CountByMode()
			if m == registry.ModeTLS {
				return float64(tlsN)
			}
			return float64(plain)
		}))
	}
	counter := func(name, help string, f func() uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f()) }))
	}
	counter("dualgate_connects_total", "CONNECTs accepted.", st.Connects.Load)
	counter("dualgate_connects_refused_total", "CONNECTs refused, any reason.", st.RefusedTotal)
	counter("dualgate_disconnects_total", "Sessions ended.", st.Disconnects.Load)
	counter("dualgate_takeovers_total", "Sessions taken over by a new connection with the same client id.", st.Takeovers.Load)
	counter("dualgate_connect_timeouts_total", "Connections closed for not sending CONNECT in time.", st.ConnectTimeouts.Load)
	counter("dualgate_keepalive_timeouts_total", "Sessions closed by keepalive expiry.", st.KeepAliveTimeouts.Load)
	counter("dualgate_protocol_errors_total", "Sessions closed for a protocol violation.", st.ProtocolErrors.Load)
	counter("dualgate_malformed_packets_total", "Malformed packets received.", st.MalformedPackets.Load)
	counter("dualgate_publishes_received_total", "PUBLISH packets received from devices.", st.PublishesIn.Load)
	counter("dualgate_deliveries_total", "Commands written to devices.", st.Deliveries.Load)
	counter("dualgate_instructions_total", "Reconnect instructions sent.", st.Instructions.Load)
	counter("dualgate_session_panics_total", "Session panics contained to their connection.", st.Panics.Load)
	counter("dualgate_slow_reader_disconnects_total", "Devices disconnected because what waited to be sent to them passed --max-outbound-bytes.", st.SlowReaderClosed.Load)
	counter("dualgate_subscriptions_too_long_total", "Filters refused for passing --max-topic-length.", st.SubscribeTooLong.Load)
	counter("dualgate_kept_sessions_expired_total", "Kept sessions of disconnected devices that expired (--session-expiry).", func() uint64 { return g.env.Sessions.Stats().Expired })
	counter("dualgate_kept_sessions_evicted_total", "Kept sessions dropped, soonest to expire first, to stay within --max-kept-sessions and --max-kept-session-bytes.", func() uint64 { return g.env.Sessions.Stats().Evicted })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_kept_sessions", Help: "Sessions of disconnected devices whose state is kept.",
	}, func() float64 { return float64(g.env.Sessions.Stats().Sessions) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_kept_session_bytes", Help: "Approximate bytes held by kept sessions (client ids, filters, queued messages).",
	}, func() float64 { return float64(g.env.Sessions.Stats().Bytes) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_offline_queued", Help: "QoS 1/2 messages waiting in kept sessions for their devices.",
	}, func() float64 { return float64(g.env.Sessions.Stats().Queued) }))
	counter("dualgate_offline_dropped_total", "Messages for a device that is away dropped by --offline-overflow (its queue at --max-offline-messages or the kept sessions at --max-kept-session-bytes).", func() uint64 { return g.env.Sessions.Stats().QueueDropped })
	counter("dualgate_offline_expired_total", "Messages for a device that is away dropped because their Message Expiry ran out first.", func() uint64 { return g.env.Sessions.Stats().QueueExpired })
	counter("dualgate_messages_expired_total", "Routed messages not written to a device because their Message Expiry ran out.", st.MessagesExpired.Load)
	counter("dualgate_read_pauses_total", "Times the gateway stopped reading a device to hold it back (flow control), resumed as acknowledgements return.", st.ReadPauses.Load)
	counter("dualgate_receive_maximum_exceeded_total", "MQTT 5 devices disconnected (0x93) for more QoS 1/2 publishes in flight than the Receive Maximum advertised.", st.ReceiveMaximumExceeded.Load)
	counter("dualgate_qos2_unreleased_closed_total", "MQTT 3.1.1 devices closed for leaving more QoS 2 publishes unreleased than --max-qos2-unreleased.", st.QoS2Unreleased.Load)
	counter("dualgate_deliveries_queued_total", "Routed QoS 1 messages that waited for room in a device's Receive Maximum.", st.Queued.Load)
	counter("dualgate_deliveries_dropped_total", "Routed messages dropped because the device's queue was full (--max-queued-messages, --max-outbound-bytes).", st.QueueDropped.Load)
	counter("dualgate_secure_refused_on_plain_total", "Secure commands and secure data kept off a plain connection.", st.RefusedOnPlain.Load)
	counter("dualgate_secure_refused_unproven_total", "Secure commands kept off a TLS session whose client id was not proven (--secure-identity).", st.RefusedUnproven.Load)
	counter("dualgate_memory_releases_total", "Times the gateway returned its free heap memory to the OS after a burst.", g.mem.released.Load)
	ds := g.dispatcher.Stats()
	counter("dualgate_commands_accepted_total", "Commands stored for delivery.", ds.Accepted.Load)
	counter("dualgate_commands_delivered_total", "Commands acknowledged by their device.", ds.Delivered.Load)
	counter("dualgate_commands_expired_total", "Commands whose TTL ran out before delivery.", ds.Expired.Load)
	counter("dualgate_commands_cancelled_total", "Commands cancelled through the API before they were written to their device.", ds.Cancelled.Load)
	counter("dualgate_commands_failed_total", "Commands given up because they can never be written to their device (larger than the Maximum Packet Size it declared).", ds.Failed.Load)
	counter("dualgate_upgrades_total", "Devices that moved to TLS after an instruction.", ds.Upgrades.Load)
	counter("dualgate_upgrade_instructions_total", "Reconnect instructions with mode tls.", ds.Instructions.Load)
	counter("dualgate_instruction_retries_total", "TLS instructions repeated to a device that came back on plain.", ds.InstructionRetries.Load)
	counter("dualgate_downgrades_total", "Reconnect instructions with mode plain.", ds.Downgrades.Load)
	counter("dualgate_secure_commands_held_unproven_total", "Secure commands held, with the reason in their history, because their device's TLS session did not prove its client id (--secure-identity).", ds.HeldUnproven.Load)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_loop_protected_devices", Help: "Devices whose secure commands wait for them on TLS after they ignored the instructions.",
	}, func() float64 { return float64(g.dispatcher.LoopProtected()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_dispatch_tracked_devices", Help: "Devices the dispatcher keeps a record of: on TLS, or with an instruction, an upgrade or a retry that still counts.",
	}, func() float64 { return float64(g.dispatcher.Tracked()) }))
	for _, st := range store.Statuses() {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_commands", Help: "Commands in the store by status.",
			ConstLabels: prometheus.Labels{"status": string(st)},
		}, func() float64 {
			c, err := g.store.Stats()
			if err != nil {
				return 0
			}
			return float64(c.Of(st))
		}))
	}
	reg.MustRegister(g.latency, g.handshakes)
	ctr := &g.counters
	for i, mode := range []string{"plain", "tls"} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_received_bytes_total", Help: "MQTT bytes received from devices, by transport mode.",
			ConstLabels: prometheus.Labels{"mode": mode},
		}, func() float64 { return float64(st.BytesIn[i].Load()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_sent_bytes_total", Help: "MQTT bytes sent to devices, by transport mode.",
			ConstLabels: prometheus.Labels{"mode": mode},
		}, func() float64 { return float64(st.BytesOut[i].Load()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_mux_connections_total", Help: "Connections on the single-port listener, by the mode they were routed to.",
			ConstLabels: prometheus.Labels{"mode": mode},
		}, func() float64 { return float64(ctr.muxed[i].Load()) }))
	}
	counter("dualgate_proxy_header_errors_total", "Plain connections closed for a missing or malformed PROXY header.", ctr.proxyErrors.Load)
	counter("dualgate_proxy_untrusted_total", "Connections refused for sending a PROXY header from outside --proxy-trusted (with --proxy-protocol required: for connecting from outside it).", ctr.proxyUntrusted.Load)
	counter("dualgate_drained_sessions_total", "Sessions moved off by a drain.", ctr.drained.Load)
	for name, pick := range map[string]func(tlsmux.Stats) uint64{
		"full":          func(s tlsmux.Stats) uint64 { return s.HandshakesFull },
		"resumed":       func(s tlsmux.Stats) uint64 { return s.HandshakesResumed },
		"failed":        func(s tlsmux.Stats) uint64 { return s.HandshakesFailed },
		"refused":       func(s tlsmux.Stats) uint64 { return s.HandshakesRefused },
		"hello_timeout": func(s tlsmux.Stats) uint64 { return s.HelloTimeouts },
		"hello_refused": func(s tlsmux.Stats) uint64 { return s.HelloRefused },
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "dualgate_tls_handshakes_total", Help: "TLS handshakes by outcome (refused: no handshake slot in time, or shutting down; hello_timeout: no TLS record within --tls-hello-timeout; hello_refused: too many connections from one source waiting for their first record).",
			ConstLabels: prometheus.Labels{"result": name},
		}, func() float64 { return float64(pick(g.tlsSrv.Stats())) }))
	}
	counter("dualgate_tls_handoff_panics_total", "Handshaken TLS connections whose hand-over to the event loops panicked (the connection was closed; the error log has the stack).", func() uint64 { return g.tlsSrv.Stats().HandoffPanics })
	g.registerSessionMetrics(reg, counter)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_tls_handshakes_in_flight", Help: "TLS handshakes running now.",
	}, func() float64 { return float64(g.tlsSrv.Stats().HandshakesInFlight) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_tls_buffers_releasable", Help: "1 when this Go's crypto/tls lets an idle TLS connection give back its read and handshake buffers (and the peer certificates); 0 when it does not, and every idle TLS connection keeps about 3 KiB more (the gateway warns at start).",
	}, func() float64 {
		if tlsmux.BuffersReleasable() && tlsmux.PeerCertificatesReleasable() {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_tls_hello_waiting", Help: "New TLS connections waiting for their first record (holding no handshake slot).",
	}, func() float64 { return float64(g.tlsSrv.Stats().HelloWaiting) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dualgate_ready", Help: "1 while the gateway accepts connections, 0 while it drains.",
	}, func() float64 {
		if g.draining.Load() {
			return 0
		}
		return 1
	}))
	reg.MustRegister(refusalCollector{st})
	if g.muxGate != nil {
		registerMuxMetrics(reg, g.muxGate)
	}
	if g.upstream != nil {
		up := func() bridge.Stats { return g.upstream.Stats() }
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_upstream_connections", Help: "Connections to the upstream broker that are up.",
		}, func() float64 { return float64(up().Connected) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dualgate_upstream_buffered_messages", Help: "Device messages waiting for the upstream broker.",
		}, func() float64 { return float64(up().Buffered) }))
		counter("dualgate_upstream_forwarded_up_total", "Device messages the broker took.", func() uint64 { return up().ForwardedUp })
		counter("dualgate_upstream_forwarded_down_total", "Broker messages handed to local subscribers.", func() uint64 { return up().ForwardedDown })
		for reason := range (bridge.Stats{}).DropReasons() {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "dualgate_upstream_dropped_total",
				Help:        "QoS 0 device messages dropped on their way to the broker, by reason (disconnected: the broker connection was down; device_share: the device held its whole share of the buffer, i.e. it publishes faster than the broker takes; buffer_full; stopping).",
				ConstLabels: prometheus.Labels{"reason": reason},
			}, func() float64 { return float64(up().DropReasons()[reason]) }))
		}
		counter("dualgate_upstream_backpressure_total", "Times a device was paused (not read) because its QoS 0 messages filled three quarters of its share of the uplink buffer.", func() uint64 { return up().Throttled })
		counter("dualgate_upstream_quota_exceeded_total", "QoS 1 device publishes pushed back (MQTT 5 PUBACK 0x97, 3.1.1 disconnect) because the buffer, the hand-off to the spill writer or the spill was full.", func() uint64 { return up().QuotaExceeded })
		counter("dualgate_upstream_commands_total", "Commands taken from the broker.", func() uint64 { return up().Commands })
		counter("dualgate_upstream_reconnects_total", "Reconnections to the broker.", func() uint64 { return up().Reconnects })
		counter("dualgate_upstream_too_large_total", "Device messages larger than the broker's Maximum Packet Size (MQTT 5 CONNACK), refused to their device (0x95) or, at QoS 0, dropped.", func() uint64 { return up().TooLarge })
		counter("dualgate_upstream_commands_retained_total", "Retained messages on the command topic, dropped: a retained message is never a command.", func() uint64 { return up().CommandsRetained })
		counter("dualgate_upstream_commands_duplicate_total", "Broker redeliveries of commands already stored, dropped.", func() uint64 { return up().CommandsDuplicate })
		registerSpillMetrics(reg, up)
	}
	g.topicMetrics(counter)
	g.registerClusterMetrics(reg, counter)
	return reg
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// refusalCollector reports CONNECT refusals by reason code, only for the
// codes that occurred.
type refusalCollector struct{ st *session.Stats }

var refusalDesc = prometheus.NewDesc("dualgate_connects_refused_by_reason_total",
	"CONNECTs refused, by MQTT 5 reason code.", []string{"reason"}, nil)

func (rc refusalCollector) Describe(ch chan<- *prometheus.Desc) { ch <- refusalDesc }

func (rc refusalCollector) Collect(ch chan<- prometheus.Metric) {
	for code := range rc.st.Refused {
		if n := rc.st.Refused[code].Load(); n > 0 {
			ch <- prometheus.MustNewConstMetric(refusalDesc, prometheus.CounterValue, float64(n),
				mqttcodec.ReasonCode(code).String())
		}
	}
}
