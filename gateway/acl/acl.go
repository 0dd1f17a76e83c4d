package acl

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// DefaultCommandFilter is the command space when Config.CommandFilter is
// empty: the conventional command topics.
const DefaultCommandFilter = "devices/{client}/commands/#"

// Config holds an Authorizer's settings.
type Config struct {
	// File is an acl file in Mosquitto's acl_file format (see parse).
	// Empty: no file, and what the built-in rules allow is allowed.
	File string
	// CommandFilter is the command space, a filter with {client} standing
	// for a client id in one level (default DefaultCommandFilter). No
	// device publishes into it; a device subscribes to and receives its
	// own part of it only.
	CommandFilter string
	// DeviceTemplate, when set, is a filter every topic a device publishes
	// on must match, {client} standing for its own client id
	// (--upstream-device-template).
	DeviceTemplate string
	// SecureTopics are filters of topics whose messages are written to TLS
	// sessions only and are refused when published over plain.
	SecureTopics []string
}

// Verdict is the answer to a publish.
type Verdict uint8

// Verdicts of Publish.
const (
	// Allowed: the device may publish on the topic.
	Allowed Verdict = iota
	// Denied: the built-in rules or the acl file refuse the topic.
	Denied
	// PlainSecure: the topic is a secure topic and the device is on plain.
	PlainSecure
)

// Authorizer is the gateway's one topic authorization: what a device may
// publish (and set as its Will), subscribe to, and receive. The built-in
// rules hold whatever the file says:
//
//   - no device publishes, or sets a Will, on a topic starting with '$'
//     (the gateway's own $dualgate/query is answered before any routing)
//     or in the command space, its own part included: commands come from
//     the operator's side only;
//   - no device subscribes to a filter inside another device's part of the
//     command space, nor to $dualgate/;
//   - no device receives a message on another device's command topic,
//     whatever filter it subscribed with;
//   - with a device template, no device publishes outside it.
//
// With a file, anything the file does not grant is denied, as in
// Mosquitto. Its methods are safe for concurrent use and allocate nothing.
type Authorizer struct {
	cmd     *Template
	cmdRule rule      // the command space as a plain filter
	device  *Template // nil: any topic
	secure  []rule
	file    string
	rules   atomic.Pointer[rules] // nil without a file
}

// New builds an Authorizer, reading and checking the file.
func New(cfg Config) (*Authorizer, error) {
	if cfg.CommandFilter == "" {
		cfg.CommandFilter = DefaultCommandFilter
	}
	a := &Authorizer{file: cfg.File}
	var err error
	if a.cmd, err = CompileTemplate(cfg.CommandFilter, true); err != nil {
		return nil, fmt.Errorf("command filter: %w", err)
	}
	a.cmdRule = rule{levels: strings.Split(a.cmd.Filter(), "/")}
	if cfg.DeviceTemplate != "" {
		if a.device, err = CompileTemplate(cfg.DeviceTemplate, false); err != nil {
			return nil, fmt.Errorf("device template: %w", err)
		}
	}
	for _, f := range cfg.SecureTopics {
		if err := CheckSecureTopic(f); err != nil {
			return nil, err
		}
		a.secure = append(a.secure, rule{levels: strings.Split(f, "/")})
	}
	if cfg.File != "" {
		r, err := parseFile(cfg.File)
		if err != nil {
			return nil, err
		}
		a.rules.Store(r)
	}
	return a, nil
}

// CheckSecureTopic says whether f can be a secure topic: a topic filter,
// not one of the '$' topics devices never publish on.
func CheckSecureTopic(f string) error {
	if err := mqttcodec.ValidTopicFilter([]byte(f)); err != nil || strings.HasPrefix(f, "$") {
		return fmt.Errorf("secure topic %q is not a topic filter (and no '$' topics)", f)
	}
	return nil
}

// ErrNoFile: Reload on an Authorizer built without a file.
var ErrNoFile = errors.New("acl: no acl file to reload")

// Reload reads the file again. On an error the rules in force stay.
func (a *Authorizer) Reload() error {
	if a.file == "" {
		return ErrNoFile
	}
	r, err := parseFile(a.file)
	if err != nil {
		return err
	}
	a.rules.Store(r)
	return nil
}

// HasFile reports whether an acl file is in force.
func (a *Authorizer) HasFile() bool { return a.file != "" }

// Publish decides whether a device may publish on topic, or set it as its
// Will, over TLS or plain.
func (a *Authorizer) Publish(clientID, username, topic string, overTLS bool) Verdict {
	switch {
	case strings.HasPrefix(topic, "$"):
		return Denied
	case matchTopic(&a.cmdRule, topic, "", ""):
		return Denied
	case a.device != nil && !a.device.MatchClient(topic, clientID):
		return Denied
	}
	if r := a.rules.Load(); r != nil && !r.allowed(clientID, username, topic, accessWrite) {
		return Denied
	}
	if !overTLS && a.Secure(topic) {
		return PlainSecure
	}
	return Allowed
}

// Subscribe decides whether a device may subscribe to filter. A wildcard
// filter that merely overlaps what the device may not receive is accepted:
// Read decides per message.
func (a *Authorizer) Subscribe(clientID, username, filter string) bool {
	if strings.HasPrefix(filter, control.ReservedPrefix) {
		return false // control messages reach a device without a subscription
	}
	if owner, ok := a.cmd.FilterOwner(filter); ok && owner != clientID {
		return false
	}
	if r := a.rules.Load(); r != nil && !r.subscribable(clientID, username, filter) {
		return false
	}
	return true
}

// Read decides whether a message on topic may be delivered to a device
// through its subscriptions.
func (a *Authorizer) Read(clientID, username, topic string) bool {
	if owner, ok := a.cmd.Extract(topic); ok && owner != clientID {
		return false
	}
	if r := a.rules.Load(); r != nil && !r.allowed(clientID, username, topic, accessRead) {
		return false
	}
	return true
}

// Secure reports whether topic matches --secure-topics.
func (a *Authorizer) Secure(topic string) bool {
	for i := range a.secure {
		if matchTopic(&a.secure[i], topic, "", "") {
			return true
		}
	}
	return false
}
