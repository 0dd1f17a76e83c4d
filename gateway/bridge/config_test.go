package bridge

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestNewRejects(t *testing.T) {
	submit := func(Command) error { return nil }
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // in the error
	}{
		{name: "no URL", cfg: Config{}, want: "URL is required"},
		{name: "bad scheme", cfg: Config{URL: "http://broker:1883"}, want: "scheme"},
		{name: "no host", cfg: Config{URL: "tcp://"}, want: "no host"},
		{name: "pool too large", cfg: Config{URL: "tcp://b:1883", PoolSize: 65}, want: "PoolSize"},
		{name: "wildcard prefix", cfg: Config{URL: "tcp://b:1883", TopicPrefix: "site/+/"}, want: "TopicPrefix"},
		{name: "reserved prefix", cfg: Config{URL: "tcp://b:1883", TopicPrefix: "$x/"}, want: "TopicPrefix"},
		{name: "client id prefix", cfg: Config{URL: "tcp://b:1883", ClientIDPrefix: "a/b"}, want: "ClientIDPrefix"},
		{name: "command filter without client", cfg: Config{URL: "tcp://b:1883", SubmitCommand: submit, CommandFilter: "commands/#"}, want: "CommandFilter"},
		{name: "share name", cfg: Config{URL: "tcp://b:1883", SubmitCommand: submit, SharedGroup: "a/b"}, want: "SharedGroup"},
		{name: "plain allowed", cfg: Config{URL: "tcp://b:1883", PlainAllowed: []string{"a/#/b"}}, want: "PlainAllowed"},
		{name: "cert without key", cfg: Config{URL: "tls://b", CertFile: "c.pem"}, want: "go together"},
		{name: "CA on tcp", cfg: Config{URL: "tcp://b", CAFile: notPEM}, want: "tls://"},
		{name: "missing CA file", cfg: Config{URL: "tls://b", CAFile: filepath.Join(dir, "none.pem")}, want: "CA file"},
		{name: "CA file without PEM", cfg: Config{URL: "tls://b", CAFile: notPEM}, want: "no PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.cfg)
			if err == nil {
				_ = b.Stop(context.Background())
				t.Fatalf("New accepted %+v", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	submit := func(Command) error { return nil }
	cfg := Config{URL: "tls://broker.example.com", SubmitCommand: submit, Logger: zap.NewNop()}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer b.Stop(context.Background())
	if cfg.PoolSize != 0 || cfg.CommandFilter != "" {
		t.Fatal("New changed the caller's Config")
	}
	c := b.cfg
	for _, chk := range []struct {
		what      string
		got, want any
	}{
		{"pool", c.PoolSize, 4},
		{"command filter", c.CommandFilter, DefaultCommandFilter},
		{"share", b.cmdSub, "$share/dualgate/devices/+/commands/#"},
		{"buffer", c.BufferMessages, 10_000},
		{"inflight", c.MaxInflight, 256},
		{"retained window", c.RetainedWindow, 10 * time.Second},
		{"broker address", b.up.url.String(), "tls://broker.example.com:8883"},
		{"server name", b.up.tls.ServerName, "broker.example.com"},
		{"client ids", b.lanes[1].id, c.ClientIDPrefix + "-1"},
		{"command lane", b.lanes[0].commands, true},
		{"subscription lane", b.subLane, b.lanes[len(b.lanes)-1]},
		{"command lane keeps its session", b.lanes[0].wipe, false},
		{"subscription lane clears its session", b.subLane.wipe, true},
	} {
		if chk.got != chk.want {
			t.Errorf("%s: %v, want %v", chk.what, chk.got, chk.want)
		}
	}
	if c.Username != "" {
		t.Errorf("username %q without one configured", c.Username)
	}
	if !strings.HasPrefix(c.ClientIDPrefix, "dualgate-") {
		t.Errorf("client id prefix %q, want dualgate-<host>", c.ClientIDPrefix)
	}
	if b.Ready() {
		t.Error("ready before Start")
	}
}

func TestNewCredentialsFromURL(t *testing.T) {
	for _, tc := range []struct {
		url, user, wantUser, wantPass, wantURL string
	}{
		{url: "tcp://gw:secret@broker:1884", wantUser: "gw", wantPass: "secret", wantURL: "tcp://broker:1884"},
		{url: "tcp://gw:secret@broker", user: "explicit", wantUser: "explicit", wantURL: "tcp://broker:1883"},
		{url: "mqtts://broker", wantURL: "tls://broker:8883"},
		{url: "tcp://[::1]", wantURL: "tcp://[::1]:1883"},
	} {
		b, err := New(Config{URL: tc.url, Username: tc.user})
		if err != nil {
			t.Fatalf("New(%s): %v", tc.url, err)
		}
		if b.cfg.Username != tc.wantUser || b.cfg.Password != tc.wantPass || b.up.url.String() != tc.wantURL {
			t.Errorf("%s: user %q password %q url %s, want %q %q %s", tc.url, b.cfg.Username, b.cfg.Password,
				b.up.url, tc.wantUser, tc.wantPass, tc.wantURL)
		}
		_ = b.Stop(context.Background())
	}
}
