package tlsmux

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DefaultWatchInterval is how often Watch looks at the files when given no
// interval.
const DefaultWatchInterval = 5 * time.Second

// CertReloader holds the server certificate loaded from a certificate and a
// key file, and replaces it when asked (Reload, on SIGHUP) or when the files
// change (Watch). Connections keep the certificate they were made with; a
// new connection gets the current one. Its methods are safe for concurrent
// use.
type CertReloader struct {
	certFile, keyFile string
	log               *zap.Logger
	cert              atomic.Pointer[tls.Certificate]

	mu    sync.Mutex // serialises loads; guards seen
	seen  fileStamps // the files as of the last load attempt
	clock func() time.Time
}

// NewCertReloader loads the pair from certFile and keyFile. A nil logger
// logs nothing.
func NewCertReloader(certFile, keyFile string, logger *zap.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: logger, clock: time.Now}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.loadLocked(); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate returns the current certificate; it is meant for
// tls.Config.GetCertificate.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// Certificate returns the current certificate (Leaf set). The caller must
// not modify it.
func (r *CertReloader) Certificate() *tls.Certificate {
	return r.cert.Load()
}

// Reload loads the files again. When they do not hold a valid, unexpired
// certificate and matching key, Reload keeps the current certificate and
// returns the error.
func (r *CertReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadLocked()
}

// Watch checks the files every interval (DefaultWatchInterval if not
// positive) and reloads when either changed, until ctx is done. A change that
// does not load is logged once and retried at the next change.
func (r *CertReloader) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		if now := statFiles(r.certFile, r.keyFile); !now.same(r.seen) {
			if err := r.loadLocked(); err != nil {
				r.log.Error("tlsmux: changed certificate files do not load; keeping the current certificate",
					zap.String("cert", r.certFile), zap.Error(err))
			}
		}
		r.mu.Unlock()
	}
}

// loadLocked loads the pair and, if it is good, makes it current. r.mu is
// held.
func (r *CertReloader) loadLocked() error {
	r.seen = statFiles(r.certFile, r.keyFile)
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tlsmux: load certificate %s: %w", r.certFile, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("tlsmux: parse certificate %s: %w", r.certFile, err)
		}
	}
	if now := r.clock(); now.After(pair.Leaf.NotAfter) {
		return fmt.Errorf("tlsmux: certificate %s expired on %s", r.certFile, pair.Leaf.NotAfter.Format(time.RFC3339))
	}
	old := r.cert.Swap(&pair)
	if old != nil {
		r.log.Info("tlsmux: server certificate reloaded",
			zap.String("cert", r.certFile),
			zap.String("serial", pair.Leaf.SerialNumber.Text(16)),
			zap.Time("not_after", pair.Leaf.NotAfter))
	}
	return nil
}

// fileStamp identifies one version of a file: a rename puts a different file
// in place, a rewrite changes size or modification time.
type fileStamp struct {
	info fs.FileInfo // nil when the file could not be read
	err  error
}

// fileStamps are the stamps of a list of files.
type fileStamps []fileStamp

func statFiles(names ...string) fileStamps {
	s := make(fileStamps, len(names))
	for i, name := range names {
		s[i].info, s[i].err = os.Stat(name)
	}
	return s
}

func (s fileStamps) same(o fileStamps) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if !s[i].same(o[i]) {
			return false
		}
	}
	return true
}

func (s fileStamp) same(o fileStamp) bool {
	if s.info == nil || o.info == nil {
		return s.info == nil && o.info == nil && errors.Is(s.err, fs.ErrNotExist) == errors.Is(o.err, fs.ErrNotExist)
	}
	return os.SameFile(s.info, o.info) && s.info.Size() == o.info.Size() && s.info.ModTime().Equal(o.info.ModTime())
}
