// Copyright (c) 2021 The Gnet Authors. All rights reserved.
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
	"net"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/panjf2000/gnet/v2/pkg/errors"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"github.com/panjf2000/gnet/v2/pkg/queue"
	"github.com/panjf2000/gnet/v2/pkg/socket"
)

func (el *eventloop) accept0(fd int, _ netpoll.IOEvent, _ netpoll.IOFlags) error {
	for {
		var (
			nfd int
			sa  unix.Sockaddr
			err error
		)
		if el.engine.opts.LB == SourceAddrHash {
			nfd, sa, err = socket.Accept(fd)
		} else {
			// No one reads the peer's address here (patch 1): not
			// converting it also saves the getsockopt(2) that
			// unix.Accept4 makes for every connection.
			nfd, err = socket.AcceptNoAddr(fd)
		}
		switch err {
		case nil:
		case unix.EAGAIN: // the Accept queue has been drained out, we can return now
			return nil
		case unix.EINTR, unix.ECONNRESET, unix.ECONNABORTED:
			// ECONNRESET or ECONNABORTED could indicate that a socket
			// in the Accept queue was closed before we Accept()ed it.
			// It's a silly error, let's retry it.
			if err == unix.ECONNABORTED && el.engine.opts.OnAcceptError != nil {
				el.engine.opts.OnAcceptError(err)
			}
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			if fn := el.engine.opts.OnAcceptError; fn != nil {
				// Out of descriptors or memory: the listener is fine.
				// Wait on this goroutine (the main reactor: no
				// connection is served here), then re-arm the
				// edge-triggered listener so that the poller reports
				// it again if connections still wait in the kernel's
				// queue, and the poller's other work (a shutdown)
				// goes first.
				fn(err)
				el.acceptBackoff *= 2
				if el.acceptBackoff < 5*time.Millisecond {
					el.acceptBackoff = 5 * time.Millisecond
				} else if el.acceptBackoff > time.Second {
					el.acceptBackoff = time.Second
				}
				time.Sleep(el.acceptBackoff)
				if ln := el.listeners[fd]; ln != nil && ln.pollAttachment != nil {
					if err := el.poller.ModRead(ln.pollAttachment, true); err != nil {
						el.getLogger().Errorf("failed to re-arm the listener fd=%d: %v", fd, err)
						return errors.ErrAcceptSocket
					}
				}
				return nil
			}
			el.getLogger().Errorf("Accept() failed due to error: %v", err)
			return errors.ErrAcceptSocket
		default:
			el.getLogger().Errorf("Accept() failed due to error: %v", err)
			return errors.ErrAcceptSocket
		}
		el.acceptBackoff = 0

		network := el.listeners[fd].network
		if opts := el.engine.opts; opts.TCPKeepAlive > 0 && network == "tcp" &&
			(runtime.GOOS != "linux" && runtime.GOOS != "freebsd" && runtime.GOOS != "dragonfly") {
			// TCP keepalive options are not inherited from the listening socket
			// on platforms other than Linux, FreeBSD, or DragonFlyBSD.
			// We therefore need to set them on the accepted socket explicitly.
			//
			// Check out https://github.com/nginx/nginx/pull/337 for details.
			if err = setKeepAlive(
				nfd,
				true,
				opts.TCPKeepAlive,
				opts.TCPKeepInterval,
				opts.TCPKeepCount); err != nil {
				el.getLogger().Errorf("failed to set TCP keepalive on fd=%d: %v", fd, err)
			}
		}

		// The remote address is only needed by the SourceAddrHash load-balancer,
		// conn.RemoteAddr() resolves it on demand to save memory per connection.
		var remoteAddr net.Addr
		if el.engine.opts.LB == SourceAddrHash {
			remoteAddr = socket.SockaddrToTCPOrUnixAddr(sa)
		}
		el := el.engine.eventLoops.next(remoteAddr)
		c := newStreamConn(network, nfd, el, nil, nil, nil)
		err = el.poller.Trigger(queue.HighPriority, el.register, c)
		if err != nil {
			el.getLogger().Errorf("failed to enqueue the accepted socket fd=%d to poller: %v", c.fd, err)
			_ = unix.Close(nfd)
			c.release()
		}
	}
}

