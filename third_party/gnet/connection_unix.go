// Copyright (c) 2019 The Gnet Authors. All rights reserved.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package gnet

import (
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/panjf2000/gnet/v2/pkg/bs"
	"github.com/panjf2000/gnet/v2/pkg/buffer/elastic"
	errorx "github.com/panjf2000/gnet/v2/pkg/errors"
	gio "github.com/panjf2000/gnet/v2/pkg/io"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	bsPool "github.com/panjf2000/gnet/v2/pkg/pool/byteslice"
	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/panjf2000/gnet/v2/pkg/socket"
)

type conn struct {
	connGFD                               // gnet file descriptor: gc_opt only (patch 16)
	fd             int                    // file descriptor
	ctx            any                    // user-defined context
	addrs          *connAddrs             // addresses; nil for a stream connection accepted by a listener
	loop           *eventloop             // connected event-loop
	outboundBuffer elastic.Buffer         // buffer for data that is eligible to be sent to the remote
	pollAttachment netpoll.PollAttachment // connection attachment for poller
	inboundBuffer  elastic.RingBuffer     // buffer for leftover data from the remote
	isDatagram     bool                   // UDP protocol
	isTCP          bool                   // TCP protocol
	opened         bool                   // connection opened event fired
	isEOF          bool                   // whether the connection has reached EOF
	readPaused     bool                   // PauseRead: not polled for reads
	flushQueued    bool                   // FlushSoon: in loop.flushing
}

// connAddrs are the addresses a connection keeps. A stream connection
// accepted by a listener keeps none: LocalAddr and RemoteAddr read them from
// the socket when asked, which saves their memory on every idle connection.
type connAddrs struct {
	remote     unix.Sockaddr // remote socket address
	localAddr  net.Addr      // local addr
	remoteAddr net.Addr      // remote addr
}

func newStreamConn(proto string, fd int, el *eventloop, sa unix.Sockaddr, localAddr, remoteAddr net.Addr) (c *conn) {
	c = &conn{
		fd:             fd,
		loop:           el,
		isTCP:          proto == "tcp",
		pollAttachment: netpoll.PollAttachment{FD: fd},
	}
	if sa != nil || localAddr != nil || remoteAddr != nil {
		c.addrs = &connAddrs{remote: sa, localAddr: localAddr, remoteAddr: remoteAddr}
	}
	c.attachPoller()
	c.outboundBuffer.Reset(el.engine.opts.WriteBufferCap)
	return
}

func newUDPConn(fd int, el *eventloop, localAddr net.Addr, sa unix.Sockaddr, connected bool) (c *conn) {
	c = &conn{
		fd:             fd,
		addrs:          &connAddrs{remote: sa, localAddr: localAddr, remoteAddr: socket.SockaddrToUDPAddr(sa)},
		loop:           el,
		isDatagram:     true,
		pollAttachment: netpoll.PollAttachment{FD: fd, Callback: el.readUDP},
	}
	c.setGFD(el.idx, 0, 0)
	if connected {
		c.addrs.remote = nil
	}
	return
}

// pollWrites sets what the poller watches the connection for: writes or
// not, and reads unless PauseRead stopped them.
func (c *conn) pollWrites(write bool) error {
	return c.loop.poller.ModInterest(&c.pollAttachment, !c.readPaused, write, c.loop.engine.opts.EdgeTriggeredIO)
}

func (c *conn) PauseRead() error {
	if c.readPaused || !c.opened || c.isDatagram {
		return nil
	}
	c.readPaused = true
	return c.pollWrites(!c.outboundBuffer.IsEmpty() || c.loop.engine.opts.EdgeTriggeredIO)
}

func (c *conn) ResumeRead() error {
	if !c.readPaused || !c.opened {
		return nil
	}
	c.readPaused = false
	if err := c.pollWrites(!c.outboundBuffer.IsEmpty() || c.loop.engine.opts.EdgeTriggeredIO); err != nil {
		return err
	}
	if c.inboundBuffer.IsEmpty() && !c.loop.engine.opts.EdgeTriggeredIO {
		return nil // level-triggered: bytes in the socket are reported again
	}
	// Bytes already read, or (edge-triggered) in the socket with no new
	// edge to come: handle them on the next turn of the loop.
	return c.loop.poller.Trigger(queue.LowPriority, func(any) error {
		if c.inboundBuffer.IsEmpty() {
			return c.loop.read(c)
		}
		return c.loop.wake(c)
	}, nil)
}

