package bridge

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/mqttcodec"
)

// DefaultCommandFilter is the command filter used when Config.SubmitCommand
// is set and Config.CommandFilter is empty.
const DefaultCommandFilter = "devices/{client}/commands/#"

// DefaultSharedGroup is the share name of the command subscription.
const DefaultSharedGroup = "dualgate"

// Config holds the bridge's settings. New copies it and fills the zero
// fields of the copy with the defaults named on each field; the caller's
// struct is never changed.
type Config struct {
	// URL is the upstream broker: tcp://host:port or tls://host:port
	// (mqtt://, ssl:// and mqtts:// are accepted as aliases; the port
	// defaults to 1883 or 8883). Required.
	URL string
	// Username and Password are sent in CONNECT when Username is set
	// (default: the user information of URL, if any).
	Username, Password string
	// ClientIDPrefix names the pool's connections ClientIDPrefix-0,
	// ClientIDPrefix-1, ... Their sessions are persistent, so the names must
	// be stable across restarts and unique per gateway. Default:
	// "dualgate-" + the host name.
	ClientIDPrefix string
	// CAFile is a PEM bundle of the CAs that verify a tls:// broker
	// (default: the system roots).
	CAFile string
	// CertFile and KeyFile are a client certificate for brokers that ask
	// for one (tls:// only; both or neither).
	CertFile, KeyFile string
	// InsecureSkipVerify turns off verification of the broker's
	// certificate. For tests against self-signed brokers only.
	InsecureSkipVerify bool

	// Protocol is the MQTT version spoken to the broker: Protocol5 ("5",
	// the default) tries MQTT 5 and falls back to MQTT 3.1.1 for the whole
	// bridge when the broker refuses the MQTT 5 CONNECT as an unsupported
	// protocol version; Protocol311 ("3.1.1") forces MQTT 3.1.1.
	Protocol string

	// PoolSize is the number of connections to the broker (default 4, at
	// most 64). Device publishes are spread over all of them by client id;
	// connection 0 also holds the command subscription and the last one
	// the devices' subscriptions.
	PoolSize int
	// TopicPrefix is put in front of every topic and filter on the broker
	// side and taken off what comes back, e.g. "site1/". No wildcards.
	TopicPrefix string
	// CommandFilter is the topic filter of commands on the broker, with
	// {client} standing for the device's client id in one level. Used only
	// when SubmitCommand is set; default DefaultCommandFilter.
	CommandFilter string
	// SharedGroup is the share name of the command subscription
	// ($share/SharedGroup/...), so that gateways on one broker each take a
	// command once. Default DefaultSharedGroup.
	SharedGroup string
	// PlainAllowed lists topic filters (device side) of commands that may
	// travel on plain TCP; every other command is secure.
	PlainAllowed []string

	// BufferMessages and BufferBytes bound the messages held in memory while
	// waiting for the broker (defaults 10,000 and 64 MiB).
	BufferMessages int
	BufferBytes    int64
	// DeviceBufferMessages and DeviceBufferBytes are one device's share of
	// the memory buffer for QoS 0: past it, that device's QoS 0 messages
	// are dropped (DroppedDeviceShare) while the others' still go
	// (defaults BufferMessages/16 and BufferBytes/16).
	DeviceBufferMessages int
	DeviceBufferBytes    int64
	// Throttle, when set, is the backpressure before the drop: it is
	// called with pause true when a device's QoS 0 messages fill three
	// quarters of its share, and with pause false once they are down to a
	// quarter, so that the gateway stops reading that device meanwhile
	// (TCP flow control) and its messages wait in its own socket rather
	// than being dropped. It must not block; it is called from the
	// publishing device's event loop and from the bridge's senders. A
	// message read from a device (session.Message.From set) pauses it
	// through From.PauseReading instead, at once, in Publish: the rest of
	// what was read from the device waits too.
	Throttle func(clientID string, pause bool)
	// BufferDir, when set, is where QoS 1 messages spill once the memory
	// bound is reached, and where those still waiting at Stop are kept for
	// the next start. Empty: memory only.
	BufferDir string
	// SpillMessages and SpillBytes bound the spill files (defaults
	// 250,000 and 256 MiB). Each spilled message also holds about 200
	// bytes of memory while it waits.
	SpillMessages int
	SpillBytes    int64
	// SpillKeepFree is the free space the spill leaves on its file
	// system, which it may share with the command store (default 64 MiB).
	// Past a cap or short of space, QoS 1 publishes get QuotaExceeded.
	SpillKeepFree int64
	// SpillQueue and SpillQueueBytes bound the QoS 1 messages handed to
	// the spiller, the goroutine that writes the spill files so that no
	// device's event loop waits on the disk (defaults 1,024 and 16 MiB).
	// Past them, QoS 1 publishes get QuotaExceeded (HandoffFull).
	SpillQueue      int
	SpillQueueBytes int64

	// MaxInflight bounds the publishes one connection has sent and the
	// broker has not acknowledged yet (default 256).
	MaxInflight int
	// RetainedWindow is how long after a SUBACK retained messages are
	// attributed to the subscribers that caused the SUBSCRIBE (default 10 s).
	RetainedWindow time.Duration
	// SubscribeTimeout bounds the wait for the broker's SUBACK of a
	// device subscription, the broker unreachable included: past it,
	// Subscribe's done gets 0x80 (default 5 s).
	SubscribeTimeout time.Duration
	// CommandRetry is how long a command SubmitCommand failed on stays
	// unacknowledged before the connection is cycled so that the broker
	// sends it again (default 10 s).
	CommandRetry time.Duration
	// KeepAlive is the MQTT keepalive toward the broker (default 30 s).
	KeepAlive time.Duration
	// ConnectTimeout bounds a connection attempt and a blocked write
	// (default 10 s).
	ConnectTimeout time.Duration
	// ReconnectMax caps the backoff between reconnection attempts
	// (default 30 s).
	ReconnectMax time.Duration

	// Logger receives the bridge's logs (default: none).
	Logger *zap.Logger

	// Deliver receives a message from the broker for the gateway's local
	// subscribers to match and fan out. It is called from one goroutine
	// per connection, in the broker's order; the broker's QoS 1 or 2
	// message is acknowledged when Deliver returns, so it should not block
	// for long.
	// Nil: such messages are dropped.
	Deliver func(m Message)
	// DeliverRetained receives a retained message for the given
	// subscribers of filter only: the handles passed to Subscribe whose
	// subscription caused the broker to send it. Nil: retained messages
	// are dropped.
	DeliverRetained func(filter string, subscribers []any, m Message)
	// SubmitCommand receives a command from the broker. It returns nil
	// once the command is durable, with its Origin in the same write;
	// only then is the broker's message acknowledged. An error wrapping
	// ErrCommandRejected acknowledges and drops the message (it will never
	// be accepted); any other error leaves it unacknowledged, for the
	// broker to send again. Nil: no command subscription.
	SubmitCommand func(c Command) error
	// KnownCommand reports whether a command with this Origin was stored
	// (SubmitCommand returned nil for it). The bridge asks it for a
	// redelivery (DUP set) and drops the message when it was: the broker
	// sends a message again when the gateway stopped, crashed or lost the
	// connection between storing the command and acknowledging it. Nil:
	// every redelivery is taken as a command.
	KnownCommand func(origin string) (bool, error)

	// dropCommandAcks, a test seam, leaves stored commands unacknowledged,
	// as a crash between SubmitCommand and the PUBACK would.
	dropCommandAcks bool
	// spillGate, a test seam, holds the spiller before each write until
	// it receives, as a slow disk would.
	spillGate chan struct{}
}

