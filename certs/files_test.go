package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// readCert parses the one certificate in a PEM file.
func readCert(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("%s: want exactly one CERTIFICATE block", name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

// readAll returns the contents of every PKI file, keyed by path.
func readAll(t *testing.T, p Paths) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	for _, f := range []string{p.CA, p.CAKey, p.Server, p.ServerKey, p.Client, p.ClientKey} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = b
	}
	return out
}

func verify(c, ca *x509.Certificate, usage x509.ExtKeyUsage, host string, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err := c.Verify(x509.VerifyOptions{
		Roots:       roots,
		DNSName:     host,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	return err
}

func TestInitWritesVerifiableChains(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := Init(dir, []string{"gw.example.com", "10.0.0.7", "[2001:db8::1]"}, WithClientID("car-42"))
	if err != nil {
		t.Fatal(err)
	}
	want := PathsIn(dir)
	want.Client, want.ClientKey = filepath.Join(dir, "car-42.pem"), filepath.Join(dir, "car-42-key.pem")
	if p != want {
		t.Fatalf("paths = %+v, want %+v", p, want)
	}
	ca := readCert(t, p.CA)
	srv := readCert(t, p.Server)
	cli := readCert(t, p.Client)
	now := time.Now()

	for _, tc := range []struct {
		name    string
		cert    *x509.Certificate
		usage   x509.ExtKeyUsage
		host    string
		wantErr bool
	}{
		{name: "server for given name", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "gw.example.com"},
		{name: "server for given IPv4", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "10.0.0.7"},
		{name: "server for given IPv6", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "2001:db8::1"},
		{name: "server for localhost", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "localhost"},
		{name: "server for 127.0.0.1", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "127.0.0.1"},
		{name: "server for ::1", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "::1"},
		{name: "server for another name", cert: srv, usage: x509.ExtKeyUsageServerAuth, host: "evil.example.com", wantErr: true},
		{name: "server as client", cert: srv, usage: x509.ExtKeyUsageClientAuth, wantErr: true},
		{name: "client", cert: cli, usage: x509.ExtKeyUsageClientAuth},
		{name: "client as server", cert: cli, usage: x509.ExtKeyUsageServerAuth, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verify(tc.cert, ca, tc.usage, tc.host, now)
			if (err != nil) != tc.wantErr {
				t.Fatalf("verify err = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}

	if cli.Subject.CommonName != "car-42" {
		t.Errorf("client CN = %q, want car-42", cli.Subject.CommonName)
	}
	if len(cli.URIs) != 1 || cli.URIs[0].String() != "urn:dualgate:client:car-42" {
		t.Errorf("client URIs = %v, want [urn:dualgate:client:car-42]", cli.URIs)
	}
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("CA: IsCA %v MaxPathLen %d", ca.IsCA, ca.MaxPathLen)
	}

	serials := make(map[string]bool)
	for _, c := range []*x509.Certificate{ca, srv, cli} {
		if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
			t.Errorf("%s: serial %v not a positive 128-bit number", c.Subject.CommonName, c.SerialNumber)
		}
		serials[c.SerialNumber.String()] = true
		pub, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", c.Subject.CommonName, c.PublicKey)
		}
	}
	if len(serials) != 3 {
		t.Errorf("serials not distinct: %v", serials)
	}
	for _, tc := range []struct {
		cert *x509.Certificate
		want time.Duration
	}{
		{cert: ca, want: CAValidity},
		{cert: srv, want: LeafValidity},
		{cert: cli, want: LeafValidity},
	} {
		if got := tc.cert.NotAfter.Sub(now); got < tc.want-2*time.Hour || got > tc.want {
			t.Errorf("%s: valid for %v more, want about %v", tc.cert.Subject.CommonName, got, tc.want)
		}
		if !tc.cert.NotBefore.Before(now) {
			t.Errorf("%s: NotBefore %v not before now", tc.cert.Subject.CommonName, tc.cert.NotBefore)
		}
	}

	// The key files match their certificates and load as TLS key pairs.
	for _, pair := range [][2]string{{p.CA, p.CAKey}, {p.Server, p.ServerKey}, {p.Client, p.ClientKey}} {
		if _, err := tls.LoadX509KeyPair(pair[0], pair[1]); err != nil {
			t.Errorf("LoadX509KeyPair(%s): %v", pair[0], err)
		}
	}
}

func TestInitPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "pki")
	p, err := Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want fs.FileMode
	}{
		{path: dir, want: 0o700 | fs.ModeDir},
		{path: p.CA, want: 0o644},
		{path: p.CAKey, want: 0o600},
		{path: p.Server, want: 0o644},
		{path: p.ServerKey, want: 0o600},
		{path: p.Client, want: 0o644},
		{path: p.ClientKey, want: 0o600},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.want {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode(), tc.want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 6 {
		t.Errorf("dir holds %d entries, want the 6 PKI files (no temporary files left)", len(entries))
	}
}

func TestInitKeepsExistingCA(t *testing.T) {
	dir := t.TempDir()
	p, err := Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := readAll(t, p)
	if _, err := Init(dir, nil); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Init err = %v, want fs.ErrExist", err)
	}
	if after := readAll(t, p); !equalFiles(before, after) {
		t.Fatal("refused Init changed files")
	}
	if _, err := Init(dir, nil, WithOverwrite()); err != nil {
		t.Fatalf("Init with overwrite: %v", err)
	}
	if bytes.Equal(before[p.CA], readAll(t, p)[p.CA]) {
		t.Fatal("Init with overwrite kept the old CA")
	}
}

func TestInitRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hosts []string
		opts  []Option
		isErr error
	}{
		{name: "host with port", hosts: []string{"gw.example.com:8883"}, isErr: ErrBadHost},
		{name: "space", hosts: []string{"bad host"}, isErr: ErrBadHost},
		{name: "leading hyphen", hosts: []string{"-gw.example.com"}, isErr: ErrBadHost},
		{name: "empty label", hosts: []string{"gw..example.com"}, isErr: ErrBadHost},
		{name: "bare wildcard", hosts: []string{"*"}, isErr: ErrBadHost},
		{name: "inner wildcard", hosts: []string{"gw.*.com"}, isErr: ErrBadHost},
		{name: "empty client id", opts: []Option{WithClientID("")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			_, err := Init(dir, tc.hosts, tc.opts...)
			if err == nil {
				t.Fatal("Init succeeded")
			}
			if tc.isErr != nil && !errors.Is(err, tc.isErr) {
				t.Fatalf("err = %v, want %v", err, tc.isErr)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("rejected Init created %s (stat err %v)", dir, err)
			}
		})
	}
}

func equalFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestEnsureDevIsIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "certs")
	hosts := []string{"gw.local", "192.168.1.20"}
	p, created, err := EnsureDev(dir, hosts)
	if err != nil || !created {
		t.Fatalf("first EnsureDev: created %v, err %v", created, err)
	}
	first := readAll(t, p)
	for i := range 3 {
		p2, created, err := EnsureDev(dir, hosts)
		if err != nil || created {
			t.Fatalf("EnsureDev #%d: created %v, err %v", i+2, created, err)
		}
		if p2 != p {
			t.Fatalf("paths changed: %+v vs %+v", p2, p)
		}
		if !equalFiles(first, readAll(t, p)) {
			t.Fatalf("EnsureDev #%d rewrote files", i+2)
		}
	}
	// A subset of the hosts, in another order and case, is still covered.
	if _, created, err := EnsureDev(dir, []string{"GW.local"}); err != nil || created {
		t.Fatalf("EnsureDev with covered hosts: created %v, err %v", created, err)
	}
	cli := readCert(t, p.Client)
	if cli.Subject.CommonName != DefaultClientID {
		t.Errorf("client CN = %q, want %q", cli.Subject.CommonName, DefaultClientID)
	}
}

func TestEnsureDevRenews(t *testing.T) {
	hosts := []string{"gw.local"}
	for _, tc := range []struct {
		name        string
		hosts       []string
		at          time.Duration // EnsureDev's clock, after the first run
		spoil       func(t *testing.T, p Paths)
		wantServer  bool // server certificate rewritten
		wantClient  bool // client certificate rewritten
		wantNewHost string
	}{
		{name: "new host", hosts: []string{"gw.local", "gw2.local"}, wantServer: true, wantNewHost: "gw2.local"},
		{
			name:       "server file removed",
			spoil:      func(t *testing.T, p Paths) { mustRemove(t, p.Server) },
			wantServer: true,
		},
		{
			name:       "client key corrupted",
			spoil:      func(t *testing.T, p Paths) { mustWrite(t, p.ClientKey, []byte("garbage")) },
			wantClient: true,
		},
		{
			name: "server signed by another CA",
			spoil: func(t *testing.T, p Paths) {
				other, err := Init(t.TempDir(), hosts)
				if err != nil {
					t.Fatal(err)
				}
				copyFile(t, other.Server, p.Server)
				copyFile(t, other.ServerKey, p.ServerKey)
			},
			wantServer: true,
		},
		{name: "leaves near expiry", at: LeafValidity - RenewBefore + 24*time.Hour, wantServer: true, wantClient: true},
		{name: "leaves not yet near expiry", at: LeafValidity - RenewBefore - 24*time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			p, _, err := ensureDev(dir, hosts, start)
			if err != nil {
				t.Fatal(err)
			}
			before := readAll(t, p)
			if tc.spoil != nil {
				tc.spoil(t, p)
			}
			want := tc.hosts
			if want == nil {
				want = hosts
			}
			_, created, err := ensureDev(dir, want, start.Add(tc.at))
			if err != nil {
				t.Fatal(err)
			}
			after := readAll(t, p)
			if !bytes.Equal(before[p.CA], after[p.CA]) || !bytes.Equal(before[p.CAKey], after[p.CAKey]) {
				t.Fatal("CA changed")
			}
			gotServer := !bytes.Equal(before[p.Server], after[p.Server])
			gotClient := !bytes.Equal(before[p.Client], after[p.Client])
			if gotServer != tc.wantServer || gotClient != tc.wantClient || created != (tc.wantServer || tc.wantClient) {
				t.Fatalf("server rewritten %v (want %v), client rewritten %v (want %v), created %v",
					gotServer, tc.wantServer, gotClient, tc.wantClient, created)
			}
			ca := readCert(t, p.CA)
			now := start.Add(tc.at)
			if err := verify(readCert(t, p.Server), ca, x509.ExtKeyUsageServerAuth, "gw.local", now); err != nil {
				t.Errorf("server: %v", err)
			}
			if tc.wantNewHost != "" {
				if err := verify(readCert(t, p.Server), ca, x509.ExtKeyUsageServerAuth, tc.wantNewHost, now); err != nil {
					t.Errorf("server for new host: %v", err)
				}
			}
			if err := verify(readCert(t, p.Client), ca, x509.ExtKeyUsageClientAuth, "", now); err != nil {
				t.Errorf("client: %v", err)
			}
			if _, err := tls.LoadX509KeyPair(p.Client, p.ClientKey); err != nil {
				t.Errorf("client pair: %v", err)
			}
		})
	}
}

