package tlsmux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Session ticket key file limits.
const (
	// MaxTicketKeys bounds a key file: a resumption may try every key.
	MaxTicketKeys = 16
	// DefaultTicketKeysKept is how many keys a rotation keeps by default:
	// with hourly rotation a ticket stays usable for two to three hours.
	DefaultTicketKeysKept = 3
)

// ErrBadTicketKeys reports a malformed session ticket key file.
var ErrBadTicketKeys = errors.New("tlsmux: bad session ticket key file")

// TicketKeys holds session ticket keys loaded from a file shared by the
// gateways behind one load balancer, so a ticket issued by one gateway
// resumes on another, and keeps the tls.Configs it was applied to up to date.
//
// The file holds one 32-byte key per line in hex (64 digits), newest first;
// blank lines and lines starting with # are ignored. The first key encrypts
// new tickets, every key decrypts. Each rotation puts a new key first and
// drops the oldest beyond a count. One gateway (Run with a Rotate period) or
// an outside job rotates a shared file; the other gateways only re-read it.
// The file is a secret: keep it mode 0600.
//
// Its methods are safe for concurrent use.
type TicketKeys struct {
	path string
	log  *zap.Logger

	mu      sync.Mutex // guards the fields below
	keys    [][32]byte
	configs []*tls.Config
	seen    fileStamps // the file as of the last load attempt
}

// TicketSchedule says what Run does.
type TicketSchedule struct {
	// Poll is how often the file is checked for changes
	// (DefaultWatchInterval if not positive).
	Poll time.Duration
	// Rotate, when positive, makes this process add a new key to the file
	// every Rotate. Zero: only re-read the file.
	Rotate time.Duration
	// Keep is the number of keys a rotation keeps (DefaultTicketKeysKept if
	// not positive).
	Keep int
}

// LoadTicketKeys reads the key file at path. A nil logger logs nothing.
func LoadTicketKeys(path string, logger *zap.Logger) (*TicketKeys, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	k := &TicketKeys{path: path, log: logger}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.loadLocked(); err != nil {
		return nil, err
	}
	return k, nil
}

// Keys returns a copy of the current keys, newest first.
func (k *TicketKeys) Keys() [][32]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.keys)
}

// Apply sets the current keys on each config (tls.Config.SetSessionTicketKeys)
// and again whenever the keys change.
func (k *TicketKeys) Apply(cfgs ...*tls.Config) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, cfg := range cfgs {
		if cfg == nil || slices.Contains(k.configs, cfg) {
			continue
		}
		cfg.SetSessionTicketKeys(k.keys)
		k.configs = append(k.configs, cfg)
	}
}

// Reload reads the file again. On error the current keys stay.
func (k *TicketKeys) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.loadLocked()
}

// Rotate adds a new random key first in the file, keeps at most keep keys
// (DefaultTicketKeysKept if not positive) and applies them.
func (k *TicketKeys) Rotate(keep int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	keys, err := RotateTicketKeyFile(k.path, keep)
	if err != nil {
		return err
	}
	k.seen = statFiles(k.path)
	k.setLocked(keys)
	k.log.Info("tlsmux: session ticket keys rotated", zap.String("file", k.path), zap.Int("keys", len(keys)))
	return nil
}

// Run re-reads the file when it changes and, if sch.Rotate is positive,
// rotates it on schedule, until ctx is done. Errors are logged; the current
// keys stay in use.
func (k *TicketKeys) Run(ctx context.Context, sch TicketSchedule) {
	if sch.Poll <= 0 {
		sch.Poll = DefaultWatchInterval
	}
	poll := time.NewTicker(sch.Poll)
	defer poll.Stop()
	var rotate <-chan time.Time
	if sch.Rotate > 0 {
		t := time.NewTicker(sch.Rotate)
		defer t.Stop()
		rotate = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-rotate:
			if err := k.Rotate(sch.Keep); err != nil {
				k.log.Error("tlsmux: session ticket key rotation failed", zap.String("file", k.path), zap.Error(err))
			}
		case <-poll.C:
			k.mu.Lock()
			if !statFiles(k.path).same(k.seen) {
				if err := k.loadLocked(); err != nil {
					k.log.Error("tlsmux: changed session ticket key file does not load; keeping the current keys",
						zap.String("file", k.path), zap.Error(err))
				}
			}
			k.mu.Unlock()
		}
	}
}

