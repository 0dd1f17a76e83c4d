package mqttcodec

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestReasonCodeString(t *testing.T) {
	tests := []struct {
		rc   ReasonCode
		want string
	}{
		{Success, "Success"},
		{NormalDisconnection, "Success"},
		{GrantedQoS2, "GrantedQoS2"},
		{DisconnectWithWill, "DisconnectWithWill"},
		{UnspecifiedError, "UnspecifiedError"},
		{UseAnotherServer, "UseAnotherServer"},
		{WildcardSubscriptionsNotSupported, "WildcardSubscriptionsNotSupported"},
		{ReasonCode(0x03), "ReasonCode(0x3)"},
		{ReasonCode(0xff), "ReasonCode(0xff)"},
	}
	for _, tc := range tests {
		if got := tc.rc.String(); got != tc.want {
			t.Errorf("%#x.String() = %q, want %q", byte(tc.rc), got, tc.want)
		}
	}
	// Every code some packet allows has a name.
	for _, pt := range []Type{CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH} {
		for v := range 256 {
			rc := ReasonCode(v)
			if validReason(pt, rc) && strings.HasPrefix(rc.String(), "ReasonCode(") {
				t.Errorf("%v allows unnamed reason code %#x", pt, v)
			}
		}
	}
}

func TestConnackCode311(t *testing.T) {
	tests := []struct {
		rc   ReasonCode
		want byte
	}{
		{Success, Accepted},
		{UnsupportedProtocolVersion, RefusedProtocolVersion},
		{ClientIdentifierNotValid, RefusedIdentifierRejected},
		{ServerUnavailable, RefusedServerUnavailable},
		{ServerBusy, RefusedServerUnavailable},
		{BadUserNameOrPassword, RefusedBadUsernameOrPassword},
		{BadAuthenticationMethod, RefusedBadUsernameOrPassword},
		{NotAuthorized, RefusedNotAuthorized},
		{Banned, RefusedNotAuthorized},
		{UnspecifiedError, RefusedServerUnavailable},
		{UseAnotherServer, RefusedServerUnavailable},
	}
	for _, tc := range tests {
		if got := ConnackCode311(tc.rc); got != tc.want {
			t.Errorf("ConnackCode311(%v) = %d, want %d", tc.rc, got, tc.want)
		}
	}
}

// A CONNECT with a protocol level the server does not speak maps to 3.1.1
// return code 1, and the level read is kept for choosing the CONNACK.
func TestUnsupportedLevelAnswer(t *testing.T) {
	raw := frame(0x10, "00 06", txt("MQIsdp"), "03 02 00 3c 00 01", txt("a"))
	var p Packet
	_, err := Decode(raw, 0, 0, &p)
	e := codecErr(t, err)
	if ConnackCode311(e.Reason) != RefusedProtocolVersion {
		t.Fatalf("ConnackCode311(%v) = %d, want 1", e.Reason, ConnackCode311(e.Reason))
	}
	if p.Type != CONNECT || p.Connect.ProtocolVersion != 3 {
		t.Fatalf("after the error: Type %v, level %d", p.Type, p.Connect.ProtocolVersion)
	}
	raw = connect5("02 00 3c 03 21 00 00 00 01", txt("a")) // Receive Maximum 0
	if _, err := Decode(raw, 0, 0, &p); err == nil || p.Connect.ProtocolVersion != V5 {
		t.Fatalf("after a v5 CONNECT error: err %v, level %d", err, p.Connect.ProtocolVersion)
	}
}

func TestErrorText(t *testing.T) {
	err := fmt.Errorf("session d1: %w", &Error{Rule: "MQTT-3.3.2-2", Reason: TopicNameInvalid, Msg: "topic name contains a wildcard"})
	want := "session d1: mqttcodec: MQTT-3.3.2-2: topic name contains a wildcard (reason 0x90 TopicNameInvalid)"
	if err.Error() != want {
		t.Fatalf("Error() = %q\nwant %q", err.Error(), want)
	}
	var e *Error
	if !errors.As(err, &e) || e.Reason != TopicNameInvalid {
		t.Fatal("errors.As through a wrap failed")
	}
}

func TestTypeString(t *testing.T) {
	for typ := CONNECT; typ <= AUTH; typ++ {
		if s := typ.String(); strings.HasPrefix(s, "Type(") {
			t.Errorf("%d has no name", typ)
		}
	}
	if s := Type(0).String(); s != "Type(0)" {
		t.Errorf("Type(0).String() = %q", s)
	}
}
