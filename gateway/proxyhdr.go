package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
)

// ProxyMode is the --proxy-protocol setting.
type ProxyMode string

// PROXY protocol settings.
const (
	ProxyOff      ProxyMode = "off"      // no header is expected; one is MQTT garbage
	ProxyOptional ProxyMode = "optional" // a v1 or v2 header is used when present
	ProxyRequired ProxyMode = "required" // a connection without a header is closed
)

// The fixed starts of the two PROXY protocol versions.
var (
	proxyV1Sig = []byte("PROXY ")
	proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

const (
	proxyV1MaxLen = 107 // the longest v1 line, CRLF included
	proxyV2Fixed  = 16  // signature, version/command, family, length
)

var errNoProxyHeader = errors.New("connection did not start with a PROXY protocol header")

// proxyHeaderLen looks at the bytes a connection sent first. It returns
// the length of the PROXY header they start with (v1 or v2), 0 with a nil
// error when more bytes are needed to tell, or errNoProxyHeader when they
// do not start with one. The header's content is not checked here.
func proxyHeaderLen(b []byte) (int, error) {
	switch {
	case hasPrefixOrIsPrefix(b, proxyV2Sig):
		if len(b) < proxyV2Fixed {
			return 0, nil
		}
		return proxyV2Fixed + (int(b[14])<<8 | int(b[15])), nil
	case hasPrefixOrIsPrefix(b, proxyV1Sig):
		if i := bytes.Index(b[:min(len(b), proxyV1MaxLen)], []byte("\r\n")); i >= 0 {
			return i + 2, nil
		}
		if len(b) >= proxyV1MaxLen {
			return 0, fmt.Errorf("PROXY v1 line longer than %d bytes", proxyV1MaxLen)
		}
		return 0, nil
	}
	return 0, errNoProxyHeader
}

// hasPrefixOrIsPrefix reports whether b starts with sig, or is a start of
// it (more bytes are needed to tell).
func hasPrefixOrIsPrefix(b, sig []byte) bool {
	if len(b) >= len(sig) {
		return bytes.HasPrefix(b, sig)
	}
	return bytes.HasPrefix(sig, b)
}

// parseProxyHeader parses and validates a complete header (as sized by
// proxyHeaderLen) with the PROXY protocol library, and returns the
// client's address: "" for a LOCAL command (a health check from the
// balancer itself), which keeps the connection's own address.
func parseProxyHeader(b []byte) (string, error) {
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(b), max(len(b), 16)))
	if err != nil {
		return "", err
	}
	if h.Command.IsLocal() {
		return "", nil
	}
	if src, _, ok := h.TCPAddrs(); ok {
		return src.String(), nil
	}
	if h.SourceAddr != nil {
		return h.SourceAddr.String(), nil
	}
	return "", nil
}

// proxyGate applies --proxy-protocol and --proxy-trusted on every
// listener: only a trusted load balancer may send a PROXY header. With
// "required", a connection from any other source is refused at once; with
// "optional", it is served with its own address, and refused if it sends a
// header. Refusals are counted and logged at a bounded rate.
type proxyGate struct {
	mode    ProxyMode
	trusted []netip.Prefix
	ranges  []string // --proxy-trusted as given, for go-proxyproto
	ctr     *counters
	log     *zap.Logger // sampled: a flood of refusals logs a few lines a second
}

func newProxyGate(cfg Config, ctr *counters, logger *zap.Logger) *proxyGate {
	ranges := splitList(cfg.ProxyTrusted)
	trusted, _ := parseTrusted(ranges) // Validate has checked them
	return &proxyGate{
		mode:    ProxyMode(cfg.ProxyProtocol),
		trusted: trusted,
		ranges:  ranges,
		ctr:     ctr,
		log:     logger,
	}
}

