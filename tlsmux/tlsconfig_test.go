package tlsmux

import (
	"crypto/tls"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestServerTLSConfig(t *testing.T) {
	pki := newPKI(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	writeAtomic(t, caFile, pki.CAPEM)
	junkFile := filepath.Join(dir, "junk.pem")
	writeAtomic(t, junkFile, []byte("no certificates here"))
	certsOnly := []tls.Certificate{pki.Server}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pki.Server, nil }

	for _, tc := range []struct {
		name    string
		opts    TLSOptions
		wantErr string
		check   func(t *testing.T, c *tls.Config)
	}{
		{
			name: "defaults",
			opts: TLSOptions{Certificates: certsOnly},
			check: func(t *testing.T, c *tls.Config) {
				if c.MinVersion != tls.VersionTLS12 || c.MaxVersion != 0 {
					t.Errorf("versions %x..%x, want TLS 1.2..1.3", c.MinVersion, c.MaxVersion)
				}
				if c.SessionTicketsDisabled {
					t.Error("session tickets disabled")
				}
				if c.ClientAuth != tls.NoClientCert || c.ClientCAs != nil {
					t.Errorf("ClientAuth %v", c.ClientAuth)
				}
				if c.CurvePreferences != nil || c.CipherSuites != nil {
					t.Errorf("curves %v, suites %v; want Go's defaults", c.CurvePreferences, c.CipherSuites)
				}
			},
		},
		{
			name: "TLS 1.3 only, ALPN, GetCertificate",
			opts: TLSOptions{GetCertificate: getCert, MinVersion: tls.VersionTLS13, NextProtos: []string{"mqtt"}},
			check: func(t *testing.T, c *tls.Config) {
				if c.MinVersion != tls.VersionTLS13 || c.GetCertificate == nil || !slices.Equal(c.NextProtos, []string{"mqtt"}) {
					t.Errorf("MinVersion %x, GetCertificate set %v, NextProtos %v", c.MinVersion, c.GetCertificate != nil, c.NextProtos)
				}
			},
		},
		{
			name: "client CA file, optional",
			opts: TLSOptions{Certificates: certsOnly, ClientCAFile: caFile},
			check: func(t *testing.T, c *tls.Config) {
				if c.ClientAuth != tls.VerifyClientCertIfGiven || c.ClientCAs == nil {
					t.Errorf("ClientAuth %v", c.ClientAuth)
				}
			},
		},
		{
			name: "client CA pool, required",
			opts: TLSOptions{Certificates: certsOnly, ClientCAs: pki.Pool, RequireClientCert: true},
			check: func(t *testing.T, c *tls.Config) {
				if c.ClientAuth != tls.RequireAndVerifyClientCert || c.ClientCAs != pki.Pool {
					t.Errorf("ClientAuth %v", c.ClientAuth)
				}
			},
		},
		{
			name: "X25519 only",
			opts: TLSOptions{Certificates: certsOnly, X25519Only: true},
			check: func(t *testing.T, c *tls.Config) {
				if !slices.Equal(c.CurvePreferences, []tls.CurveID{tls.X25519}) {
					t.Errorf("curves %v", c.CurvePreferences)
				}
			},
		},
		{
			name: "explicit curves and suites",
			opts: TLSOptions{
				Certificates:     certsOnly,
				CurvePreferences: []tls.CurveID{tls.CurveP256},
				CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
			},
			check: func(t *testing.T, c *tls.Config) {
				if !slices.Equal(c.CurvePreferences, []tls.CurveID{tls.CurveP256}) ||
					!slices.Equal(c.CipherSuites, []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}) {
					t.Errorf("curves %v, suites %v", c.CurvePreferences, c.CipherSuites)
				}
			},
		},
		{name: "no certificate", opts: TLSOptions{}, wantErr: "exactly one"},
		{name: "two certificate sources", opts: TLSOptions{Certificates: certsOnly, GetCertificate: getCert}, wantErr: "exactly one"},
		{name: "TLS 1.1", opts: TLSOptions{Certificates: certsOnly, MinVersion: tls.VersionTLS11}, wantErr: "MinVersion"},
		{name: "missing CA file", opts: TLSOptions{Certificates: certsOnly, ClientCAFile: filepath.Join(dir, "none.pem")}, wantErr: "client CA file"},
		{name: "CA file without certificates", opts: TLSOptions{Certificates: certsOnly, ClientCAFile: junkFile}, wantErr: "no PEM certificate"},
		{name: "CA file and pool", opts: TLSOptions{Certificates: certsOnly, ClientCAFile: caFile, ClientCAs: pki.Pool}, wantErr: "at most one"},
		{name: "required without CA", opts: TLSOptions{Certificates: certsOnly, RequireClientCert: true}, wantErr: "needs ClientCAFile"},
		{name: "X25519 and curves", opts: TLSOptions{Certificates: certsOnly, X25519Only: true, CurvePreferences: []tls.CurveID{tls.X25519}}, wantErr: "at most one"},
		{name: "empty curves", opts: TLSOptions{Certificates: certsOnly, CurvePreferences: []tls.CurveID{}}, wantErr: "empty CurvePreferences"},
		{name: "insecure suite", opts: TLSOptions{Certificates: certsOnly, CipherSuites: []uint16{tls.TLS_RSA_WITH_RC4_128_SHA}}, wantErr: "not a secure TLS 1.2"},
		{name: "TLS 1.3 suite", opts: TLSOptions{Certificates: certsOnly, CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256}}, wantErr: "not a secure TLS 1.2"},
		{name: "empty suites", opts: TLSOptions{Certificates: certsOnly, CipherSuites: []uint16{}}, wantErr: "empty CipherSuites"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ServerTLSConfig(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestCipherSuitesByName(t *testing.T) {
	for _, tc := range []struct {
		names   []string
		want    []uint16
		wantErr bool
	}{
		{
			names: []string{"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"},
			want:  []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		},
		{names: nil, want: []uint16{}},
		{names: []string{"TLS_RSA_WITH_RC4_128_SHA"}, wantErr: true},
		{names: []string{"TLS_AES_128_GCM_SHA256"}, wantErr: true},
		{names: []string{"tls_ecdhe_ecdsa_with_aes_128_gcm_sha256"}, wantErr: true},
	} {
		t.Run(strings.Join(tc.names, "+"), func(t *testing.T) {
			got, err := CipherSuitesByName(tc.names)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
