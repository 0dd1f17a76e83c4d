package mqttcodec_test

import (
	"errors"
	"fmt"

	"github.com/dualgate/dualgate/mqttcodec"
)

// A read loop: decode every whole packet in the buffer, keep the partial
// rest for when more bytes arrive.
func ExampleDecode() {
	// Two packets back to back and the first 3 bytes of a third, as one read
	// from a socket might return them.
	var buf []byte
	buf = mqttcodec.AppendPingreq(buf)
	buf = mqttcodec.AppendPublish(buf, mqttcodec.V311, &mqttcodec.Publish{
		QoS: 1, PacketID: 7, Topic: []byte("devices/d1/state"), Payload: []byte("on"),
	})
	buf = append(buf, 0x30, 0x05, 0x00) // a PUBLISH, cut short

	var p mqttcodec.Packet
	for {
		n, err := mqttcodec.Decode(buf, mqttcodec.V311, 0, &p)
		var perr *mqttcodec.Error
		if errors.As(err, &perr) {
			fmt.Println("close the connection:", perr.Rule, perr.Reason)
			return
		}
		if n == 0 {
			need, _ := mqttcodec.PacketLen(buf, 0)
			fmt.Printf("wait: %d of %d bytes\n", len(buf), need)
			break
		}
		switch p.Type {
		case mqttcodec.PUBLISH:
			fmt.Printf("PUBLISH %s %q id=%d\n", p.Publish.Topic, p.Publish.Payload, p.Publish.PacketID)
		default:
			fmt.Println(p.Type)
		}
		buf = buf[n:]
	}
	// Output:
	// PINGREQ
	// PUBLISH devices/d1/state "on" id=7
	// wait: 3 of 7 bytes
}

// Encoding into a buffer with room allocates nothing.
func ExampleAppendPublish() {
	buf := make([]byte, 0, 64)
	p := mqttcodec.Publish{QoS: 1, PacketID: 1, Topic: []byte("a/b"), Payload: []byte("hi")}
	p.Properties.SetMessageExpiry(60)
	buf = mqttcodec.AppendPublish(buf, mqttcodec.V5, &p)
	fmt.Printf("% x\n", buf)
	// Output:
	// 32 0f 00 03 61 2f 62 00 01 05 02 00 00 00 3c 68 69
}
