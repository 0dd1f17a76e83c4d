// Package docs holds the project's documents; its test checks that the
// protocol examples in protocol.md are what the gateway's code produces.
package docs

import (
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"
)

// vectors returns the fenced blocks of protocol.md that follow a
// "<!-- vector: NAME -->" marker.
func vectors(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- vector: ([a-z0-9]+) -->\n```\n(.*?)```")
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = m[2]
	}
	return out
}

func dump(b []byte) string {
	var sb strings.Builder
	for i, x := range b {
		switch {
		case i > 0 && i%16 == 0:
			sb.WriteByte('\n')
		case i > 0:
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%02x", x)
	}
	sb.WriteByte('\n')
	return sb.String()
}

func TestProtocolVectors(t *testing.T) {
	v := vectors(t)
	in := control.Instruction{V: 1, Op: control.OpReconnect, Mode: control.ModeTLS, Addr: "gw.example.com:8883", Reason: control.ReasonSecureCommand}
	d := mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer}
	d.Properties.SetServerReference([]byte(control.ServerReference(control.ModeTLS, "gw.example.com:8883")))
	d.Properties.SetReasonString([]byte(control.ReasonSecureCommand))
	secret, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	exporter := make([]byte, control.ExporterLen) // a0 a1 ... bf
	for i := range exporter {
		exporter[i] = byte(0xa0 + i)
	}
	want := map[string]string{
		"control311": dump(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{
			Topic: []byte(control.ControlTopic), QoS: 1, PacketID: 1, Payload: in.Marshal()})),
		"query": dump(mqttcodec.AppendPublish(nil, mqttcodec.V311, &mqttcodec.Publish{
			Topic: []byte(control.QueryTopic), QoS: 1, PacketID: 1, Payload: []byte(`{"v":1}`)})),
		"disconnect5": dump(mqttcodec.AppendDisconnect(nil, mqttcodec.V5, &d)),
		"token": "secret (hex) 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n" +
			"client id    car-0042\nts           1767225600\nnonce        k3Jd9QxA2mPz\n" +
			"password     " + control.MakeToken(secret, "car-0042", time.Unix(1767225600, 0), "k3Jd9QxA2mPz") + "\n",
		"tokenbound": "secret (hex)   000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n" +
			"client id      car-0042\nts             1767225600\nnonce          k3Jd9QxA2mPz\n" +
			"exporter (hex) " + hex.EncodeToString(exporter) + "\n" +
			"password       " + control.MakeBoundToken(secret, "car-0042", time.Unix(1767225600, 0), "k3Jd9QxA2mPz", exporter) + "\n",
	}
	for name, w := range want {
		got, ok := v[name]
		if !ok {
			t.Errorf("protocol.md has no vector %q", name)
			continue
		}
		if got != w {
			t.Errorf("vector %q in protocol.md:\n%s\nthe code produces:\n%s", name, got, w)
		}
	}
	if len(v) != len(want) {
		t.Errorf("protocol.md has %d vectors, the test checks %d", len(v), len(want))
	}
}
