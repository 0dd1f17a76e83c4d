package certs

import (
	"crypto/tls"
	"crypto/x509"
	"time"
)

// PKI is a development PKI held in memory, for tests: a CA, a server
// certificate, and client certificates issued on demand. It is safe for
// concurrent use; its fields are not to be modified.
type PKI struct {
	// CA is the authority's certificate.
	CA *x509.Certificate
	// Pool holds CA: RootCAs for clients, ClientCAs for servers.
	Pool *x509.CertPool
	// Server is a server certificate (Leaf set) for the hosts NewTestPKI
	// was given and the loopback names.
	Server tls.Certificate
	// CAPEM, ServerPEM and ServerKeyPEM are CA and Server in PEM.
	CAPEM        []byte
	ServerPEM    []byte
	ServerKeyPEM []byte

	ca authority
}

// NewTestPKI makes a CA and a server certificate naming hosts plus
// localhost, 127.0.0.1 and ::1, in memory.
func NewTestPKI(hosts ...string) (*PKI, error) {
	ca, err := newAuthority(time.Now())
	if err != nil {
		return nil, err
	}
	p := &PKI{CA: ca.cert, Pool: x509.NewCertPool(), CAPEM: encodeCert(ca.cert.Raw), ca: ca}
	p.Pool.AddCert(ca.cert)
	if p.ServerPEM, p.ServerKeyPEM, err = p.IssueServer(hosts...); err != nil {
		return nil, err
	}
	if p.Server, err = (leaf{certPEM: p.ServerPEM, keyPEM: p.ServerKeyPEM}).keyPair(); err != nil {
		return nil, err
	}
	return p, nil
}

// IssueServer signs a new server certificate, with a new key, naming hosts
// plus the loopback names, and returns both in PEM.
func (p *PKI) IssueServer(hosts ...string) (certPEM, keyPEM []byte, err error) {
	l, err := p.ca.issueServer(hosts, time.Now())
	if err != nil {
		return nil, nil, err
	}
	return l.certPEM, l.keyPEM, nil
}

// IssueClient signs a new client certificate for clientID and returns it and
// its key in PEM.
func (p *PKI) IssueClient(clientID string) (certPEM, keyPEM []byte, err error) {
	l, err := p.ca.issueClient(clientID, time.Now())
	if err != nil {
		return nil, nil, err
	}
	return l.certPEM, l.keyPEM, nil
}

// ClientCert signs a new client certificate for clientID, ready for
// tls.Config.Certificates (Leaf set).
func (p *PKI) ClientCert(clientID string) (tls.Certificate, error) {
	l, err := p.ca.issueClient(clientID, time.Now())
	if err != nil {
		return tls.Certificate{}, err
	}
	return l.keyPair()
}
