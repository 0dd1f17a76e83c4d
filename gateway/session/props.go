package session

import (
	"math"
	"time"

	"github.com/dualgate/dualgate/mqttcodec"
)

// MQTT 5 message properties, in and out.
//
// In, the properties of a device's PUBLISH (or of its Will) are copied out
// of the packet buffer, which the codec reuses, into one MessageProps
// shared by every copy of the message. The Message Expiry Interval becomes
// an absolute time (Message.Expires); an interval of 0 is taken as no
// expiry, as Mosquitto does.
//
// Out, an MQTT 5 device gets the properties as sent, the expiry interval
// that is left (rounded up to whole seconds) and one Subscription
// Identifier per subscription the message answers. An MQTT 3.1.1 device
// gets none of them. A message whose expiry has passed before it is
// written is dropped [MQTT-3.3.2-5].

// messageProps copies what travels with a message out of p; nil when p
// carries none of it.
func messageProps(p *mqttcodec.Properties) *MessageProps {
	has := p.Has(mqttcodec.PropPayloadFormat) || p.Has(mqttcodec.PropContentType) ||
		p.Has(mqttcodec.PropResponseTopic) || p.Has(mqttcodec.PropCorrelationData) ||
		len(p.UserProperties) > 0
	if !has {
		return nil
	}
	mp := &MessageProps{
		PayloadFormat:    p.PayloadFormat,
		HasPayloadFormat: p.Has(mqttcodec.PropPayloadFormat),
		ContentType:      string(p.ContentType),
		ResponseTopic:    string(p.ResponseTopic),
	}
	if p.Has(mqttcodec.PropCorrelationData) {
		// Present but empty is still present.
		mp.CorrelationData = append(make([]byte, 0, len(p.CorrelationData)), p.CorrelationData...)
	}
	if len(p.UserProperties) > 0 {
		mp.User = make([]UserProp, len(p.UserProperties))
		for i, u := range p.UserProperties {
			mp.User[i] = UserProp{Key: string(u.Key), Value: string(u.Value)}
		}
	}
	return mp
}

// expiresAt is when a message with p's Message Expiry Interval, taken at
// now, expires (zero: never).
func expiresAt(p *mqttcodec.Properties, now time.Time) time.Time {
	if !p.Has(mqttcodec.PropMessageExpiry) || p.MessageExpiry == 0 {
		return time.Time{}
	}
	return now.Add(time.Duration(p.MessageExpiry) * time.Second)
}

// expired reports whether a message that expires at exp has expired at now.
func expired(exp, now time.Time) bool { return !exp.IsZero() && !now.Before(exp) }

// secondsLeft is the Message Expiry Interval a subscriber is given: the
// seconds left until exp, rounded up [MQTT-3.3.2-6].
func secondsLeft(exp, now time.Time) uint32 {
	left := exp.Sub(now)
	secs := (left + time.Second - 1) / time.Second
	switch {
	case secs < 1:
		return 1
	case secs > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(secs)
}

// setPublishProps writes what travels with d into an MQTT 5 PUBLISH.
func setPublishProps(pr *mqttcodec.Properties, d *Delivery, now time.Time) {
	if mp := d.Props; mp != nil {
		if mp.HasPayloadFormat {
			pr.SetPayloadFormat(mp.PayloadFormat)
		}
		if mp.ContentType != "" {
			pr.SetContentType([]byte(mp.ContentType))
		}
		if mp.ResponseTopic != "" {
			pr.SetResponseTopic([]byte(mp.ResponseTopic))
		}
		if mp.CorrelationData != nil {
			pr.SetCorrelationData(mp.CorrelationData)
		}
		for _, u := range mp.User {
			pr.AddUserProperty([]byte(u.Key), []byte(u.Value))
		}
	}
	if !d.Expires.IsZero() {
		pr.SetMessageExpiry(secondsLeft(d.Expires, now))
	}
	for _, id := range d.SubIDs {
		pr.AddSubscriptionID(id)
	}
}

// propsSize is roughly what p costs in the bounds.
func propsSize(p *MessageProps) int {
	if p == nil {
		return 0
	}
	n := 64 + len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData)
	for _, u := range p.User {
		n += 32 + len(u.Key) + len(u.Value)
	}
	return n
}
