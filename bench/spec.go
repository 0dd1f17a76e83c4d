package bench

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// TLSSpec is the TLS side of a client, in a form that travels to worker
// processes as JSON.
type TLSSpec struct {
	// CAFile is a PEM bundle of the CAs to trust; empty uses the system's.
	CAFile string `json:"ca_file,omitempty"`
	// CertFile and KeyFile are a client certificate (mutual TLS).
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// ServerName is the SNI and the name verified; empty uses the host of
	// the server address.
	ServerName string `json:"server_name,omitempty"`
	// Insecure skips verification of the server's certificate.
	Insecure bool `json:"insecure,omitempty"`
	// Resume shares a pool of sessions among the worker's connections
	// (sessionPool), so that all but the first few handshakes resume.
	Resume bool `json:"resume,omitempty"`
	// Version pins the TLS version: "1.2", "1.3" or empty (negotiate).
	Version string `json:"version,omitempty"`
	// Curves are the key exchange groups offered, comma-separated
	// (x25519, p256, p384, x25519mlkem768); empty offers Go's default,
	// which puts the post-quantum hybrid X25519MLKEM768 first.
	Curves string `json:"curves,omitempty"`
}

// ParseCurves turns a comma-separated list of key exchange group names into
// crypto/tls curve IDs; an empty list is nil (Go's default).
func ParseCurves(list string) ([]tls.CurveID, error) {
	var out []tls.CurveID
	for name := range strings.SplitSeq(list, ",") {
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "":
		case "x25519":
			out = append(out, tls.X25519)
		case "p256", "p-256", "secp256r1":
			out = append(out, tls.CurveP256)
		case "p384", "p-384", "secp384r1":
			out = append(out, tls.CurveP384)
		case "x25519mlkem768", "mlkem":
			out = append(out, tls.X25519MLKEM768)
		default:
			return nil, fmt.Errorf("bench: tls: key exchange %q: want x25519, p256, p384 or x25519mlkem768", name)
		}
	}
	return out, nil
}

// sessionPoolSize bounds the sessions a worker keeps for resumption.
const sessionPoolSize = 4096

// sessionPool is a worker's shared ClientSessionCache as a pool: each
// handshake takes a session of its own (Get removes it) and puts back the
// one the server issues. dualgate's sessions are taken once
// (--tls-sessions server): a single cached session shared by every
// connection, as tls.NewLRUClientSessionCache keeps per server name,
// would resume one handshake and send the others to a full one. With
// stateless tickets the pool behaves as a shared cache did. The pool
// ignores the key: a worker dials one server.
type sessionPool struct {
	mu sync.Mutex
	ss []*tls.ClientSessionState
}

func (p *sessionPool) Get(string) (*tls.ClientSessionState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.ss)
	if n == 0 {
		return nil, false
	}
	cs := p.ss[n-1]
	p.ss[n-1] = nil
	p.ss = p.ss[:n-1]
	return cs, true
}

// Put adds cs; nil (crypto/tls dropping a session the server refused) is
// nothing to do: Get took it already.
func (p *sessionPool) Put(_ string, cs *tls.ClientSessionState) {
	if cs == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ss) == sessionPoolSize {
		copy(p.ss, p.ss[1:]) // the oldest goes
		p.ss = p.ss[:sessionPoolSize-1]
	}
	p.ss = append(p.ss, cs)
}

// Config builds the crypto/tls client configuration for server addr.
func (s TLSSpec) Config(addr string) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         s.ServerName,
		InsecureSkipVerify: s.Insecure, // an explicit flag, for peers with self-made certificates
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("bench: tls: server address %q: %w", addr, err)
		}
		cfg.ServerName = host
	}
	switch s.Version {
	case "":
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	default:
		return nil, fmt.Errorf("bench: tls: version %q: want 1.2 or 1.3", s.Version)
	}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("bench: tls: read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bench: tls: no certificate in %s", s.CAFile)
		}
		cfg.RootCAs = pool
	}
	if s.CertFile != "" || s.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("bench: tls: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if s.Resume {
		cfg.ClientSessionCache = new(sessionPool)
	}
	curves, err := ParseCurves(s.Curves)
	if err != nil {
		return nil, err
	}
	cfg.CurvePreferences = curves
	return cfg, nil
}

// ClientSpec is ClientConfig in a form that travels to worker processes as
// JSON. Durations are nanoseconds.
type ClientSpec struct {
	Addr              string        `json:"addr"`
	MQTTVersion       int           `json:"mqtt_version"`
	KeepAlive         time.Duration `json:"keepalive_ns"`
	ClientIDPrefix    string        `json:"client_id_prefix,omitempty"`
	Username          string        `json:"username,omitempty"`
	Password          string        `json:"password,omitempty"`
	PersistentSession bool          `json:"persistent_session,omitempty"`
	ConnectTimeout    time.Duration `json:"connect_timeout_ns,omitempty"`
	SourceAddrs       []string      `json:"source_addrs,omitempty"`
	// Rate is connection attempts per second for the whole run; each
	// worker gets its share.
	Rate     float64  `json:"rate,omitempty"`
	InFlight int      `json:"inflight,omitempty"`
	TLS      *TLSSpec `json:"tls,omitempty"`
	// Device makes every connection a dualgate device (DeviceConfig).
	Device *DeviceSpec `json:"device,omitempty"`
}

// ClientConfig turns the spec into a ClientConfig.
func (s ClientSpec) ClientConfig() (ClientConfig, error) {
	if s.MQTTVersion < 0 || s.MQTTVersion > 255 {
		return ClientConfig{}, fmt.Errorf("bench: MQTT version %d", s.MQTTVersion)
	}
	cfg := ClientConfig{
		Addr:              s.Addr,
		MQTTVersion:       byte(s.MQTTVersion),
		KeepAlive:         s.KeepAlive,
		ClientIDPrefix:    s.ClientIDPrefix,
		Username:          s.Username,
		Password:          s.Password,
		PersistentSession: s.PersistentSession,
		ConnectTimeout:    s.ConnectTimeout,
		Rate:              s.Rate,
		InFlight:          s.InFlight,
	}
	for _, a := range s.SourceAddrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return ClientConfig{}, fmt.Errorf("bench: source address: %w", err)
		}
		cfg.SourceAddrs = append(cfg.SourceAddrs, ip)
	}
	if s.TLS != nil {
		tc, err := s.TLS.Config(s.Addr)
		if err != nil {
			return ClientConfig{}, err
		}
		cfg.TLS = tc
	}
	if s.Device != nil {
		tc, err := s.Device.TLS.Config(s.Addr)
		if err != nil {
			return ClientConfig{}, err
		}
		// An empty name means the host of each instruction's address.
		tc.ServerName = s.Device.TLS.ServerName
		tc.ClientSessionCache = nil
		cfg.Device = &DeviceConfig{TLS: tc, Resume: s.Device.TLS.Resume}
	}
	return cfg, nil
}

// Validate checks what can be checked without connecting.
func (s ClientSpec) Validate() error {
	if s.Addr == "" {
		return errors.New("bench: no server address")
	}
	if _, _, err := net.SplitHostPort(s.Addr); err != nil {
		return fmt.Errorf("bench: server address %q: %w", s.Addr, err)
	}
	cfg, err := s.ClientConfig()
	if err != nil {
		return err
	}
	_, err = cfg.withDefaults()
	return err
}

// Transport names the transport: "tls" or "plain".
func (s ClientSpec) Transport() string {
	if s.TLS != nil {
		return "tls"
	}
	return "plain"
}
