package gateway

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/gateway/bridge"
	"github.com/dualgate/dualgate/internal/testbroker"
	"github.com/dualgate/dualgate/mqttcodec"
)

// dialDevice connects a bare MQTT 3.1.1 client over plain or TLS and
// returns once its CONNACK arrived: the gateway registers a session before
// it answers, so the device is listed from then on.
func dialDevice(t *testing.T, g *Gateway, id string, overTLS bool) *raw {
	t.Helper()
	var r *raw
	if overTLS {
		conn, err := tls.Dial("tcp", g.TLSAddr(), clientTLS(t, g))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		r = &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	} else {
		r = dialRaw(t, g.PlainAddr())
	}
	r.connect(&mqttcodec.Connect{ProtocolVersion: mqttcodec.V311, CleanStart: true, ClientID: []byte(id), KeepAlive: 300})
	return r
}

// listPage is GET /v1/clients decoded.
type listPage struct {
	Clients []struct {
		ClientID string `json:"client_id"`
		Mode     string `json:"mode"`
		Protocol int    `json:"protocol"`
		Since    string `json:"since"`
		Node     string `json:"node"`
	} `json:"clients"`
	NextCursor *string `json:"next_cursor"`
}

// listClientsAll pages through GET /v1/clients with the query and returns
// how many times each client id was listed; between runs after each page.
func listClientsAll(t *testing.T, g *Gateway, query url.Values, between func()) (map[string]int, []listPage) {
	t.Helper()
	seen := map[string]int{}
	var pages []listPage
	cursor := ""
	for range 1000 {
		q := url.Values{}
		for k, v := range query {
			q[k] = v
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var p listPage
		if code := getJSON(t, g, "/v1/clients?"+q.Encode(), "", &p); code != http.StatusOK {
			t.Fatalf("GET /v1/clients?%s: %d", q.Encode(), code)
		}
		if p.NextCursor == nil || p.Clients == nil {
			t.Fatalf("page without clients or next_cursor: %+v", p)
		}
		pages = append(pages, p)
		for _, c := range p.Clients {
			seen[c.ClientID]++
		}
		if *p.NextCursor == "" {
			return seen, pages
		}
		cursor = *p.NextCursor
		if between != nil {
			between()
		}
	}
	t.Fatal("the listing never ended")
	return nil, nil
}

// More devices than a page, on both transports, while others connect and
// leave between the pages: each device connected throughout is listed
// exactly once, with its mode, protocol, time and node; the filters keep
// to their mode and node.
func TestAPIListClients(t *testing.T) {
	g := startGateway(t, nil)
	const plainN, tlsN = 130, 20
	for i := range plainN {
		dialDevice(t, g, fmt.Sprintf("plain-%03d", i), false)
	}
	for i := range tlsN {
		dialDevice(t, g, fmt.Sprintf("tls-%03d", i), true)
	}
	node := g.apiNode()
	if node == "" {
		t.Fatal("no node id")
	}
	churn := 0
	var churned []*raw
	seen, pages := listClientsAll(t, g, url.Values{"limit": {"40"}}, func() {
		// One device comes, one of the earlier comers leaves.
		churned = append(churned, dialDevice(t, g, fmt.Sprintf("churn-%d", churn), churn%2 == 0))
		churn++
		if len(churned) > 1 {
			_ = churned[0].conn.Close()
			churned = churned[1:]
		}
	})
	if len(pages) < 4 {
		t.Fatalf("%d pages of 40 for %d devices", len(pages), plainN+tlsN)
	}
	for i, p := range pages {
		if len(p.Clients) > 40 || (i < len(pages)-1 && len(p.Clients) != 40) {
			t.Fatalf("page %d holds %d devices", i, len(p.Clients))
		}
		for _, c := range p.Clients {
			wantMode := "plain"
			if strings.HasPrefix(c.ClientID, "tls-") {
				wantMode = "tls"
			}
			if strings.HasPrefix(c.ClientID, "churn-") {
				continue
			}
			if c.Mode != wantMode || c.Protocol != 4 || c.Node != node || c.Since == "" {
				t.Fatalf("listed %+v", c)
			}
		}
	}
	for i := range plainN {
		if id := fmt.Sprintf("plain-%03d", i); seen[id] != 1 {
			t.Fatalf("%s listed %d times", id, seen[id])
		}
	}
	for i := range tlsN {
		if id := fmt.Sprintf("tls-%03d", i); seen[id] != 1 {
			t.Fatalf("%s listed %d times", id, seen[id])
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s listed %d times", id, n)
		}
	}

	// The default page is 100; filters by mode and node.
	var first listPage
	getJSON(t, g, "/v1/clients", "", &first)
	if len(first.Clients) != 100 || first.NextCursor == nil || *first.NextCursor == "" {
		t.Fatalf("default page: %d devices, next %v", len(first.Clients), first.NextCursor)
	}
	tlsSeen, _ := listClientsAll(t, g, url.Values{"mode": {"tls"}, "limit": {"7"}}, nil)
	for id := range tlsSeen {
		if !strings.HasPrefix(id, "tls-") && !strings.HasPrefix(id, "churn-") {
			t.Fatalf("mode=tls listed %s", id)
		}
	}
	plainSeen, _ := listClientsAll(t, g, url.Values{"mode": {"plain"}, "limit": {"1000"}, "node": {node}}, nil)
	n := 0
	for id := range plainSeen {
		if strings.HasPrefix(id, "tls-") {
			t.Fatalf("mode=plain listed %s", id)
		}
		if strings.HasPrefix(id, "plain-") {
			n++
		}
	}
	if n != plainN || len(tlsSeen) < tlsN {
		t.Fatalf("mode=plain listed %d of %d, mode=tls %d of %d", n, plainN, len(tlsSeen), tlsN)
	}
	other, _ := listClientsAll(t, g, url.Values{"node": {"not-" + node}}, nil)
	if len(other) != 0 {
		t.Fatalf("node=not-%s listed %d devices", node, len(other))
	}

	// GET /v1/clients/{id} names the node of a connected device.
	var v clientView
	getJSON(t, g, "/v1/clients/plain-007", "", &v)
	if !v.Connected || v.Node != node {
		t.Fatalf("client view %+v, want node %q", v, node)
	}
}

// Bad list parameters get a 400 that says what is wrong.
func TestAPIListBadRequests(t *testing.T) {
	g := startGateway(t, nil)
	dialDevice(t, g, "dev-1", false)
	postCommand(t, g, "dev-1", `{"topic":"devices/dev-1/commands/a","payload":"x","secure":false}`)
	for _, tc := range []struct{ path, want string }{
		{"/v1/clients?cursor=bm9wZQ", "cursor"},
		{"/v1/clients?cursor=%21%21", "cursor"},
		{"/v1/clients?limit=0", "limit"},
		{"/v1/clients?limit=1001", "limit"},
		{"/v1/clients?limit=ten", "limit"},
		{"/v1/clients?limit=", "limit"},
		{"/v1/clients?mode=quic", "mode"},
		{"/v1/clients?mode=TLS", "mode"},
		{"/v1/clients?modes=tls", "unknown parameter"},
		{"/v1/clients?limit=5&limit=6", "limit"},
		{"/v1/clients/dev-1/commands?cursor=bm9wZQ", "cursor"},
		{"/v1/clients/dev-1/commands?limit=0", "limit"},
		{"/v1/clients/dev-1/commands?limit=100000", "limit"},
		{"/v1/clients/dev-1/commands?mode=tls", "unknown parameter"},
	} {
		code, out := apiDo(t, nil, http.MethodGet, "http://"+g.APIAddr()+tc.path, "", nil)
		msg, _ := out["error"].(string)
		if code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("GET %s: %d %q, want 400 naming %q", tc.path, code, msg, tc.want)
		}
	}
	// A cursor of a device's command list is not one of the device list,
	// nor the other way round.
	postCommand(t, g, "dev-1", `{"topic":"devices/dev-1/commands/b","payload":"y","secure":false}`)
	dialDevice(t, g, "dev-2", false)
	var cl commandList
	var dl listPage
	if code := getJSON(t, g, "/v1/clients/dev-1/commands?limit=1", "", &cl); code != http.StatusOK || cl.NextCursor == "" {
		t.Fatalf("commands: %d %+v", code, cl)
	}
	if code := getJSON(t, g, "/v1/clients?limit=1", "", &dl); code != http.StatusOK || dl.NextCursor == nil || *dl.NextCursor == "" {
		t.Fatalf("clients: %d %+v", code, dl)
	}
	for _, path := range []string{"/v1/clients?cursor=" + url.QueryEscape(cl.NextCursor), "/v1/clients/dev-1/commands?cursor=" + url.QueryEscape(*dl.NextCursor)} {
		if code, out := apiDo(t, nil, http.MethodGet, "http://"+g.APIAddr()+path, "", nil); code != http.StatusBadRequest {
			t.Errorf("GET %s: %d %v, want 400", path, code, out)
		}
	}
}