// parseTrusted reads --proxy-trusted entries: CIDRs or single addresses.
func parseTrusted(ranges []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ranges))
	for _, r := range ranges {
		if p, err := netip.ParsePrefix(r); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(r)
		if err != nil {
			return nil, fmt.Errorf("--proxy-trusted: %q is neither an IP address nor a CIDR", r)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// validateProxyTrusted requires --proxy-trusted with --proxy-protocol.
func (c *Config) validateProxyTrusted() error {
	ranges := splitList(c.ProxyTrusted)
	if _, err := parseTrusted(ranges); err != nil {
		return err
	}
	if ProxyMode(c.ProxyProtocol) != ProxyOff && len(ranges) == 0 {
		return fmt.Errorf("--proxy-protocol %s needs --proxy-trusted CIDRS, the addresses of the load balancers "+
			"allowed to send a PROXY header (e.g. --proxy-trusted 10.0.0.0/24,192.0.2.7): without it any client "+
			"could claim any address", c.ProxyProtocol)
	}
	return nil
}

// trusts reports whether a connection from addr may send a PROXY header.
func (pg *proxyGate) trusts(addr net.Addr) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if addr == nil {
			return false
		}
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	for _, p := range pg.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refuse counts and logs a connection refused for coming from an
// untrusted source.
func (pg *proxyGate) refuse(listener, peer, why string) {
	pg.ctr.proxyUntrusted.Add(1)
	pg.log.Warn("PROXY protocol from an untrusted source refused; closing",
		zap.String("listener", listener), zap.String("peer", peer), zap.String("reason", why))
}

// Reasons of refuse.
const (
	whyHeader   = "sent a PROXY header but is not in --proxy-trusted"
	whyRequired = "not in --proxy-trusted (--proxy-protocol required)"
)

// proxySignature tells whether b, the first bytes of a connection, start
// a PROXY header: present, absent, or too short to tell (maybe).
func proxySignature(b []byte) (present, maybe bool) {
	for _, sig := range [][]byte{proxyV1Sig, proxyV2Sig} {
		if len(b) >= len(sig) && bytes.HasPrefix(b, sig) {
			return true, false
		}
		if len(b) < len(sig) && bytes.HasPrefix(sig, b) {
			maybe = true
		}
	}
	return false, maybe
}

// listener wraps a TLS listener so the PROXY header is read before the TLS
// handshake, by go-proxyproto's connection policies: with "required", a
// trusted source must send a header and any other source is dropped at
// accept; with "optional", a trusted source may send one and another
// source's header fails the connection before the handshake. A missing
// or malformed header fails the handshake, which tlsmux counts.
func (pg *proxyGate) listener(ln net.Listener) net.Listener {
	var policy proxyproto.ConnPolicyFunc
	var err error
	if pg.mode == ProxyRequired {
		policy, err = proxyproto.TrustProxyHeaderFromRanges(pg.ranges)
	} else {
		policy, err = proxyproto.PolicyFromRanges(pg.ranges, proxyproto.USE, proxyproto.REJECT)
	}
	if err != nil { // Validate has parsed the same entries
		policy = func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REJECT, fmt.Errorf("%w: %w", proxyproto.ErrInvalidUpstream, err)
		}
	}
	return &untrustedListener{
		Listener: &proxyproto.Listener{
			Listener:          ln,
			ReadHeaderTimeout: 10 * time.Second,
			ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
				p, err := policy(o)
				if err != nil {
					pg.refuse("tls", addrString(o.Upstream), whyRequired)
				}
				return p, err
			},
		},
		gate: pg,
	}
}

// untrustedListener marks the connections of untrusted sources (which
// go-proxyproto serves under the REJECT policy) so that a header they
// send is counted when the TLS handshake's first read fails on it.
type untrustedListener struct {
	net.Listener
	gate *proxyGate
}

func (l *untrustedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc, ok := c.(*proxyproto.Conn)
	if !ok || l.gate.trusts(pc.Raw().RemoteAddr()) {
		return c, nil
	}
	return &untrustedConn{Conn: c, gate: l.gate, peer: addrString(pc.Raw().RemoteAddr())}, nil
}

// untrustedConn is a connection from a source outside --proxy-trusted.
// Only the connection's reader calls Read.
type untrustedConn struct {
	net.Conn
	gate    *proxyGate
	peer    string
	counted bool
}

func (c *untrustedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && !c.counted && errors.Is(err, proxyproto.ErrSuperfluousProxyHeader) {
		c.counted = true
		c.gate.refuse("tls", c.peer, whyHeader)
	}
	return n, err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
