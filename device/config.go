package device

import (
	"context"
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

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/devwire"
)

// Defaults of Config.
const (
	DefaultVersion        = 4
	DefaultKeepAlive      = 60 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultBackoffInitial = 500 * time.Millisecond
	DefaultBackoffMax     = 60 * time.Second
	DefaultSessionExpiry  = 10 * time.Minute
)

// minSecretLen is the shortest device secret the gateway accepts, in bytes.
const minSecretLen = 16

// Config is everything a Device needs. The zero value of a field means its
// default; New fills defaults into its own copy.
type Config struct {
	// ClientID is the MQTT client identifier; commands are addressed to it.
	ClientID string
	// Secret is the device secret (at least 16 bytes; 32 random bytes
	// recommended). With it every CONNECT carries a fresh HMAC token (user
	// name ClientID): on plain an unbound (v1) token, over TLS one bound to
	// the TLS connection (v2, from its exported keying material), which a
	// captured copy cannot replay and which proves the client id for secure
	// commands. The device's clock must be within the gateway's token window
	// (60 s by default). nil: no user name or password.
	Secret []byte

	// PlainAddr is the gateway's plain MQTT endpoint, host:port. The Device
	// starts there.
	PlainAddr string
	// TLSAddr is the gateway's TLS endpoint, host:port, used when an
	// instruction names no usable address and by PublishSensitive before
	// any instruction named one. Its host is also the name the gateway's
	// certificate must carry, whatever address an instruction names. Set
	// it: without it that name comes from the instruction, which arrives
	// over plain TCP, and only a private CA (CAFile) then keeps a forged
	// instruction from leading the device to another server.
	TLSAddr string

	// TLS is the base TLS client configuration (cloned; nil: system roots,
	// TLS 1.3 only, which every dualgate gateway speaks: offering TLS 1.2
	// too adds its cipher suites to every ClientHello, 28 bytes). Without a ServerName the host of TLSAddr is
	// verified, or without TLSAddr the host of the instructed address.
	TLS *tls.Config
	// CAFile is a PEM file of CAs to trust instead of TLS.RootCAs, e.g. the
	// gateway's generated development CA.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key, presented
	// on every TLS connection. Both or neither. The certificate proves the
	// device's client id to the gateway: its subject common name or its URI
	// SAN urn:dualgate:client:<ClientID> must be ClientID (New refuses one
	// that names another id; the gateway would refuse the CONNECT with
	// 0x87). Under the gateway's default --secure-identity cert, a device
	// without one may use TLS but is sent no secure command. `dualgate
	// certs client --dir DIR ID` issues it from the gateway's CA.
	CertFile, KeyFile string
	// CurvePreferences are the TLS key exchange groups, most preferred
	// first; nil: Go's default (X25519MLKEM768, a post-quantum hybrid,
	// first). []tls.CurveID{tls.X25519} saves about 2.3 KB per full
	// handshake and gives up the post-quantum protection.
	CurvePreferences []tls.CurveID
	// DisableResumption turns TLS session resumption off. By default one
	// session cache lives as long as the Device, so upgrades after the first
	// resume (about 880 bytes less than a full handshake).
	DisableResumption bool

	// Version is the MQTT protocol level: 4 (3.1.1, the default) or 5.
	Version byte
	// KeepAlive is the MQTT keepalive (default 60 s, at most 65535 s).
	KeepAlive time.Duration
	// ConnectTimeout bounds a connection attempt (dial, TLS handshake,
	// CONNECT/CONNACK) and the SUBSCRIBE and query that follow it
	// (default 10 s).
	ConnectTimeout time.Duration
	// Subscriptions are subscribed to on the first connection, and again
	// on any connection where the gateway kept no session (CONNACK Session
	// Present 0). Commands need none: the gateway delivers them to the
	// client id.
	Subscriptions []Subscription
	// SessionExpiry is how long the gateway keeps the device's session
	// (its subscriptions) after a connection ends: MQTT 5 Session Expiry
	// Interval, and for 3.1.1 clean session 0 (the gateway then keeps it up
	// to its own maximum). A move between plain and TLS then needs no new
	// SUBSCRIBE. Default 10 minutes.
	SessionExpiry time.Duration
	// CleanSession starts every connection with a clean session: the
	// device subscribes after each connect, and the gateway keeps nothing.
	CleanSession bool
	// Backoff spaces reconnection attempts after a lost connection or a
	// failed attempt.
	Backoff Backoff
	// Dial opens the TCP connection for both modes (TLS runs on top of
	// it); nil: a net.Dialer that leaves TCP quickack mode before it
	// connects (devwire.DelayAcksControl), so that the last segment of
	// TCP's handshake rides on the first write. A Dial of your own saves
	// that segment by setting the same option in its Control. The SDK
	// leaves quickack mode again on the connection Dial returns.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives the Device's log; nil: none. Payloads, secrets and
	// tokens are never logged.
	Logger *zap.Logger

	// OnCommand receives every message the gateway delivers, commands on
	// their own topic whether subscribed or not; control messages never
	// reach it. The acknowledgement is sent after it returns.
	OnCommand func(Command)
	// OnModeChange is called when a connection comes up in another mode
	// than the previous one; reason is the instruction's reason, or
	// ReasonSensitivePublish.
	OnModeChange func(from, to Mode, reason string)
	// OnEvent receives what happens to the connection (see EventKind).
	OnEvent func(Event)
}

