package mqttcodec

import (
	"bytes"
	"strings"
	"testing"
)

// The examples of section 4.7 of MQTT 3.1.1 and 5.0 (the same in both).
func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		// 4.7.1.2 multi-level wildcard
		{"sport/tennis/player1/#", "sport/tennis/player1", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
		{"sport/#", "sport", true},
		{"#", "sport/tennis", true},
		{"#", "/", true},
		// 4.7.1.3 single-level wildcard
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player2", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
		{"+/tennis/#", "sport/tennis/player1", true},
		{"sport/+/player1", "sport/tennis/player1", true},
		{"sport/+/player1", "sport/tennis/player2", false},
		{"+", "a", true},
		{"+", "", true},
		// 4.7.2 topics beginning with $ [MQTT-4.7.2-1]
		{"#", "$SYS/monitor/Clients", false},
		{"+/monitor/Clients", "$SYS/monitor/Clients", false},
		{"$SYS/#", "$SYS/monitor/Clients", true},
		{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
		{"$dualgate/control", "$dualgate/control", true},
		{"+", "$dualgate", false},
		{"a/+", "a/$b", true},
		// 4.7.3 semantics: exact, case-sensitive, levels may be empty
		{"sport/tennis", "sport/tennis", true},
		{"sport/tennis", "sport/tennis/", false},
		{"ACCOUNTS", "Accounts", false},
		{"Accounts payable", "Accounts payable", true},
		{"/", "/", true},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"a/#", "a/b/c/d", true},
		{"a/b/#", "a", false},
		{"devices/+/commands/#", "devices/d1/commands/open", true},
		{"devices/+/commands/#", "devices/d1/state", false},
	}
	for _, tc := range tests {
		if got := MatchTopic([]byte(tc.filter), []byte(tc.topic)); got != tc.want {
			t.Errorf("MatchTopic(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestValidTopicName(t *testing.T) {
	tests := []struct {
		name   string
		topic  []byte
		rule   string // "" means valid
		reason ReasonCode
	}{
		{"plain", []byte("sport/tennis/player1"), "", 0},
		{"single slash", []byte("/"), "", 0},
		{"spaces", []byte("Accounts payable"), "", 0},
		{"$SYS", []byte("$SYS/broker/load"), "", 0},
		{"multibyte", []byte("capteur/température/°C"), "", 0},
		{"BOM kept", []byte("\ufeffa"), "", 0},
		{"maximum length", bytes.Repeat([]byte("a"), 65535), "", 0},
		{"empty", []byte{}, "MQTT-4.7.3-1", TopicNameInvalid},
		{"too long", bytes.Repeat([]byte("a"), 65536), "MQTT-4.7.3-3", TopicNameInvalid},
		{"plus", []byte("sport/+"), "MQTT-3.3.2-2", TopicNameInvalid},
		{"hash", []byte("sport/#"), "MQTT-3.3.2-2", TopicNameInvalid},
		{"plus inside a level", []byte("sport+"), "MQTT-3.3.2-2", TopicNameInvalid},
		{"U+0000", []byte("a\x00b"), "MQTT-4.7.3-2", MalformedPacket},
		{"bad UTF-8", []byte("a\xffb"), "MQTT-1.5.4-1", MalformedPacket},
		{"surrogate", []byte("a\xed\xa0\x80"), "MQTT-1.5.4-1", MalformedPacket},
		{"overlong", []byte("\xc0\xaf"), "MQTT-1.5.4-1", MalformedPacket},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidTopicName(tc.topic)
			checkRule(t, err, tc.rule, tc.reason)
		})
	}
}

