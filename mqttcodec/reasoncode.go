package mqttcodec

import "strconv"

// ReasonCode is an MQTT 5 reason code. Values below 0x80 report success,
// values from 0x80 failure. Several names share the value 0 (Success,
// NormalDisconnection, GrantedQoS0); which applies depends on the packet.
type ReasonCode byte

// MQTT 5 reason codes (specification section 2.4).
const (
	// Success: the operation succeeded (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH).
	Success ReasonCode = 0x00
	// NormalDisconnection: close the connection normally, do not send the Will (DISCONNECT).
	NormalDisconnection ReasonCode = 0x00
	// GrantedQoS0: the subscription is accepted with maximum QoS 0 (SUBACK).
	GrantedQoS0 ReasonCode = 0x00
	// GrantedQoS1: the subscription is accepted with maximum QoS 1 (SUBACK).
	GrantedQoS1 ReasonCode = 0x01
	// GrantedQoS2: the subscription is accepted with maximum QoS 2 (SUBACK).
	GrantedQoS2 ReasonCode = 0x02
	// DisconnectWithWill: the client wants the Will sent (DISCONNECT).
	DisconnectWithWill ReasonCode = 0x04
	// NoMatchingSubscribers: accepted, but nobody subscribes (PUBACK, PUBREC).
	NoMatchingSubscribers ReasonCode = 0x10
	// NoSubscriptionExisted: no such subscription (UNSUBACK).
	NoSubscriptionExisted ReasonCode = 0x11
	// ContinueAuthentication: continue with another step (AUTH).
	ContinueAuthentication ReasonCode = 0x18
	// ReAuthenticate: start re-authentication (AUTH).
	ReAuthenticate ReasonCode = 0x19
	// UnspecifiedError: failure, no more specific code applies; also the 3.1.1 SUBACK failure return code.
	UnspecifiedError ReasonCode = 0x80
	// MalformedPacket: the packet could not be parsed according to the specification.
	MalformedPacket ReasonCode = 0x81
	// ProtocolError: the packet parsed but breaks the protocol.
	ProtocolError ReasonCode = 0x82
	// ImplementationSpecificError: valid, but refused by this implementation.
	ImplementationSpecificError ReasonCode = 0x83
	// UnsupportedProtocolVersion: the protocol name or level is not supported (CONNACK).
	UnsupportedProtocolVersion ReasonCode = 0x84
	// ClientIdentifierNotValid: the client identifier is refused (CONNACK).
	ClientIdentifierNotValid ReasonCode = 0x85
	// BadUserNameOrPassword: the credentials are refused (CONNACK).
	BadUserNameOrPassword ReasonCode = 0x86
	// NotAuthorized: the client may not do this.
	NotAuthorized ReasonCode = 0x87
	// ServerUnavailable: the server is not available (CONNACK).
	ServerUnavailable ReasonCode = 0x88
	// ServerBusy: the server is busy, try later.
	ServerBusy ReasonCode = 0x89
	// Banned: the client is banned (CONNACK).
	Banned ReasonCode = 0x8A
	// ServerShuttingDown: the server is shutting down (DISCONNECT).
	ServerShuttingDown ReasonCode = 0x8B
	// BadAuthenticationMethod: the authentication method is refused.
	BadAuthenticationMethod ReasonCode = 0x8C
	// KeepAliveTimeout: nothing arrived within 1.5 times the keep alive (DISCONNECT).
	KeepAliveTimeout ReasonCode = 0x8D
	// SessionTakenOver: another connection took over the session (DISCONNECT).
	SessionTakenOver ReasonCode = 0x8E
	// TopicFilterInvalid: the topic filter is refused.
	TopicFilterInvalid ReasonCode = 0x8F
	// TopicNameInvalid: the topic name is refused.
	TopicNameInvalid ReasonCode = 0x90
	// PacketIdentifierInUse: the packet identifier is already in use.
	PacketIdentifierInUse ReasonCode = 0x91
	// PacketIdentifierNotFound: the packet identifier is not known (PUBREL, PUBCOMP).
	PacketIdentifierNotFound ReasonCode = 0x92
	// ReceiveMaximumExceeded: more QoS > 0 publications in flight than allowed (DISCONNECT).
	ReceiveMaximumExceeded ReasonCode = 0x93
	// TopicAliasInvalid: the topic alias is out of range (DISCONNECT).
	TopicAliasInvalid ReasonCode = 0x94
	// PacketTooLarge: the packet exceeds the maximum packet size.
	PacketTooLarge ReasonCode = 0x95
	// MessageRateTooHigh: the data rate is too high (DISCONNECT).
	MessageRateTooHigh ReasonCode = 0x96
	// QuotaExceeded: an administrative quota is exceeded.
	QuotaExceeded ReasonCode = 0x97
	// AdministrativeAction: the connection is closed by an administrator (DISCONNECT).
	AdministrativeAction ReasonCode = 0x98
	// PayloadFormatInvalid: the payload does not match the payload format indicator.
	PayloadFormatInvalid ReasonCode = 0x99
	// RetainNotSupported: the server does not support retained messages.
	RetainNotSupported ReasonCode = 0x9A
	// QoSNotSupported: the QoS is above the server's maximum QoS.
	QoSNotSupported ReasonCode = 0x9B
	// UseAnotherServer: the client should temporarily use another server (CONNACK, DISCONNECT).
	UseAnotherServer ReasonCode = 0x9C
	// ServerMoved: the client should permanently use another server (CONNACK, DISCONNECT).
	ServerMoved ReasonCode = 0x9D
	// SharedSubscriptionsNotSupported: shared subscriptions are not supported.
	SharedSubscriptionsNotSupported ReasonCode = 0x9E
	// ConnectionRateExceeded: the connection rate limit is exceeded.
	ConnectionRateExceeded ReasonCode = 0x9F
	// MaximumConnectTime: the maximum connection time is reached (DISCONNECT).
	MaximumConnectTime ReasonCode = 0xA0
	// SubscriptionIdentifiersNotSupported: subscription identifiers are not supported.
	SubscriptionIdentifiersNotSupported ReasonCode = 0xA1
	// WildcardSubscriptionsNotSupported: wildcard subscriptions are not supported.
	WildcardSubscriptionsNotSupported ReasonCode = 0xA2
)