// A device's commands, newest first, over several pages, pending and
// final ones (cancelled, delivered) together; each listed once.
func TestAPIListClientCommands(t *testing.T) {
	g := startGateway(t, nil)
	var ids []string
	for i := range 7 {
		id, _ := postCommand(t, g, "meter-9", fmt.Sprintf(`{"topic":"devices/meter-9/commands/c%d","payload":"p%d"}`, i, i))
		ids = append(ids, id)
	}
	postCommand(t, g, "meter-10", `{"topic":"devices/meter-10/commands/x","payload":"other"}`)
	if code, out := apiDo(t, nil, http.MethodDelete, "http://"+g.APIAddr()+"/v1/commands/"+ids[2], "", nil); code != http.StatusOK {
		t.Fatalf("DELETE: %d %v", code, out)
	}
	var got []commandView
	cursor := ""
	pages := 0
	for {
		var cl commandList
		path := "/v1/clients/meter-9/commands?limit=3"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if code := getJSON(t, g, path, "", &cl); code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, code)
		}
		pages++
		got = append(got, cl.Commands...)
		if cl.NextCursor == "" {
			break
		}
		cursor = cl.NextCursor
	}
	if pages != 3 || len(got) != 7 {
		t.Fatalf("%d pages, %d commands", pages, len(got))
	}
	for i, c := range got {
		want := ids[len(ids)-1-i]
		if c.ID != want || c.ClientID != "meter-9" {
			t.Fatalf("command %d: %s of %s, want %s", i, c.ID, c.ClientID, want)
		}
		wantStatus := "pending"
		if c.ID == ids[2] {
			wantStatus = "cancelled"
		}
		if string(c.Status) != wantStatus || len(c.History) == 0 {
			t.Fatalf("command %s: %s, history %v", c.ID, c.Status, c.History)
		}
	}
	// A device without commands: an empty page.
	raw := rawGet(t, g, "/v1/clients/nobody/commands")
	if raw != `{"commands":[],"next_cursor":""}` {
		t.Fatalf("empty list %s", raw)
	}
}

