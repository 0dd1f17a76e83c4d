package bench

import (
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

const tcpInfoFixture = "testdata/tcp_info_client.hex"

func TestTCPInfoOffsetsMatchKernelStruct(t *testing.T) {
	var ti unix.TCPInfo
	tests := []struct {
		name string
		ours uintptr
		sys  uintptr
	}{
		{"total_retrans", tcpiTotalRetrans, unsafe.Offsetof(ti.Total_retrans)},
		{"bytes_acked", tcpiBytesAcked, unsafe.Offsetof(ti.Bytes_acked)},
		{"bytes_received", tcpiBytesReceived, unsafe.Offsetof(ti.Bytes_received)},
		{"segs_out", tcpiSegsOut, unsafe.Offsetof(ti.Segs_out)},
		{"segs_in", tcpiSegsIn, unsafe.Offsetof(ti.Segs_in)},
		{"bytes_sent", tcpiBytesSent, unsafe.Offsetof(ti.Bytes_sent)},
		{"bytes_retrans", tcpiBytesRetrans, unsafe.Offsetof(ti.Bytes_retrans)},
	}
	for _, tt := range tests {
		if tt.ours != tt.sys {
			t.Errorf("%s at %d, x/sys/unix has %d", tt.name, tt.ours, tt.sys)
		}
	}
}

// decodeViaStruct decodes raw with the x/sys/unix struct layout, an
// independent path to check ParseTCPInfo against.
func decodeViaStruct(raw []byte) unix.TCPInfo {
	var ti unix.TCPInfo
	buf := make([]byte, unsafe.Sizeof(ti))
	copy(buf, raw)
	return *(*unix.TCPInfo)(unsafe.Pointer(&buf[0]))
}

func TestParseRecordedTCPInfo(t *testing.T) {
	text, err := os.ReadFile(tcpInfoFixture)
	if err != nil {
		t.Fatalf("read fixture (regenerate with go test -run TestLiveTCPCounters -update): %v", err)
	}
	raw, err := hex.DecodeString(strings.TrimSpace(string(text)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseTCPInfo(raw)
	if err != nil {
		t.Fatalf("ParseTCPInfo: %v", err)
	}
	ti := decodeViaStruct(raw)
	want := TCPCounters{
		BytesAcked:    ti.Bytes_acked,
		BytesReceived: ti.Bytes_received,
		BytesSent:     ti.Bytes_sent,
		BytesRetrans:  ti.Bytes_retrans,
		SegsOut:       ti.Segs_out,
		SegsIn:        ti.Segs_in,
		DataSegsOut:   ti.Data_segs_out,
		DataSegsIn:    ti.Data_segs_in,
		HasDataSegs:   true,
		TotalRetrans:  ti.Total_retrans,
		HasBytesSent:  true,
	}
	if got != want {
		t.Fatalf("ParseTCPInfo = %+v, want %+v", got, want)
	}
	// The recording: a client that sent 100 payload bytes and received 50
	// over loopback, after the handshake.
	if got.BytesSent != 100 || got.BytesReceived != 50 || got.BytesAcked != 101 {
		t.Fatalf("recorded payload counters = %+v, want sent 100, received 50, acked 101 (SYN counts one)", got)
	}
	if got.SegsOut < 3 || got.SegsIn < 3 {
		t.Fatalf("recorded segment counters = %+v, want at least 3 each way", got)
	}
	if got.DataSegsOut != 1 || got.DataSegsIn != 1 {
		t.Fatalf("recorded data segments = %+v, want one each way (100 bytes out, 50 in)", got)
	}
}

func TestParseTCPInfoLengths(t *testing.T) {
	full := make([]byte, tcpInfoBufLen)
	full[tcpiSegsOut] = 7
	full[tcpiBytesSent] = 9
	tests := []struct {
		name     string
		raw      []byte
		wantErr  error
		wantSent bool
	}{
		{name: "empty", raw: nil, wantErr: ErrShortTCPInfo},
		{name: "Linux 4.1 (no segment counters)", raw: full[:tcpiSegsOut], wantErr: ErrShortTCPInfo},
		{name: "Linux 4.2 (segment counters, no bytes_sent)", raw: full[:tcpInfoMinLen]},
		{name: "Linux 4.19+", raw: full[:tcpiBytesRetrans+8], wantSent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseTCPInfo(tt.raw)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.SegsOut != 7 || c.HasBytesSent != tt.wantSent {
				t.Fatalf("counters = %+v", c)
			}
			if tt.wantSent && c.BytesSent != 9 {
				t.Fatalf("BytesSent = %d, want 9", c.BytesSent)
			}
		})
	}
}

func TestWireModel(t *testing.T) {
	m := LoopbackWireModel()
	tests := []struct {
		name      string
		c         TCPCounters
		handshake bool
		want      WireBytes
	}{
		{
			name: "PINGREQ out, PINGRESP in, one ACK out",
			c:    TCPCounters{BytesSent: 2, BytesReceived: 2, SegsOut: 2, SegsIn: 1, HasBytesSent: true},
			want: WireBytes{PayloadOut: 2, PayloadIn: 2, Out: 2 + 104, In: 2 + 52},
		},
		{
			name:      "with handshake",
			c:         TCPCounters{BytesSent: 14, BytesReceived: 4, SegsOut: 3, SegsIn: 2, HasBytesSent: true},
			handshake: true,
			want:      WireBytes{PayloadOut: 14, PayloadIn: 4, Out: 14 + 156 + 8, In: 4 + 104 + 8},
		},
		{
			name: "old kernel falls back to acked plus retransmitted",
			c:    TCPCounters{BytesAcked: 10, BytesRetrans: 5, BytesReceived: 0, SegsOut: 1},
			want: WireBytes{PayloadOut: 15, Out: 15 + 52},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := m.Bytes(tt.c, tt.handshake)
			if got != tt.want {
				t.Fatalf("Bytes = %+v, want %+v", got, tt.want)
			}
			if got.Total() != tt.want.Out+tt.want.In {
				t.Fatalf("Total = %d", got.Total())
			}
		})
	}
}

func TestLiveTCPCounters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()

	if _, err := client.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Write(make([]byte, 50)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 50)); err != nil {
		t.Fatal(err)
	}

	// Loopback delivery is quick but not instantaneous: wait until every
	// segment one side sent has been counted by the other. The accepting
	// side's counters start with the SYN received and miss its own SYN-ACK
	// (sent before the socket existed); its bytes_acked does not count a SYN.
	var cc, sc TCPCounters
	deadline := time.Now().Add(3 * time.Second)
	for {
		cc, err = ReadTCPCounters(client.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		sc, err = ReadTCPCounters(server.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		if cc.SegsOut == sc.SegsIn && sc.SegsOut+1 == cc.SegsIn && cc.BytesAcked == 101 && sc.BytesAcked == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters did not settle: client %+v server %+v", cc, sc)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !cc.HasBytesSent || cc.BytesSent != 100 || cc.BytesReceived != 50 || sc.BytesSent != 50 || sc.BytesReceived != 100 {
		t.Fatalf("payload counters: client %+v server %+v", cc, sc)
	}
	m := LoopbackWireModel()
	cw, sw := m.Bytes(cc, true), m.Bytes(sc, true)
	if cw.Out != sw.In || cw.In != sw.Out+52 {
		t.Fatalf("the two ends disagree: client %+v server %+v", cw, sw)
	}
	if cw.Total() < 150+5*52 {
		t.Fatalf("client wire total %d is below payload plus five headers", cw.Total())
	}

	if *update {
		var raw []byte
		rc, err := client.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Control(func(fd uintptr) { raw, err = ReadTCPInfoRaw(int(fd)) }); err != nil {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tcpInfoFixture, []byte(hex.EncodeToString(raw)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
