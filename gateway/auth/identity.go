package auth

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// IdentityPolicy is --secure-identity: what proves, on a TLS connection,
// that a device holds its client id, so that secure commands may be written
// to it. A secure command is never written to a TLS session whose client id
// was not proven (session.CheckTransport); the session is still accepted,
// and the device may use TLS for everything else.
//
// The zero value is IdentityNone.
type IdentityPolicy uint8

// Proofs an IdentityPolicy accepts. IdentityCert|IdentityToken accepts
// either of them: one proof is enough.
const (
	// IdentityCert: a client certificate the TLS layer verified (against
	// --client-ca, or the gateway's development CA) whose subject common
	// name or URI SAN urn:dualgate:client:<id> is the CONNECT's client id.
	IdentityCert IdentityPolicy = 1 << iota
	// IdentityToken: a channel-bound token the Authenticator verified on
	// this TLS connection (Result.Proven).
	IdentityToken
	// IdentityNone proves nothing and asks for nothing: every TLS session
	// may receive secure commands, whoever it claims to be.
	IdentityNone IdentityPolicy = 0
)

// ParseIdentityPolicy reads a --secure-identity value: cert, token,
// cert,token (in either order) or none.
func ParseIdentityPolicy(s string) (IdentityPolicy, error) {
	if strings.TrimSpace(s) == "none" {
		return IdentityNone, nil
	}
	var p IdentityPolicy
	for part := range strings.SplitSeq(s, ",") {
		var bit IdentityPolicy
		switch strings.TrimSpace(part) {
		case "cert":
			bit = IdentityCert
		case "token":
			bit = IdentityToken
		default:
			return 0, fmt.Errorf("--secure-identity %q: want cert, token, cert,token or none", s)
		}
		if p&bit != 0 {
			return 0, fmt.Errorf("--secure-identity %q: %s given twice", s, strings.TrimSpace(part))
		}
		p |= bit
	}
	return p, nil
}

// String is the --secure-identity value of p.
func (p IdentityPolicy) String() string {
	switch p {
	case IdentityNone:
		return "none"
	case IdentityCert:
		return "cert"
	case IdentityToken:
		return "token"
	case IdentityCert | IdentityToken:
		return "cert,token"
	}
	return fmt.Sprintf("IdentityPolicy(%d)", uint8(p))
}

// Result message of an identity refusal, for the operator's log.
const msgCertOtherID = "client certificate names another client id"

// Decide is the identity decision on a TLS CONNECT that the Authenticator
// accepted with res; it is the session's Env.Identity hook. It returns
// whether the client id is proven on this connection, or ok false with the
// refusal to send: whatever the policy (but IdentityNone), a verified
// client certificate that names client ids, none of them the CONNECT's, is
// refused with ReasonNotAuthorized (MQTT 3.1.1: return code 0x05). A
// device with a certificate for car-1 cannot claim car-2 on TLS, with or
// without a token for car-2.
//
// A CONNECT without a certificate, or with one that names no client id,
// is accepted; it is proven only by what the policy accepts.
func (p IdentityPolicy) Decide(req *Request, res Result) (proven bool, refusal Result, ok bool) {
	if p == IdentityNone {
		return true, Result{}, true
	}
	certNamesID := CertNamesClient(req.PeerIdentity, req.ClientID)
	if len(req.PeerIdentity) > 0 && !certNamesID {
		// The names are the operator's to see: which device's
		// certificate claimed which client id.
		return false, refuse(ReasonNotAuthorized, msgCertOtherID+": certificate "+
			strings.Join(req.PeerIdentity, ",")+", CONNECT "+strconv.Quote(req.ClientID)), false
	}
	proven = (p&IdentityCert != 0 && req.TLS && certNamesID) ||
		(p&IdentityToken != 0 && req.TLS && res.OK && res.Proven)
	return proven, Result{}, true
}

// CertNamesClient reports whether a verified client certificate's
// identities (Request.PeerIdentity: its subject common name and the ids
// of its urn:dualgate:client:<id> URI SANs) include clientID. It is the one
// rule by which a certificate names a client id.
func CertNamesClient(peerIdentity []string, clientID string) bool {
	return clientID != "" && slices.Contains(peerIdentity, clientID)
}
