package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/dualgate/dualgate/mqttcodec"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ReasonClosed},
		{"EOF", io.EOF, ReasonClosed},
		{"wrapped EOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), ReasonClosed},
		{"refused", op(syscall.ECONNREFUSED), ReasonRefused},
		{"no port", op(syscall.EADDRNOTAVAIL), ReasonNoSourcePort},
		{"emfile", op(syscall.EMFILE), ReasonTooManyFiles},
		{"reset", op(syscall.ECONNRESET), ReasonReset},
		{"broken pipe", op(syscall.EPIPE), ReasonReset},
		{"deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), ReasonTimeout},
		{"net timeout", &net.OpError{Op: "dial", Err: timeoutErr{}}, ReasonTimeout},
		{"canceled", context.Canceled, ReasonInterrupted},
		{"unknown CA", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, ReasonTLSCert},
		{"alert", tls.AlertError(40), ReasonTLSHandshake},
		{"not TLS", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, ReasonTLSHandshake},
		{"codec", &mqttcodec.Error{Rule: "x", Reason: mqttcodec.MalformedPacket}, ReasonProtocol},
		{"other", errors.New("strange"), ReasonOther},
	}
	for _, tt := range tests {
		if got := classify(tt.err); got != tt.want {
			t.Errorf("%s: classify(%v) = %q, want %q", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestReasonNames(t *testing.T) {
	tests := []struct{ got, want string }{
		{connackReason(mqttcodec.V311, 5), "connack return code 5"},
		{connackReason(mqttcodec.V5, mqttcodec.NotAuthorized), "connack 0x87 " + mqttcodec.NotAuthorized.String()},
		{disconnectReason(mqttcodec.UseAnotherServer), "server disconnect 0x9c " + mqttcodec.UseAnotherServer.String()},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
