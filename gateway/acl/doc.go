// Package acl is dualgate's topic authorization: one Authorizer decides
// what a device may publish (and set as its Will), subscribe to and
// receive, for local routing, the upstream bridge and Wills alike.
//
// Built-in rules keep devices out of each other's command space and out of
// the gateway's reserved topics whatever else is configured. An optional
// file in Mosquitto's acl_file format adds per-topic rules:
//
//	# comment
//	topic [read|write|readwrite|deny] TOPIC     (before any user line: clients without a user name)
//	user NAME
//	topic [read|write|readwrite|deny] TOPIC     (clients with user name NAME)
//	pattern [read|write|readwrite|deny] TOPIC   (every client; %c = client id, %u = user name, whole levels)
//
// As in Mosquitto, once a file is given anything it does not grant is
// denied; the client's own list (its user's, or the anonymous one) is
// checked first, then the patterns, and in each the deny rules come first.
// Subscriptions are checked against the file too (a filter entirely inside
// a deny rule, or overlapping no read rule, is refused), and every message
// is checked again, on its concrete topic, when it is delivered.
//
// Secure topics (--secure-topics) are filters whose messages are written to
// TLS sessions only; the Authorizer refuses them when published over plain.
package acl
