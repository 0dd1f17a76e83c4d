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

	"github.com/dualgate/dualgate/mqttcodec"
)

// Reasons a connection failed before its CONNACK, or was dropped after it.
// They are the keys of [PoolStats.Failures] and [PoolStats.Drops].
const (
	ReasonRefused       = "refused"               // ECONNREFUSED: nothing listens
	ReasonTimeout       = "timeout"               // dial or TLS handshake deadline
	ReasonConnackTime   = "connack timeout"       // no CONNACK within the deadline
	ReasonNoSourcePort  = "no source port"        // EADDRNOTAVAIL: ephemeral ports of the source address exhausted
	ReasonTooManyFiles  = "too many open files"   // EMFILE/ENFILE on this side
	ReasonReset         = "reset"                 // ECONNRESET
	ReasonClosed        = "closed by server"      // orderly close (EOF)
	ReasonClosedEarly   = "closed before connack" // the server closed before answering CONNECT
	ReasonTLSHandshake  = "tls handshake"         // the handshake failed for another reason
	ReasonTLSCert       = "tls certificate"       // the server's certificate was refused
	ReasonProtocol      = "protocol error"        // the server sent bytes that do not decode
	ReasonInterrupted   = "interrupted"           // the run stopped before the CONNACK
	ReasonEnroll        = "event loop"            // the socket could not join the event loop
	ReasonOther         = "other"                 // anything else; see the worker's log
	reasonConnackPrefix = "connack "              // + reason code, e.g. "connack 0x87 not authorized"
	reasonDiscPrefix    = "server disconnect "    // + MQTT 5 reason code
)

// connackReason names a refusing CONNACK.
func connackReason(version byte, rc mqttcodec.ReasonCode) string {
	if version == mqttcodec.V5 {
		return fmt.Sprintf("%s0x%02x %s", reasonConnackPrefix, byte(rc), rc)
	}
	return fmt.Sprintf("%sreturn code %d", reasonConnackPrefix, byte(rc))
}

// disconnectReason names a server DISCONNECT (MQTT 5).
func disconnectReason(rc mqttcodec.ReasonCode) string {
	return fmt.Sprintf("%s0x%02x %s", reasonDiscPrefix, byte(rc), rc)
}

// classify maps a network or TLS error to one of the Reason constants.
func classify(err error) string {
	var (
		certErr  *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		alertErr tls.AlertError
		recErr   tls.RecordHeaderError
		codecErr *mqttcodec.Error
		netErr   net.Error
	)
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ReasonClosed
	case errors.Is(err, context.Canceled), errors.Is(err, net.ErrClosed):
		return ReasonInterrupted
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonRefused
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return ReasonNoSourcePort
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return ReasonTooManyFiles
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ReasonReset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	case errors.As(err, &certErr), errors.As(err, &unknown), errors.As(err, &hostErr), errors.As(err, &invalid):
		return ReasonTLSCert
	case errors.As(err, &alertErr), errors.As(err, &recErr):
		return ReasonTLSHandshake
	case errors.As(err, &codecErr):
		return ReasonProtocol
	case errors.As(err, &netErr) && netErr.Timeout():
		return ReasonTimeout
	}
	return ReasonOther
}
