package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dualgate/dualgate/gateway/cluster"
	"github.com/dualgate/dualgate/gateway/dispatch"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/gateway/store"
	"github.com/dualgate/dualgate/mqttcodec"
)

// Limits on a command accepted through the API.
const (
	maxCommandPayload = 256 << 10
	defaultCommandTTL = time.Hour
	maxCommandTTL     = 30 * 24 * time.Hour
)

// commandRequest is the body of POST /v1/clients/{id}/commands.
type commandRequest struct {
	Topic      *string `json:"topic"`
	Payload    *string `json:"payload"`
	PayloadB64 *string `json:"payload_b64"`
	QoS        *int    `json:"qos"`
	Secure     *bool   `json:"secure"`
	TTLSeconds *int64  `json:"ttl_seconds"`
}

// fieldError names the request field that is wrong.
type fieldError struct {
	field, msg string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// parseCommand validates a request (client ids follow the sessions' rule) and builds the command it asks for.
func parseCommand(clientID string, maxIDLen int, body io.Reader, now time.Time) (*store.Command, error) {
	if err := session.CheckClientID(clientID, maxIDLen); err != nil {
		return nil, &fieldError{"client id", err.Error()}
	}
	var req commandRequest
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &fieldError{"body", fmt.Sprintf("larger than %d bytes", mbe.Limit)}
		}
		return nil, &fieldError{"body", "not a JSON command: " + strings.TrimPrefix(err.Error(), "json: ")}
	}
	if dec.More() {
		return nil, &fieldError{"body", "more than one JSON value"}
	}
	c := &store.Command{ID: store.NewID(now), ClientID: clientID, CreatedAt: now, QoS: 1, Secure: true}
	if req.Topic == nil || *req.Topic == "" {
		return nil, &fieldError{"topic", "required, e.g. devices/" + clientID + "/commands/unlock"}
	}
	if err := mqttcodec.ValidTopicName([]byte(*req.Topic)); err != nil {
		return nil, &fieldError{"topic", err.Error()}
	}
	if strings.HasPrefix(*req.Topic, "$") {
		return nil, &fieldError{"topic", "topics starting with $ are reserved"}
	}
	c.Topic = *req.Topic
	switch {
	case req.Payload != nil && req.PayloadB64 != nil:
		return nil, &fieldError{"payload", "give payload or payload_b64, not both"}
	case req.PayloadB64 != nil:
		b, err := base64.StdEncoding.DecodeString(*req.PayloadB64)
		if err != nil {
			return nil, &fieldError{"payload_b64", "not standard base64: " + err.Error()}
		}
		c.Payload = b
	case req.Payload != nil:
		c.Payload = []byte(*req.Payload)
	}
	if len(c.Payload) > maxCommandPayload {
		return nil, &fieldError{"payload", fmt.Sprintf("%d bytes, more than %d", len(c.Payload), maxCommandPayload)}
	}
	if req.QoS != nil {
		if *req.QoS != 0 && *req.QoS != 1 {
			return nil, &fieldError{"qos", "must be 0 or 1"}
		}
		c.QoS = byte(*req.QoS)
	}
	if req.Secure != nil {
		c.Secure = *req.Secure
	}
	ttl := defaultCommandTTL
	if req.TTLSeconds != nil {
		if *req.TTLSeconds < 1 || *req.TTLSeconds > int64(maxCommandTTL/time.Second) {
			return nil, &fieldError{"ttl_seconds", fmt.Sprintf("must be 1..%d", int64(maxCommandTTL/time.Second))}
		}
		ttl = time.Duration(*req.TTLSeconds) * time.Second
	}
	c.ExpiresAt = now.Add(ttl)
	return c, nil
}

func (g *Gateway) postCommand(w http.ResponseWriter, r *http.Request) {
	c, err := parseCommand(r.PathValue("id"), g.env.MaxClientIDLen, r.Body, g.env.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	status, err := g.dispatcher.Submit(c)
	switch {
	case errors.Is(err, store.ErrFull):
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("client %s already has %d undelivered commands", c.ClientID, g.cfg.CommandLimit))
		return
	case err != nil:
		g.logger.Error("command not stored", zap.String("client", c.ClientID), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "command not stored: "+err.Error())
		return
	}
	if g.members != nil {
		g.members.commandStored(c.ClientID)
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": c.ID, "status": string(status)})
}

// commandView is the answer of GET /v1/commands/{cid}, and of a
// successful DELETE.
type commandView struct {
	ID          string           `json:"id"`
	ClientID    string           `json:"client_id"`
	Topic       string           `json:"topic"`
	QoS         byte             `json:"qos"`
	Secure      bool             `json:"secure"`
	Status      store.Status     `json:"status"`
	CreatedAt   time.Time        `json:"created_at"`
	ExpiresAt   time.Time        `json:"expires_at"`
	DeliveredAt *time.Time       `json:"delivered_at"`
	Attempts    int              `json:"attempts"`
	History     []transitionView `json:"history"`
}

type transitionView struct {
	Status store.Status `json:"status"`
	At     time.Time    `json:"at"`
	Note   string       `json:"note,omitempty"`
}

func (g *Gateway) getCommand(w http.ResponseWriter, r *http.Request) {
	c, err := g.store.Get(r.PathValue("cid"))
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no command "+r.PathValue("cid"))
		return
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, viewOf(c))
}

