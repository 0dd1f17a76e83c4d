package devwire

import (
	"bytes"
	"testing"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/internal/testutil"
	"github.com/dualgate/dualgate/mqttcodec"
)

// What the TLS handshake writes waits for its next read (the peer must
// answer) or, after release, for the first write after it: the CONNECT.
func TestFlightConn(t *testing.T) {
	w := &testutil.WriteLog{}
	c := NewFlightConn(w)
	_, _ = c.Write([]byte("hello"))
	_, _ = c.Write([]byte("+retry"))
	w.Want(t)
	_, _ = c.Read(make([]byte, 1)) // waits for the server: the flight leaves
	w.Want(t, "hello+retry")
	_, _ = c.Write([]byte("finished"))
	c.Release()
	w.Want(t, "hello+retry")
	if n, err := c.Write([]byte("CONNECT")); n != len("CONNECT") || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	_, _ = c.Write([]byte("PUBACK"))
	w.Want(t, "hello+retry", "finishedCONNECT", "PUBACK")
}

// The query sent with the CONNECT is a QoS 0 PUBLISH on the query topic
// with no payload, for both protocol versions.
func TestQueryPacket(t *testing.T) {
	for _, v := range []byte{4, 5} {
		b := QueryPacket(v)
		var p mqttcodec.Packet
		n, err := mqttcodec.Decode(b, v, 0, &p)
		if err != nil || n != len(b) {
			t.Fatalf("v%d: Decode = %d, %v (len %d)", v, n, err, len(b))
		}
		if p.Type != mqttcodec.PUBLISH || p.Publish.QoS != 0 || string(p.Publish.Topic) != control.QueryTopic ||
			len(p.Publish.Payload) != 0 {
			t.Fatalf("v%d: %+v", v, p.Publish)
		}
		if want := map[byte]int{4: 19, 5: 20}[v]; len(b) != want || !bytes.HasPrefix(b, []byte{0x30}) {
			t.Fatalf("v%d: % x (%d bytes), want %d", v, b, len(b), want)
		}
	}
}