func (c *conn) release() {
	c.opened = false
	c.isEOF = false
	c.readPaused = false
	c.ctx = nil
	if c.loop.latestOf == c {
		c.loop.latest, c.loop.latestOf = nil, nil
	}
	if c.loop.peekedOf == c {
		c.loop.peeked, c.loop.peekedOf = nil, nil
	}
	if a := c.addrs; a != nil {
		if addr, ok := a.localAddr.(*net.TCPAddr); ok && len(c.loop.listeners) == 0 && len(addr.Zone) > 0 {
			bsPool.Put(bs.StringToBytes(addr.Zone))
		}
		if addr, ok := a.remoteAddr.(*net.TCPAddr); ok && len(addr.Zone) > 0 {
			bsPool.Put(bs.StringToBytes(addr.Zone))
		}
		if addr, ok := a.localAddr.(*net.UDPAddr); ok && len(c.loop.listeners) == 0 && len(addr.Zone) > 0 {
			bsPool.Put(bs.StringToBytes(addr.Zone))
		}
		if addr, ok := a.remoteAddr.(*net.UDPAddr); ok && len(addr.Zone) > 0 {
			bsPool.Put(bs.StringToBytes(addr.Zone))
		}
		if c.isDatagram {
			a.localAddr, a.remoteAddr = nil, nil // the sockaddr stays for readUDP
		} else {
			c.addrs = nil
		}
	}
	if !c.isDatagram {
		c.inboundBuffer.Done()
		c.outboundBuffer.Release()
	}
}

func (c *conn) open(buf []byte) error {
	if c.isDatagram && c.remoteSockaddr() == nil {
		return unix.Send(c.fd, buf, 0)
	}

	for {
		n, err := unix.Write(c.fd, buf)
		if err != nil {
			if err == unix.EAGAIN {
				_, _ = c.outboundBuffer.Write(buf)
				break
			}
			return err
		}
		buf = buf[n:]
		if len(buf) == 0 {
			break
		}
	}

	return nil
}

func (c *conn) write(data []byte) (n int, err error) {
	isET := c.loop.engine.opts.EdgeTriggeredIO
	n = len(data)
	// If there is pending data in outbound buffer,
	// the current data ought to be appended to the
	// outbound buffer for maintaining the sequence
	// of network packets.
	if !c.outboundBuffer.IsEmpty() {
		_, _ = c.outboundBuffer.Write(data)
		return
	}

	defer func() {
		if err != nil {
			_ = c.loop.close(c, os.NewSyscallError("write", err))
		}
	}()

	var sent int
loop:
	if sent, err = unix.Write(c.fd, data); err != nil {
		// A temporary error occurs, append the data to outbound buffer,
		// writing it back to the remote in the next round for LT mode.
		if err == unix.EAGAIN {
			_, err = c.outboundBuffer.Write(data)
			if !isET {
				err = c.pollWrites(true)
			}
			return
		}
		return 0, err
	}
	data = data[sent:]
	if isET && len(data) > 0 {
		goto loop
	}
	// Failed to send all data back to the remote, buffer the leftover data for the next round.
	if len(data) > 0 {
		_, _ = c.outboundBuffer.Write(data)
		err = c.pollWrites(true)
	}

	return
}

func (c *conn) writev(bs [][]byte) (n int, err error) {
	isET := c.loop.engine.opts.EdgeTriggeredIO

	for _, b := range bs {
		n += len(b)
	}

	// If there is pending data in outbound buffer,
	// the current data ought to be appended to the
	// outbound buffer for maintaining the sequence
	// of network packets.
	if !c.outboundBuffer.IsEmpty() {
		_, _ = c.outboundBuffer.Writev(bs)
		return
	}

	defer func() {
		if err != nil {
			_ = c.loop.close(c, os.NewSyscallError("writev", err))
		}
	}()

	remaining := n
	var sent int
loop:
	if sent, err = gio.Writev(c.fd, bs); err != nil {
		// A temporary error occurs, append the data to outbound buffer,
		// writing it back to the remote in the next round for LT mode.
		if err == unix.EAGAIN {
			_, err = c.outboundBuffer.Writev(bs)
			if !isET {
				err = c.pollWrites(true)
			}
			return
		}
		return 0, err
	}
	pos := len(bs)
	if remaining -= sent; remaining > 0 {
		for i := range bs {
			bn := len(bs[i])
			if sent < bn {
				bs[i] = bs[i][sent:]
				pos = i
				break
			}
			sent -= bn
		}
	}
	bs = bs[pos:]
	if isET && remaining > 0 {
		goto loop
	}

	// Failed to send all data back to the remote, buffer the leftover data for the next round.
	if remaining > 0 {
		_, _ = c.outboundBuffer.Writev(bs)
		err = c.pollWrites(true)
	}

	return
}

