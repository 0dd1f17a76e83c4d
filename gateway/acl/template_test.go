package acl

import "testing"

func TestTemplateCompile(t *testing.T) {
	for _, tc := range []struct {
		in         string
		needClient bool
		filter     string // "" : an error is expected
	}{
		{in: "devices/{client}/#", needClient: true, filter: "devices/+/#"},
		{in: "devices/{client}/commands/#", needClient: true, filter: "devices/+/commands/#"},
		{in: "fleet/car-{client}-x/+", filter: "fleet/+/+"},
		{in: "telemetry/#", filter: "telemetry/#"},
		{in: "telemetry/#", needClient: true}, // no placeholder
		{in: ""},                              // empty
		{in: "a/{client}{client}/b"},          // twice in a level
		{in: "a/+{client}/b"},                 // wildcard beside it
		{in: "a/#/{client}"},                  // '#' not last
		{in: "$SYS/{client}"},                 // reserved
		{in: "a/b#"},                          // '#' inside a level
		{in: "{client}/x", needClient: true, filter: "+/x"},
	} {
		tpl, err := CompileTemplate(tc.in, tc.needClient)
		switch {
		case tc.filter == "" && err == nil:
			t.Errorf("CompileTemplate(%q) accepted, want an error", tc.in)
		case tc.filter != "" && err != nil:
			t.Errorf("CompileTemplate(%q): %v", tc.in, err)
		case tc.filter != "" && tpl.Filter() != tc.filter:
			t.Errorf("CompileTemplate(%q).Filter() = %q, want %q", tc.in, tpl.Filter(), tc.filter)
		}
	}
}

func TestTemplateMatchClient(t *testing.T) {
	for _, tc := range []struct {
		tpl, topic, client string
		want               bool
	}{
		{"devices/{client}/#", "devices/car1/telemetry", "car1", true},
		{"devices/{client}/#", "devices/car1/a/b/c", "car1", true},
		{"devices/{client}/#", "devices/car1", "car1", true}, // '#' matches its parent
		{"devices/{client}/#", "devices/car2/telemetry", "car1", false},
		{"devices/{client}/#", "devices/car10/telemetry", "car1", false},
		{"devices/{client}/#", "devices", "car1", false},
		{"devices/{client}/#", "other/car1/t", "car1", false},
		{"devices/{client}/#", "devices//t", "", false},
		{"devices/{client}/#", "devices/a/b/t", "a/b", false}, // an id with a slash owns nothing
		{"devices/{client}/+", "devices/car1/t", "car1", true},
		{"devices/{client}/+", "devices/car1/t/u", "car1", false},
		{"devices/{client}/+", "devices/car1", "car1", false},
		{"fleet/car-{client}/x", "fleet/car-7/x", "7", true},
		{"fleet/car-{client}/x", "fleet/car7/x", "7", false},
		{"fleet/car-{client}/x", "fleet/car-7/y", "7", false},
		{"up/{client}/{client}", "up/a/a", "a", true},
		{"up/{client}/{client}", "up/a/b", "a", false},
		{"telemetry/#", "telemetry/x", "anyone", true},
		{"telemetry/#", "telemetry", "anyone", true},
	} {
		tpl, err := CompileTemplate(tc.tpl, false)
		if err != nil {
			t.Fatalf("CompileTemplate(%q): %v", tc.tpl, err)
		}
		if got := tpl.MatchClient(tc.topic, tc.client); got != tc.want {
			t.Errorf("%q.MatchClient(%q, %q) = %v, want %v", tc.tpl, tc.topic, tc.client, got, tc.want)
		}
	}
}

func TestTemplateExtract(t *testing.T) {
	for _, tc := range []struct {
		tpl, topic, want string
		ok               bool
	}{
		{"devices/{client}/commands/#", "devices/car1/commands/unlock", "car1", true},
		{"devices/{client}/commands/#", "devices/car1/commands/a/b", "car1", true},
		{"devices/{client}/commands/#", "devices/car1/commands", "car1", true},
		{"devices/{client}/commands/#", "devices//commands/x", "", false},
		{"devices/{client}/commands/#", "devices/car1/telemetry", "", false},
		{"devices/{client}/commands/+", "devices/car1/commands/a/b", "", false},
		{"cmd/dev-{client}", "cmd/dev-42", "42", true},
		{"cmd/dev-{client}", "cmd/dev-", "", false},
		{"cmd/dev-{client}", "cmd/other", "", false},
		{"{client}/cmd/{client}", "x/cmd/x", "x", true},
		{"{client}/cmd/{client}", "x/cmd/y", "", false},
	} {
		tpl, err := CompileTemplate(tc.tpl, true)
		if err != nil {
			t.Fatalf("CompileTemplate(%q): %v", tc.tpl, err)
		}
		got, ok := tpl.Extract(tc.topic)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q.Extract(%q) = %q %v, want %q %v", tc.tpl, tc.topic, got, ok, tc.want, tc.ok)
		}
	}
}

func TestTemplateMatchAllocatesNothing(t *testing.T) {
	tpl, err := CompileTemplate("devices/{client}/#", false)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if !tpl.MatchClient("devices/car1/telemetry/speed", "car1") {
			t.Fatal("no match")
		}
	})
	if allocs != 0 {
		t.Fatalf("MatchClient allocates %.1f times", allocs)
	}
}
