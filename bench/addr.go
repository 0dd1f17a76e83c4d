package bench

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// PerSourceAddr is how many connections the automatic spreading puts on one
// source address: below the ~28,000 ephemeral ports Linux offers per source
// address and destination (net.ipv4.ip_local_port_range 32768-60999).
const PerSourceAddr = 20000

// maxRangeAddrs bounds one address range, so a typo cannot allocate millions.
const maxRangeAddrs = 65536

// ParseAddrRanges parses a comma-separated list of addresses and inclusive
// ranges, e.g. "127.0.0.2-127.0.0.20,127.0.1.1". An empty spec is no
// address. Ranges of IPv6 addresses work as well.
func ParseAddrRanges(spec string) ([]netip.Addr, error) {
	var out []netip.Addr
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("bench: source address %q: %w", part, err)
		}
		if !isRange {
			out = append(out, first)
			continue
		}
		last, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil {
			return nil, fmt.Errorf("bench: source address range %q: %w", part, err)
		}
		if first.BitLen() != last.BitLen() || last.Less(first) {
			return nil, fmt.Errorf("bench: source address range %q: end before start or mixed families", part)
		}
		n := 0
		for a := first; ; a = a.Next() {
			if n++; n > maxRangeAddrs {
				return nil, fmt.Errorf("bench: source address range %q: more than %d addresses", part, maxRangeAddrs)
			}
			out = append(out, a)
			if a == last {
				break
			}
		}
	}
	return out, nil
}

// AutoSourceAddrs picks source addresses for n connections to host: none
// (let the kernel choose) unless host is an IPv4 loopback address and n
// exceeds PerSourceAddr, in which case 127.0.0.2, 127.0.0.3, ... are used,
// one per PerSourceAddr connections.
func AutoSourceAddrs(host string, n int) []netip.Addr {
	if n <= PerSourceAddr || !isLoopback4(host) {
		return nil
	}
	k := (n + PerSourceAddr - 1) / PerSourceAddr
	out := make([]netip.Addr, 0, k)
	a := netip.AddrFrom4([4]byte{127, 0, 0, 2})
	for range k {
		out = append(out, a)
		a = a.Next()
	}
	return out
}

func isLoopback4(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Is4() && a.IsLoopback()
}

// sourceFor returns the source address of the connection with global index
// i, or nil when no source address is set.
func sourceFor(addrs []netip.Addr, i int) *net.TCPAddr {
	if len(addrs) == 0 {
		return nil
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(addrs[i%len(addrs)], 0))
}
