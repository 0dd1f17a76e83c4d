package gateway

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/dualgate/dualgate/gateway/auth"
)

// Config is every setting of a gateway. Each field has a command-line flag,
// a YAML key (--config FILE) and an environment variable DUALGATE_<KEY>
// (upper case, '-' as '_'); flags win over the environment, which wins over
// the file. The zero value of a field means its default.
type Config struct {
	Plain  string `yaml:"plain" help:"plain MQTT listener address (gnet event loop)"`
	TLS    string `yaml:"tls" help:"TLS MQTT listener address"`
	API    string `yaml:"api" help:"HTTP API, /metrics, /healthz and /readyz address"`
	Data   string `yaml:"data" help:"data directory: pending commands, state, generated dev certificates"`
	Config string `yaml:"-" help:"YAML file with the same keys as the flags"`

	TLSCert      string        `yaml:"tls-cert" help:"server certificate (PEM); without it a dev CA and certificate are generated in the data dir"`
	TLSKey       string        `yaml:"tls-key" help:"server private key (PEM)"`
	ClientCA     string        `yaml:"client-ca" help:"CA (PEM) that signs device certificates; enables mutual TLS (optional client certificates)"`
	RequireCert  bool          `yaml:"require-client-cert" help:"refuse TLS devices without a client certificate"`
	TLSHosts     string        `yaml:"tls-hosts" help:"comma-separated host names and IPs for a generated server certificate"`
	TLSMin       string        `yaml:"tls-min-version" help:"minimum TLS version: 1.2 or 1.3"`
	TLSCiphers   string        `yaml:"tls-ciphers" help:"TLS 1.2 cipher suites, comma-separated Go names (empty: Go's default secure list)"`
	TicketKeys   string        `yaml:"tls-ticket-keys" help:"session ticket key file shared by the gateways behind one balancer (created if missing)"`
	TicketRotate time.Duration `yaml:"tls-ticket-rotate" help:"add a new session ticket key this often (0: only re-read the file)"`
	TLSSessions  string        `yaml:"tls-sessions" help:"TLS session resumption: server (16-byte tickets naming states kept in memory, or in Redis with --cluster) or tickets (stateless tickets, ~105 B up and ~145 B down per resumption, ~1 KB more each way with a client certificate); default server, tickets with --tls-ticket-keys or --tls-ticket-rotate"`
	TLSSessionMB int           `yaml:"tls-session-cache-mb" help:"most memory, MiB, of the TLS sessions kept with --tls-sessions server without --cluster; past it the oldest go (their devices make a full handshake)"`
	TLSCurves    string        `yaml:"tls-curves" help:"key exchange groups, comma-separated (x25519, p256, x25519mlkem768); empty: Go's default"`

	ProxyProtocol string `yaml:"proxy-protocol" help:"PROXY protocol v1/v2 header from a load balancer on both listeners: off, optional or required"`
	ProxyTrusted  string `yaml:"proxy-trusted" help:"comma-separated CIDRs or IPs of the load balancers allowed to send a PROXY header (required with --proxy-protocol); a header from any other source is refused"`
	ListenMux     string `yaml:"listen-mux" help:"optional single port serving both plain MQTT and TLS, told apart by the first byte"`

	AdvertisePlain string `yaml:"advertise-plain" help:"host:port put into instructions to use plain (behind a load balancer: its address)"`
	AdvertiseTLS   string `yaml:"advertise-tls" help:"host:port put into instructions to use TLS"`

	SecureIdle       time.Duration `yaml:"secure-idle" help:"quiet period after which a TLS device is sent back to plain"`
	SecureIdleFixed  bool          `yaml:"secure-idle-fixed" help:"keep the quiet period at --secure-idle instead of stretching it (up to 3x) for devices that need TLS often"`
	MaxInstructions  int           `yaml:"max-instructions" help:"TLS instructions a device may ignore in a row before its secure commands just wait for it on TLS"`
	InstructBackoff  time.Duration `yaml:"instruct-backoff" help:"wait before telling a device again to use TLS; doubles each time, at most 5m"`
	CommandLimit     int           `yaml:"command-limit" help:"most undelivered commands one device may have"`
	CommandRetention time.Duration `yaml:"command-retention" help:"how long delivered, expired and failed commands stay readable"`
	Upstream         string        `yaml:"upstream" help:"tcp:// or tls:// URL of the cloud broker (none: no bridge)"`
	UpstreamUser     string        `yaml:"upstream-user" help:"user name toward the broker"`
	UpstreamPassword string        `yaml:"upstream-password" help:"password toward the broker (prefer the environment: DUALGATE_UPSTREAM_PASSWORD)"`
	UpstreamClientID string        `yaml:"upstream-client-id" help:"client id prefix of the gateway's broker connections; stable and unique per gateway (default dualgate-<host name>)"`
	UpstreamCA       string        `yaml:"upstream-ca" help:"CA (PEM) that verifies a tls:// broker (default: the system roots)"`
	UpstreamCert     string        `yaml:"upstream-cert" help:"client certificate (PEM) toward the broker"`
	UpstreamKey      string        `yaml:"upstream-key" help:"client key (PEM) toward the broker"`
	UpstreamPool     int           `yaml:"upstream-pool" help:"connections to the broker (each has at most the broker's Receive Maximum of QoS 1/2 publishes in flight)"`
	UpstreamProtocol string        `yaml:"upstream-protocol" help:"MQTT version toward the broker: 5 (falls back to 3.1.1 when the broker refuses it; properties, QoS 2, shared subscriptions and exact retained delivery need 5) or 3.1.1"`
	UpstreamPrefix   string        `yaml:"upstream-prefix" help:"topic prefix on the broker side, e.g. site1/"`
	UpstreamTemplate string        `yaml:"upstream-device-template" help:"filter every topic a device publishes on must match, {client} standing for its client id, e.g. devices/{client}/# (empty: any); part of the topic authorization, with or without --upstream"`
	UpstreamCommands string        `yaml:"upstream-command-filter" help:"filter of commands on the broker, {client} in one level (default devices/{client}/commands/#; off for none)"`
	UpstreamPlain    string        `yaml:"upstream-plain-commands" help:"comma-separated filters of commands from the broker that need no TLS"`
	ACL              string        `yaml:"acl" help:"topic authorization file in Mosquitto's acl_file format (topic/pattern/user lines; %c client id, %u user name); anything it does not grant is denied; re-read on SIGHUP (none: built-in rules only)"`
	SecureTopics     string        `yaml:"secure-topics" help:"comma-separated topic filters whose messages are written to TLS sessions only and refused when published over plain"`
	UpstreamBuffer   int           `yaml:"upstream-buffer" help:"QoS 1 messages held in memory while the broker is away (then spilled to --upstream-spill-dir)"`
	APIToken         string        `yaml:"api-token" help:"bearer token required by every /v1 request, /metrics and /debug/pprof"`
	APIInsecure      bool          `yaml:"api-insecure" help:"allow --api on a non-loopback address without --api-token (anyone who reaches it can send commands)"`
	APITLSCert       string        `yaml:"api-tls-cert" help:"certificate (PEM) that makes the API serve HTTPS; reloaded when the file changes"`
	APITLSKey        string        `yaml:"api-tls-key" help:"private key (PEM) of --api-tls-cert"`
	MetricsPublic    bool          `yaml:"metrics-public" help:"serve /metrics without --api-token"`

	UpstreamSpillDir      string `yaml:"upstream-spill-dir" help:"directory where QoS 1 device messages wait for the broker once --upstream-buffer is full, and across restarts (default <data>/bridge); a file system apart from --data keeps them from ever filling the command store's"`
	UpstreamSpillBytes    int    `yaml:"upstream-spill-bytes" help:"most bytes of device messages in the spill directory; beyond, QoS 1 publishes are refused (MQTT 5 PUBACK 0x97, 3.1.1 disconnect) and devices send again later"`
	UpstreamSpillMessages int    `yaml:"upstream-spill-messages" help:"most device messages in the spill directory"`
	UpstreamSpillKeepFree int    `yaml:"upstream-spill-keep-free" help:"bytes the spill always leaves free on its file system, for the command store when they share a disk"`
	UpstreamDeviceBuffer  int    `yaml:"upstream-device-buffer" help:"QoS 0 messages one device may hold in the upstream buffer; past it that device's QoS 0 messages are dropped (reason device_share), not the others' (0: --upstream-buffer/16)"`
	MuxPending            int    `yaml:"mux-pending" help:"connections on --listen-mux that may wait for their first byte at once (also bounded per source by --tls-hello-per-source, and in time by --tls-hello-timeout)"`

	Auth           string        `yaml:"auth" help:"device authentication: allow-all or token"`
	SecureIdentity string        `yaml:"secure-identity" help:"what proves a TLS device's client id before secure commands are written to it: cert (a client certificate whose CN or URI SAN urn:dualgate:client:<id> is the id), token (a channel-bound token, needs --auth token), cert,token (either) or none (anyone claiming the id; not for production)"`
	Secrets        string        `yaml:"secrets" help:"per-device secrets file for --auth token"`
	TokenWindow    time.Duration `yaml:"token-window" help:"how far a device token's time may be from the gateway's, either way; accepted plain tokens are remembered (in the data dir, or with --cluster in Redis) until then"`

	ConnectTimeout time.Duration `yaml:"connect-timeout" help:"time a new connection has to send CONNECT"`
	MaxPacketSize  int           `yaml:"max-packet-size" help:"largest MQTT packet accepted from a device, bytes"`
	MaxOutbound    int           `yaml:"max-outbound-bytes" help:"bytes that may wait to be sent to one device; a device that does not read is disconnected past it (0: 2 MiB or twice max-packet-size)"`
	MaxKeepAlive   int           `yaml:"max-keepalive" help:"cap on an MQTT 5 device's keepalive, seconds (0: none)"`

	ReceiveMaximum     int           `yaml:"receive-maximum" help:"QoS 1/2 publishes a device may have in flight toward the gateway: advertised to MQTT 5 devices (one more gets DISCONNECT 0x93); an MQTT 3.1.1 device past it is not read until acknowledgements return"`
	MaxQoS2Unreleased  int           `yaml:"max-qos2-unreleased" help:"QoS 2 publishes an MQTT 3.1.1 device may leave unreleased (no PUBREL yet) before it is closed"`
	MaxQueued          int           `yaml:"max-queued-messages" help:"routed QoS 1 messages that may wait for room in one device's Receive Maximum; past it (or past max-outbound-bytes) new ones are dropped and counted"`
	MaxSubscriptions   int           `yaml:"max-subscriptions" help:"subscriptions one session may hold"`
	MaxTopicLen        int           `yaml:"max-topic-length" help:"longest topic a device may publish on and longest filter it may subscribe to, bytes"`
	SessionExpiry      time.Duration `yaml:"session-expiry" help:"how long the state of a disconnected session is kept: the expiry of an MQTT 3.1.1 clean-session-0 session and the cap on what an MQTT 5 device asks for"`
	MaxKeptSessions    int           `yaml:"max-kept-sessions" help:"disconnected sessions whose state is kept; past it the one that expires soonest is dropped"`
	MaxKeptSessionSize int           `yaml:"max-kept-session-bytes" help:"bytes of state (client ids, filters, queued messages) all kept sessions may hold together; past it the ones that expire soonest are dropped"`
	MaxOffline         int           `yaml:"max-offline-messages" help:"QoS 1/2 messages queued for one persistent session while its device is away"`
	OfflineOverflow    string        `yaml:"offline-overflow" help:"what a full offline queue does with a new message: drop-new (keep the oldest, as Mosquitto does) or drop-oldest"`
	MaxConnections     int           `yaml:"max-connections" help:"maximum live device sessions (0: no limit)"`
	MaxPlain           int           `yaml:"max-plain-connections" help:"maximum live sessions on the plain listener (0: no limit)"`
	MaxTLS             int           `yaml:"max-tls-connections" help:"maximum live sessions on the TLS listener (0: no limit)"`
	PerIPRate          float64       `yaml:"per-ip-connect-rate" help:"CONNECTs per second from one source address, the PROXY header's when there is one (0: no limit)"`
	PerIPBurst         int           `yaml:"per-ip-connect-burst" help:"burst of CONNECTs from one source address"`
	ConnectRate        float64       `yaml:"connect-rate" help:"accepted CONNECTs per second (0: no limit)"`
	ConnectBurst       int           `yaml:"connect-burst" help:"burst of CONNECTs above connect-rate"`
	ControlGrace       time.Duration `yaml:"control-grace" help:"time a 3.1.1 device has to leave after a reconnect instruction"`
	EventLoops         int           `yaml:"event-loops" help:"gnet event loops for the plain listener (0: one per CPU)"`
	MaxHandshakes      int           `yaml:"max-handshakes" help:"concurrent TLS handshakes (0: 4 per CPU)"`
	HandshakeTimeout   time.Duration `yaml:"handshake-timeout" help:"time a TLS handshake may take"`
	HandshakeQueue     time.Duration `yaml:"handshake-queue-timeout" help:"time a new TLS connection may wait for a handshake slot before it is closed"`
	TLSHello           time.Duration `yaml:"tls-hello-timeout" help:"time a new TLS connection may take to send its first TLS record (waiting holds no handshake slot)"`
	TLSHelloPerIP      int           `yaml:"tls-hello-per-source" help:"new TLS connections from one source address that may wait for their first record at once (-1: no bound; behind a balancer without PROXY protocol every device shares its address)"`
	ShutdownTimeout    time.Duration `yaml:"shutdown-timeout" help:"time to close sessions on SIGINT before exiting"`
	DrainTo            string        `yaml:"drain-to" help:"where SIGTERM sends MQTT 5 devices on TLS: tls://host:port (empty: DISCONNECT 0x8B); devices on plain are closed and reconnect through the balancer"`
	DrainDelay         time.Duration `yaml:"drain-delay" help:"time between /readyz failing and the first device being moved, so the balancer stops sending new connections first"`
	DrainRate          float64       `yaml:"drain-rate" help:"devices moved off per second while draining"`
	DrainTimeout       time.Duration `yaml:"drain-timeout" help:"longest drain on SIGTERM before the gateway exits anyway"`

	Cluster             string        `yaml:"cluster" help:"Redis shared by the gateways of a cluster, which keeps their pending commands: redis://[user:pass@]host:port/db, rediss://... (TLS) or redis+sentinel://host:port/db?master_name=NAME (empty: one node, commands in the data dir)"`
	NodeID              string        `yaml:"node-id" help:"this gateway's name in the cluster, unique among its nodes (default: the host name)"`
	ClusterPrefix       string        `yaml:"cluster-prefix" help:"prefix of every Redis key of the cluster; two fleets sharing one Redis database use two prefixes"`
	ClusterTimeout      time.Duration `yaml:"cluster-timeout" help:"longest a Redis call may take, reconnecting included (plus --cluster-wait-timeout for a write that waits for replicas); past it a new command is refused with 503, and a plain CONNECT whose token Redis must check is decided by --token-replay-unavailable"`
	ClusterWaitReplicas int           `yaml:"cluster-wait-replicas" help:"Redis replicas that must have a new command before the API accepts it (Redis WAIT; 0: the primary's answer is enough)"`
	ClusterWaitTimeout  time.Duration `yaml:"cluster-wait-timeout" help:"longest wait for --cluster-wait-replicas; past it a new command is refused with 503"`
	ClusterNodeTTL      time.Duration `yaml:"cluster-node-ttl" help:"how long a node that stops renewing its heartbeat in Redis (it died, or lost Redis) still counts as live: then its devices read offline and the commands it had in flight are delivered by the node their device reconnects to; renewed every third of it"`
	// TokenReplayUnavailable is what a plain token CONNECT gets when the
	// cluster's replay memory (Redis) does not answer within
	// --cluster-timeout: refuse, or local.
	TokenReplayUnavailable string `yaml:"token-replay-unavailable" help:"with --cluster and --auth token, what a plain CONNECT whose token Redis cannot check in time gets: refuse (0x88, 3.1.1 0x03: a token that cannot be checked could be a replay) or local (accepted if this node has not seen it: a replay on another node goes unnoticed while Redis is away)"`

	GCPercent  int           `yaml:"gc-percent" help:"Go garbage collector target (GOGC): the heap of an idle fleet is long-lived session state, so a low value saves memory for little CPU; the GOGC environment variable wins"`
	MemRelease time.Duration `yaml:"mem-release" help:"how long the gateway must be quiet after a burst (connections, handshakes) before it returns its free heap memory to the OS at once; negative: never (the Go runtime then returns it over minutes)"`
	Pprof      bool          `yaml:"pprof" help:"serve Go profiles under /debug/pprof/ on the API listener (needs --api-token)"`

	LogFormat string `yaml:"log-format" help:"console or json"`
	LogLevel  string `yaml:"log-level" help:"debug, info, warn or error"`
}