func TestValidTopicFilter(t *testing.T) {
	tests := []struct {
		name   string
		filter string
		rule   string
		reason ReasonCode
	}{
		{"hash alone", "#", "", 0},
		{"plus alone", "+", "", 0},
		{"hash last", "sport/tennis/#", "", 0},
		{"plus levels", "+/tennis/#", "", 0},
		{"plus middle", "sport/+/player1", "", 0},
		{"plus empty levels", "+/+", "", 0},
		{"slash plus", "/+", "", 0},
		{"$SYS", "$SYS/#", "", 0},
		{"no wildcard", "a/b", "", 0},
		{"shared", "$share/consumer1/sport/tennis/+", "", 0},
		{"shared empty level", "$share/consumer1//finance", "", 0},
		{"shared hash", "$share/g/#", "", 0},
		{"not shared prefix", "$shared/+/x", "", 0},
		{"share word alone", "$share", "", 0},
		{"hash glued", "sport/tennis#", "MQTT-4.7.1-1", TopicFilterInvalid},
		{"hash not last", "sport/tennis/#/ranking", "MQTT-4.7.1-1", TopicFilterInvalid},
		{"hash twice", "#/#", "MQTT-4.7.1-1", TopicFilterInvalid},
		{"plus glued", "sport+", "MQTT-4.7.1-2", TopicFilterInvalid},
		{"plus glued after", "sport/+tennis", "MQTT-4.7.1-2", TopicFilterInvalid},
		{"empty", "", "MQTT-4.7.3-1", TopicFilterInvalid},
		{"U+0000", "a/\x00", "MQTT-4.7.3-2", MalformedPacket},
		{"bad UTF-8", "a/\xfe", "MQTT-1.5.4-1", MalformedPacket},
		{"share name empty", "$share//a", "MQTT-4.8.2-1", TopicFilterInvalid},
		{"share name empty, nothing else", "$share/", "MQTT-4.8.2-1", TopicFilterInvalid},
		{"share name plus", "$share/+/a", "MQTT-4.8.2-2", TopicFilterInvalid},
		{"share name hash", "$share/g#/a", "MQTT-4.8.2-2", TopicFilterInvalid},
		{"share without filter", "$share/g", "MQTT-4.8.2-2", TopicFilterInvalid},
		{"share with empty filter", "$share/g/", "MQTT-4.8.2-2", TopicFilterInvalid},
		{"share inner bad", "$share/g/a#", "MQTT-4.7.1-1", TopicFilterInvalid},
		{"too long", strings.Repeat("a", 65536), "MQTT-4.7.3-3", TopicFilterInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkRule(t, ValidTopicFilter([]byte(tc.filter)), tc.rule, tc.reason)
		})
	}
}

func TestParseShared(t *testing.T) {
	tests := []struct {
		filter       string
		group, inner string
		shared       bool
		rule         string
	}{
		{"$share/consumer1/sport/tennis/+", "consumer1", "sport/tennis/+", true, ""},
		{"$share/consumer2/sport/tennis/+", "consumer2", "sport/tennis/+", true, ""},
		{"$share/consumer1//finance", "consumer1", "/finance", true, ""},
		{"$share/g/#", "g", "#", true, ""},
		{"sport/tennis/+", "", "sport/tennis/+", false, ""},
		{"$SYS/#", "", "$SYS/#", false, ""},
		{"$share", "", "$share", false, ""},
		{"$share//x", "", "", true, "MQTT-4.8.2-1"},
		{"$share/a+b/x", "", "", true, "MQTT-4.8.2-2"},
		{"$share/g", "", "", true, "MQTT-4.8.2-2"},
		{"$share/g/", "", "", true, "MQTT-4.8.2-2"},
	}
	for _, tc := range tests {
		group, inner, shared, err := ParseShared([]byte(tc.filter))
		if tc.rule != "" {
			if e := codecErr(t, err); e.Rule != tc.rule || e.Reason != TopicFilterInvalid {
				t.Errorf("ParseShared(%q) error %v, want %s", tc.filter, err, tc.rule)
			}
			continue
		}
		if err != nil || string(group) != tc.group || string(inner) != tc.inner || shared != tc.shared {
			t.Errorf("ParseShared(%q) = %q, %q, %v, %v; want %q, %q, %v",
				tc.filter, group, inner, shared, err, tc.group, tc.inner, tc.shared)
		}
	}
}

func checkRule(t *testing.T, err error, rule string, reason ReasonCode) {
	t.Helper()
	if rule == "" {
		if err != nil {
			t.Fatalf("unexpected error %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want %s", rule)
	}
	if e := codecErr(t, err); e.Rule != rule || e.Reason != reason {
		t.Fatalf("error %v, want rule %s reason %v", err, rule, reason)
	}
}
