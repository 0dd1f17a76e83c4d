package gateway

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// The address a socket was reached on comes from the socket itself.
func TestSocketLocal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := raw.Control(func(fd uintptr) { got = socketLocal(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if got != d.RemoteAddr().String() {
		t.Fatalf("socketLocal %q, want %q", got, d.RemoteAddr())
	}
	if socketLocal(-1) != "" {
		t.Fatal("a bad descriptor gave an address")
	}
}

func TestSockaddrString(t *testing.T) {
	mapped := [16]byte{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 10}
	for _, tc := range []struct {
		sa   unix.Sockaddr
		want string
	}{
		{&unix.SockaddrInet4{Port: 1883, Addr: [4]byte{192, 0, 2, 10}}, "192.0.2.10:1883"},
		{&unix.SockaddrInet6{Port: 8883, Addr: mapped}, "192.0.2.10:8883"},
		{&unix.SockaddrInet6{Port: 8883, Addr: [16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: 1}}, "[2001:db8::1]:8883"},
		{&unix.SockaddrInet6{Port: 1, Addr: [16]byte{0: 0xfe, 1: 0x80, 15: 1}, ZoneId: 1 << 30}, "[fe80::1%1073741824]:1"},
		{&unix.SockaddrUnix{Name: "/tmp/x"}, ""},
	} {
		if got := sockaddrString(tc.sa); got != tc.want {
			t.Errorf("%#v: %q, want %q", tc.sa, got, tc.want)
		}
	}
}

// With no --advertise-tls, a device on plain is told the address it
// reached (its host) with the TLS listener's port.
func TestAdvertiseDerived(t *testing.T) {
	g := startGateway(t, nil)
	d := newDevice311(t, g, "adv-derived")
	d.obey = false
	d.connect(false, g.PlainAddr())
	postCommand(t, g, "adv-derived", `{"topic":"devices/adv-derived/commands/x"}`)
	_, port, _ := net.SplitHostPort(g.TLSAddr())
	if in := <-d.controls; in.Addr != net.JoinHostPort("127.0.0.1", port) {
		t.Fatalf("addr %q, want 127.0.0.1:%s", in.Addr, port)
	}
}