// Defaults returns the configuration `dualgate serve` runs with when given
// nothing.
func Defaults() Config {
	return Config{
		Plain:          ":1883",
		TLS:            ":8883",
		API:            "127.0.0.1:8080",
		Data:           "./dualgate-data",
		TLSHosts:       "localhost,127.0.0.1,::1",
		TLSMin:         "1.2",
		SecureIdle:     30 * time.Second,
		Auth:           "allow-all",
		SecureIdentity: "cert",
		TokenWindow:    auth.DefaultWindow,
		ConnectTimeout: 10 * time.Second,
		MaxPacketSize:  1 << 20,

		ReceiveMaximum:     64,
		MaxQoS2Unreleased:  1024,
		MaxQueued:          1000,
		MaxSubscriptions:   64,
		MaxTopicLen:        1024,
		SessionExpiry:      24 * time.Hour,
		MaxKeptSessions:    100000,
		MaxKeptSessionSize: 64 << 20,
		MaxOffline:         1000,
		OfflineOverflow:    "drop-new",

		ConnectBurst:     100,
		ControlGrace:     5 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		ShutdownTimeout:  10 * time.Second,
		ProxyProtocol:    "off",
		PerIPBurst:       10,
		HandshakeQueue:   5 * time.Second,
		TLSHello:         3 * time.Second,
		TLSHelloPerIP:    64,
		DrainDelay:       5 * time.Second,
		DrainRate:        500,
		DrainTimeout:     60 * time.Second,
		GCPercent:        25,
		MemRelease:       time.Second,
		UpstreamPool:     4,
		UpstreamProtocol: "5",
		UpstreamBuffer:   10000,
		LogFormat:        "console",
		LogLevel:         "info",

		UpstreamSpillBytes:    256 << 20,
		UpstreamSpillMessages: 250000,
		UpstreamSpillKeepFree: 64 << 20,
		MuxPending:            4096,
		TLSSessionMB:          32,

		ClusterPrefix:      "dg",
		ClusterTimeout:     2 * time.Second,
		ClusterWaitTimeout: time.Second,
		ClusterNodeTTL:     15 * time.Second,

		TokenReplayUnavailable: "refuse",
	}
}