// MQTT 3.1.1 CONNACK return codes. They are untyped so that they fit both
// Connack.ReasonCode and the byte ConnackCode311 returns.
const (
	Accepted                     = 0 // connection accepted
	RefusedProtocolVersion       = 1 // unacceptable protocol version
	RefusedIdentifierRejected    = 2 // identifier rejected
	RefusedServerUnavailable     = 3 // server unavailable
	RefusedBadUsernameOrPassword = 4 // bad user name or password
	RefusedNotAuthorized         = 5 // not authorized
)

// IsError reports whether rc reports a failure (0x80 or above).
func (rc ReasonCode) IsError() bool { return rc >= 0x80 }

// String returns the reason code's name. Value 0 is reported as "Success".
func (rc ReasonCode) String() string {
	switch rc {
	case Success:
		return "Success"
	case GrantedQoS1:
		return "GrantedQoS1"
	case GrantedQoS2:
		return "GrantedQoS2"
	case DisconnectWithWill:
		return "DisconnectWithWill"
	case NoMatchingSubscribers:
		return "NoMatchingSubscribers"
	case NoSubscriptionExisted:
		return "NoSubscriptionExisted"
	case ContinueAuthentication:
		return "ContinueAuthentication"
	case ReAuthenticate:
		return "ReAuthenticate"
	case UnspecifiedError:
		return "UnspecifiedError"
	case MalformedPacket:
		return "MalformedPacket"
	case ProtocolError:
		return "ProtocolError"
	case ImplementationSpecificError:
		return "ImplementationSpecificError"
	case UnsupportedProtocolVersion:
		return "UnsupportedProtocolVersion"
	case ClientIdentifierNotValid:
		return "ClientIdentifierNotValid"
	case BadUserNameOrPassword:
		return "BadUserNameOrPassword"
	case NotAuthorized:
		return "NotAuthorized"
	case ServerUnavailable:
		return "ServerUnavailable"
	case ServerBusy:
		return "ServerBusy"
	case Banned:
		return "Banned"
	case ServerShuttingDown:
		return "ServerShuttingDown"
	case BadAuthenticationMethod:
		return "BadAuthenticationMethod"
	case KeepAliveTimeout:
		return "KeepAliveTimeout"
	case SessionTakenOver:
		return "SessionTakenOver"
	case TopicFilterInvalid:
		return "TopicFilterInvalid"
	case TopicNameInvalid:
		return "TopicNameInvalid"
	case PacketIdentifierInUse:
		return "PacketIdentifierInUse"
	case PacketIdentifierNotFound:
		return "PacketIdentifierNotFound"
	case ReceiveMaximumExceeded:
		return "ReceiveMaximumExceeded"
	case TopicAliasInvalid:
		return "TopicAliasInvalid"
	case PacketTooLarge:
		return "PacketTooLarge"
	case MessageRateTooHigh:
		return "MessageRateTooHigh"
	case QuotaExceeded:
		return "QuotaExceeded"
	case AdministrativeAction:
		return "AdministrativeAction"
	case PayloadFormatInvalid:
		return "PayloadFormatInvalid"
	case RetainNotSupported:
		return "RetainNotSupported"
	case QoSNotSupported:
		return "QoSNotSupported"
	case UseAnotherServer:
		return "UseAnotherServer"
	case ServerMoved:
		return "ServerMoved"
	case SharedSubscriptionsNotSupported:
		return "SharedSubscriptionsNotSupported"
	case ConnectionRateExceeded:
		return "ConnectionRateExceeded"
	case MaximumConnectTime:
		return "MaximumConnectTime"
	case SubscriptionIdentifiersNotSupported:
		return "SubscriptionIdentifiersNotSupported"
	case WildcardSubscriptionsNotSupported:
		return "WildcardSubscriptionsNotSupported"
	}
	return "ReasonCode(0x" + strconv.FormatUint(uint64(rc), 16) + ")"
}

