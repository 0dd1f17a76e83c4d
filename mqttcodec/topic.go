package mqttcodec

import (
	"bytes"
	"unicode/utf8"
)

// sharePrefix starts every MQTT 5 Shared Subscription filter.
const sharePrefix = "$share/"

// maxTopicLen is the longest topic name or filter, in bytes [MQTT-4.7.3-3].
const maxTopicLen = 65535

// ValidTopicName checks a topic name as a PUBLISH carries it: 1 to 65,535
// bytes of well-formed UTF-8, no U+0000, no wildcard. The returned error is
// an *Error whose Reason is MalformedPacket for bad UTF-8 and
// TopicNameInvalid otherwise.
func ValidTopicName(name []byte) error {
	if err := validTopicName(name, V5); err != nil {
		return err
	}
	return nil
}

// ValidTopicFilter checks a topic filter as SUBSCRIBE and UNSUBSCRIBE carry
// it: the rules of a topic name except that '+' must fill a whole level and
// '#' must be the last level [MQTT-4.7.1-1, MQTT-4.7.1-2], and the Shared
// Subscription syntax $share/{group}/{filter} [MQTT-4.8.2-1, MQTT-4.8.2-2].
// The returned error is an *Error with Reason TopicFilterInvalid (or
// MalformedPacket for bad UTF-8).
func ValidTopicFilter(filter []byte) error {
	if err := validTopicFilter(filter, V5); err != nil {
		return err
	}
	return nil
}

// ParseShared splits a Shared Subscription filter "$share/{group}/{filter}"
// into its group and inner filter. A filter that does not start with
// "$share/" is not shared: it is returned as inner with shared false. The
// error (an *Error, TopicFilterInvalid) reports a share name that is empty or
// holds '+' or '#', or a missing inner filter [MQTT-4.8.2-1, MQTT-4.8.2-2]; the
// inner filter itself is checked by ValidTopicFilter, not here. The results
// are views into filter.
func ParseShared(filter []byte) (group, inner []byte, shared bool, err error) {
	group, inner, shared, e := parseShared(filter)
	if e != nil {
		return nil, nil, true, e
	}
	return group, inner, shared, nil
}

func parseShared(filter []byte) (group, inner []byte, shared bool, e *Error) {
	if !bytes.HasPrefix(filter, []byte(sharePrefix)) {
		return nil, filter, false, nil
	}
	rest := filter[len(sharePrefix):]
	i := bytes.IndexByte(rest, '/')
	if i < 0 {
		i = len(rest)
	}
	group = rest[:i]
	if len(group) == 0 { // [MQTT-4.8.2-1]
		return nil, nil, true, &Error{Rule: "MQTT-4.8.2-1", Reason: TopicFilterInvalid, Msg: "shared subscription has an empty share name"}
	}
	if bytes.IndexByte(group, '+') >= 0 || bytes.IndexByte(group, '#') >= 0 { // [MQTT-4.8.2-2]
		return nil, nil, true, &Error{Rule: "MQTT-4.8.2-2", Reason: TopicFilterInvalid, Msg: "share name contains a wildcard"}
	}
	if i == len(rest) || i+1 == len(rest) { // [MQTT-4.8.2-2]
		return nil, nil, true, &Error{Rule: "MQTT-4.8.2-2", Reason: TopicFilterInvalid, Msg: "shared subscription has no topic filter after the share name"}
	}
	return group, rest[i+1:], true, nil
}

