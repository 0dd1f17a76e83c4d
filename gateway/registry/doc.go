// Package registry answers "where is device D and how is it connected".
//
// A Registry maps a client id to the live connection of that client. The
// connection's state embeds an Entry: its transport mode (plain TCP or TLS),
// MQTT protocol level, connect time and last activity. The registry holds
// one pointer per connection and allocates nothing per connection: an idle
// fleet is the product, and every byte per connection counts. It is the
// only shared mutable map of the gateway.
//
// # Sharding and locking
//
// The set is split into 256 shards chosen by a seeded hash of the client id.
// Each shard is an open-addressed table guarded by its own lock; a lock is
// held for one operation and never while calling out (Range copies a shard
// before it calls its function). The number of entries per mode is kept in atomic counters so
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
// changes mode reconnects and registers anew; a mode never changes in place.
//
// # Listing
//
// [Registry.Scan] pages through the live connections in the order of the
// hash of their client id (then the id), resuming from a [Position]: a
// page reads the shards it spans, sorting one shard's entries at most, not
// the whole registry, and a connection live for the whole listing is
// returned exactly once however the tables change between pages. The hash
// seed is the process's, so a Position is good for the process that made it.
package registry
