package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The help text gives each default once, from Defaults.
func TestUsageDefaults(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "usage"))
	if err != nil {
		t.Fatal(err)
	}
	Usage(f)
	_ = f.Close()
	raw, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	help := string(raw)
	for _, want := range []string{"-mem-release", "(default 1s)", "-connect-timeout", "(default 10s)", "-gc-percent", "(default 25)"} {
		if !strings.Contains(help, want) {
			t.Errorf("usage lacks %q", want)
		}
	}
	for _, line := range strings.Split(help, "\n") {
		if strings.Count(line, "(default ") > 1 || strings.Contains(line, "(default 0s)") {
			t.Errorf("usage repeats a default: %s", line)
		}
	}
}

// A setting comes from the flag, else the environment, else the YAML file,
// else the default.
func TestLoadConfigSources(t *testing.T) {
	yml := filepath.Join(t.TempDir(), "dualgate.yaml")
	if err := os.WriteFile(yml, []byte("mem-release: 3s\nconnect-timeout: 4s\nmax-connections: 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DUALGATE_CONFIG": yml, "DUALGATE_CONNECT_TIMEOUT": "5s"}
	getenv := func(k string) string { return env[k] }

	cfg, err := LoadConfig([]string{"--max-connections", "9"}, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MemRelease != 3*time.Second || cfg.ConnectTimeout != 5*time.Second || cfg.MaxConnections != 9 || cfg.GCPercent != 25 {
		t.Fatalf("mem-release %v (file), connect-timeout %v (env), max-connections %d (flag), gc-percent %d (default)",
			cfg.MemRelease, cfg.ConnectTimeout, cfg.MaxConnections, cfg.GCPercent)
	}
	// A negative mem-release turns the releaser off; it is not replaced by
	// the default.
	cfg, err = LoadConfig([]string{"--mem-release=-1s"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MemRelease >= 0 {
		t.Fatalf("mem-release %v, want negative", cfg.MemRelease)
	}
	if _, err := LoadConfig([]string{"--mem-release", "soon"}, func(string) string { return "" }); err == nil {
		t.Fatal("a malformed duration was accepted")
	}
}
