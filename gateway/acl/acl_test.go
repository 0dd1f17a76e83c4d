package acl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		body, want string
	}{
		{"topic read a/b\nfrob x\n", "line 2: unknown keyword \"frob\""},
		{"# ok\n\ntopic\n", "line 3: topic needs a topic"},
		{"topic read\n", "line 1: topic read needs a topic"},
		{"topic read a/#/b\n", "line 1: \"a/#/b\" is not a valid topic filter"},
		{"topic a+/b\n", "line 1: \"a+/b\" is not a valid topic filter"},
		{"user\n", "line 1: user needs a name"},
		{"topic devices/%c/x\n", "line 1: %c is substituted only in pattern lines"},
		{"\n\npattern write devices/car-%c/x\n", "line 3: %c must be a whole topic level"},
		{"pattern readwrite $share/g/x\n", "line 1: \"$share/g/x\" is not a valid topic filter"},
	} {
		_, err := parse([]byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse(%q) = %v, want an error with %q", tc.body, err, tc.want)
		}
	}
}

func TestParseFileNamesThePath(t *testing.T) {
	p := writeFile(t, "topic readwrite ok\ntopic bogus a b\n")
	if _, err := New(Config{File: p}); err == nil || !strings.Contains(err.Error(), "line 2: unknown access \"bogus\"") {
		t.Fatalf("New = %v, want an unknown access error on line 2", err)
	}
	p = writeFile(t, "pattern write devices/%c/#\ntopic read x\nuser\n")
	_, err := New(Config{File: p})
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("New = %v, want an error naming %s and line 3", err, p)
	}
	if _, err := New(Config{File: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("New with a missing file succeeded")
	}
}

const fleetACL = `# a fleet
topic read fleet/broadcast/#

user ops
topic readwrite #
topic deny devices/+/secrets

user viewer
topic read devices/#

pattern write devices/%c/telemetry/#
pattern read devices/%c/#
pattern deny devices/%c/telemetry/forbidden
pattern readwrite users/%u/#
`