// rawGet returns the body of a GET, trimmed.
func rawGet(t *testing.T, g *Gateway, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + g.APIAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// checkSnake fails on any object key of v that is not snake_case.
func checkSnake(t *testing.T, where string, v any) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if !snakeCase.MatchString(k) {
				t.Errorf("%s: key %q is not snake_case", where, k)
			}
			checkSnake(t, where+"."+k, e)
		}
	case []any:
		for _, e := range x {
			checkSnake(t, where, e)
		}
	}
}

// Every JSON answer names its fields in snake_case, the upstream block of
// /v1/stats included.
func TestAPIStatsSnakeCase(t *testing.T) {
	br := testbroker.Start(t)
	g := upstreamGateway(t, br, nil)
	waitUpstream(t, g)
	dialDevice(t, g, "snake-1", false)
	id, _ := postCommand(t, g, "snake-1", `{"topic":"devices/snake-1/commands/a","payload":"x","secure":false}`)
	for _, path := range []string{"/v1/stats", "/v1/clients", "/v1/clients/snake-1", "/v1/clients/snake-1/commands",
		"/v1/commands/" + id, "/healthz", "/readyz", "/v1/nothing"} {
		var v any
		if err := json.Unmarshal([]byte(rawGet(t, g, path)), &v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		checkSnake(t, path, v)
	}
	var st map[string]any
	getJSON(t, g, "/v1/stats", "", &st)
	up, _ := st["upstream"].(map[string]any)
	for _, k := range []string{"pool", "connected", "forwarded_up", "forwarded_down", "in_flight", "dropped_qos0", "commands_subscribed"} {
		if _, ok := up[k]; !ok {
			t.Errorf("upstream block lacks %q: %v", k, up)
		}
	}
	if up["connected"] != up["pool"] || up["connected"] == float64(0) || up["commands_subscribed"] != true {
		t.Errorf("upstream block %v", up)
	}
	cmds, _ := st["commands"].(map[string]any)
	if _, ok := cmds["cancelled"]; !ok {
		t.Errorf("commands block lacks cancelled: %v", cmds)
	}
}

// The upstream block maps every field of bridge.Stats, each to its own
// key: a field added to the bridge's statistics must be added to the API.
func TestAPIStatsUpstreamEveryField(t *testing.T) {
	var s bridge.Stats
	rv := reflect.ValueOf(&s).Elem()
	for i := range rv.NumField() {
		f := rv.Field(i)
		switch f.Kind() {
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Bool:
			f.SetBool(true)
		case reflect.String:
			f.SetString(fmt.Sprint(i + 1))
		default:
			t.Fatalf("bridge.Stats.%s is a %s: map it in upstreamView", rv.Type().Field(i).Name, f.Kind())
		}
	}
	b, err := json.Marshal(viewOfUpstream(s))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != rv.NumField() {
		t.Fatalf("upstream block has %d keys for the %d fields of bridge.Stats", len(m), rv.NumField())
	}
	values := map[any]string{}
	for k, v := range m {
		if other, dup := values[v]; dup && v != true {
			t.Fatalf("keys %q and %q carry the same field", k, other)
		}
		values[v] = k
	}
	for i := range rv.NumField() {
		want := any(float64(i + 1))
		switch rv.Field(i).Kind() {
		case reflect.Bool:
			want = true
		case reflect.String:
			want = fmt.Sprint(i + 1)
		}
		if _, ok := values[want]; !ok {
			t.Errorf("bridge.Stats.%s is missing from the upstream block", rv.Type().Field(i).Name)
		}
	}
}

// GET /v1/clients/{id} shows the dispatcher's state while it tracks the
// device; once the device has left with nothing going on (it came on TLS
// by itself, nothing pending), the dispatcher keeps no record of it and
// the device is not known.
func TestClientStateUntilNothingGoesOn(t *testing.T) {
	g := startGateway(t, nil)
	r := dialDevice(t, g, "passer-by", true)
	// The CONNACK leaves before the device's worker has made its record:
	// the state shows once it has.
	eventually(t, 10*time.Second, "the device connected with a state", func() bool {
		var v clientView
		code := getJSON(t, g, "/v1/clients/passer-by", "", &v)
		return code == http.StatusOK && v.Connected && v.State != ""
	})
	if n := metric(t, g, "dualgate_dispatch_tracked_devices"); n != 1 {
		t.Fatalf("dualgate_dispatch_tracked_devices = %v on TLS, want 1", n)
	}
	r.send(mqttcodec.AppendDisconnect(nil, mqttcodec.V311, &mqttcodec.Disconnect{}))
	eventually(t, 10*time.Second, "the device unknown once gone", func() bool {
		return getJSON(t, g, "/v1/clients/passer-by", "", nil) == http.StatusNotFound
	})
	if n := metric(t, g, "dualgate_dispatch_tracked_devices"); n != 0 {
		t.Fatalf("dualgate_dispatch_tracked_devices = %v once gone, want 0", n)
	}
}
