package tlsmux

import (
	"context"
	"crypto/tls"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/dualgate/dualgate/certs"
)

// certFiles writes pki's server pair into dir and returns the file names.
func certFiles(t *testing.T, dir string, pki *certs.PKI) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	writeAtomic(t, keyFile, pki.ServerKeyPEM)
	writeAtomic(t, certFile, pki.ServerPEM)
	return certFile, keyFile
}

// issue makes a new server pair from pki's CA and writes it, key first.
func issue(t *testing.T, pki *certs.PKI, certFile, keyFile string) *big.Int {
	t.Helper()
	certPEM, keyPEM, err := pki.IssueServer()
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, keyFile, keyPEM)
	writeAtomic(t, certFile, certPEM)
	return pair.Leaf.SerialNumber
}

func serverSerial(c *tls.Conn) *big.Int {
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestCertReloaderKeepsLiveConnections(t *testing.T) {
	pki := newPKI(t)
	dir := t.TempDir()
	certFile, keyFile := certFiles(t, dir, pki)
	r, err := NewCertReloader(certFile, keyFile, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, Config{
		TLS:     serverTLS(t, pki, TLSOptions{GetCertificate: r.GetCertificate}),
		Handoff: echoHandoff(t, loopOpts{}),
	})
	first := pki.Server.Leaf.SerialNumber

	live, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = live.Close() }()
	if got := serverSerial(live); got.Cmp(first) != 0 {
		t.Fatalf("first connection got serial %x, want %x", got, first)
	}

	second := issue(t, pki, certFile, keyFile)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := r.Certificate().Leaf.SerialNumber; got.Cmp(second) != 0 {
		t.Fatalf("Certificate serial %x after Reload, want %x", got, second)
	}
	echo(t, live, "still alive after reload")

	fresh, err := dialTLS(t, addr, clientTLS(pki))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fresh.Close() }()
	if got := serverSerial(fresh); got.Cmp(second) != 0 {
		t.Fatalf("new connection got serial %x, want the reloaded %x", got, second)
	}
	echo(t, live, "and after a new connection")
}

func TestCertReloaderKeepsCertificateOnBadFiles(t *testing.T) {
	other := newPKI(t)
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, r *CertReloader, certFile, keyFile string)
	}{
		{name: "garbage certificate", spoil: func(t *testing.T, _ *CertReloader, certFile, _ string) {
			writeAtomic(t, certFile, []byte("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"))
		}},
		{name: "key missing", spoil: func(t *testing.T, _ *CertReloader, _, keyFile string) {
			writeAtomic(t, keyFile, nil)
		}},
		{name: "key of another certificate", spoil: func(t *testing.T, _ *CertReloader, _, keyFile string) {
			writeAtomic(t, keyFile, other.ServerKeyPEM)
		}},
		{name: "expired", spoil: func(t *testing.T, r *CertReloader, _, _ string) {
			r.clock = func() time.Time { return time.Now().Add(2 * certs.LeafValidity) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pki := newPKI(t)
			certFile, keyFile := certFiles(t, t.TempDir(), pki)
			r, err := NewCertReloader(certFile, keyFile, nil)
			if err != nil {
				t.Fatal(err)
			}
			before := r.Certificate()
			tc.spoil(t, r, certFile, keyFile)
			if err := r.Reload(); err == nil {
				t.Fatal("Reload accepted bad files")
			}
			got, err := r.GetCertificate(nil)
			if err != nil || got != before {
				t.Fatalf("certificate changed after a failed Reload (err %v)", err)
			}
		})
	}
	if _, err := NewCertReloader(filepath.Join(t.TempDir(), "none.pem"), filepath.Join(t.TempDir(), "none-key.pem"), nil); err == nil {
		t.Fatal("NewCertReloader accepted missing files")
	}
}

func TestCertReloaderWatch(t *testing.T) {
	pki := newPKI(t)
	certFile, keyFile := certFiles(t, t.TempDir(), pki)
	core, logs := observer.New(zap.ErrorLevel)
	r, err := NewCertReloader(certFile, keyFile, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	const interval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		r.Watch(ctx, interval)
	}()
	defer func() {
		cancel()
		recv(t, watched)
	}()

	second := issue(t, pki, certFile, keyFile)
	eventually(t, "Watch to load the new certificate", func() bool {
		return r.Certificate().Leaf.SerialNumber.Cmp(second) == 0
	})

	// A bad change is reported once and the certificate stays.
	logs.TakeAll()
	writeAtomic(t, certFile, []byte("not a certificate"))
	eventually(t, "Watch to report the bad file", func() bool { return logs.Len() >= 1 })
	time.Sleep(10 * interval) // ten more polls of the unchanged bad file
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d error logs for one bad change, want 1", n)
	}
	if r.Certificate().Leaf.SerialNumber.Cmp(second) != 0 {
		t.Fatal("bad file replaced the certificate")
	}

	third := issue(t, pki, certFile, keyFile)
	eventually(t, "Watch to recover with a good file", func() bool {
		return r.Certificate().Leaf.SerialNumber.Cmp(third) == 0
	})
}
