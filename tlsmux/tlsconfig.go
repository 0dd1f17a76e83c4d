package tlsmux

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
)

// TLSOptions are the settings ServerTLSConfig turns into a tls.Config.
type TLSOptions struct {
	// The server certificate: exactly one of Certificates and GetCertificate
	// (typically a CertReloader's). The product default is an ECDSA P-256
	// certificate (package certs): the smallest certificate and the cheapest
	// signature per handshake.
	Certificates   []tls.Certificate
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// ClientCAFile is a PEM bundle of the CAs whose client certificates are
	// accepted. ClientCAs is the same as a pool; give at most one. Without
	// either, no client certificate is asked for.
	ClientCAFile string
	ClientCAs    *x509.CertPool
	// RequireClientCert refuses clients without a verified certificate
	// (tls.RequireAndVerifyClientCert). Otherwise a certificate is verified
	// if given (tls.VerifyClientCertIfGiven). It needs a client CA.
	RequireClientCert bool

	// MinVersion is tls.VersionTLS12 (the default) or tls.VersionTLS13.
	MinVersion uint16

	// X25519Only limits key exchange to X25519. Go's default prefers the
	// hybrid X25519MLKEM768 (post-quantum secrecy), which costs about
	// 2.3 KB more on the wire per full handshake: the server's key share
	// grows from 32 bytes to about 1.1 KB, and a device offering the hybrid
	// sends a ClientHello about 1.2 KB larger, whose size the server's
	// tls.Conn then keeps as buffer capacity for the connection's life.
	// With X25519Only the server never picks the hybrid and never asks a
	// device for it with a HelloRetryRequest.
	X25519Only bool
	// CurvePreferences sets the key exchanges explicitly; not together with
	// X25519Only. Nil means Go's default.
	CurvePreferences []tls.CurveID

	// CipherSuites are the TLS 1.2 cipher suites allowed (TLS 1.3 suites are
	// not configurable in Go). Nil means Go's default secure list. Only
	// suites of tls.CipherSuites() that support TLS 1.2 are accepted;
	// CipherSuitesByName converts names.
	CipherSuites []uint16

	// NextProtos are the ALPN protocols offered, e.g. "mqtt". Optional.
	NextProtos []string

	// TicketKeys, when set, supplies the session ticket keys (shared among
	// gateways) and keeps the returned config's keys up to date.
	TicketKeys *TicketKeys
	// Sessions, when set, keeps session states on the server and gives
	// devices 16-byte session ids as tickets (see Sessions); not together
	// with TicketKeys.
	Sessions *Sessions
}

// ServerTLSConfig builds the product's server tls.Config from opts: TLS 1.2
// and 1.3, session resumption on (stateless tickets, or server-side
// sessions with opts.Sessions), client certificates as opts say.
func ServerTLSConfig(opts TLSOptions) (*tls.Config, error) {
	if (len(opts.Certificates) == 0) == (opts.GetCertificate == nil) {
		return nil, errors.New("tlsmux: give exactly one of Certificates and GetCertificate")
	}
	cfg := &tls.Config{
		Certificates:   slices.Clone(opts.Certificates),
		GetCertificate: opts.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		// Tickets let a device that comes back to TLS for each secure
		// command skip the certificate exchange: explicitly on.
		SessionTicketsDisabled: false,
		NextProtos:             slices.Clone(opts.NextProtos),
	}
	switch opts.MinVersion {
	case 0, tls.VersionTLS12:
	case tls.VersionTLS13:
		cfg.MinVersion = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("tlsmux: MinVersion %s not allowed (TLS 1.2 or 1.3)", tls.VersionName(opts.MinVersion))
	}

	pool := opts.ClientCAs
	if opts.ClientCAFile != "" {
		if pool != nil {
			return nil, errors.New("tlsmux: give at most one of ClientCAFile and ClientCAs")
		}
		var err error
		if pool, err = loadCAFile(opts.ClientCAFile); err != nil {
			return nil, err
		}
	}
	switch {
	case pool == nil && opts.RequireClientCert:
		return nil, errors.New("tlsmux: RequireClientCert needs ClientCAFile or ClientCAs")
	case pool == nil:
		cfg.ClientAuth = tls.NoClientCert
	case opts.RequireClientCert:
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	default:
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}

	switch {
	case opts.X25519Only && opts.CurvePreferences != nil:
		return nil, errors.New("tlsmux: give at most one of X25519Only and CurvePreferences")
	case opts.X25519Only:
		cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	case opts.CurvePreferences != nil:
		if len(opts.CurvePreferences) == 0 {
			return nil, errors.New("tlsmux: empty CurvePreferences")
		}
		cfg.CurvePreferences = slices.Clone(opts.CurvePreferences)
	}

	if opts.CipherSuites != nil {
		if len(opts.CipherSuites) == 0 {
			return nil, errors.New("tlsmux: empty CipherSuites")
		}
		for _, id := range opts.CipherSuites {
			if !tls12Suite(id) {
				return nil, fmt.Errorf("tlsmux: cipher suite %s is not a secure TLS 1.2 suite", tls.CipherSuiteName(id))
			}
		}
		cfg.CipherSuites = slices.Clone(opts.CipherSuites)
	}

	switch {
	case opts.TicketKeys != nil && opts.Sessions != nil:
		return nil, errors.New("tlsmux: give at most one of TicketKeys and Sessions")
	case opts.TicketKeys != nil:
		opts.TicketKeys.Apply(cfg)
	case opts.Sessions != nil:
		opts.Sessions.Apply(cfg)
	}
	return cfg, nil
}

// CipherSuitesByName returns the IDs of TLS 1.2 cipher suites named as Go
// names them (tls.CipherSuiteName), e.g.
// "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256". Insecure suites, TLS 1.3
// suites and unknown names are errors.
func CipherSuitesByName(names []string) ([]uint16, error) {
	ids := make([]uint16, 0, len(names))
	for _, name := range names {
		found := false
		for _, cs := range tls.CipherSuites() {
			if cs.Name == name && slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
				ids = append(ids, cs.ID)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("tlsmux: %q is not a secure TLS 1.2 cipher suite", name)
		}
	}
	return ids, nil
}

// tls12Suite reports whether id is a secure suite usable with TLS 1.2.
func tls12Suite(id uint16) bool {
	for _, cs := range tls.CipherSuites() {
		if cs.ID == id {
			return slices.Contains(cs.SupportedVersions, tls.VersionTLS12)
		}
	}
	return false
}

// loadCAFile reads a PEM bundle of CA certificates.
func loadCAFile(name string) (*x509.CertPool, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("tlsmux: client CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("tlsmux: client CA file %s holds no PEM certificate", name)
	}
	return pool, nil
}
