package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dualgate/dualgate/certs"
)

// apiDo sends one API request with the given headers and returns the
// status and the decoded JSON answer (nil when the body is not JSON).
func apiDo(t *testing.T, client *http.Client, method, url, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// A web page the operator has open can make the browser send a POST to
// the loopback API: as a "simple" request (text/plain, a form), without
// asking first. Such requests are refused, and nothing is stored; the same
// command sent by a program (no Origin, JSON) is taken.
func TestAPICrossSiteRefused(t *testing.T) {
	g := startGateway(t, nil)
	url := "http://" + g.APIAddr() + "/v1/clients/victim/commands"
	body := `{"topic":"devices/victim/commands/unlock","payload":"open"}`
	for _, tc := range []struct {
		name    string
		headers map[string]string
		code    int
	}{
		{"text/plain from a foreign page", map[string]string{"Content-Type": "text/plain", "Origin": "http://evil.example"}, http.StatusForbidden},
		{"form from a foreign page", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}, http.StatusForbidden},
		{"JSON from a foreign origin", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, http.StatusForbidden},
		{"origin on another port of this host", map[string]string{"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, http.StatusForbidden},
		{"opaque origin", map[string]string{"Content-Type": "application/json", "Origin": "null"}, http.StatusForbidden},
		{"Sec-Fetch-Site cross-site", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"Sec-Fetch-Site same-site", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
		{"text/plain without origin", map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType},
		{"no content type", nil, http.StatusUnsupportedMediaType},
		{"JSON-looking text/plain", map[string]string{"Content-Type": "text/plain; charset=utf-8"}, http.StatusUnsupportedMediaType},
	} {
		code, out := apiDo(t, nil, http.MethodPost, url, body, tc.headers)
		if code != tc.code {
			t.Fatalf("%s: status %d %v, want %d", tc.name, code, out, tc.code)
		}
		if msg, _ := out["error"].(string); msg == "" {
			t.Fatalf("%s: no JSON error: %v", tc.name, out)
		}
	}
	if code := getJSON(t, g, "/v1/clients/victim", "", nil); code != http.StatusNotFound {
		t.Fatalf("a refused request stored something: GET client %d, want 404", code)
	}
	var st statsView
	getJSON(t, g, "/v1/stats", "", &st)
	if st.Commands["pending"] != 0 || st.OnDemand["accepted"] != 0 {
		t.Fatalf("a refused request stored something: %+v %+v", st.Commands, st.OnDemand)
	}

	// A program, and a page of the API's own origin, may send it.
	for _, h := range []map[string]string{
		{"Content-Type": "application/json"},
		{"Content-Type": "application/json; charset=utf-8", "Origin": "http://" + g.APIAddr(), "Sec-Fetch-Site": "same-origin"},
	} {
		if code, out := apiDo(t, nil, http.MethodPost, url, body, h); code != http.StatusAccepted {
			t.Fatalf("%v: %d %v, want 202", h, code, out)
		}
	}
	var v clientView
	if code := getJSON(t, g, "/v1/clients/victim", "", &v); code != http.StatusOK || v.Pending != 2 {
		t.Fatalf("GET client: %d %+v, want 2 pending", code, v)
	}
}

// An API reachable from other machines needs a token: the gateway does not
// start without one unless told to (--api-insecure); --pprof never runs
// without a token; the TLS settings go together.
func TestAPIRefusesOpenSettings(t *testing.T) {
	base := func(mod func(*Config)) Config {
		c := Config{Plain: "127.0.0.1:0", TLS: "127.0.0.1:0", API: "127.0.0.1:0", Data: t.TempDir()}
		mod(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"all interfaces, port only", func(c *Config) { c.API = ":8080" }, "without --api-token"},
		{"0.0.0.0", func(c *Config) { c.API = "0.0.0.0:8080" }, "--api-insecure"},
		{"[::]", func(c *Config) { c.API = "[::]:8080" }, "bind the API to a loopback address"},
		{"a public address", func(c *Config) { c.API = "192.0.2.10:8080" }, "without --api-token"},
		{"a host name", func(c *Config) { c.API = "gw.example.com:8080" }, "without --api-token"},
		{"pprof without token", func(c *Config) { c.Pprof = true }, "--pprof needs --api-token"},
		{"pprof without token, insecure", func(c *Config) { c.Pprof, c.APIInsecure = true, true }, "--pprof needs --api-token"},
		{"tls cert without key", func(c *Config) { c.APITLSCert = "cert.pem" }, "go together"},
	} {
		_, err := New(base(tc.mod), Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: New error %v, want one saying %q", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"token", func(c *Config) { c.API, c.APIToken = ":8080", "t0ken" }},
		{"insecure", func(c *Config) { c.API, c.APIInsecure = "0.0.0.0:8080", true }},
		{"IPv6 loopback", func(c *Config) { c.API = "[::1]:8080" }},
		{"localhost", func(c *Config) { c.API = "localhost:8080" }},
		{"127.0.0.2", func(c *Config) { c.API = "127.0.0.2:8080" }},
	} {
		if _, err := New(base(tc.mod), Options{}); err != nil {
			t.Fatalf("%s: New: %v", tc.name, err)
		}
	}
}

// With a token, /metrics and /debug/pprof need it too (unless
// --metrics-public for /metrics); /healthz and /readyz stay open for the
// balancer.
func TestAPITokenCoversMetricsAndPprof(t *testing.T) {
	g := startGateway(t, func(c *Config) { c.APIToken, c.Pprof = "s3cret", true })
	base := "http://" + g.APIAddr()
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	for _, p := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/heap"} {
		if code, _ := apiDo(t, nil, http.MethodGet, base+p, "", nil); code != http.StatusUnauthorized {
			t.Fatalf("%s without token: %d, want 401", p, code)
		}
		if code, _ := apiDo(t, nil, http.MethodGet, base+p, "", map[string]string{"Authorization": "Bearer s3cre"}); code != http.StatusUnauthorized {
			t.Fatalf("%s with a wrong token: %d, want 401", p, code)
		}
		if code, _ := apiDo(t, nil, http.MethodGet, base+p, "", auth); code != http.StatusOK {
			t.Fatalf("%s with token: %d, want 200", p, code)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := apiDo(t, nil, http.MethodGet, base+p, "", nil); code != http.StatusOK {
			t.Fatalf("%s: %d, want 200 without token", p, code)
		}
	}

	pub := startGateway(t, func(c *Config) { c.APIToken, c.MetricsPublic = "s3cret", true })
	if code, _ := apiDo(t, nil, http.MethodGet, "http://"+pub.APIAddr()+"/metrics", "", nil); code != http.StatusOK {
		t.Fatalf("--metrics-public: /metrics without token %d, want 200", code)
	}
	if code, _ := apiDo(t, nil, http.MethodGet, "http://"+pub.APIAddr()+"/v1/stats", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("--metrics-public: /v1/stats without token %d, want 401", code)
	}
	if code, _ := apiDo(t, nil, http.MethodGet, "http://"+pub.APIAddr()+"/debug/pprof/", "", auth); code != http.StatusNotFound {
		t.Fatalf("no --pprof: /debug/pprof/ %d, want 404", code)
	}
}

// --api-tls-cert serves the API over HTTPS; plain HTTP gets no answer.
func TestAPITLS(t *testing.T) {
	dir := t.TempDir()
	paths, _, err := certs.EnsureDev(filepath.Join(dir, "api"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, func(c *Config) { c.APITLSCert, c.APITLSKey, c.APIToken = paths.Server, paths.ServerKey, "s3cret" })
	pem, err := os.ReadFile(paths.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	base := "https://" + g.APIAddr()
	if code, _ := apiDo(t, client, http.MethodGet, base+"/healthz", "", nil); code != http.StatusOK {
		t.Fatalf("HTTPS /healthz: %d", code)
	}
	code, out := apiDo(t, client, http.MethodPost, base+"/v1/clients/d1/commands", `{"topic":"devices/d1/commands/x","payload":"p"}`,
		map[string]string{"Content-Type": "application/json", "Authorization": "Bearer s3cret"})
	if code != http.StatusAccepted {
		t.Fatalf("HTTPS POST: %d %v", code, out)
	}
	resp, err := http.Get("http://" + g.APIAddr() + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP served by a TLS API")
		}
	}
}
