package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Names of the files Init and EnsureDev write. A client certificate is
// named by its client id: see ClientFiles.
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	ServerFile    = "server.pem"
	ServerKeyFile = "server-key.pem"
)

// Permissions of what Init and EnsureDev write.
const (
	dirPerm  fs.FileMode = 0o700
	keyPerm  fs.FileMode = 0o600
	certPerm fs.FileMode = 0o644
)

// RenewBefore is how close to its expiry EnsureDev renews a leaf certificate.
const RenewBefore = 30 * 24 * time.Hour

// Paths are the files of a development PKI.
type Paths struct {
	Dir       string
	CA        string // CA certificate: what devices and clients trust
	CAKey     string
	Server    string // server certificate, the gateway's --tls-cert
	ServerKey string
	Client    string // client certificate of DefaultClientID (or WithClientID's), see ClientFiles
	ClientKey string
}

// PathsIn returns the paths of the PKI files in dir, the client
// certificate's for DefaultClientID.
func PathsIn(dir string) Paths {
	p := Paths{
		Dir:       dir,
		CA:        filepath.Join(dir, CAFile),
		CAKey:     filepath.Join(dir, CAKeyFile),
		Server:    filepath.Join(dir, ServerFile),
		ServerKey: filepath.Join(dir, ServerKeyFile),
	}
	p.Client, p.ClientKey = ClientFiles(dir, DefaultClientID)
	return p
}

// ClientFiles returns where the client certificate and key of clientID live
// in dir: DIR/ID.pem and DIR/ID-key.pem. CheckClientFileID tells whether
// clientID can be named so.
func ClientFiles(dir, clientID string) (cert, key string) {
	return filepath.Join(dir, clientID+".pem"), filepath.Join(dir, clientID+"-key.pem")
}

// CheckClientFileID reports why a client certificate for clientID cannot be
// written as ClientFiles names it, or nil. A client id is a file name
// here: not empty, at most 200 bytes of printable UTF-8, no '/' or '\', not
// starting with '.', not ending in "-key" (that file is another id's key),
// and not "ca" or "server" (the CA's and the server's files).
func CheckClientFileID(clientID string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w %q: %s", ErrBadClientID, clientID, why)
	}
	switch {
	case clientID == "":
		return fmt.Errorf("%w: empty", ErrBadClientID)
	case len(clientID) > 200:
		return bad("longer than 200 bytes")
	case !utf8.ValidString(clientID):
		return bad("not UTF-8")
	case strings.ContainsAny(clientID, "/\\"):
		return bad("a '/' or '\\' cannot be in a file name")
	case strings.HasPrefix(clientID, "."):
		return bad("starts with '.'")
	case strings.HasSuffix(clientID, "-key"):
		return bad("ends in -key, the suffix of key files")
	case clientID == "ca" || clientID == "server":
		return bad("the name of the CA's or the server's files")
	}
	for _, r := range clientID {
		if !unicode.IsPrint(r) || r == ' ' {
			return bad("a space or a control character")
		}
	}
	return nil
}

// Option adjusts Init.
type Option func(*options)

type options struct {
	clientID  string
	overwrite bool
	now       func() time.Time
}

// WithClientID names the client id of the client certificate (default
// DefaultClientID).
func WithClientID(id string) Option {
	return func(o *options) { o.clientID = id }
}

// WithOverwrite lets Init replace an existing CA. Without it Init refuses, so
// a CA that devices already trust is not lost by accident.
func WithOverwrite() Option {
	return func(o *options) { o.overwrite = true }
}

