package control

import (
	"errors"
	"testing"
)

func TestInstructionRoundTrip(t *testing.T) {
	in := Instruction{V: 1, Op: OpReconnect, Mode: ModeTLS, Addr: "gw.example.com:8883", Reason: ReasonSecureCommand}
	got := string(in.Marshal())
	want := `{"v":1,"op":"reconnect","mode":"tls","addr":"gw.example.com:8883","reason":"secure-command"}`
	if got != want {
		t.Fatalf("Marshal = %s, want %s", got, want)
	}
	back, err := ParseInstruction([]byte(got))
	if err != nil || back != in {
		t.Fatalf("ParseInstruction = %+v, %v", back, err)
	}
}

func TestParseInstructionRejects(t *testing.T) {
	for _, tc := range []string{
		``, `{}`, `[]`,
		`{"v":2,"op":"reconnect","mode":"tls","addr":"h:1"}`,
		`{"v":1,"op":"jump","mode":"tls","addr":"h:1"}`,
		`{"v":1,"op":"reconnect","mode":"udp","addr":"h:1"}`,
		`{"v":1,"op":"reconnect","mode":"tls","addr":"nohostport"}`,
	} {
		if _, err := ParseInstruction([]byte(tc)); !errors.Is(err, ErrBadInstruction) {
			t.Errorf("ParseInstruction(%q) err = %v, want ErrBadInstruction", tc, err)
		}
	}
}

func TestServerReference(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		addr string
		ref  string
	}{
		{ModeTLS, "gw:8883", "tls://gw:8883"},
		{ModePlain, "10.0.0.1:1883", "tcp://10.0.0.1:1883"},
		{ModeTLS, "[::1]:8883", "tls://[::1]:8883"},
	} {
		if got := ServerReference(tc.mode, tc.addr); got != tc.ref {
			t.Errorf("ServerReference(%s,%s) = %s, want %s", tc.mode, tc.addr, got, tc.ref)
		}
		m, a, err := ParseServerReference(tc.ref)
		if err != nil || m != tc.mode || a != tc.addr {
			t.Errorf("ParseServerReference(%s) = %s %s %v", tc.ref, m, a, err)
		}
	}
	for _, bad := range []string{"", "mqtt://h:1", "tls://", "tcp://nohost"} {
		if _, _, err := ParseServerReference(bad); err == nil {
			t.Errorf("ParseServerReference(%q) accepted", bad)
		}
	}
}
