package gateway

import (
	"github.com/dualgate/dualgate/gateway/dispatch"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// hooks routes the sessions' events to the parts of the gateway that care:
// the local router (subscriptions) and the command dispatcher.
type hooks struct {
	router     *router
	dispatcher *dispatch.Dispatcher
}

func (h hooks) Online(s *session.Session) {
	h.router.sync(s, s.Subscriptions())
	h.dispatcher.Online(s)
}

func (h hooks) Query(s *session.Session) { h.dispatcher.Query(s) }

func (h hooks) Subscribed(s *session.Session, subs []session.SubscribeEvent, ready func([]mqttcodec.ReasonCode)) {
	for _, ev := range subs {
		h.router.subscribe(s, ev.Sub.Filter, ev.Sub.QoS)
		h.dispatcher.Subscribed(s, ev.Sub.Filter, ev.Sub.QoS)
	}
	ready(nil)
}

func (h hooks) Unsubscribed(s *session.Session, filter string) {
	h.router.unsubscribe(s, filter)
}

func (h hooks) Acked(s *session.Session, token string) { h.dispatcher.Acked(s, token) }

func (h hooks) Offline(s *session.Session, unacked []string) {
	h.router.drop(s, s.Subscriptions())
	h.dispatcher.Offline(s, unacked)
}
