package store

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

// Errors returned by a Store. Match them with errors.Is: they are wrapped
// with the detail of each case.
var (
	ErrNotFound      = errors.New("store: command not found")
	ErrExists        = errors.New("store: command id already exists")
	ErrFull          = errors.New("store: client has too many pending commands")
	ErrBadTransition = errors.New("store: transition not allowed")
	ErrInvalid       = errors.New("store: invalid command")
	ErrClosed        = errors.New("store: closed")
	ErrLocked        = errors.New("store: database file is locked by another process")
	ErrCorrupt       = errors.New("store: corrupt record")
	// ErrDamaged is a store file that is cut short or whose pages cannot
	// be read; ErrEmptyFile an existing store file of 0 bytes. Both name
	// the file and what to do.
	ErrDamaged   = errors.New("store: damaged file")
	ErrEmptyFile = errors.New("store: existing file is empty")
)

// Store keeps commands until they are delivered, expire or fail. Every
// method is safe for concurrent use. Commands passed in are copied, and
// commands returned are the caller's own.
type Store interface {
	// Put stores a new command. It is durable when Put returns. A command
	// without a status is put pending, and one without history gets the
	// first entry; both are filled in on c. Put fails with ErrInvalid for a
	// malformed command or one in a final status, ErrExists for a duplicate
	// id, and ErrFull when the client already has Limit non-final commands.
	Put(c *Command) error
	// Get returns the command with this id, or ErrNotFound.
	Get(id string) (*Command, error)
	// Pending returns the non-final commands of one client, oldest first.
	// Commands past their ExpiresAt stay until Expire marks them.
	Pending(clientID string) ([]*Command, error)
	// CountPending returns the number of non-final commands of one client.
	CountPending(clientID string) (int, error)
	// List returns one page of a client's commands in every status, final
	// ones until Prune deletes them, newest first (by CreatedAt, then ID,
	// both descending), at most limit of them, from the position cursor
	// ("" for the first page). next is the cursor of the following page,
	// "" after the last one. A cursor is a position, not a snapshot:
	// commands put after it was made, which sort before it, are not
	// listed, and a command present for the whole listing is listed
	// exactly once. It fails with ErrInvalid for a cursor it did not make
	// or a limit below 1.
	List(clientID, cursor string, limit int) (cmds []*Command, next string, err error)
	// Transition moves a command to another status at the given time and
	// returns it. It fails with ErrNotFound, or ErrBadTransition when the
	// state machine forbids the move. A move to sent adds an attempt; a move
	// to delivered sets DeliveredAt.
	Transition(id string, to Status, at time.Time, note string) (*Command, error)
	// Expire marks every non-final command with ExpiresAt at or before now
	// as expired and returns them, earliest expiry first.
	Expire(now time.Time) ([]*Command, error)
	// Stats counts commands by status, and the clients with non-final
	// commands.
	Stats() (Counts, error)
	// Prune deletes the final commands that finished before the given time
	// and returns how many it deleted.
	Prune(before time.Time) (int, error)
	// Clients returns the client ids with non-final commands, in byte order.
	Clients() ([]string, error)
	// HasOrigin reports whether a command with this Origin is in the
	// store, in any status: origins are forgotten with their commands,
	// by Prune.
	HasOrigin(origin string) (bool, error)
	// Close releases the store. Calls after Close fail with ErrClosed;
	// closing twice is harmless.
	Close() error
}

// Counts is a snapshot of the store.
type Counts struct {
	Pending   int
	Upgrading int
	Sent      int
	Delivered int
	Expired   int
	Failed    int
	Cancelled int
	// Clients is the number of clients with at least one non-final command.
	Clients int
}

// Of returns the count for one status.
func (c Counts) Of(s Status) int {
	switch s {
	case StatusPending:
		return c.Pending
	case StatusUpgrading:
		return c.Upgrading
	case StatusSent:
		return c.Sent
	case StatusDelivered:
		return c.Delivered
	case StatusExpired:
		return c.Expired
	case StatusFailed:
		return c.Failed
	case StatusCancelled:
		return c.Cancelled
	}
	return 0
}

// NonFinal returns the number of commands still to be delivered.
func (c Counts) NonFinal() int {
	return c.Pending + c.Upgrading + c.Sent
}

func (c *Counts) add(s Status, n int) {
	switch s {
	case StatusPending:
		c.Pending += n
	case StatusUpgrading:
		c.Upgrading += n
	case StatusSent:
		c.Sent += n
	case StatusDelivered:
		c.Delivered += n
	case StatusExpired:
		c.Expired += n
	case StatusFailed:
		c.Failed += n
	case StatusCancelled:
		c.Cancelled += n
	}
}

// Defaults of Options.
const (
	DefaultLimit   = 100
	DefaultTimeout = time.Second
)

// FileName is the name of the bbolt file in the data directory.
const FileName = "commands.db"

// Options configure a store. The zero value is usable.
type Options struct {
	// Limit is the most non-final commands one client may have; Put fails
	// with ErrFull beyond it. Default DefaultLimit.
	Limit int
	// Timeout is how long OpenBolt waits for the file lock held by another
	// process before failing with ErrLocked. Default DefaultTimeout.
	Timeout time.Duration
	// BatchDelay, when above zero, lets Bolt commit the Puts and
	// Transitions of concurrent callers in one transaction and one fsync,
	// waiting at most this long for company. Each call still returns only
	// after its own change is durable. It multiplies throughput under
	// concurrent load (a burst of API requests) and adds up to BatchDelay
	// to a lone call. Zero, the default: one transaction per call.
	BatchDelay time.Duration
	// Logger receives the store's few log lines. Default: none.
	Logger *zap.Logger
}

// withDefaults returns a copy of o with the defaults filled in.
func (o Options) withDefaults() Options {
	if o.Limit <= 0 {
		o.Limit = DefaultLimit
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}
