package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/pires/go-proxyproto"
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

// proxyListener wraps the TLS listener so the PROXY header is read before
// the TLS handshake. A missing header (when required) or a malformed one
// fails the connection before the handshake; tlsmux counts it as a failed
// handshake.
func proxyListener(ln net.Listener, mode ProxyMode) net.Listener {
	policy := proxyproto.USE
	if mode == ProxyRequired {
		policy = proxyproto.REQUIRE
	}
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: 10 * time.Second,
		ConnPolicy:        func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return policy, nil },
	}
}
