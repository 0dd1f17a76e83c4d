package gateway

import (
	"errors"
	"testing"
)

// proxyHeaderLen sizes a v2 header from its 16-bit length field, whatever
// bits it has set, and says when more bytes are needed.
func TestProxyHeaderLen(t *testing.T) {
	v2 := func(length int) []byte {
		b := append([]byte(nil), proxyV2Sig...)
		return append(b, 0x21, 0x11, byte(length>>8), byte(length))
	}
	for _, length := range []int{0, 12, 0x30, 0x110, 0x1234, 0xffff} {
		n, err := proxyHeaderLen(v2(length))
		if err != nil || n != 16+length {
			t.Errorf("v2 length %#x: %d, %v; want %d", length, n, err, 16+length)
		}
	}
	for _, tc := range []struct {
		in   string
		want int
		err  bool
	}{
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest", 32, false},
		{"PROXY TCP4 1.2.3.4", 0, false},      // more bytes needed
		{"PRO", 0, false},                     // could still be a header
		{"\r\n\r\n\x00\r\nQU", 0, false},      // v2 signature so far
		{"\x10\x0c\x00\x04MQTT", 0, true},     // an MQTT CONNECT
		{"\x16\x03\x01\x02\x00\x01", 0, true}, // a TLS ClientHello
	} {
		n, err := proxyHeaderLen([]byte(tc.in))
		if n != tc.want || (err != nil) != tc.err {
			t.Errorf("%q: %d, %v", tc.in, n, err)
		}
		if tc.err && !errors.Is(err, errNoProxyHeader) {
			t.Errorf("%q: error %v, want errNoProxyHeader", tc.in, err)
		}
	}
	long := "PROXY " + string(make([]byte, 200))
	if _, err := proxyHeaderLen([]byte(long)); err == nil || errors.Is(err, errNoProxyHeader) {
		t.Errorf("an overlong v1 line: %v, want a malformed-header error", err)
	}
}
