package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Byte offsets of the fields read from Linux struct tcp_info
// (include/uapi/linux/tcp.h). The kernel returns as much of the struct as
// it knows and the caller asked for, so older kernels give a shorter buffer.
const (
	tcpiTotalRetrans  = 100 // __u32 tcpi_total_retrans
	tcpiBytesAcked    = 120 // __u64 tcpi_bytes_acked (Linux 4.1)
	tcpiBytesReceived = 128 // __u64 tcpi_bytes_received (Linux 4.1)
	tcpiSegsOut       = 136 // __u32 tcpi_segs_out (Linux 4.2)
	tcpiSegsIn        = 140 // __u32 tcpi_segs_in (Linux 4.2)
	tcpiDataSegsIn    = 152 // __u32 tcpi_data_segs_in (Linux 4.6)
	tcpiDataSegsOut   = 156 // __u32 tcpi_data_segs_out (Linux 4.6)
	tcpiBytesSent     = 200 // __u64 tcpi_bytes_sent (Linux 4.19)
	tcpiBytesRetrans  = 208 // __u64 tcpi_bytes_retrans (Linux 4.19)

	tcpInfoMinLen = tcpiSegsIn + 4
	tcpInfoBufLen = 512
)

// ErrShortTCPInfo is returned for a tcp_info buffer too short to hold the
// segment counters (a kernel older than Linux 4.2).
var ErrShortTCPInfo = errors.New("bench: tcp_info too short")

// TCPCounters are the kernel's byte and segment counters of one TCP socket,
// from its own point of view ("out" is what it sent). A connecting socket
// counts the whole connection from its SYN; an accepted socket's counters
// start at the SYN it received and miss the SYN-ACK it answered with, so
// measure traffic on the connecting (device) side.
type TCPCounters struct {
	// BytesAcked is the payload the peer acknowledged; Linux counts the SYN
	// and the FIN as one byte each.
	BytesAcked uint64 `json:"bytes_acked"`
	// BytesReceived is the payload received in order.
	BytesReceived uint64 `json:"bytes_received"`
	// BytesSent is the payload sent, retransmissions included; zero when
	// HasBytesSent is false (kernel older than 4.19).
	BytesSent uint64 `json:"bytes_sent"`
	// BytesRetrans is the payload retransmitted.
	BytesRetrans uint64 `json:"bytes_retrans"`
	// SegsOut and SegsIn count every segment, pure ACKs and the handshake
	// included.
	SegsOut uint32 `json:"segs_out"`
	SegsIn  uint32 `json:"segs_in"`
	// DataSegsOut and DataSegsIn count the segments that carried payload
	// (pure ACKs not included); zero when HasDataSegs is false (kernel
	// older than 4.6).
	DataSegsOut uint32 `json:"data_segs_out"`
	DataSegsIn  uint32 `json:"data_segs_in"`
	HasDataSegs bool   `json:"has_data_segs"`
	// TotalRetrans counts retransmitted segments.
	TotalRetrans uint32 `json:"total_retrans"`
	HasBytesSent bool   `json:"has_bytes_sent"`
}

// ParseTCPInfo decodes the counters from the raw bytes of struct tcp_info as
// returned by getsockopt(IPPROTO_TCP, TCP_INFO) on a little-endian host.
func ParseTCPInfo(raw []byte) (TCPCounters, error) {
	if len(raw) < tcpInfoMinLen {
		return TCPCounters{}, fmt.Errorf("%w: %d bytes, need %d", ErrShortTCPInfo, len(raw), tcpInfoMinLen)
	}
	le := binary.LittleEndian
	c := TCPCounters{
		TotalRetrans:  le.Uint32(raw[tcpiTotalRetrans:]),
		BytesAcked:    le.Uint64(raw[tcpiBytesAcked:]),
		BytesReceived: le.Uint64(raw[tcpiBytesReceived:]),
		SegsOut:       le.Uint32(raw[tcpiSegsOut:]),
		SegsIn:        le.Uint32(raw[tcpiSegsIn:]),
	}
	if len(raw) >= tcpiDataSegsOut+4 {
		c.DataSegsIn = le.Uint32(raw[tcpiDataSegsIn:])
		c.DataSegsOut = le.Uint32(raw[tcpiDataSegsOut:])
		c.HasDataSegs = true
	}
	if len(raw) >= tcpiBytesRetrans+8 {
		c.BytesSent = le.Uint64(raw[tcpiBytesSent:])
		c.BytesRetrans = le.Uint64(raw[tcpiBytesRetrans:])
		c.HasBytesSent = true
	}
	return c, nil
}

