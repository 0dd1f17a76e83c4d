package gateway

import (
	"sync"

	"github.com/dualgate/dualgate/gateway/dispatch"
	"github.com/dualgate/dualgate/gateway/session"
	"github.com/dualgate/dualgate/mqttcodec"
)

// hooks routes the sessions' events to the parts of the gateway that care:
// the local router (subscriptions) and the command dispatcher.
type hooks struct {
	router     *router
	dispatcher *dispatch.Dispatcher
	members    *clusterRegistry // nil without --cluster
}

func (h hooks) Online(s *session.Session) {
	if h.members != nil {
		h.members.online(s)
	}
	h.router.online(s)
	h.dispatcher.Online(s)
}

func (h hooks) Query(s *session.Session) { h.dispatcher.Query(s) }

// Subscribed routes the new subscriptions and answers ready once every
// one is in place upstream (or refused, or not answered in time: its
// route is removed again). Retain Handling decides whether the broker is
// asked for retained messages: 0 always, 1 for a new subscription, 2
// never; a shared subscription gets none (MQTT 5 section 4.8.2).
func (h hooks) Subscribed(s *session.Session, subs []session.SubscribeEvent, ready func([]mqttcodec.ReasonCode)) {
	var mu sync.Mutex
	failures := make([]mqttcodec.ReasonCode, len(subs))
	left := len(subs)
	for i, ev := range subs {
		_, shared := sharedFilter(ev.Sub.Filter)
		retained := !shared && (ev.Sub.RetainHandling == 0 || (ev.Sub.RetainHandling == 1 && ev.New))
		h.router.subscribe(s, ev.Sub, retained, func(rc mqttcodec.ReasonCode) {
			mu.Lock()
			if rc >= 0x80 {
				failures[i] = rc
				if ev.New {
					h.router.unsubscribe(s, ev.Sub.Filter)
				}
			}
			left--
			last := left == 0
			mu.Unlock()
			if last {
				ready(failures)
			}
		})
		h.dispatcher.Subscribed(s, ev.Sub.Filter, ev.Sub.QoS)
	}
	if len(subs) == 0 {
		ready(nil)
	}
}

func (h hooks) Unsubscribed(s *session.Session, filter string) {
	h.router.unsubscribe(s, filter)
}

func (h hooks) Acked(s *session.Session, token string) { h.dispatcher.Acked(s, token) }

func (h hooks) Offline(s *session.Session, unacked []string) {
	if h.members != nil {
		h.members.offline(s)
	}
	h.router.offline(s)
	h.dispatcher.Offline(s, unacked)
}
