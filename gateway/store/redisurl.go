package store

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Timeouts of a client made by NewRedisClient, unless its URL sets them
// (dial_timeout, read_timeout, write_timeout): a Redis that hangs makes a
// call fail within about a second instead of holding the caller.
const (
	redisDialTimeout = time.Second
	redisIOTimeout   = time.Second
)

// NewRedisClient returns a client for a Redis URL:
//
//	redis://[user:pass@]host:port/db             one server
//	rediss://[user:pass@]host:port/db            the same over TLS
//	redis+sentinel://[user:pass@]host:port/db?master_name=NAME[&addr=host:port...]
//	rediss+sentinel://...                        Sentinel, primary over TLS
//	redis+cluster://[user:pass@]host:port[?addr=host:port...]
//	rediss+cluster://...                         Redis Cluster, over TLS
//
// With a Redis Cluster, host:port and each addr are seed nodes (any node of
// the cluster: the client learns the others from it, as go-redis'
// ParseClusterURL); there is no database number (a path other than "/" or
// "/0" is refused).
// With Sentinel, host:port and each addr are sentinels and the user and
// password those of the sentinels; the primary's go in the username and
// password query parameters. Other query parameters are go-redis' own
// (ParseURL, ParseFailoverURL): dial_timeout, pool_size...
// Commands are never retried by the client: a Lua script whose answer was
// lost may have run, and running it again would not be the same call.
//
// waitTimeout is the longest WAIT the store will send
// (RedisOptions.WaitTimeout, or 0): the read timeout is made longer.
func NewRedisClient(rawURL string, waitTimeout time.Duration) (redis.UniversalClient, error) {
	readTimeout := max(redisIOTimeout, waitTimeout+redisIOTimeout/2)
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	q := u.Query()
	scheme, sentinel := strings.CutSuffix(u.Scheme, "+sentinel")
	scheme, cluster := strings.CutSuffix(scheme, "+cluster")
	if scheme != "redis" && scheme != "rediss" {
		return nil, fmt.Errorf("redis url %q: want redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://", redact(u))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("redis url %q: no host:port", redact(u))
	}
	if cluster {
		if p := u.Path; p != "" && p != "/" && p != "/0" {
			return nil, fmt.Errorf("redis url %q: a Redis Cluster has one database: no path", redact(u))
		}
		v := *u
		v.Scheme, v.Path = scheme, ""
		o, err := redis.ParseClusterURL(v.String())
		if err != nil {
			return nil, fmt.Errorf("redis url %q: %w", redact(u), err)
		}
		o.DialTimeout = or(o.DialTimeout, redisDialTimeout, q.Has("dial_timeout"))
		o.ReadTimeout = or(o.ReadTimeout, readTimeout, q.Has("read_timeout"))
		o.WriteTimeout = or(o.WriteTimeout, redisIOTimeout, q.Has("write_timeout"))
		if !q.Has("max_retries") {
			o.MaxRetries = -1
		}
		o.DisableIdentity = true
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		return redis.NewClusterClient(o), nil
	}
	if sentinel {
		if q.Get("master_name") == "" {
			return nil, fmt.Errorf("redis url %q: Sentinel needs ?master_name=NAME", redact(u))
		}
		v := *u
		v.Scheme = scheme
		o, err := redis.ParseFailoverURL(v.String())
		if err != nil {
			return nil, fmt.Errorf("redis url %q: %w", redact(u), err)
		}
		o.DialTimeout = or(o.DialTimeout, redisDialTimeout, q.Has("dial_timeout"))
		o.ReadTimeout = or(o.ReadTimeout, readTimeout, q.Has("read_timeout"))
		o.WriteTimeout = or(o.WriteTimeout, redisIOTimeout, q.Has("write_timeout"))
		if !q.Has("max_retries") {
			o.MaxRetries = -1
		}
		o.DisableIdentity = true
		return redis.NewFailoverClient(o), nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url %q: %w", redact(u), err)
	}
	o.DialTimeout = or(o.DialTimeout, redisDialTimeout, q.Has("dial_timeout"))
	o.ReadTimeout = or(o.ReadTimeout, readTimeout, q.Has("read_timeout"))
	o.WriteTimeout = or(o.WriteTimeout, redisIOTimeout, q.Has("write_timeout"))
	if !q.Has("max_retries") {
		o.MaxRetries = -1
	}
	o.DisableIdentity = true
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(o), nil
}

// CheckRedisURL reports what is wrong with a Redis URL, without connecting.
func CheckRedisURL(rawURL string) error {
	c, err := NewRedisClient(rawURL, 0)
	if err != nil {
		return err
	}
	return c.Close()
}

func or(v, def time.Duration, set bool) time.Duration {
	if set {
		return v
	}
	return def
}

// redact is u without its password, for messages.
func redact(u *url.URL) string { return u.Redacted() }
