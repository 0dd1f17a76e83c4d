package tlsmux

import (
	"fmt"
	"slices"

	"go.uber.org/zap"
)

// NewTicketKeys returns session ticket keys kept by the caller rather than
// read from a file (a cluster keeps them in its shared store and calls Set
// when they change): the first key encrypts new tickets, every key
// decrypts. Reload, Rotate and Run are for file-backed keys and must not be
// called on these.
func NewTicketKeys(keys [][32]byte, logger *zap.Logger) (*TicketKeys, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	k := &TicketKeys{log: logger}
	if err := k.Set(keys); err != nil {
		return nil, err
	}
	return k, nil
}

// Set replaces the keys, newest-to-encrypt first, and applies them to every
// config given to Apply.
func (k *TicketKeys) Set(keys [][32]byte) error {
	if len(keys) == 0 || len(keys) > MaxTicketKeys {
		return fmt.Errorf("%w: %d keys, want 1 to %d", ErrBadTicketKeys, len(keys), MaxTicketKeys)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if !slices.Equal(keys, k.keys) {
		k.setLocked(slices.Clone(keys))
	}
	return nil
}