// ReadTCPInfoRaw returns the raw struct tcp_info of socket fd, as long as
// the running kernel makes it.
func ReadTCPInfoRaw(fd int) ([]byte, error) {
	buf := make([]byte, tcpInfoBufLen)
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("bench: getsockopt TCP_INFO: %w", errno)
	}
	return buf[:n], nil
}

// ReadTCPCountersFD reads the counters of socket fd.
func ReadTCPCountersFD(fd int) (TCPCounters, error) {
	raw, err := ReadTCPInfoRaw(fd)
	if err != nil {
		return TCPCounters{}, err
	}
	return ParseTCPInfo(raw)
}

// ReadTCPCounters reads the counters of a connection such as *net.TCPConn.
func ReadTCPCounters(c syscall.Conn) (TCPCounters, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return TCPCounters{}, fmt.Errorf("bench: tcp counters: %w", err)
	}
	var (
		out  TCPCounters
		rerr error
	)
	if err := rc.Control(func(fd uintptr) { out, rerr = ReadTCPCountersFD(int(fd)) }); err != nil {
		return TCPCounters{}, fmt.Errorf("bench: tcp counters: %w", err)
	}
	return out, rerr
}

// Sub returns the counters accumulated since before.
func (c TCPCounters) Sub(before TCPCounters) TCPCounters {
	return TCPCounters{
		BytesAcked:    c.BytesAcked - before.BytesAcked,
		BytesReceived: c.BytesReceived - before.BytesReceived,
		BytesSent:     c.BytesSent - before.BytesSent,
		BytesRetrans:  c.BytesRetrans - before.BytesRetrans,
		SegsOut:       c.SegsOut - before.SegsOut,
		SegsIn:        c.SegsIn - before.SegsIn,
		DataSegsOut:   c.DataSegsOut - before.DataSegsOut,
		DataSegsIn:    c.DataSegsIn - before.DataSegsIn,
		HasDataSegs:   c.HasDataSegs && before.HasDataSegs,
		TotalRetrans:  c.TotalRetrans - before.TotalRetrans,
		HasBytesSent:  c.HasBytesSent && before.HasBytesSent,
	}
}

// WireModel estimates IP-level bytes from TCP payload and segment counts.
type WireModel struct {
	// HeaderBytes is the size of the IP and TCP headers of one segment:
	// 20 (IPv4) + 20 (TCP) + 12 (timestamps option, padded) = 52 on Linux
	// loopback, where timestamps are on by default; 40 without timestamps,
	// 72 over IPv6 with timestamps.
	HeaderBytes int `json:"header_bytes"`
	// SYNExtraBytes is what a SYN or SYN-ACK carries on top of HeaderBytes
	// (MSS, SACK-permitted and window scale: 8 more bytes on Linux). It is
	// added once per direction when the counters include the handshake.
	SYNExtraBytes int `json:"syn_extra_bytes"`
}

// LoopbackWireModel is the model of IPv4 on Linux with TCP timestamps.
func LoopbackWireModel() WireModel {
	return WireModel{HeaderBytes: 52, SYNExtraBytes: 8}
}

// WireBytes is the estimated IP-level traffic of one socket.
type WireBytes struct {
	PayloadOut uint64 `json:"payload_out"`
	PayloadIn  uint64 `json:"payload_in"`
	// Out and In are IP-level bytes: payload plus headers.
	Out uint64 `json:"out"`
	In  uint64 `json:"in"`
}

// Total is both directions together.
func (w WireBytes) Total() uint64 { return w.Out + w.In }

// Bytes estimates the IP-level bytes of counters c. With handshake set, c
// covers the connection from its SYN, and the SYN options are counted once
// per direction.
func (m WireModel) Bytes(c TCPCounters, handshake bool) WireBytes {
	out := c.BytesSent
	if !c.HasBytesSent {
		out = c.BytesAcked + c.BytesRetrans
	}
	w := WireBytes{
		PayloadOut: out,
		PayloadIn:  c.BytesReceived,
		Out:        out + uint64(c.SegsOut)*uint64(m.HeaderBytes),
		In:         c.BytesReceived + uint64(c.SegsIn)*uint64(m.HeaderBytes),
	}
	if handshake {
		w.Out += uint64(m.SYNExtraBytes)
		w.In += uint64(m.SYNExtraBytes)
	}
	return w
}
