package certs

import (
	"errors"
	"net"
	"slices"
	"testing"
)

func TestSANHosts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hosts   []string
		wantDNS []string
		wantIPs []string
		wantErr bool
	}{
		{name: "none", wantDNS: []string{"localhost"}, wantIPs: []string{"127.0.0.1", "::1"}},
		{
			name:    "names and addresses",
			hosts:   []string{"gw.example.com", "10.1.2.3", "[2001:db8::5]", "*.fleet.example.com"},
			wantDNS: []string{"gw.example.com", "*.fleet.example.com", "localhost"},
			wantIPs: []string{"10.1.2.3", "2001:db8::5", "127.0.0.1", "::1"},
		},
		{
			name:    "duplicates, case, spaces, trailing dot",
			hosts:   []string{" GW.example.com ", "gw.example.com.", "", "LocalHost", "::ffff:127.0.0.1"},
			wantDNS: []string{"gw.example.com", "localhost"},
			wantIPs: []string{"127.0.0.1", "::1"},
		},
		{name: "underscore allowed", hosts: []string{"gw_1.local"}, wantDNS: []string{"gw_1.local", "localhost"}, wantIPs: []string{"127.0.0.1", "::1"}},
		{name: "port", hosts: []string{"gw:1883"}, wantErr: true},
		{name: "trailing hyphen", hosts: []string{"gw-.local"}, wantErr: true},
		{name: "long label", hosts: []string{string(make([]byte, 64))}, wantErr: true},
		{name: "non-ASCII", hosts: []string{"gätewäy.de"}, wantErr: true},
		{name: "slash", hosts: []string{"gw/1"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dns, ips, err := sanHosts(tc.hosts)
			if tc.wantErr {
				if !errors.Is(err, ErrBadHost) {
					t.Fatalf("err = %v, want ErrBadHost", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(dns, tc.wantDNS) {
				t.Errorf("DNS = %q, want %q", dns, tc.wantDNS)
			}
			got := make([]string, len(ips))
			for i, ip := range ips {
				got[i] = ip.String()
				if ip.To4() != nil && len(ip) != net.IPv4len {
					t.Errorf("IPv4 %v stored in %d bytes", ip, len(ip))
				}
			}
			if !slices.Equal(got, tc.wantIPs) {
				t.Errorf("IPs = %q, want %q", got, tc.wantIPs)
			}
		})
	}
}

func TestClientURI(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string
	}{
		{id: "dev-client", want: "urn:dualgate:client:dev-client"},
		{id: "car/42 eu", want: "urn:dualgate:client:car%2F42%20eu"},
		{id: "ünïcode", want: "urn:dualgate:client:%C3%BCn%C3%AFcode"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			u := ClientURI(tc.id)
			if u.String() != tc.want {
				t.Fatalf("ClientURI = %q, want %q", u.String(), tc.want)
			}
			back, ok := ClientIDFromURI(u.String())
			if !ok || back != tc.id {
				t.Fatalf("ClientIDFromURI = %q, %v; want %q", back, ok, tc.id)
			}
		})
	}
	for _, bad := range []string{"", "urn:dualgate:client:", "urn:other:client:x", "spiffe://x/y", "urn:dualgate:client:%zz"} {
		if id, ok := ClientIDFromURI(bad); ok {
			t.Errorf("ClientIDFromURI(%q) = %q, true; want false", bad, id)
		}
	}
}