func (el *eventloop) accept(fd int, ev netpoll.IOEvent, flags netpoll.IOFlags) error {
	network := el.listeners[fd].network
	if network == "udp" {
		return el.readUDP(fd, ev, flags)
	}

	nfd, err := socket.AcceptNoAddr(fd)
	switch err {
	case nil:
		el.acceptBackoff = 0
	case unix.EINTR, unix.EAGAIN, unix.ECONNRESET, unix.ECONNABORTED:
		// ECONNRESET or ECONNABORTED could indicate that a socket
		// in the Accept queue was closed before we Accept()ed it.
		// It's a silly error, let's retry it.
		if err == unix.ECONNABORTED && el.engine.opts.OnAcceptError != nil {
			el.engine.opts.OnAcceptError(err)
		}
		return nil
	case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
		if fn := el.engine.opts.OnAcceptError; fn != nil {
			// Out of descriptors or memory: this loop serves
			// connections and must not wait, so it stops polling its
			// listener for the back-off and goes on with its
			// connections (see pauseAccept).
			fn(err)
			return el.pauseAccept(fd)
		}
		el.getLogger().Errorf("Accept() failed due to error: %v", err)
		return errors.ErrAcceptSocket
	default:
		el.getLogger().Errorf("Accept() failed due to error: %v", err)
		return errors.ErrAcceptSocket
	}

	if opts := el.engine.opts; opts.TCPKeepAlive > 0 && el.listeners[fd].network == "tcp" &&
		(runtime.GOOS != "linux" && runtime.GOOS != "freebsd" && runtime.GOOS != "dragonfly") {
		// TCP keepalive options are not inherited from the listening socket
		// on platforms other than Linux, FreeBSD, or DragonFlyBSD.
		// We therefore need to set them on the accepted socket explicitly.
		//
		// Check out https://github.com/nginx/nginx/pull/337 for details.
		if err = setKeepAlive(
			nfd,
			true,
			opts.TCPKeepAlive,
			opts.TCPKeepInterval,
			opts.TCPKeepCount); err != nil {
			el.getLogger().Errorf("failed to set TCP keepalive on fd=%d: %v", fd, err)
		}
	}

	c := newStreamConn(network, nfd, el, nil, nil, nil)
	return el.register0(c)
}

// pauseAccept stops polling the SO_REUSEPORT listener fd of this loop for
// the accept back-off (5 ms doubling to 1 s, reset by the next successful
// accept) and has a timer re-arm it on the loop; connections still queued
// in the kernel are then reported again (the listener is level-triggered).
// The timer's goroutine ends with the engine, before the pollers close.
func (el *eventloop) pauseAccept(fd int) error {
	ln := el.listeners[fd]
	if ln == nil || ln.pollAttachment == nil {
		return nil
	}
	if err := el.poller.ModInterest(ln.pollAttachment, false, false, false); err != nil {
		el.getLogger().Errorf("failed to pause the listener fd=%d: %v", fd, err)
		return errors.ErrAcceptSocket
	}
	el.acceptBackoff *= 2
	if el.acceptBackoff < 5*time.Millisecond {
		el.acceptBackoff = 5 * time.Millisecond
	} else if el.acceptBackoff > time.Second {
		el.acceptBackoff = time.Second
	}
	wait, ctx := el.acceptBackoff, el.engine.concurrency.ctx
	el.engine.concurrency.Go(func() error {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		err := el.poller.Trigger(queue.HighPriority, func(any) error {
			if ln.fd != fd || ln.pollAttachment == nil {
				return nil // closed meanwhile
			}
			if err := el.poller.ModInterest(ln.pollAttachment, true, false, false); err != nil {
				el.getLogger().Errorf("failed to re-arm the listener fd=%d: %v", fd, err)
				return errors.ErrAcceptSocket
			}
			return nil
		}, nil)
		if err != nil {
			el.getLogger().Errorf("failed to re-arm the listener fd=%d: %v", fd, err)
		}
		return nil
	})
	return nil
}
