package session

import (
	"sync"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// Will is a device's will message, published when its connection ends
// without a normal DISCONNECT.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	Delay   time.Duration // MQTT 5 Will Delay Interval
	// Username and TLS are the session's, for the topic authorization
	// and the secure-data rule when the Will is published.
	Username string
	TLS      bool
}

// Store keeps the state of persistent sessions while their devices are
// away (subscriptions until the session expires) and delayed wills. It is
// shared by all sessions; Sweep, called periodically, expires sessions and
// publishes wills that are due.
type Store struct {
	sink Sink

	mu       sync.Mutex // guards sessions and wills
	sessions map[string]keptSession
	wills    map[string]dueWill
}

type keptSession struct {
	subs    []Subscription
	expires time.Time
}

type dueWill struct {
	will *Will
	due  time.Time
	// moved: held because the gateway moved the device (HoldWill).
	moved bool
}

// NewStore returns an empty store that publishes wills to sink.
func NewStore(sink Sink) *Store {
	return &Store{sink: sink, sessions: make(map[string]keptSession), wills: make(map[string]dueWill)}
}

// Keep holds a disconnected session's subscriptions until expires.
func (st *Store) Keep(clientID string, subs []Subscription, expires time.Time) {
	st.mu.Lock()
	st.sessions[clientID] = keptSession{subs: subs, expires: expires}
	st.mu.Unlock()
}

// Take returns and removes a kept session for a device resuming it. A will
// still waiting for its delay is cancelled [MQTT-3.1.3-9].
func (st *Store) Take(clientID string, now time.Time) ([]Subscription, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.wills, clientID)
	k, ok := st.sessions[clientID]
	if !ok {
		return nil, false
	}
	delete(st.sessions, clientID)
	if !now.Before(k.expires) {
		return nil, false
	}
	return k.subs, true
}

// Drop discards a kept session for a device starting clean. Ending the
// session publishes a will still waiting for its delay, unless the will
// was held for a move (HoldWill): the device is back.
func (st *Store) Drop(clientID string, now time.Time) {
	st.mu.Lock()
	delete(st.sessions, clientID)
	dw, ok := st.wills[clientID]
	delete(st.wills, clientID)
	st.mu.Unlock()
	if ok && !dw.moved {
		st.publish(clientID, dw.will)
	}
}

// HoldWill keeps the will of a device the gateway disconnected to move it
// until due: a new connection with the same client id drops it (Take or
// Drop), Sweep publishes it once due.
func (st *Store) HoldWill(clientID string, w *Will, now, due time.Time) {
	st.mu.Lock()
	st.wills[clientID] = dueWill{will: w, due: due, moved: true}
	st.mu.Unlock()
}

// ScheduleWill publishes w at due (at once when due is not in the future).
func (st *Store) ScheduleWill(clientID string, w *Will, now, due time.Time) {
	if !due.After(now) {
		st.publish(clientID, w)
		return
	}
	st.mu.Lock()
	st.wills[clientID] = dueWill{will: w, due: due}
	st.mu.Unlock()
}

// Sweep expires kept sessions and publishes due wills.
func (st *Store) Sweep(now time.Time) {
	var due []string
	var ws []*Will
	st.mu.Lock()
	for id, k := range st.sessions {
		if !now.Before(k.expires) {
			delete(st.sessions, id)
		}
	}
	for id, dw := range st.wills {
		if !now.Before(dw.due) {
			due = append(due, id)
			ws = append(ws, dw.will)
			delete(st.wills, id)
		}
	}
	st.mu.Unlock()
	for i, id := range due {
		st.publish(id, ws[i])
	}
}

// Len reports kept sessions and waiting wills.
func (st *Store) Len() (sessions, wills int) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions), len(st.wills)
}

func (st *Store) publish(clientID string, w *Will) {
	m := &Message{ClientID: clientID, Username: w.Username, Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain, TLS: w.TLS}
	if m.QoS == 0 {
		st.sink.Publish(m, nil)
		return
	}
	// Nobody waits for a will's acknowledgement.
	st.sink.Publish(m, func(mqttcodec.ReasonCode) {})
}