// MatchTopic reports whether topic name topic matches topic filter filter.
// '+' matches exactly one level (possibly empty), '#' the parent level and
// any number of levels below it, and a filter that starts with a wildcard
// matches no topic that starts with '$' [MQTT-4.7.2-1]. Both must be valid;
// pass the inner filter of a shared subscription (ParseShared). Matching
// compares bytes, without normalisation [MQTT-4.7.3-4], and allocates nothing.
func MatchTopic(filter, topic []byte) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == '+' || filter[0] == '#') {
		return false // [MQTT-4.7.2-1]
	}
	for {
		fEnd := bytes.IndexByte(filter, '/')
		fl := filter
		if fEnd >= 0 {
			fl = filter[:fEnd]
		}
		if len(fl) == 1 && fl[0] == '#' {
			return true
		}
		tEnd := bytes.IndexByte(topic, '/')
		tl := topic
		if tEnd >= 0 {
			tl = topic[:tEnd]
		}
		if !(len(fl) == 1 && fl[0] == '+') && !bytes.Equal(fl, tl) {
			return false
		}
		switch {
		case fEnd < 0 && tEnd < 0:
			return true
		case tEnd < 0: // the topic ends; "a/#" still matches "a"
			return string(filter[fEnd+1:]) == "#"
		case fEnd < 0:
			return false
		}
		filter, topic = filter[fEnd+1:], topic[tEnd+1:]
	}
}

// checkTopicText checks what topic names and filters share: the length
// [MQTT-4.7.3-1, MQTT-4.7.3-3] and the UTF-8 rules [MQTT-4.7.3-2].
func checkTopicText(s []byte, version byte, rc ReasonCode, what string) *Error {
	if len(s) == 0 { // [MQTT-4.7.3-1]
		return &Error{Rule: "MQTT-4.7.3-1", Reason: rc, Msg: what + " is empty"}
	}
	if len(s) > maxTopicLen { // [MQTT-4.7.3-3]
		return &Error{Rule: "MQTT-4.7.3-3", Reason: rc, Msg: what + " is longer than 65,535 bytes"}
	}
	if !utf8.Valid(s) {
		return &Error{Rule: tag(version, "MQTT-1.5.3-1", "MQTT-1.5.4-1"), Reason: MalformedPacket, Msg: what + " is not well-formed UTF-8"}
	}
	if bytes.IndexByte(s, 0) >= 0 { // [MQTT-4.7.3-2]
		return &Error{Rule: "MQTT-4.7.3-2", Reason: MalformedPacket, Msg: what + " contains U+0000"}
	}
	return nil
}

func validTopicName(name []byte, version byte) *Error {
	if e := checkTopicText(name, version, TopicNameInvalid, "topic name"); e != nil {
		return e
	}
	if bytes.IndexByte(name, '+') >= 0 || bytes.IndexByte(name, '#') >= 0 { // [MQTT-3.3.2-2]
		return &Error{Rule: "MQTT-3.3.2-2", Reason: TopicNameInvalid, Msg: "topic name contains a wildcard"}
	}
	return nil
}

// validTopicFilter checks a filter. Shared Subscriptions exist only in MQTT
// 5: for 3.1.1, "$share/..." is an ordinary filter.
func validTopicFilter(filter []byte, version byte) *Error {
	if e := checkTopicText(filter, version, TopicFilterInvalid, "topic filter"); e != nil {
		return e
	}
	if version == V5 {
		_, inner, _, e := parseShared(filter)
		if e != nil {
			return e
		}
		filter = inner
	}
	for i, ch := range filter {
		switch ch {
		case '#': // [MQTT-4.7.1-2] (3.1.1) / [MQTT-4.7.1-1] (5.0)
			if i != len(filter)-1 || (i > 0 && filter[i-1] != '/') {
				return &Error{Rule: tag(version, "MQTT-4.7.1-2", "MQTT-4.7.1-1"), Reason: TopicFilterInvalid,
					Msg: "'#' is not alone in the last level of the topic filter"}
			}
		case '+': // [MQTT-4.7.1-3] (3.1.1) / [MQTT-4.7.1-2] (5.0)
			if (i > 0 && filter[i-1] != '/') || (i < len(filter)-1 && filter[i+1] != '/') {
				return &Error{Rule: tag(version, "MQTT-4.7.1-3", "MQTT-4.7.1-2"), Reason: TopicFilterInvalid,
					Msg: "'+' does not fill a whole level of the topic filter"}
			}
		}
	}
	return nil
}