// withDefaults fills zero fields of a copy of c from Defaults.
func (c Config) withDefaults() Config {
	d := Defaults()
	cv := reflect.ValueOf(&c).Elem()
	dv := reflect.ValueOf(d)
	for i := range cv.NumField() {
		if cv.Field(i).IsZero() {
			cv.Field(i).Set(dv.Field(i))
		}
	}
	return c
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	for name, addr := range map[string]string{"plain": c.Plain, "tls": c.TLS, "api": c.API} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("--%s %q: %w", name, addr, err)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	switch c.Auth {
	case "allow-all":
	case "token":
		if c.Secrets == "" {
			return errors.New("--auth token needs --secrets FILE")
		}
		if c.TokenWindow < time.Second || c.TokenWindow > 10*time.Minute {
			return fmt.Errorf("--token-window %s: want 1s to 10m (a captured plain token is good for twice the window)", c.TokenWindow)
		}
	default:
		return fmt.Errorf("--auth %q: want allow-all or token", c.Auth)
	}
	switch c.TokenReplayUnavailable {
	case "", "refuse", "local":
	default:
		return fmt.Errorf("--token-replay-unavailable %q: want refuse or local", c.TokenReplayUnavailable)
	}
	if err := c.validateIdentity(); err != nil {
		return err
	}
	if err := c.validateSessions(); err != nil {
		return err
	}
	if c.MaxPacketSize < 64 || c.MaxPacketSize > 268435460 {
		return fmt.Errorf("--max-packet-size %d: want 64..268435460", c.MaxPacketSize)
	}
	if c.MaxKeepAlive < 0 || c.MaxKeepAlive > 65535 {
		return fmt.Errorf("--max-keepalive %d: want 0..65535", c.MaxKeepAlive)
	}
	if err := c.validateBounds(); err != nil {
		return err
	}
	if c.SecureIdle < 100*time.Millisecond {
		return fmt.Errorf("--secure-idle %s: want at least 100ms", c.SecureIdle)
	}
	if err := c.validateTopics(); err != nil {
		return err
	}
	switch ProxyMode(c.ProxyProtocol) {
	case ProxyOff, ProxyOptional, ProxyRequired:
	default:
		return fmt.Errorf("--proxy-protocol %q: want off, optional or required", c.ProxyProtocol)
	}
	if err := c.validateProxyTrusted(); err != nil {
		return err
	}
	if err := c.validateAPI(); err != nil {
		return err
	}
	if c.ListenMux != "" {
		if _, _, err := net.SplitHostPort(c.ListenMux); err != nil {
			return fmt.Errorf("--listen-mux %q: %w", c.ListenMux, err)
		}
	}
	if _, err := parseDrainTo(c.DrainTo); err != nil {
		return err
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.DrainRate <= 0 {
		return fmt.Errorf("--drain-rate %v: want more than 0", c.DrainRate)
	}
	switch c.TLSMin {
	case "1.2", "1.3":
	default:
		return fmt.Errorf("--tls-min-version %q: want 1.2 or 1.3", c.TLSMin)
	}
	switch c.LogFormat {
	case "console", "json":
	default:
		return fmt.Errorf("--log-format %q: want console or json", c.LogFormat)
	}
	if c.Upstream != "" && !strings.HasPrefix(c.Upstream, "tcp://") && !strings.HasPrefix(c.Upstream, "tls://") &&
		!strings.HasPrefix(c.Upstream, "mqtt://") && !strings.HasPrefix(c.Upstream, "mqtts://") && !strings.HasPrefix(c.Upstream, "ssl://") {
		return fmt.Errorf("--upstream %q: want tcp://host:port or tls://host:port", c.Upstream)
	}
	for name, v := range map[string]int{"upstream-spill-bytes": c.UpstreamSpillBytes, "upstream-spill-messages": c.UpstreamSpillMessages,
		"upstream-spill-keep-free": c.UpstreamSpillKeepFree, "upstream-buffer": c.UpstreamBuffer,
		"upstream-device-buffer": c.UpstreamDeviceBuffer, "mux-pending": c.MuxPending} {
		if v < 0 {
			return fmt.Errorf("--%s %d: want 1 or more", name, v)
		}
	}
	if c.UpstreamBuffer > 0 && c.UpstreamDeviceBuffer > c.UpstreamBuffer {
		return fmt.Errorf("--upstream-device-buffer %d: want at most --upstream-buffer (%d)", c.UpstreamDeviceBuffer, c.UpstreamBuffer)
	}
	if c.UpstreamSpillDir != "" && c.Data != "" && filepath.Clean(c.UpstreamSpillDir) == filepath.Clean(c.Data) {
		return fmt.Errorf("--upstream-spill-dir %q: want a directory of its own, not the data directory", c.UpstreamSpillDir)
	}
	return nil
}

// validateBounds checks the flow-control and state bounds.
func (c *Config) validateBounds() error {
	if c.ReceiveMaximum < 1 || c.ReceiveMaximum > 65535 {
		return fmt.Errorf("--receive-maximum %d: want 1..65535", c.ReceiveMaximum)
	}
	if c.MaxTopicLen < 16 || c.MaxTopicLen > 65535 {
		return fmt.Errorf("--max-topic-length %d: want 16..65535", c.MaxTopicLen)
	}
	if c.SessionExpiry < time.Second || c.SessionExpiry > time.Duration(1<<32-1)*time.Second {
		return fmt.Errorf("--session-expiry %s: want 1s to 136 years (MQTT's largest)", c.SessionExpiry)
	}
	for name, v := range map[string]int{"max-qos2-unreleased": c.MaxQoS2Unreleased, "max-queued-messages": c.MaxQueued,
		"max-subscriptions": c.MaxSubscriptions, "max-kept-sessions": c.MaxKeptSessions, "max-kept-session-bytes": c.MaxKeptSessionSize,
		"max-offline-messages": c.MaxOffline} {
		if v < 1 {
			return fmt.Errorf("--%s %d: want 1 or more", name, v)
		}
	}
	if c.OfflineOverflow != "drop-new" && c.OfflineOverflow != "drop-oldest" {
		return fmt.Errorf("--offline-overflow %q: want drop-new or drop-oldest", c.OfflineOverflow)
	}
	if c.UpstreamProtocol != "5" && c.UpstreamProtocol != "3.1.1" {
		return fmt.Errorf("--upstream-protocol %q: want 5 or 3.1.1", c.UpstreamProtocol)
	}
	return nil
}

// validateSessions checks --tls-sessions and its store's bound.
func (c *Config) validateSessions() error {
	switch c.TLSSessions {
	case "", "tickets":
	case "server":
		if c.TicketKeys != "" || c.TicketRotate != 0 {
			return errors.New("--tls-ticket-keys and --tls-ticket-rotate are for --tls-sessions tickets (stateless tickets); server sessions need no keys (with --cluster they are shared through Redis)")
		}
	default:
		return fmt.Errorf("--tls-sessions %q: want server or tickets", c.TLSSessions)
	}
	if c.TLSSessionMB < 1 || c.TLSSessionMB > 64<<10 {
		return fmt.Errorf("--tls-session-cache-mb %d: want 1 to 65536", c.TLSSessionMB)
	}
	return nil
}

// serverSessions reports whether TLS sessions are kept on the server
// (--tls-sessions server, the default unless --tls-ticket-keys or
// --tls-ticket-rotate asks for stateless tickets).
func (c *Config) serverSessions() bool {
	return c.TLSSessions == "server" || c.TLSSessions == "" && c.TicketKeys == "" && c.TicketRotate == 0
}

// validateIdentity checks --secure-identity against what can prove an id.
func (c *Config) validateIdentity() error {
	p, err := auth.ParseIdentityPolicy(c.SecureIdentity)
	if err != nil {
		return err
	}
	if p&auth.IdentityToken != 0 && c.Auth != "token" {
		return fmt.Errorf("--secure-identity %s: a token proof needs --auth token (device tokens are checked there); give --auth token, or --secure-identity cert", p)
	}
	if p&auth.IdentityCert != 0 && c.TLSCert != "" && c.ClientCA == "" {
		return fmt.Errorf("--secure-identity %s with --tls-cert: no CA to verify device certificates; give --client-ca FILE (the CA that signs them), or --secure-identity token or none", p)
	}
	return nil
}

// LoadConfig builds the configuration from command-line args, the
// environment (getenv, e.g. os.Getenv) and the YAML file named by --config
// or DUALGATE_CONFIG. Precedence: flags, then environment, then file, then
// defaults.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var cli Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	set := map[string]bool{}
	bindFlags(fs, &cli)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var cfg Config
	path := cli.Config
	if path == "" {
		path = getenv("DUALGATE_CONFIG")
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
	}
	// The environment over the file, flags over both.
	cv := reflect.ValueOf(&cfg).Elem()
	clv := reflect.ValueOf(&cli).Elem()
	for i := range cv.NumField() {
		f := cv.Type().Field(i)
		name := flagName(f)
		if name == "" {
			continue
		}
		if v := getenv("DUALGATE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); v != "" {
			if err := setFromString(cv.Field(i), v); err != nil {
				return Config{}, fmt.Errorf("env DUALGATE_%s: %w", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), err)
			}
		}
		if set[name] {
			cv.Field(i).Set(clv.Field(i))
		}
	}
	cfg = cfg.withDefaults()
	return cfg, cfg.Validate()
}

