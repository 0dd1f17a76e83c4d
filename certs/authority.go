package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// Validity periods and the clock skew allowance applied to NotBefore.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
	backdate     = time.Hour
)

// DefaultClientID names the client certificate Init and EnsureDev write when
// no WithClientID option is given.
const DefaultClientID = "dev-client"

// ClientURIPrefix starts the URI SAN of every client certificate; the client
// id follows, path-escaped.
const ClientURIPrefix = "urn:dualgate:client:"

// ErrBadHost reports a host that cannot be put into a certificate.
var ErrBadHost = errors.New("certs: bad host name")

// ClientURI is the URI SAN naming clientID in a client certificate.
func ClientURI(clientID string) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "dualgate:client:" + url.PathEscape(clientID)}
}

// ClientIDFromURI returns the client id a URI SAN names, and whether uri is
// one of ours (ClientURIPrefix followed by a non-empty id).
func ClientIDFromURI(uri string) (string, bool) {
	rest, ok := strings.CutPrefix(uri, ClientURIPrefix)
	if !ok || rest == "" {
		return "", false
	}
	id, err := url.PathUnescape(rest)
	if err != nil {
		return "", false
	}
	return id, true
}

// authority is a CA able to sign leaves.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// newKey makes an ECDSA P-256 key.
func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate key: %w", err)
	}
	return k, nil
}

// newSerial returns a random, positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("certs: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// newAuthority makes a self-signed CA valid from now.
func newAuthority(now time.Time) (authority, error) {
	key, err := newKey()
	if err != nil {
		return authority{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return authority{}, err
	}
	tag := make([]byte, 4)
	if _, err := rand.Read(tag); err != nil {
		return authority{}, fmt.Errorf("certs: CA name: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"dualgate development"},
			// A tag tells two development CAs apart in a trust store.
			CommonName: "dualgate development CA " + hex.EncodeToString(tag),
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return authority{}, fmt.Errorf("certs: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return authority{}, fmt.Errorf("certs: parse CA certificate: %w", err)
	}
	return authority{cert: cert, key: key}, nil
}

// leaf is a signed certificate and its key in PEM.
type leaf struct {
	certPEM []byte
	keyPEM  []byte
}

// keyPair returns the leaf as a tls.Certificate with Leaf set.
func (l leaf) keyPair() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(l.certPEM, l.keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: key pair: %w", err)
	}
	return c, nil
}

// issue signs tmpl (which gets a serial, validity and key) with the CA.
func (a authority) issue(tmpl *x509.Certificate, now time.Time) (leaf, error) {
	key, err := newKey()
	if err != nil {
		return leaf{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return leaf{}, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(LeafValidity)
	if tmpl.NotAfter.After(a.cert.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return leaf{}, fmt.Errorf("certs: create certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return leaf{}, err
	}
	return leaf{certPEM: encodeCert(der), keyPEM: keyPEM}, nil
}

// issueServer signs a server certificate naming hosts and the default hosts.
func (a authority) issueServer(hosts []string, now time.Time) (leaf, error) {
	dns, ips, err := sanHosts(hosts)
	if err != nil {
		return leaf{}, err
	}
	return a.issue(&x509.Certificate{
		Subject: pkix.Name{
			Organization: []string{"dualgate development"},
			CommonName:   "dualgate server",
		},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dns,
		IPAddresses: ips,
	}, now)
}

// issueClient signs a client certificate naming clientID.
func (a authority) issueClient(clientID string, now time.Time) (leaf, error) {
	if clientID == "" {
		return leaf{}, errors.New("certs: empty client id")
	}
	return a.issue(&x509.Certificate{
		Subject: pkix.Name{
			Organization: []string{"dualgate development"},
			CommonName:   clientID,
		},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{ClientURI(clientID)},
	}, now)
}

// sanHosts splits hosts, plus localhost, 127.0.0.1 and ::1, into DNS names and IP
// addresses, without duplicates, in the order given.
func sanHosts(hosts []string) ([]string, []net.IP, error) {
	var (
		dns  []string
		ips  []net.IP
		seen = make(map[string]bool)
	)
	all := make([]string, 0, len(hosts)+3)
	// Every server certificate names the loopback host.
	all = append(append(all, hosts...), "localhost", "127.0.0.1", "::1")
	for _, h := range all {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if inner, ok := strings.CutPrefix(h, "["); ok {
			h = strings.TrimSuffix(inner, "]")
		}
		if ip := net.ParseIP(h); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if key := ip.String(); !seen[key] {
				seen[key] = true
				ips = append(ips, ip)
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if err := checkDNSName(name); err != nil {
			return nil, nil, fmt.Errorf("%w: %q: %w", ErrBadHost, h, err)
		}
		if !seen[name] {
			seen[name] = true
			dns = append(dns, name)
		}
	}
	return dns, ips, nil
}

// checkDNSName accepts a lower-case host name, optionally with one leading
// wildcard label.
func checkDNSName(name string) error {
	if len(name) > 253 {
		return errors.New("longer than 253 bytes")
	}
	if strings.Contains(name, ":") {
		return errors.New("a port or an address is not a host name")
	}
	rest := strings.TrimPrefix(name, "*.")
	if rest == "" {
		return errors.New("empty name")
	}
	for label := range strings.SplitSeq(rest, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("empty or over-long label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("label starts or ends with a hyphen")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
				return fmt.Errorf("character %q not allowed", c)
			}
		}
	}
	return nil
}

// encodeCert returns the PEM form of a DER certificate.
func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// encodeKey returns the PKCS #8 PEM form of a private key.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certs: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseAuthority loads a CA from its PEM certificate and key.
func parseAuthority(certPEM, keyPEM []byte) (authority, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return authority{}, fmt.Errorf("certs: CA key pair: %w", err)
	}
	cert := pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return authority{}, fmt.Errorf("certs: parse CA certificate: %w", err)
		}
	}
	if !cert.IsCA {
		return authority{}, errors.New("certs: CA certificate is not a CA")
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return authority{}, fmt.Errorf("certs: CA key of type %T cannot sign", pair.PrivateKey)
	}
	return authority{cert: cert, key: key}, nil
}