// loadLocked reads the file and applies its keys. k.mu is held.
func (k *TicketKeys) loadLocked() error {
	k.seen = statFiles(k.path)
	if st := k.seen[0]; st.info != nil && st.info.Mode().Perm()&0o077 != 0 {
		k.log.Warn("tlsmux: session ticket key file is readable by others; make it 0600",
			zap.String("file", k.path), zap.Stringer("mode", st.info.Mode().Perm()))
	}
	data, err := os.ReadFile(k.path)
	if err != nil {
		return fmt.Errorf("tlsmux: session ticket keys: %w", err)
	}
	keys, err := parseTicketKeys(data)
	if err != nil {
		return fmt.Errorf("%s: %w", k.path, err)
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: %s holds no key", ErrBadTicketKeys, k.path)
	}
	changed := k.keys != nil && !slices.Equal(keys, k.keys)
	k.setLocked(keys)
	if changed {
		k.log.Info("tlsmux: session ticket keys reloaded", zap.String("file", k.path), zap.Int("keys", len(keys)))
	}
	return nil
}

func (k *TicketKeys) setLocked(keys [][32]byte) {
	k.keys = keys
	for _, cfg := range k.configs {
		cfg.SetSessionTicketKeys(keys)
	}
}

// RotateTicketKeyFile puts a new random key first in the key file at path,
// creating the file (0600) if it does not exist, keeps at most keep keys
// (DefaultTicketKeysKept if not positive), and returns them. The file is
// replaced atomically. A malformed file is left alone and is an error.
func RotateTicketKeyFile(path string, keep int) ([][32]byte, error) {
	if keep <= 0 {
		keep = DefaultTicketKeysKept
	}
	keep = min(keep, MaxTicketKeys)
	var old [][32]byte
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("tlsmux: session ticket keys: %w", err)
	default:
		if old, err = parseTicketKeys(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	var fresh [32]byte
	if _, err := rand.Read(fresh[:]); err != nil {
		return nil, fmt.Errorf("tlsmux: new session ticket key: %w", err)
	}
	keys := append([][32]byte{fresh}, old...)
	keys = keys[:min(len(keys), keep)]
	if err := replaceFile(path, formatTicketKeys(keys)); err != nil {
		return nil, err
	}
	return keys, nil
}

// parseTicketKeys parses the key file format.
func parseTicketKeys(data []byte) ([][32]byte, error) {
	var keys [][32]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		var key [32]byte
		if len(text) != hex.EncodedLen(len(key)) {
			return nil, fmt.Errorf("%w: line %d: want %d hex digits, have %d", ErrBadTicketKeys, line, hex.EncodedLen(len(key)), len(text))
		}
		if _, err := hex.Decode(key[:], []byte(text)); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadTicketKeys, line, err)
		}
		if len(keys) == MaxTicketKeys {
			return nil, fmt.Errorf("%w: more than %d keys", ErrBadTicketKeys, MaxTicketKeys)
		}
		keys = append(keys, key)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadTicketKeys, err)
	}
	return keys, nil
}

// formatTicketKeys writes keys in the key file format.
func formatTicketKeys(keys [][32]byte) []byte {
	var b bytes.Buffer
	b.WriteString("# dualgate session ticket keys, newest first. Secret: keep this file 0600.\n")
	for _, k := range keys {
		b.WriteString(hex.EncodeToString(k[:]))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// replaceFile writes data to a 0600 temporary file next to path and renames
// it over path.
func replaceFile(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("tlsmux: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("tlsmux: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("tlsmux: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("tlsmux: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("tlsmux: %w", err)
	}
	return nil
}
