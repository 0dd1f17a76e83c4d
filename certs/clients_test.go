package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueClients(t *testing.T) {
	dir := t.TempDir()
	p, err := Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p.Client) != "dev-client.pem" || filepath.Base(p.ClientKey) != "dev-client-key.pem" {
		t.Fatalf("Init's client files %s, %s: want dev-client.pem, dev-client-key.pem", p.Client, p.ClientKey)
	}
	files, err := IssueClients(dir, []string{"car-1", "lock-2", "meter_ü"})
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.CA)
	for i, id := range []string{"car-1", "lock-2", "meter_ü"} {
		cert, key := ClientFiles(dir, id)
		if files[i] != cert {
			t.Fatalf("file %d = %s, want %s", i, files[i], cert)
		}
		c := readCert(t, cert)
		if c.Subject.CommonName != id {
			t.Errorf("%s: CN %q", id, c.Subject.CommonName)
		}
		if len(c.URIs) != 1 || c.URIs[0].String() != ClientURI(id).String() {
			t.Errorf("%s: URIs %v, want %v", id, c.URIs, ClientURI(id))
		}
		if got, ok := ClientIDFromURI(c.URIs[0].String()); !ok || got != id {
			t.Errorf("%s: URI names %q", id, got)
		}
		if len(c.DNSNames) != 0 {
			t.Errorf("%s: DNS SANs %v in a client certificate", id, c.DNSNames)
		}
		if err := verify(c, ca, x509.ExtKeyUsageClientAuth, "", time.Now()); err != nil {
			t.Errorf("%s: %v", id, err)
		}
		if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
			t.Errorf("%s: %v", id, err)
		}
		if st, err := os.Stat(key); err != nil || st.Mode().Perm() != keyPerm {
			t.Errorf("%s: key file mode %v, %v", id, st.Mode(), err)
		}
	}

	// Issuing again needs the overwrite option, and nothing is written
	// when one id of the batch exists.
	before, _ := os.ReadFile(files[0])
	if _, err := IssueClients(dir, []string{"car-9", "car-1"}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("existing certificate: %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "car-9.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("car-9 written although the batch was refused")
	}
	if _, err := IssueClients(dir, []string{"car-1"}, WithOverwrite()); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(files[0]); slices.Equal(before, after) {
		t.Fatal("WithOverwrite did not issue a new certificate")
	}
}

func TestIssueClientsErrors(t *testing.T) {
	empty := t.TempDir()
	if _, err := IssueClients(empty, []string{"car-1"}); !errors.Is(err, ErrNoCA) || !strings.Contains(err.Error(), "certs init") {
		t.Fatalf("no CA: %v, want ErrNoCA saying how to make one", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Fatalf("files written without a CA: %v", entries)
	}
	broken := t.TempDir()
	if err := os.WriteFile(filepath.Join(broken, CAFile), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, CAKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := IssueClients(broken, []string{"car-1"}); err == nil || errors.Is(err, ErrNoCA) {
		t.Fatalf("unreadable CA: %v", err)
	}

	dir := t.TempDir()
	if _, err := Init(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := IssueClients(dir, nil); err == nil {
		t.Fatal("no id accepted")
	}
	for _, id := range []string{"", "a/b", `a\b`, ".hidden", "..", "car-key", "ca", "server", "a b", "tab\tid", "nul\x00", "\xff", strings.Repeat("x", 201)} {
		if _, err := IssueClients(dir, []string{"ok-1", id}); !errors.Is(err, ErrBadClientID) {
			t.Errorf("id %q: %v, want ErrBadClientID", id, err)
		}
	}
	if _, err := IssueClients(dir, []string{"twice", "twice"}); !errors.Is(err, ErrBadClientID) {
		t.Errorf("duplicate id: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ok-1.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a refused batch wrote a certificate")
	}
	// Init refuses a client id whose files would be the CA's.
	if _, err := Init(dir, nil, WithClientID("ca")); !errors.Is(err, ErrBadClientID) {
		t.Fatalf("Init with client id ca: %v", err)
	}
}