type asyncWriteHook struct {
	callback AsyncCallback
	data     []byte
}

func (c *conn) asyncWrite(a any) (err error) {
	hook := a.(*asyncWriteHook)
	defer func() {
		if hook.callback != nil {
			_ = hook.callback(c, err)
		}
	}()

	if !c.opened {
		return net.ErrClosed
	}

	_, err = c.write(hook.data)
	return
}

type asyncWritevHook struct {
	callback AsyncCallback
	data     [][]byte
}

func (c *conn) asyncWritev(a any) (err error) {
	hook := a.(*asyncWritevHook)
	defer func() {
		if hook.callback != nil {
			_ = hook.callback(c, err)
		}
	}()

	if !c.opened {
		return net.ErrClosed
	}

	_, err = c.writev(hook.data)
	return
}

func (c *conn) sendTo(buf []byte, addr unix.Sockaddr) (n int, err error) {
	defer func() {
		if err != nil {
			n = 0
		}
	}()

	if addr != nil {
		return len(buf), unix.Sendto(c.fd, buf, 0, addr)
	}
	if c.remoteSockaddr() == nil { // connected UDP socket of client
		return len(buf), unix.Send(c.fd, buf, 0)
	}
	return len(buf), unix.Sendto(c.fd, buf, 0, c.remoteSockaddr()) // unconnected UDP socket of server
}

// latestRead returns the unread part of the loop's latest read if it is
// c's, nil otherwise. The bytes of a read belong to the connection whose
// OnTraffic they were read for and live on its loop, not on the conn:
// only one connection of a loop is in OnTraffic at a time, and what it
// leaves unread moves to its inbound buffer when OnTraffic returns.
// (dualgate patch 14)
func (c *conn) latestRead() []byte {
	if el := c.loop; el.latestOf == c {
		return el.latest
	}
	return nil
}

// consumeLatest drops the first n bytes of latestRead().
func (c *conn) consumeLatest(n int) {
	if el := c.loop; el.latestOf == c {
		el.latest = el.latest[n:]
	}
}

func (c *conn) resetBuffer() {
	c.consumeLatest(len(c.latestRead()))
	c.inboundBuffer.Reset()
	c.inboundBuffer.Done()
}

func (c *conn) Read(p []byte) (n int, err error) {
	latest := c.latestRead()
	if c.inboundBuffer.IsEmpty() {
		n = copy(p, latest)
		c.consumeLatest(n)
		if n == 0 && len(p) > 0 {
			err = io.ErrShortBuffer
		}
		return
	}
	n, _ = c.inboundBuffer.Read(p)
	if n == len(p) {
		return
	}
	m := copy(p[n:], latest)
	n += m
	c.consumeLatest(m)
	return
}

func (c *conn) Next(n int) (buf []byte, err error) {
	latest := c.latestRead()
	inBufferLen := c.inboundBuffer.Buffered()
	if totalLen := inBufferLen + len(latest); n > totalLen {
		return nil, io.ErrShortBuffer
	} else if n <= 0 {
		n = totalLen
	}

	if c.inboundBuffer.IsEmpty() {
		buf = latest[:n]
		c.consumeLatest(n)
		return
	}

	buf = bsPool.Get(n)
	_, err = c.Read(buf)
	return
}

func (c *conn) Peek(n int) (buf []byte, err error) {
	latest := c.latestRead()
	inBufferLen := c.inboundBuffer.Buffered()
	if totalLen := inBufferLen + len(latest); n > totalLen {
		return nil, io.ErrShortBuffer
	} else if n <= 0 {
		n = totalLen
	}

	if c.inboundBuffer.IsEmpty() {
		return latest[:n], err
	}

	head, tail := c.inboundBuffer.Peek(n)
	if len(head) == n {
		return head, err
	}
	buf = bsPool.Get(n)[:0]
	buf = append(buf, head...)
	buf = append(buf, tail...)
	if inBufferLen >= n {
		return
	}

	remaining := n - inBufferLen
	buf = append(buf, latest[:remaining]...)
	// The copy goes back to the pool at c's next Discard. The loop keeps
	// one such copy: a copy of another connection's that it replaces is
	// left to the garbage collector, never pooled while still in use.
	// (dualgate patch 14)
	el := c.loop
	el.peeked, el.peekedOf = buf, c
	return
}

