package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrAPI is returned for an answer of the gateway's HTTP API that is not
// the one expected.
var ErrAPI = errors.New("bench: gateway API")

// APIClient speaks dualgate's HTTP API (docs/operations.md): commands,
// clients, stats.
type APIClient struct {
	// Base is the API's base URL, e.g. http://127.0.0.1:8080.
	Base string
	// Token, when set, is sent as a bearer token.
	Token string
	// HTTP is the client used; nil means one with keep-alive connections
	// for up to 64 requests at once and a 10 s timeout.
	HTTP *http.Client
}

// NewAPIClient returns a client of the API at base, with room for
// concurrent requests at once.
func NewAPIClient(base, token string, concurrent int) *APIClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(concurrent, 2)
	tr.MaxConnsPerHost = max(concurrent, 2)
	return &APIClient{
		Base:  strings.TrimRight(base, "/"),
		Token: token,
		HTTP:  &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
}

// Close releases the client's idle connections.
func (a *APIClient) Close() {
	if a.HTTP != nil {
		a.HTTP.CloseIdleConnections()
	}
}

// CommandRequest is the body of POST /v1/clients/{id}/commands.
type CommandRequest struct {
	Topic      string `json:"topic"`
	Payload    string `json:"payload"`
	QoS        int    `json:"qos"`
	Secure     bool   `json:"secure"`
	TTLSeconds int    `json:"ttl_seconds,omitempty"`
}

// CommandAccepted is the answer to a command.
type CommandAccepted struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// CommandStatus is the answer of GET /v1/commands/{id}.
type CommandStatus struct {
	ID          string     `json:"id"`
	ClientID    string     `json:"client_id"`
	Status      string     `json:"status"`
	Secure      bool       `json:"secure"`
	CreatedAt   time.Time  `json:"created_at"`
	DeliveredAt *time.Time `json:"delivered_at"`
}

// ClientStatus is the answer of GET /v1/clients/{id}.
type ClientStatus struct {
	ClientID  string `json:"client_id"`
	Connected bool   `json:"connected"`
	Mode      string `json:"mode"`
	Pending   int    `json:"pending"`
}

// GatewayStats is the part of GET /v1/stats the bench reads.
type GatewayStats struct {
	Connections map[string]int    `json:"connections"`
	Commands    map[string]int    `json:"commands"`
	OnDemand    map[string]uint64 `json:"on_demand"`
	Memory      map[string]uint64 `json:"memory"`
}

// Plain and TLS are the connected devices by transport.
func (s GatewayStats) Plain() int { return s.Connections["plain"] }

// TLS is the number of devices connected over TLS.
func (s GatewayStats) TLS() int { return s.Connections["tls"] }

// InFlight is the number of commands not yet delivered, expired or failed.
func (s GatewayStats) InFlight() int {
	return s.Commands["pending"] + s.Commands["upgrading"] + s.Commands["sent"]
}

// PostCommand sends a command for clientID.
func (a *APIClient) PostCommand(ctx context.Context, clientID string, req CommandRequest) (CommandAccepted, error) {
	var out CommandAccepted
	body, err := json.Marshal(req)
	if err != nil {
		return out, fmt.Errorf("bench: command body: %w", err)
	}
	err = a.do(ctx, http.MethodPost, "/v1/clients/"+url.PathEscape(clientID)+"/commands", body, http.StatusAccepted, &out)
	return out, err
}

// Command reads a command's status.
func (a *APIClient) Command(ctx context.Context, id string) (CommandStatus, error) {
	var out CommandStatus
	err := a.do(ctx, http.MethodGet, "/v1/commands/"+url.PathEscape(id), nil, http.StatusOK, &out)
	return out, err
}

// Client reads where a device is.
func (a *APIClient) Client(ctx context.Context, id string) (ClientStatus, error) {
	var out ClientStatus
	err := a.do(ctx, http.MethodGet, "/v1/clients/"+url.PathEscape(id), nil, http.StatusOK, &out)
	return out, err
}

// Stats reads the gateway's counters.
func (a *APIClient) Stats(ctx context.Context) (GatewayStats, error) {
	var out GatewayStats
	err := a.do(ctx, http.MethodGet, "/v1/stats", nil, http.StatusOK, &out)
	return out, err
}

func (a *APIClient) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("bench: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("bench: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%w: %s %s: status %s: %s", ErrAPI, method, path, resp.Status, strings.TrimSpace(string(raw)))
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrAPI, method, path, err)
	}
	return nil
}