// bindFlags registers one flag per Config field, named by its YAML key.
func bindFlags(fs *flag.FlagSet, c *Config) {
	v := reflect.ValueOf(c).Elem()
	d := reflect.ValueOf(Defaults())
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name := flagName(f)
		if f.Name == "Config" {
			name = "config"
		}
		if name == "" {
			continue
		}
		usage := f.Tag.Get("help")
		if def := d.Field(i); !def.IsZero() {
			usage += fmt.Sprintf(" (default %v)", def.Interface())
		}
		fs.Var(fieldValue{v.Field(i)}, name, usage)
	}
}

func flagName(f reflect.StructField) string {
	n := f.Tag.Get("yaml")
	if n == "-" {
		return ""
	}
	return n
}

// fieldValue adapts a Config field to flag.Value.
type fieldValue struct{ v reflect.Value }

// String is "" for a zero field, so that the flag package does not print a
// second "(default 0s)" after the real default, which the usage text gives.
func (f fieldValue) String() string {
	if !f.v.IsValid() || f.v.IsZero() {
		return ""
	}
	return fmt.Sprint(f.v.Interface())
}

func (f fieldValue) Set(s string) error { return setFromString(f.v, s) }

func (f fieldValue) IsBoolFlag() bool { return f.v.IsValid() && f.v.Kind() == reflect.Bool }

func setFromString(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case string:
		v.SetString(s)
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(n))
	case float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		v.SetFloat(x)
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(d))
	default:
		return fmt.Errorf("unsupported setting type %s", v.Type())
	}
	return nil
}

// Usage writes the flags and their meaning.
func Usage(w *os.File) {
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	bindFlags(fs, &c)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseDrainTo checks --drain-to: empty, or one tls://host:port server
// reference. Plain devices are never sent a tcp:// reference: a device
// ignores a move to plain that arrives over plain (the anti-downgrade
// rule), so plain devices are closed and come back through the balancer.
func parseDrainTo(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if !strings.HasPrefix(s, "tls://") {
		return "", fmt.Errorf("--drain-to %q: want tls://host:port", s)
	}
	if _, _, err := net.SplitHostPort(s[len("tls://"):]); err != nil {
		return "", fmt.Errorf("--drain-to %q: %w", s, err)
	}
	return s, nil
}