func (c *conn) Discard(n int) (int, error) {
	if el := c.loop; el.peekedOf == c {
		if len(el.peeked) > 0 {
			bsPool.Put(el.peeked)
		}
		el.peeked, el.peekedOf = nil, nil
	}

	latest := c.latestRead()
	inBufferLen := c.inboundBuffer.Buffered()
	if totalLen := inBufferLen + len(latest); n >= totalLen || n <= 0 {
		c.resetBuffer()
		return totalLen, nil
	}

	if c.inboundBuffer.IsEmpty() {
		c.consumeLatest(n)
		return n, nil
	}

	discarded, _ := c.inboundBuffer.Discard(n)
	if discarded < inBufferLen {
		return discarded, nil
	}

	remaining := n - inBufferLen
	c.consumeLatest(remaining)
	return n, nil
}

func (c *conn) Write(p []byte) (int, error) {
	if c.isDatagram {
		return c.sendTo(p, nil)
	}
	return c.write(p)
}

func (c *conn) SendTo(p []byte, addr net.Addr) (int, error) {
	if !c.isDatagram {
		return 0, errorx.ErrUnsupportedOp
	}

	sa := socket.NetAddrToSockaddr(addr)
	if sa == nil {
		return 0, errorx.ErrInvalidNetworkAddress
	}

	return c.sendTo(p, sa)
}

func (c *conn) Writev(bs [][]byte) (int, error) {
	if c.isDatagram {
		return 0, errorx.ErrUnsupportedOp
	}
	return c.writev(bs)
}

func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	return c.outboundBuffer.ReadFrom(r)
}

func (c *conn) WriteTo(w io.Writer) (n int64, err error) {
	if !c.inboundBuffer.IsEmpty() {
		if n, err = c.inboundBuffer.WriteTo(w); err != nil {
			return
		}
	}
	var m int
	m, err = w.Write(c.latestRead())
	n += int64(m)
	c.consumeLatest(m)
	return
}

// Flush writes what the outbound buffer holds, in one system call, and
// leaves the rest for when the socket is writable (patch 11: released gnet
// ran the loop's writable-event handler here, which in level-triggered
// mode made a second system call to stop polling for writes after a whole
// write and never started polling after a partial one, so bytes added by
// Defer could stay put).
func (c *conn) Flush() error {
	if !c.opened || c.outboundBuffer.IsEmpty() {
		return nil
	}
	iov, _ := c.outboundBuffer.Peek(-1)
	var (
		n   int
		err error
	)
	if len(iov) > 1 {
		if len(iov) > iovMax {
			iov = iov[:iovMax]
		}
		n, err = gio.Writev(c.fd, iov)
	} else {
		n, err = unix.Write(c.fd, iov[0])
	}
	if n > 0 {
		_, _ = c.outboundBuffer.Discard(n)
	}
	switch err {
	case nil, unix.EAGAIN:
	default:
		return c.loop.close(c, os.NewSyscallError("write", err))
	}
	if c.outboundBuffer.IsEmpty() {
		return nil // polling for writes, if on, stops at the next writable event (eventloop.write)
	}
	if c.loop.engine.opts.EdgeTriggeredIO {
		return c.loop.poller.Trigger(queue.HighPriority, c.loop.write0, c)
	}
	return c.pollWrites(true)
}

func (c *conn) FlushSoon() {
	if c.flushQueued || !c.opened || c.outboundBuffer.IsEmpty() {
		return
	}
	c.flushQueued = true
	c.loop.flushing = append(c.loop.flushing, c)
}

func (c *conn) Defer(p []byte) (int, error) {
	if c.isDatagram {
		return 0, errorx.ErrUnsupportedOp
	}
	return c.outboundBuffer.Write(p)
}

func (c *conn) InboundBuffered() int {
	return c.inboundBuffer.Buffered() + len(c.latestRead())
}

func (c *conn) OutboundBuffered() int {
	return c.outboundBuffer.Buffered()
}

func (c *conn) Context() any       { return c.ctx }
func (c *conn) SetContext(ctx any) { c.ctx = ctx }

