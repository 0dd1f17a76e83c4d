package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dualgate/dualgate/internal/control"
	"github.com/dualgate/dualgate/mqttcodec"

	"github.com/dualgate/dualgate/internal/testutil"
)

// mosquittoPath finds the Mosquitto broker; the end-to-end tests need it.
func mosquittoPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	t.Fatal("mosquitto not found on PATH nor at /usr/sbin/mosquitto: install it (apt-get install mosquitto) to run the end-to-end tests")
	return ""
}

// mosquittoTLS holds the files of a TLS listener.
type mosquittoTLS struct {
	caFile, certFile, keyFile string
}

// mosquittoConfig writes a configuration with one listener on a free
// loopback port and returns its path and the listener's address.
func mosquittoConfig(t *testing.T, tlsFiles *mosquittoTLS) (conf, addr string) {
	t.Helper()
	dir := t.TempDir()
	port := testutil.FreePort(t)
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n", port)
	if tlsFiles != nil {
		text += fmt.Sprintf("certfile %s\nkeyfile %s\n", tlsFiles.certFile, tlsFiles.keyFile)
	}
	conf = filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// startMosquitto starts Mosquitto on a free loopback port and stops it (by
// PID) when the test ends.
func startMosquitto(t *testing.T, tlsFiles *mosquittoTLS) (addr string, srv *Server) {
	t.Helper()
	bin := mosquittoPath(t)
	conf, addr := mosquittoConfig(t, tlsFiles)
	srv, err := SpawnServer(bin+" -c "+conf, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(5 * time.Second); err != nil {
			t.Errorf("stop mosquitto: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := WaitListening(ctx, addr, srv); err != nil {
		t.Fatal(err)
	}
	return addr, srv
}

// testCerts writes a CA and a server certificate for 127.0.0.1 (ECDSA
// P-256) into a temporary directory.
func testCerts(t *testing.T) *mosquittoTLS {
	t.Helper()
	// Mosquitto started as root reads its files as user mosquitto.
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bench test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	files := &mosquittoTLS{
		caFile:   filepath.Join(dir, "ca.pem"),
		certFile: filepath.Join(dir, "server.pem"),
		keyFile:  filepath.Join(dir, "server.key"),
	}
	for path, block := range map[string]*pem.Block{
		files.caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		files.certFile: {Type: "CERTIFICATE", Bytes: srvDER},
		files.keyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// fakeBehaviour is what the fake server does after reading a CONNECT.
type fakeBehaviour int

const (
	fakeAccept          fakeBehaviour = iota // CONNACK success, answer PINGREQ
	fakeRefuse                               // CONNACK "not authorized", close
	fakeSilent                               // never answer
	fakeDisconnect9C                         // CONNACK, then DISCONNECT 0x9C (MQTT 5), close
	fakePublishQoS1                          // CONNACK, then a QoS 1 PUBLISH; expect PUBACK
	fakeServerKeepAlive                      // CONNACK with Server Keep Alive 1 s (MQTT 5)
	fakeInstructPlain                        // CONNACK, then a 3.1.1 instruction to go plain; expect PUBACK
)

// fakeServer is a minimal MQTT responder for client failure paths that a
// real broker does not produce on demand. Mosquitto covers the normal path.
type fakeServer struct {
	t     *testing.T
	ln    net.Listener
	mode  fakeBehaviour
	wg    sync.WaitGroup
	mu    sync.Mutex // guards the fields below
	conns []net.Conn
	peers []string // remote addresses seen
	acks  int      // PUBACKs received
	pings int      // PINGREQs received
}

func newFakeServer(t *testing.T, mode fakeBehaviour) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, ln: ln, mode: mode}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *fakeServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.peers = append(s.peers, c.RemoteAddr().String())
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *fakeServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	var (
		buf     []byte
		rb      = make([]byte, 512)
		pkt     mqttcodec.Packet
		version byte
	)
	for {
		n, err := c.Read(rb)
		if err != nil {
			return
		}
		buf = append(buf, rb[:n]...)
		for {
			used, err := mqttcodec.Decode(buf, version, 0, &pkt)
			if err != nil {
				return
			}
			if used == 0 {
				break
			}
			buf = buf[used:]
			switch pkt.Type {
			case mqttcodec.CONNECT:
				version = pkt.Connect.ProtocolVersion
				if !s.onConnect(c, version) {
					return
				}
			case mqttcodec.PINGREQ:
				s.mu.Lock()
				s.pings++
				s.mu.Unlock()
				if _, err := c.Write(mqttcodec.AppendPingresp(nil)); err != nil {
					return
				}
			case mqttcodec.PUBACK:
				s.mu.Lock()
				s.acks++
				s.mu.Unlock()
			case mqttcodec.DISCONNECT:
				return
			}
		}
	}
}

// onConnect answers a CONNECT; false closes the connection.
func (s *fakeServer) onConnect(c net.Conn, version byte) bool {
	var out []byte
	switch s.mode {
	case fakeSilent:
		return true
	case fakeRefuse:
		rc := mqttcodec.NotAuthorized
		if version != mqttcodec.V5 {
			rc = mqttcodec.ReasonCode(mqttcodec.ConnackCode311(rc))
		}
		_, _ = c.Write(mqttcodec.AppendConnack(nil, version, &mqttcodec.Connack{ReasonCode: rc}))
		return false
	}
	var ack mqttcodec.Connack
	if s.mode == fakeServerKeepAlive {
		ack.Properties.SetServerKeepAlive(1)
	}
	out = mqttcodec.AppendConnack(out, version, &ack)
	switch s.mode {
	case fakeDisconnect9C:
		out = mqttcodec.AppendDisconnect(out, version, &mqttcodec.Disconnect{ReasonCode: mqttcodec.UseAnotherServer})
		_, _ = c.Write(out)
		return false
	case fakePublishQoS1:
		out = mqttcodec.AppendPublish(out, version, &mqttcodec.Publish{QoS: 1, PacketID: 9, Topic: []byte("$dualgate/control"), Payload: []byte(`{"v":1}`)})
	case fakeInstructPlain:
		in := control.Instruction{V: 1, Op: control.OpReconnect, Mode: control.ModePlain, Addr: s.addr(), Reason: control.ReasonSecureIdle}
		out = mqttcodec.AppendPublish(out, version, &mqttcodec.Publish{QoS: 1, PacketID: 3, Topic: []byte(control.ControlTopic), Payload: in.Marshal()})
	}
	_, err := c.Write(out)
	return err == nil
}

func (s *fakeServer) snapshot() (peers []string, acks, pings int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.peers...), s.acks, s.pings
}

func itoa(n int) string { return strconv.Itoa(n) }