// ConnackCode311 maps an MQTT 5 reason code to the 3.1.1 CONNACK return code a
// server should send for it. Success codes map to Accepted. Failures with no
// 3.1.1 counterpart map to RefusedServerUnavailable; note that for a
// MalformedPacket or ProtocolError the 3.1.1 server closes the connection
// without any CONNACK.
func ConnackCode311(rc ReasonCode) byte {
	switch {
	case !rc.IsError():
		return Accepted
	case rc == UnsupportedProtocolVersion:
		return RefusedProtocolVersion
	case rc == ClientIdentifierNotValid:
		return RefusedIdentifierRejected
	case rc == BadUserNameOrPassword, rc == BadAuthenticationMethod:
		return RefusedBadUsernameOrPassword
	case rc == NotAuthorized, rc == Banned:
		return RefusedNotAuthorized
	}
	return RefusedServerUnavailable
}

// validReason reports whether rc is one the specification allows in a packet
// of type t (MQTT 5; 3.1.1 CONNACK and SUBACK are checked by their decoders).
func validReason(t Type, rc ReasonCode) bool {
	switch t {
	case CONNACK: // [MQTT-3.2.2-8]
		switch rc {
		case Success, UnspecifiedError, MalformedPacket, ProtocolError, ImplementationSpecificError,
			UnsupportedProtocolVersion, ClientIdentifierNotValid, BadUserNameOrPassword, NotAuthorized,
			ServerUnavailable, ServerBusy, Banned, BadAuthenticationMethod, TopicNameInvalid,
			PacketTooLarge, QuotaExceeded, PayloadFormatInvalid, RetainNotSupported, QoSNotSupported,
			UseAnotherServer, ServerMoved, ConnectionRateExceeded:
			return true
		}
	case PUBACK, PUBREC:
		switch rc {
		case Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecificError,
			NotAuthorized, TopicNameInvalid, PacketIdentifierInUse, QuotaExceeded, PayloadFormatInvalid:
			return true
		}
	case PUBREL, PUBCOMP:
		return rc == Success || rc == PacketIdentifierNotFound
	case SUBACK:
		switch rc {
		case GrantedQoS0, GrantedQoS1, GrantedQoS2, UnspecifiedError, ImplementationSpecificError,
			NotAuthorized, TopicFilterInvalid, PacketIdentifierInUse, QuotaExceeded,
			SharedSubscriptionsNotSupported, SubscriptionIdentifiersNotSupported,
			WildcardSubscriptionsNotSupported:
			return true
		}
	case UNSUBACK:
		switch rc {
		case Success, NoSubscriptionExisted, UnspecifiedError, ImplementationSpecificError,
			NotAuthorized, TopicFilterInvalid, PacketIdentifierInUse:
			return true
		}
	case DISCONNECT:
		switch rc {
		case NormalDisconnection, DisconnectWithWill, UnspecifiedError, MalformedPacket, ProtocolError,
			ImplementationSpecificError, NotAuthorized, ServerBusy, ServerShuttingDown,
			KeepAliveTimeout, SessionTakenOver, TopicFilterInvalid, TopicNameInvalid,
			ReceiveMaximumExceeded, TopicAliasInvalid, PacketTooLarge, MessageRateTooHigh,
			QuotaExceeded, AdministrativeAction, PayloadFormatInvalid, RetainNotSupported,
			QoSNotSupported, UseAnotherServer, ServerMoved, SharedSubscriptionsNotSupported,
			ConnectionRateExceeded, MaximumConnectTime, SubscriptionIdentifiersNotSupported,
			WildcardSubscriptionsNotSupported:
			return true
		}
	case AUTH:
		return rc == Success || rc == ContinueAuthentication || rc == ReAuthenticate
	}
	return false
}