func TestFileRules(t *testing.T) {
	a, err := New(Config{File: writeFile(t, fleetACL)})
	if err != nil {
		t.Fatal(err)
	}
	pub := func(id, user, topic string) bool { return a.Publish(id, user, topic, true) == Allowed }
	for _, tc := range []struct {
		name string
		got  bool
		want bool
	}{
		{"own telemetry", pub("car1", "", "devices/car1/telemetry/speed"), true},
		{"own telemetry parent", pub("car1", "", "devices/car1/telemetry"), true},
		{"pattern deny first", pub("car1", "", "devices/car1/telemetry/forbidden"), false},
		{"other device's telemetry", pub("car1", "", "devices/car2/telemetry/speed"), false},
		{"read-only rule does not grant write", pub("car1", "", "fleet/broadcast/x"), false},
		{"not granted", pub("car1", "", "elsewhere"), false},
		{"user list", pub("car1", "ops", "anything/at/all"), true},
		{"user deny before grant", pub("car1", "ops", "devices/car9/secrets"), false},
		{"anonymous list not for users", a.Read("car1", "ops", "fleet/broadcast/x"), true}, // ops has readwrite #
		{"viewer cannot write", pub("v1", "viewer", "devices/v1/x"), false},
		{"patterns apply to users too", pub("v1", "viewer", "devices/v1/telemetry/t"), true},
		{"%u pattern", pub("c", "alice", "users/alice/inbox"), true},
		{"%u pattern another user", pub("c", "alice", "users/bob/inbox"), false},
		{"%u pattern without a user name", pub("c", "", "users//inbox"), false},
		{"wildcard user name", pub("c", "a+", "users/a+/inbox"), false},
		{"anonymous read", a.Read("car1", "", "fleet/broadcast/news"), true},
		{"user without that rule", a.Read("v1", "viewer", "fleet/broadcast/news"), false},
		{"own space read", a.Read("car1", "", "devices/car1/state"), true},
		{"other space read", a.Read("car1", "", "devices/car2/state"), false},
		{"viewer reads devices", a.Read("v1", "viewer", "devices/car2/state"), true},
		{"sub own", a.Subscribe("car1", "", "devices/car1/#"), true},
		{"sub overlapping a read rule", a.Subscribe("car1", "", "devices/+/state"), true},
		{"sub overlapping nothing", a.Subscribe("car1", "", "elsewhere/#"), false},
		{"sub wildcard everything", a.Subscribe("car1", "", "#"), true},
		{"sub covered by a deny", a.Subscribe("x", "ops", "devices/car1/secrets"), false},
		{"sub only overlapping a deny", a.Subscribe("x", "ops", "devices/+/+"), true},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestBuiltinRules(t *testing.T) {
	for _, file := range []string{"", "topic readwrite #\n"} {
		cfg := Config{}
		if file != "" {
			cfg.File = writeFile(t, file)
		}
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			got  bool
			want bool
		}{
			{"anything else", a.Publish("car1", "", "devices/car1/telemetry", false) == Allowed, true},
			{"another device's command", a.Publish("car1", "", "devices/car2/commands/unlock", false) == Allowed, false},
			{"own command space", a.Publish("car1", "", "devices/car1/commands/unlock", true) == Allowed, false},
			{"empty id command", a.Publish("car1", "", "devices//commands/x", true) == Allowed, false},
			{"reserved", a.Publish("car1", "", "$dualgate/control", true) == Allowed, false},
			{"query is not routed", a.Publish("car1", "", "$dualgate/query", true) == Allowed, false},
			{"$SYS", a.Publish("car1", "", "$SYS/x", true) == Allowed, false},
			{"sub own commands", a.Subscribe("car1", "", "devices/car1/commands/#"), true},
			{"sub other commands", a.Subscribe("car1", "", "devices/car2/commands/#"), false},
			{"sub other one command", a.Subscribe("car1", "", "devices/car2/commands/unlock"), false},
			{"sub other whole space", a.Subscribe("car1", "", "devices/car2/#"), true}, // overlaps only
			{"sub all commands", a.Subscribe("car1", "", "devices/+/commands/#"), true},
			{"sub everything", a.Subscribe("car1", "", "#"), true},
			{"sub reserved", a.Subscribe("car1", "", "$dualgate/control"), false},
			{"read own command", a.Read("car1", "", "devices/car1/commands/x"), true},
			{"read other command", a.Read("car1", "", "devices/car2/commands/x"), false},
			{"read other telemetry", a.Read("car1", "", "devices/car2/telemetry"), true},
		} {
			if tc.got != tc.want {
				t.Errorf("file %q: %s: %v, want %v", file, tc.name, tc.got, tc.want)
			}
		}
	}
}

func TestDeviceTemplateAndSecureTopics(t *testing.T) {
	a, err := New(Config{
		CommandFilter:  "cmd/{client}/#",
		DeviceTemplate: "devices/{client}/#",
		SecureTopics:   []string{"devices/+/keys/#", "vault"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id, topic string
		tls       bool
		want      Verdict
	}{
		{"car1", "devices/car1/telemetry", false, Allowed},
		{"car1", "devices/car1", false, Allowed},
		{"car1", "devices/car2/telemetry", true, Denied},
		{"car1", "fleet/all", true, Denied},
		{"car1", "cmd/car2/open", true, Denied},
		{"car1", "devices/car1/keys/k1", false, PlainSecure},
		{"car1", "devices/car1/keys/k1", true, Allowed},
		{"car1", "devices/car1/keys", false, PlainSecure}, // '#' matches its parent
	} {
		if got := a.Publish(tc.id, "", tc.topic, tc.tls); got != tc.want {
			t.Errorf("Publish(%s, %s, tls=%v) = %v, want %v", tc.id, tc.topic, tc.tls, got, tc.want)
		}
	}
	if !a.Secure("vault") || a.Secure("vault/x") || a.Secure("devices/car1/telemetry") {
		t.Error("Secure matches the wrong topics")
	}
	for _, bad := range []Config{
		{SecureTopics: []string{"a/#/b"}},
		{SecureTopics: []string{"$dualgate/#"}},
		{DeviceTemplate: "a/#/{client}"},
		{CommandFilter: "no/placeholder"},
	} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
}

func TestReloadKeepsRulesOnError(t *testing.T) {
	p := writeFile(t, "pattern readwrite devices/%c/#\n")
	a, err := New(Config{File: p})
	if err != nil {
		t.Fatal(err)
	}
	if a.Publish("car1", "", "fleet/x", true) == Allowed {
		t.Fatal("fleet/x allowed before it is granted")
	}
	if err := os.WriteFile(p, []byte("pattern readwrite devices/%c/#\ntopic write fleet/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if a.Publish("car1", "", "fleet/x", true) != Allowed {
		t.Fatal("fleet/x refused after the reload granted it")
	}
	if err := os.WriteFile(p, []byte("topic write\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("Reload of a bad file = %v, want a line 1 error", err)
	}
	if a.Publish("car1", "", "fleet/x", true) != Allowed {
		t.Fatal("a bad reload changed the rules in force")
	}
	none, _ := New(Config{})
	if err := none.Reload(); err != ErrNoFile {
		t.Fatalf("Reload without a file = %v", err)
	}
}

func TestChecksAllocateNothing(t *testing.T) {
	for _, cfg := range []Config{{}, {File: writeFile(t, fleetACL), SecureTopics: []string{"x/#"}}} {
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := testing.AllocsPerRun(200, func() {
			a.Publish("car1", "", "devices/car1/telemetry/speed", false)
			a.Read("car1", "", "devices/car2/commands/open")
			a.Read("car1", "alice", "users/alice/x")
			a.Subscribe("car1", "", "devices/+/telemetry/#")
			a.Secure("devices/car1/telemetry")
		})
		if n != 0 {
			t.Errorf("file %q: checks allocate %.1f times", cfg.File, n)
		}
	}
}

func TestFilterOwner(t *testing.T) {
	tpl, err := CompileTemplate("devices/{client}/commands/#", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filter, owner string
		ok            bool
	}{
		{"devices/car1/commands/#", "car1", true},
		{"devices/car1/commands/+", "car1", true},
		{"devices/car1/commands/open", "car1", true},
		{"devices/car1/commands", "car1", true},
		{"devices/car1/#", "", false},
		{"devices/+/commands/#", "", false},
		{"devices/#", "", false},
		{"#", "", false},
		{"devices/car1/+/open", "", false},
		{"devices/car1/telemetry", "", false},
	} {
		owner, ok := tpl.FilterOwner(tc.filter)
		if owner != tc.owner || ok != tc.ok {
			t.Errorf("FilterOwner(%q) = %q %v, want %q %v", tc.filter, owner, ok, tc.owner, tc.ok)
		}
	}
}

// The per-message checks: the built-in rules alone (no file) and with a
// file of patterns.
func BenchmarkRead(b *testing.B) {
	file := filepath.Join(b.TempDir(), "acl")
	if err := os.WriteFile(file, []byte(fleetACL), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"builtin", Config{}},
		{"file", Config{File: file}},
	} {
		a, err := New(tc.cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.Read("car1", "", "devices/car1/telemetry/speed")
			}
		})
	}
}