func TestEnsureDevNeverReplacesCA(t *testing.T) {
	for _, tc := range []struct {
		name  string
		at    time.Duration
		spoil func(t *testing.T, p Paths)
	}{
		{name: "CA key missing", spoil: func(t *testing.T, p Paths) { mustRemove(t, p.CAKey) }},
		{name: "CA certificate missing", spoil: func(t *testing.T, p Paths) { mustRemove(t, p.CA) }},
		{name: "CA certificate garbage", spoil: func(t *testing.T, p Paths) { mustWrite(t, p.CA, []byte("not pem")) }},
		{name: "CA key of another CA", spoil: func(t *testing.T, p Paths) {
			other, err := Init(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			copyFile(t, other.CAKey, p.CAKey)
		}},
		{name: "leaf in place of the CA", spoil: func(t *testing.T, p Paths) {
			copyFile(t, p.Server, p.CA)
			copyFile(t, p.ServerKey, p.CAKey)
		}},
		{name: "CA expired", at: CAValidity + time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			p, _, err := ensureDev(dir, nil, start)
			if err != nil {
				t.Fatal(err)
			}
			if tc.spoil != nil {
				tc.spoil(t, p)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			before := make(map[string][]byte)
			for _, e := range entries {
				before[e.Name()], _ = os.ReadFile(filepath.Join(dir, e.Name()))
			}
			if _, created, err := ensureDev(dir, nil, start.Add(tc.at)); err == nil || created {
				t.Fatalf("ensureDev: created %v, err %v; want an error", created, err)
			}
			for name, data := range before {
				now, _ := os.ReadFile(filepath.Join(dir, name))
				if !bytes.Equal(now, data) {
					t.Errorf("%s changed", name)
				}
			}
		})
	}
}

func mustRemove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, to, data)
}
