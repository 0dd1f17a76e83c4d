// Package mqttcodec converts between bytes and MQTT 3.1.1 / 5.0 control
// packets, and validates and matches topic names and filters. It does no I/O
// and no logging, and imports only the standard library.
//
// Decoding is incremental and allocation-free: Decode looks at the front of a
// buffer and either reports that no whole packet is there yet (n == 0, err ==
// nil), or decodes one packet into a reusable Packet and says how many bytes it
// used. Every []byte field of the decoded Packet is a view into the buffer: copy
// what must outlive the buffer. Malformed input yields an *Error that names the
// specification rule (e.g. "MQTT-3.3.2-2") and the reason code to send.
//
// A read loop on a connection that has buffered bytes in buf:
//
//	var p mqttcodec.Packet
//	for {
//		n, err := mqttcodec.Decode(buf, version, maxSize, &p)
//		if err != nil {
//			return err // *mqttcodec.Error: send err.Reason (v5) or close
//		}
//		if n == 0 {
//			break // wait for more bytes; PacketLen says how many
//		}
//		handle(&p) // p's []byte fields are views into buf[:n]
//		buf = buf[n:]
//	}
//
// Encoders append to a caller's slice (AppendPublish, AppendAck, Append, ...)
// and allocate nothing when it has room. They write what they are given and do
// not validate it.
//
// Ownership: nothing here keeps a reference to a caller's buffer after it
// returns, and nothing is shared between goroutines; a Packet must not be used
// by two goroutines at once.
package mqttcodec
