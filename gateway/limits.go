package gateway

import (
	"hash/maphash"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sourceLimiter bounds the CONNECT rate per source address (the device's
// real address from the PROXY header when there is one). Limiters of
// addresses quiet for a while are dropped, so the map holds only the
// recently active.
type sourceLimiter struct {
	rate  rate.Limit
	burst int
	seed  maphash.Seed

	shards [64]sourceShard
}

type sourceShard struct {
	mu sync.Mutex // guards m
	m  map[string]*sourceEntry
}

type sourceEntry struct {
	lim  *rate.Limiter
	last time.Time
}

func newSourceLimiter(perSecond float64, burst int) *sourceLimiter {
	sl := &sourceLimiter{rate: rate.Limit(perSecond), burst: max(burst, 1), seed: maphash.MakeSeed()}
	for i := range sl.shards {
		sl.shards[i].m = make(map[string]*sourceEntry)
	}
	return sl
}

// Allow reports whether host may connect now.
func (sl *sourceLimiter) Allow(host string, now time.Time) bool {
	sh := &sl.shards[maphash.String(sl.seed, host)%uint64(len(sl.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[host]
	if !ok {
		e = &sourceEntry{lim: rate.NewLimiter(sl.rate, sl.burst)}
		sh.m[host] = e
	}
	e.last = now
	return e.lim.AllowN(now, 1)
}

// forget drops the limiters of hosts not seen since before.
func (sl *sourceLimiter) forget(before time.Time) {
	for i := range sl.shards {
		sh := &sl.shards[i]
		sh.mu.Lock()
		for h, e := range sh.m {
			if e.last.Before(before) {
				delete(sh.m, h)
			}
		}
		sh.mu.Unlock()
	}
}