// Init writes a new CA, a server certificate for hosts and a client
// certificate into dir, creating dir (0700) when missing. Hosts are host
// names or IP addresses; localhost, 127.0.0.1 and ::1 are always added. Init
// returns an error wrapping fs.ErrExist when dir already holds a CA, unless
// WithOverwrite is given.
func Init(dir string, hosts []string, opts ...Option) (Paths, error) {
	o := options{clientID: DefaultClientID, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	p := PathsIn(dir)
	if _, _, err := sanHosts(hosts); err != nil {
		return p, err
	}
	if err := CheckClientFileID(o.clientID); err != nil {
		return p, err
	}
	p.Client, p.ClientKey = ClientFiles(dir, o.clientID)
	if !o.overwrite {
		for _, f := range []string{p.CA, p.CAKey} {
			if _, err := os.Stat(f); err == nil {
				return p, fmt.Errorf("certs: %s: %w (remove it to make a new CA)", f, fs.ErrExist)
			}
		}
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return p, fmt.Errorf("certs: %w", err)
	}
	now := o.now()
	ca, err := newAuthority(now)
	if err != nil {
		return p, err
	}
	caKeyPEM, err := encodeKey(ca.key)
	if err != nil {
		return p, err
	}
	if err := writePair(p.CA, p.CAKey, leaf{certPEM: encodeCert(ca.cert.Raw), keyPEM: caKeyPEM}); err != nil {
		return p, err
	}
	if err := writeServer(p, ca, hosts, now); err != nil {
		return p, err
	}
	if err := writeClient(dir, ca, o.clientID, now); err != nil {
		return p, err
	}
	return p, nil
}

// EnsureDev makes sure dir holds a development PKI whose server certificate
// names hosts (plus the loopback names), and returns its paths. On first use
// it writes everything as Init does. Afterwards it reuses the CA and writes
// only what is missing, unreadable, not signed by that CA, within RenewBefore
// of expiry, or (for the server certificate) not naming every host; created
// reports whether any file was written. A CA that is half there, unreadable
// or expired is an error: EnsureDev never replaces a CA by itself.
func EnsureDev(dir string, hosts []string) (Paths, bool, error) {
	return ensureDev(dir, hosts, time.Now())
}

func ensureDev(dir string, hosts []string, now time.Time) (Paths, bool, error) {
	p := PathsIn(dir)
	if _, _, err := sanHosts(hosts); err != nil {
		return p, false, err
	}
	caPEM, errCert := os.ReadFile(p.CA)
	caKeyPEM, errKey := os.ReadFile(p.CAKey)
	if errors.Is(errCert, fs.ErrNotExist) && errors.Is(errKey, fs.ErrNotExist) {
		if _, err := Init(dir, hosts, func(o *options) { o.now = func() time.Time { return now } }); err != nil {
			return p, false, err
		}
		return p, true, nil
	}
	if err := errors.Join(errCert, errKey); err != nil {
		return p, false, fmt.Errorf("certs: development CA in %s: %w", dir, err)
	}
	ca, err := parseAuthority(caPEM, caKeyPEM)
	if err != nil {
		return p, false, fmt.Errorf("certs: development CA in %s: %w", dir, err)
	}
	if !now.Before(ca.cert.NotAfter) {
		return p, false, fmt.Errorf("certs: development CA %s expired on %s; remove %s and %s to make a new one",
			p.CA, ca.cert.NotAfter.Format(time.DateOnly), p.CA, p.CAKey)
	}
	created := false
	if !usable(p.Server, p.ServerKey, ca, x509.ExtKeyUsageServerAuth, hosts, now) {
		if err := writeServer(p, ca, hosts, now); err != nil {
			return p, false, err
		}
		created = true
	}
	if !usable(p.Client, p.ClientKey, ca, x509.ExtKeyUsageClientAuth, nil, now) {
		if err := writeClient(dir, ca, DefaultClientID, now); err != nil {
			return p, created, err
		}
		created = true
	}
	return p, created, nil
}

// usable reports whether the pair in certFile and keyFile loads, chains to
// ca for usage, is not within RenewBefore of expiry, and, for a server
// certificate, names every host and the loopback names.
func usable(certFile, keyFile string, ca authority, usage x509.ExtKeyUsage, hosts []string, now time.Time) bool {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return false
	}
	cert := pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return false
		}
	}
	if cert.NotAfter.Sub(now) < RenewBefore {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return false
	}
	if usage != x509.ExtKeyUsageServerAuth {
		return true
	}
	dns, ips, err := sanHosts(hosts)
	if err != nil {
		return false
	}
	for _, name := range dns {
		if cert.VerifyHostname(name) != nil {
			return false
		}
	}
	for _, ip := range ips {
		if cert.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	return true
}

func writeServer(p Paths, ca authority, hosts []string, now time.Time) error {
	l, err := ca.issueServer(hosts, now)
	if err != nil {
		return err
	}
	return writePair(p.Server, p.ServerKey, l)
}

// ErrBadClientID reports a client id that cannot name certificate files.
var ErrBadClientID = errors.New("certs: bad client id")

// ErrNoCA reports a directory without a CA to issue from.
var ErrNoCA = errors.New("certs: no CA")

// IssueClients writes a client certificate and key for each client id into
// dir, as ClientFiles names them, signed by the CA in dir (ca.pem and
// ca-key.pem, as Init or a gateway's first start wrote them). Each
// certificate carries the subject common name ID and the URI SAN
// urn:dualgate:client:ID. It checks every id and the CA before it writes
// anything; an existing certificate is an error wrapping fs.ErrExist unless
// WithOverwrite is given. It returns the certificate files written, in the
// order of ids.
func IssueClients(dir string, ids []string, opts ...Option) ([]string, error) {
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if len(ids) == 0 {
		return nil, errors.New("certs: no client id given")
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if err := CheckClientFileID(id); err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, fmt.Errorf("%w %q: given twice", ErrBadClientID, id)
		}
		seen[id] = true
		if cert, _ := ClientFiles(dir, id); !o.overwrite {
			if _, err := os.Stat(cert); err == nil {
				return nil, fmt.Errorf("certs: %s: %w (give --force to issue a new one)", cert, fs.ErrExist)
			}
		}
	}
	p := PathsIn(dir)
	caPEM, errCert := os.ReadFile(p.CA)
	caKeyPEM, errKey := os.ReadFile(p.CAKey)
	if err := errors.Join(errCert, errKey); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s: want %s and %s (dualgate certs init, or a gateway's first start, writes them): %w",
				ErrNoCA, dir, CAFile, CAKeyFile, err)
		}
		return nil, fmt.Errorf("certs: CA in %s: %w", dir, err)
	}
	ca, err := parseAuthority(caPEM, caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("certs: CA in %s: %w", dir, err)
	}
	now := o.now()
	if !now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("certs: CA %s expired on %s", p.CA, ca.cert.NotAfter.Format(time.DateOnly))
	}
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if err := writeClient(dir, ca, id, now); err != nil {
			return out, err
		}
		cert, _ := ClientFiles(dir, id)
		out = append(out, cert)
	}
	return out, nil
}

func writeClient(dir string, ca authority, clientID string, now time.Time) error {
	l, err := ca.issueClient(clientID, now)
	if err != nil {
		return err
	}
	cert, key := ClientFiles(dir, clientID)
	return writePair(cert, key, l)
}

// writePair writes the key first, so a certificate on disk never names a
// key that is not there yet.
func writePair(certFile, keyFile string, l leaf) error {
	if err := writeFile(keyFile, l.keyPEM, keyPerm); err != nil {
		return err
	}
	return writeFile(certFile, l.certPEM, certPerm)
}

// writeFile replaces name with data atomically: a temporary file in the same
// directory, synced, given perm, then renamed over name.
func writeFile(name string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	if err = os.Rename(f.Name(), name); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	return nil
}