// Defaults of Config.
const (
	defaultPoolSize       = 4
	maxPoolSize           = 64
	defaultBufferMessages = 10_000
	defaultBufferBytes    = 64 << 20
	defaultSpillMessages  = 250_000
	defaultSpillBytes     = 256 << 20
	defaultSpillKeepFree  = 64 << 20
	defaultSpillQueue     = 1024
	defaultSpillQueueB    = 16 << 20
	deviceShareDivisor    = 16
	defaultMaxInflight    = 256
	defaultRetainedWindow = 10 * time.Second
	defaultSubscribeWait  = 5 * time.Second
	defaultCommandRetry   = 10 * time.Second
	defaultKeepAlive      = 30 * time.Second
	defaultConnectTimeout = 10 * time.Second
	defaultReconnectMax   = 30 * time.Second
)

// withDefaults returns a copy of c with the zero settings filled in.
func (c Config) withDefaults() Config {
	if c.ClientIDPrefix == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "gateway"
		}
		c.ClientIDPrefix = "dualgate-" + host
	}
	if c.PoolSize <= 0 {
		c.PoolSize = defaultPoolSize
	}
	if c.SubmitCommand != nil && c.CommandFilter == "" {
		c.CommandFilter = DefaultCommandFilter
	}
	if c.SharedGroup == "" {
		c.SharedGroup = DefaultSharedGroup
	}
	if c.BufferMessages <= 0 {
		c.BufferMessages = defaultBufferMessages
	}
	if c.BufferBytes <= 0 {
		c.BufferBytes = defaultBufferBytes
	}
	if c.DeviceBufferMessages <= 0 {
		c.DeviceBufferMessages = max(1, c.BufferMessages/deviceShareDivisor)
	}
	if c.DeviceBufferBytes <= 0 {
		c.DeviceBufferBytes = max(1, c.BufferBytes/deviceShareDivisor)
	}
	if c.SpillQueue <= 0 {
		c.SpillQueue = defaultSpillQueue
	}
	if c.SpillQueueBytes <= 0 {
		c.SpillQueueBytes = defaultSpillQueueB
	}
	if c.SpillMessages <= 0 {
		c.SpillMessages = defaultSpillMessages
	}
	if c.SpillBytes <= 0 {
		c.SpillBytes = defaultSpillBytes
	}
	if c.SpillKeepFree <= 0 {
		c.SpillKeepFree = defaultSpillKeepFree
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = defaultMaxInflight
	}
	if c.RetainedWindow <= 0 {
		c.RetainedWindow = defaultRetainedWindow
	}
	if c.Protocol == "" {
		c.Protocol = Protocol5
	}
	if c.SubscribeTimeout <= 0 {
		c.SubscribeTimeout = defaultSubscribeWait
	}
	if c.CommandRetry <= 0 {
		c.CommandRetry = defaultCommandRetry
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = defaultKeepAlive
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = defaultReconnectMax
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	c.PlainAllowed = append([]string(nil), c.PlainAllowed...)
	return c
}

