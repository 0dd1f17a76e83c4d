package bench

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestParseAddrRanges(t *testing.T) {
	tests := []struct {
		spec    string
		want    string
		wantErr bool
	}{
		{spec: "", want: "[]"},
		{spec: "127.0.0.2", want: "[127.0.0.2]"},
		{spec: "127.0.0.2-127.0.0.4", want: "[127.0.0.2 127.0.0.3 127.0.0.4]"},
		{spec: "127.0.0.254-127.0.1.1, 10.0.0.1", want: "[127.0.0.254 127.0.0.255 127.0.1.0 127.0.1.1 10.0.0.1]"},
		{spec: "::1-::2", want: "[::1 ::2]"},
		{spec: "127.0.0.5-127.0.0.5", want: "[127.0.0.5]"},
		{spec: "127.0.0.5-127.0.0.4", wantErr: true},
		{spec: "127.0.0.1-::1", wantErr: true},
		{spec: "localhost", wantErr: true},
		{spec: "127.0.0.1-x", wantErr: true},
		{spec: "10.0.0.0-10.255.255.255", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := ParseAddrRanges(tt.spec)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseAddrRanges = %v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != tt.want {
				t.Fatalf("ParseAddrRanges = %s, want %s", s, tt.want)
			}
		})
	}
}

func TestAutoSourceAddrs(t *testing.T) {
	tests := []struct {
		host string
		n    int
		want string
	}{
		{host: "127.0.0.1", n: 15000, want: "[]"},
		{host: "127.0.0.1", n: PerSourceAddr, want: "[]"},
		{host: "127.0.0.1", n: PerSourceAddr + 1, want: "[127.0.0.2 127.0.0.3]"},
		{host: "localhost", n: 100000, want: "[127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5 127.0.0.6]"},
		{host: "10.1.2.3", n: 100000, want: "[]"},
		{host: "::1", n: 100000, want: "[]"},
	}
	for _, tt := range tests {
		got := AutoSourceAddrs(tt.host, tt.n)
		if s := fmt.Sprint(got); s != tt.want {
			t.Errorf("AutoSourceAddrs(%s, %d) = %s, want %s", tt.host, tt.n, s, tt.want)
		}
	}
}

func TestSourceFor(t *testing.T) {
	if sourceFor(nil, 3) != nil {
		t.Fatal("no addresses: want nil")
	}
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	for i, want := range []string{"127.0.0.2:0", "127.0.0.3:0", "127.0.0.2:0"} {
		if got := sourceFor(addrs, i).String(); got != want {
			t.Errorf("sourceFor(%d) = %s, want %s", i, got, want)
		}
	}
}