// viewOf is the API's view of a command.
func viewOf(c *store.Command) commandView {
	v := commandView{
		ID: c.ID, ClientID: c.ClientID, Topic: c.Topic, QoS: c.QoS, Secure: c.Secure,
		Status: c.Status, CreatedAt: c.CreatedAt.UTC(), ExpiresAt: c.ExpiresAt.UTC(), Attempts: c.Attempts,
	}
	if !c.DeliveredAt.IsZero() {
		t := c.DeliveredAt.UTC()
		v.DeliveredAt = &t
	}
	for _, h := range c.History {
		v.History = append(v.History, transitionView{Status: h.Status, At: h.At.UTC(), Note: h.Note})
	}
	return v
}

// commandList is the answer of GET /v1/clients/{id}/commands.
type commandList struct {
	Commands   []commandView `json:"commands"`
	NextCursor string        `json:"next_cursor"`
}

// listCommands answers GET /v1/clients/{id}/commands?cursor=&limit=: the
// device's commands newest first, final ones until the retention prunes
// them, a page at a time (store.List).
func (g *Gateway) listCommands(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := session.CheckClientID(id, g.env.MaxClientIDLen); err != nil {
		writeError(w, http.StatusBadRequest, "client id: "+err.Error())
		return
	}
	_, cursor, limit, err := pageQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cmds, next, err := g.store.List(id, cursor, limit)
	switch {
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, "cursor: not one this list gave out; list again without cursor")
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	out := commandList{Commands: make([]commandView, 0, len(cmds)), NextCursor: next}
	for _, c := range cmds {
		out.Commands = append(out.Commands, viewOf(c))
	}
	writeJSON(w, http.StatusOK, out)
}

// cancelWait bounds how long DELETE /v1/commands/{cid} waits for the
// device's earlier work to let the cancel run.
const cancelWait = 10 * time.Second

// cancelRefusal is the 409 answer of a cancel that came too late.
type cancelRefusal struct {
	Error  string       `json:"error"`
	ID     string       `json:"id"`
	Status store.Status `json:"status"`
}

// cancelCommand answers DELETE /v1/commands/{cid}: the command is
// cancelled if it was not written to its device yet (dispatch.Cancel
// orders the cancel with the device's deliveries).
func (g *Gateway) cancelCommand(w http.ResponseWriter, r *http.Request) {
	cid := r.PathValue("cid")
	ctx, cancel := context.WithTimeout(r.Context(), cancelWait)
	defer cancel()
	c, err := g.cancelOnHolder(ctx, cid)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, viewOf(c))
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "no command "+cid)
	case errors.Is(err, dispatch.ErrWritten):
		// Written while the store failed to record it: it counts as sent.
		status := c.Status
		if !status.Final() && status != store.StatusSent {
			status = store.StatusSent
		}
		writeJSON(w, http.StatusConflict, cancelRefusal{
			Error: fmt.Sprintf("command %s was already written to the device (status %s): it cannot be cancelled", cid, status),
			ID:    cid, Status: status,
		})
	case errors.Is(err, dispatch.ErrFinished):
		writeJSON(w, http.StatusConflict, cancelRefusal{
			Error: fmt.Sprintf("command %s has already ended (status %s): there is nothing to cancel", cid, c.Status),
			ID:    cid, Status: c.Status,
		})
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, "the cancel of command "+cid+" did not run within "+cancelWait.String()+
			" (the device's earlier work is still under way); it may still take effect: read the command to see")
	default:
		g.logger.Error("command not cancelled", zap.String("command", cid), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "command not cancelled: "+err.Error())
	}
}

// cancelOnHolder cancels command cid on the node holding its device, so
// that the cancel is ordered with that node's deliveries: here (one node,
// or the device is here, offline, or its node is not live), or, in a
// cluster, on the device's node, asked through its inbox, whose outcome
// this node reads from the shared store. The outcome and errors are those
// of dispatch.Cancel; an unanswered remote cancel ends with ctx's error.
func (g *Gateway) cancelOnHolder(ctx context.Context, cid string) (*store.Command, error) {
	if g.members == nil {
		return g.dispatcher.Cancel(ctx, cid)
	}
	c, err := g.store.Get(cid)
	if err != nil || c.Status.Final() || c.Status == store.StatusSent {
		return g.dispatcher.Cancel(ctx, cid) // answers from the store as it stands
	}
	if _, here := g.reg.Get(c.ClientID); here {
		return g.dispatcher.Cancel(ctx, cid)
	}
	rctx, rcancel := context.WithTimeout(ctx, g.cfg.ClusterTimeout)
	rec, ok, err := g.members.m.Get(rctx, c.ClientID)
	rcancel()
	if err != nil || !ok || rec.Node == g.members.m.Node() {
		// Offline, or the registry cannot say: no node is delivering
		// (or none that this one could ask), the store orders the rest.
		return g.dispatcher.Cancel(ctx, cid)
	}
	if err := g.members.m.Notify(ctx, rec.Node, cluster.CancelCommand{ClientID: c.ClientID, CommandID: cid}); err != nil {
		return nil, err
	}
	// The device's node cancels it on its worker and writes the outcome
	// to the store: cancelled, or sent (it was written first).
	t := time.NewTicker(cancelPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		c, err := g.store.Get(cid)
		if err != nil {
			return nil, err
		}
		switch {
		case c.Status == store.StatusCancelled:
			return c, nil
		case c.Status.Final() || c.Status == store.StatusSent:
			return c, dispatch.FinishedError(c)
		}
	}
}

// cancelPoll is how often a cancel asked of another node reads the store
// for its outcome.
const cancelPoll = 50 * time.Millisecond