// upstream is the broker address resolved from Config.URL.
type upstream struct {
	url    *url.URL // scheme tcp or tls, host with a port
	tls    *tls.Config
	secure bool
}

// parseUpstream checks Config.URL and builds the TLS settings.
func parseUpstream(c *Config) (upstream, error) {
	if c.URL == "" {
		return upstream{}, errors.New("bridge: Config.URL is required")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return upstream{}, fmt.Errorf("bridge: upstream URL: %w", err)
	}
	var up upstream
	port := "1883"
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
	case "tls", "ssl", "mqtts":
		up.secure = true
		port = "8883"
	default:
		return upstream{}, fmt.Errorf("bridge: upstream URL %q: scheme must be tcp:// or tls://", c.URL)
	}
	if u.User != nil && c.Username == "" {
		c.Username = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	host := u.Host
	if host == "" {
		return upstream{}, fmt.Errorf("bridge: upstream URL %q has no host", c.URL)
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	scheme := "tcp"
	if up.secure {
		scheme = "tls"
	}
	up.url = &url.URL{Scheme: scheme, Host: host}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return upstream{}, errors.New("bridge: CertFile and KeyFile go together")
	}
	if !up.secure {
		if c.CAFile != "" || c.CertFile != "" {
			return upstream{}, fmt.Errorf("bridge: CAFile and CertFile need a tls:// upstream, not %q", c.URL)
		}
		return up, nil
	}
	serverName, _, _ := net.SplitHostPort(host)
	up.tls = &tls.Config{
		ServerName:         serverName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: c.InsecureSkipVerify,
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return upstream{}, fmt.Errorf("bridge: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return upstream{}, fmt.Errorf("bridge: CA file %s holds no PEM certificate", c.CAFile)
		}
		up.tls.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return upstream{}, fmt.Errorf("bridge: client certificate: %w", err)
		}
		up.tls.Certificates = []tls.Certificate{cert}
	}
	return up, nil
}

// checkPrefix validates Config.TopicPrefix.
func checkPrefix(p string) error {
	if p == "" {
		return nil
	}
	if strings.ContainsAny(p, "+#\x00") || strings.HasPrefix(p, "$") {
		return fmt.Errorf("bridge: TopicPrefix %q must not hold wildcards or start with '$'", p)
	}
	return nil
}

// compileFilters checks a list of topic filters.
func compileFilters(what string, fs []string) error {
	for _, f := range fs {
		if err := mqttcodec.ValidTopicFilter([]byte(f)); err != nil {
			return fmt.Errorf("bridge: %s filter %q: %w", what, f, err)
		}
	}
	return nil
}
