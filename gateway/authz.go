package gateway

import (
	"fmt"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dualgate/dualgate/gateway/acl"
)

// newAuthorizer builds the one topic authorization from the settings:
// --acl, the command space (--upstream-command-filter, its default when
// off), --upstream-device-template and --secure-topics.
func newAuthorizer(c *Config) (*acl.Authorizer, error) {
	cmd := c.UpstreamCommands
	if cmd == "off" {
		// Commands still come from the API on their conventional topics.
		cmd = ""
	}
	a, err := acl.New(acl.Config{
		File:           c.ACL,
		CommandFilter:  cmd,
		DeviceTemplate: c.UpstreamTemplate,
		SecureTopics:   splitList(c.SecureTopics),
	})
	if err != nil {
		return nil, fmt.Errorf("topic authorization: %w", err)
	}
	return a, nil
}

// validateTopics checks --secure-topics (the acl file is read by New).
func (c *Config) validateTopics() error {
	for _, f := range splitList(c.SecureTopics) {
		if err := acl.CheckSecureTopic(f); err != nil {
			return fmt.Errorf("--secure-topics: %w", err)
		}
	}
	return nil
}

// ReloadACL reads the --acl file again (SIGHUP). A bad file leaves the
// rules in force; sessions keep their subscriptions, and every message is
// checked under the new rules from now on.
func (g *Gateway) ReloadACL() error {
	if !g.acl.HasFile() {
		return nil
	}
	if err := g.acl.Reload(); err != nil {
		g.logger.Error("acl reload failed; keeping the rules in force", zap.Error(err))
		return err
	}
	g.logger.Info("acl reloaded", zap.String("file", g.cfg.ACL))
	return nil
}

// topicMetrics registers the topic authorization's and the secure-data
// rule's counters.
func (g *Gateway) topicMetrics(counter func(name, help string, f func() uint64)) {
	rs, st := &g.routes, g.env.Stats
	counter("dualgate_publishes_refused_total", "Device publishes and Wills refused by the topic authorization (--acl and the built-in rules).", rs.publishRefused.Load)
	counter("dualgate_secure_topic_plain_publishes_refused_total", "Publishes on a --secure-topics topic refused because they arrived over plain.", rs.plainSecure.Load)
	counter("dualgate_subscriptions_refused_total", "Subscription filters refused by the topic authorization.", st.SubscribeRefused.Load)
	counter("dualgate_wills_refused_total", "CONNECTs refused for a Will topic the topic authorization refuses.", st.WillRefused.Load)
	counter("dualgate_acl_withheld_total", "Messages kept from a subscriber that may not read their topic.", rs.readWithheld.Load)
	counter("dualgate_secure_data_withheld_total", "Secure data (published over TLS, or on a --secure-topics topic) kept from plain subscribers.", rs.secureWithheld.Load)
	counter("dualgate_secure_echoes_total", "Broker messages recognised as published here over TLS and kept to TLS sessions.", rs.secureEchoes.Load)
	if o := g.router.origins; o != nil {
		counter("dualgate_secure_origins_evicted_total", "TLS publishes forgotten early because the origin set was full.", o.evicted.Load)
	}
}

// sampled is logger with at most 5 identical lines per second, then one
// in 1000: for events that devices can cause at will. A sampler keeps a
// table of 7 x 4,096 counters (448 KiB) whatever the traffic, shared by
// the loggers derived from it: a gateway builds one (Gateway.rare) and
// hands it to every part that needs it.
func sampled(logger *zap.Logger) *zap.Logger {
	return logger.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(core, time.Second, 5, 1000)
	}))
}