// remoteSockaddr is the remote socket address of an unconnected UDP
// socket, nil otherwise.
func (c *conn) remoteSockaddr() unix.Sockaddr {
	if c.addrs == nil {
		return nil
	}
	return c.addrs.remote
}

func (c *conn) LocalAddr() net.Addr {
	if c.addrs != nil {
		return c.addrs.localAddr
	}
	if !c.opened {
		return nil
	}
	// A stream connection accepted by a listener keeps no addresses: read
	// them from the socket, to save memory per connection.
	sa, err := unix.Getsockname(c.fd)
	if err != nil {
		return nil
	}
	return socket.SockaddrToTCPOrUnixAddr(sa)
}

func (c *conn) RemoteAddr() net.Addr {
	if c.addrs != nil {
		return c.addrs.remoteAddr
	}
	if !c.opened {
		return nil
	}
	sa, err := unix.Getpeername(c.fd)
	if err != nil {
		return nil
	}
	return socket.SockaddrToTCPOrUnixAddr(sa)
}

// Implementation of Socket interface

// func (c *conn) Gfd() gfd.GFD             { return c.gfd }

func (c *conn) Fd() int                        { return c.fd }
func (c *conn) Dup() (fd int, err error)       { return socket.Dup(c.fd) }
func (c *conn) SetReadBuffer(bytes int) error  { return socket.SetRecvBuffer(c.fd, bytes) }
func (c *conn) SetWriteBuffer(bytes int) error { return socket.SetSendBuffer(c.fd, bytes) }
func (c *conn) SetLinger(sec int) error        { return socket.SetLinger(c.fd, sec) }
func (c *conn) SetNoDelay(noDelay bool) error {
	return socket.SetNoDelay(c.fd, func(b bool) int {
		if b {
			return 1
		}
		return 0
	}(noDelay))
}

func (c *conn) SetKeepAlivePeriod(d time.Duration) error {
	if !c.isTCP {
		return errorx.ErrUnsupportedOp
	}
	return socket.SetKeepAlivePeriod(c.fd, int(d.Seconds()))
}

func (c *conn) SetKeepAlive(enabled bool, idle, intvl time.Duration, cnt int) error {
	if !c.isTCP {
		return errorx.ErrUnsupportedOp
	}
	return socket.SetKeepAlive(c.fd, enabled, int(idle.Seconds()), int(intvl.Seconds()), cnt)
}

func (c *conn) AsyncWrite(buf []byte, callback AsyncCallback) error {
	if c.isDatagram {
		_, err := c.sendTo(buf, nil)
		// TODO: it will not go asynchronously with UDP, so calling a callback is needless,
		//  we may remove this branch in the future, please don't rely on the callback
		// 	to do something important under UDP, if you're working with UDP, just call Conn.Write
		// 	to send back your data.
		if callback != nil {
			_ = callback(nil, nil)
		}
		return err
	}
	return c.loop.poller.Trigger(queue.HighPriority, c.asyncWrite, &asyncWriteHook{callback, buf})
}

func (c *conn) AsyncWritev(bs [][]byte, callback AsyncCallback) error {
	if c.isDatagram {
		return errorx.ErrUnsupportedOp
	}
	return c.loop.poller.Trigger(queue.HighPriority, c.asyncWritev, &asyncWritevHook{callback, bs})
}

func (c *conn) Wake(callback AsyncCallback) error {
	return c.loop.poller.Trigger(queue.LowPriority, func(_ any) (err error) {
		err = c.loop.wake(c)
		if callback != nil {
			_ = callback(c, err)
		}
		return
	}, nil)
}

func (c *conn) CloseWithCallback(callback AsyncCallback) error {
	return c.loop.poller.Trigger(queue.LowPriority, func(_ any) (err error) {
		err = c.loop.close(c, nil)
		if callback != nil {
			_ = callback(c, err)
		}
		return
	}, nil)
}

func (c *conn) Close() error {
	return c.loop.poller.Trigger(queue.LowPriority, func(_ any) (err error) {
		err = c.loop.close(c, nil)
		return
	}, nil)
}

func (c *conn) EventLoop() EventLoop {
	return c.loop
}

func (*conn) SetDeadline(_ time.Time) error {
	return errorx.ErrUnsupportedOp
}

func (*conn) SetReadDeadline(_ time.Time) error {
	return errorx.ErrUnsupportedOp
}

func (*conn) SetWriteDeadline(_ time.Time) error {
	return errorx.ErrUnsupportedOp
}
