package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"
)

func TestNewTestPKIHandshake(t *testing.T) {
	pki, err := NewTestPKI("gw.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		serverName string
		clientID   string // "" = no client certificate
		wantErr    bool
	}{
		{name: "mTLS by name", serverName: "gw.test", clientID: "car-1"},
		{name: "mTLS by loopback name", serverName: "localhost", clientID: "car-2"},
		{name: "no client certificate", serverName: "gw.test", wantErr: true},
		{name: "wrong server name", serverName: "other.test", clientID: "car-3", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ccfg := &tls.Config{RootCAs: pki.Pool, ServerName: tc.serverName, MinVersion: tls.VersionTLS12}
			if tc.clientID != "" {
				c, err := pki.ClientCert(tc.clientID)
				if err != nil {
					t.Fatal(err)
				}
				ccfg.Certificates = []tls.Certificate{c}
			}
			scfg := &tls.Config{
				Certificates: []tls.Certificate{pki.Server},
				ClientCAs:    pki.Pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				MinVersion:   tls.VersionTLS12,
			}
			a, b := net.Pipe()
			srv, cli := tls.Server(a, scfg), tls.Client(b, ccfg)
			deadline := time.Now().Add(10 * time.Second)
			_ = srv.SetDeadline(deadline)
			_ = cli.SetDeadline(deadline)
			done := make(chan error, 1)
			go func() {
				err := srv.Handshake()
				if err == nil {
					_, err = srv.Write([]byte("k"))
				}
				if err != nil {
					_ = a.Close()
				}
				done <- err
			}()
			// The client reads a byte: in TLS 1.3 a server's refusal of the
			// client certificate arrives after the client's handshake ends.
			cerr := cli.Handshake()
			if cerr == nil {
				_, cerr = cli.Read(make([]byte, 1))
			}
			if cerr != nil {
				_ = b.Close()
			}
			serr := <-done
			_ = a.Close()
			_ = b.Close()
			if tc.wantErr {
				if cerr == nil && serr == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if cerr != nil || serr != nil {
				t.Fatalf("client err %v, server err %v", cerr, serr)
			}
			peer := srv.ConnectionState().PeerCertificates[0]
			if peer.Subject.CommonName != tc.clientID {
				t.Errorf("peer CN = %q, want %q", peer.Subject.CommonName, tc.clientID)
			}
			if id, ok := ClientIDFromURI(peer.URIs[0].String()); !ok || id != tc.clientID {
				t.Errorf("peer URI names %q, want %q", id, tc.clientID)
			}
		})
	}
}

func TestTestPKIPEM(t *testing.T) {
	pki, err := NewTestPKI()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pki.CAPEM)
	if block == nil {
		t.Fatal("CAPEM holds no PEM block")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !ca.Equal(pki.CA) {
		t.Fatalf("CAPEM does not hold CA (err %v)", err)
	}
	pair, err := tls.X509KeyPair(pki.ServerPEM, pki.ServerKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !pair.Leaf.Equal(pki.Server.Leaf) {
		t.Fatal("ServerPEM does not hold Server")
	}
	// A second server certificate has a fresh key and serial, same CA.
	certPEM, keyPEM, err := pki.IssueServer("new.test")
	if err != nil {
		t.Fatal(err)
	}
	second, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if second.Leaf.SerialNumber.Cmp(pki.Server.Leaf.SerialNumber) == 0 {
		t.Fatal("IssueServer reused a serial number")
	}
	if _, err := second.Leaf.Verify(x509.VerifyOptions{Roots: pki.Pool, DNSName: "new.test"}); err != nil {
		t.Fatalf("second server certificate: %v", err)
	}
	cPEM, kPEM, err := pki.IssueClient("meter-9")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tls.X509KeyPair(cPEM, kPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Leaf.Verify(x509.VerifyOptions{Roots: pki.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
	if _, err := pki.ClientCert(""); err == nil {
		t.Fatal("ClientCert accepted an empty client id")
	}
	if _, _, err := pki.IssueServer("bad host"); err == nil {
		t.Fatal("IssueServer accepted a bad host")
	}
}
