// Package registry answers "where is device D and how is it connected".
//
// A Registry maps a client id to the live connection Entry of that client:
// its transport mode (plain TCP or TLS), MQTT protocol level, remote address,
// connect time, last activity and an opaque Handle through which the gateway
// reaches the connection. It is the only shared mutable map of the gateway.
//
// # Sharding and locking
//
// The map is split into 256 shards chosen by an FNV-1a hash of the client id.
// Each shard is a Go map guarded by its own lock; a lock is held for one map
// operation and never while calling out (Range copies a shard before it calls
// its function). The number of entries per mode is kept in atomic counters so
// that [Registry.Len] and [Registry.CountByMode] cost O(1).
//
// # Takeover
//
// [Registry.Register] is atomic per client id: it installs the new entry and
// returns the one it replaced, so that exactly one caller learns of every
// replaced entry and closes that connection (MQTT session takeover,
// [MQTT-3.1.4-3]). [Registry.Unregister] removes an entry only while it is
// still the live one, so a connection that was taken over and closes late
// never removes its successor.
//
// # Entries
//
// An Entry is immutable once registered, except for its last-activity time
// ([Entry.Touch], [Entry.LastActive]), which is atomic. A connection that
// changes mode reconnects and registers a new Entry; a mode never changes in
// place.
package registry