// Subscription is a topic filter with the QoS to subscribe at.
type Subscription struct {
	Filter string
	QoS    byte
}

// Backoff is the randomized exponential delay before reconnecting: attempt
// n (from 0) waits a uniformly random time in [0, min(Max, Initial x 2^n)]
// ("full jitter").
type Backoff struct {
	Initial time.Duration // default 500 ms
	Max     time.Duration // default 60 s
}

// withDefaults returns a copy of c with defaults filled in and slices
// copied.
func (c Config) withDefaults() Config {
	if c.Version == 0 {
		c.Version = DefaultVersion
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Backoff.Initial == 0 {
		c.Backoff.Initial = DefaultBackoffInitial
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = max(DefaultBackoffMax, c.Backoff.Initial)
	}
	if c.SessionExpiry <= 0 {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.Dial == nil {
		d := net.Dialer{Control: devwire.DelayAcksControl}
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	c.Secret = cloneBytes(c.Secret)
	c.Subscriptions = append([]Subscription(nil), c.Subscriptions...)
	c.CurvePreferences = append([]tls.CurveID(nil), c.CurvePreferences...)
	return c
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// validate reports the first setting that cannot work.
func (c *Config) validate() error {
	if c.ClientID == "" {
		return errors.New("device: ClientID is empty")
	}
	if c.Secret != nil && len(c.Secret) < minSecretLen {
		return fmt.Errorf("device: Secret is %d bytes, want at least %d", len(c.Secret), minSecretLen)
	}
	if !usableAddr(c.PlainAddr) {
		return fmt.Errorf("device: PlainAddr %q: want host:port", c.PlainAddr)
	}
	if c.TLSAddr != "" && !usableAddr(c.TLSAddr) {
		return fmt.Errorf("device: TLSAddr %q: want host:port", c.TLSAddr)
	}
	if c.Version != 4 && c.Version != 5 {
		return fmt.Errorf("device: Version %d: want 4 (MQTT 3.1.1) or 5", c.Version)
	}
	if c.KeepAlive < 0 || c.KeepAlive > 65535*time.Second {
		return fmt.Errorf("device: KeepAlive %s: want 0 to 65535s", c.KeepAlive)
	}
	if c.ConnectTimeout < 0 {
		return fmt.Errorf("device: ConnectTimeout %s is negative", c.ConnectTimeout)
	}
	if c.Backoff.Initial < 0 || c.Backoff.Max < c.Backoff.Initial {
		return fmt.Errorf("device: Backoff %s..%s: want 0 < Initial <= Max", c.Backoff.Initial, c.Backoff.Max)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("device: CertFile and KeyFile go together")
	}
	for _, s := range c.Subscriptions {
		if s.Filter == "" || strings.HasPrefix(s.Filter, control.ReservedPrefix) {
			return fmt.Errorf("device: subscription %q: want a non-empty filter outside %s", s.Filter, control.ReservedPrefix)
		}
		if s.QoS > 2 {
			return fmt.Errorf("device: subscription %q: QoS %d", s.Filter, s.QoS)
		}
	}
	return nil
}

// clientURIPrefix starts the URI SAN naming a client id in a device
// certificate; the id follows, path-escaped.
const clientURIPrefix = "urn:dualgate:client:"

// certNames reports whether a device certificate names clientID the way
// the gateway reads it: subject common name, or a URI SAN
// urn:dualgate:client:<id>. DNS SANs do not count.
func certNames(leaf *x509.Certificate, clientID string) bool {
	if leaf == nil || clientID == "" {
		return false
	}
	if leaf.Subject.CommonName == clientID {
		return true
	}
	for _, u := range leaf.URIs {
		if rest, ok := strings.CutPrefix(u.String(), clientURIPrefix); ok {
			if id, err := url.PathUnescape(rest); err == nil && id == clientID {
				return true
			}
		}
	}
	return false
}

// tlsConfig builds the base TLS client configuration: the given one, the
// CA and client certificate files, the curves, and a session cache that
// lives as long as the Device.
func (c *Config) tlsConfig() (*tls.Config, error) {
	var tc *tls.Config
	if c.TLS != nil {
		tc = c.TLS.Clone()
	} else {
		tc = &tls.Config{MinVersion: tls.VersionTLS13}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("device: CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("device: CA file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("device: client certificate: %w", err)
		}
		if !certNames(cert.Leaf, c.ClientID) {
			return nil, fmt.Errorf("device: client certificate %s names %q, not the client id %q (its CN or URI SAN %s<id> must be the client id)",
				c.CertFile, cert.Leaf.Subject.CommonName, c.ClientID, clientURIPrefix)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if len(c.CurvePreferences) > 0 {
		tc.CurvePreferences = c.CurvePreferences
	}
	if tc.ServerName == "" && c.TLSAddr != "" {
		host, _, _ := net.SplitHostPort(c.TLSAddr)
		tc.ServerName = host
	}
	switch {
	case c.DisableResumption:
		tc.ClientSessionCache = nil
		tc.SessionTicketsDisabled = true
	case tc.ClientSessionCache == nil:
		tc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	}
	return tc, nil
}

// usableAddr reports whether addr is a host:port a device can dial.
func usableAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	return err == nil && host != "" && port != "" && port != "0"
}
