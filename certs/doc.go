// Package certs is dualgate's development PKI: a certificate authority, a
// server certificate and client certificates, all ECDSA P-256 in PEM.
//
// It serves three uses:
//
//   - Init writes a fresh CA, server and client certificate into a directory
//     (`dualgate certs init`).
//   - EnsureDev does the same on a gateway's first start and reuses the files
//     afterwards (`dualgate serve` without --tls-cert). It renews a server
//     certificate that no longer names every host or is close to expiry, from
//     the same CA, so devices that trust the CA keep working.
//   - IssueClients issues device certificates from the CA in a directory,
//     DIR/ID.pem and DIR/ID-key.pem (`dualgate certs client`): what a device
//     presents on TLS to prove its client id (--secure-identity cert).
//   - NewTestPKI builds the same chain in memory for tests across the project,
//     without touching the disk.
//
// # What the certificates hold
//
// The CA is valid for about ten years, leaves for about one year; serial
// numbers are random 128-bit integers. The server certificate is for
// ExtKeyUsageServerAuth and names every host given, IP addresses as IP SANs
// and names as DNS SANs, plus localhost, 127.0.0.1 and ::1 always. A client
// certificate is for ExtKeyUsageClientAuth; its subject common name is the
// MQTT client id and it carries the URI SAN urn:dualgate:client:{id}
// (ClientURI), so a gateway can match a verified certificate to the client id
// a device presents.
//
// # Files
//
// The CA is ca.pem and ca-key.pem, the server certificate server.pem and
// server-key.pem, and a client certificate is named by its client id,
// ID.pem and ID-key.pem (ClientFiles; Init's is dev-client.pem unless
// WithClientID says otherwise). A client id that cannot be a file name
// there is refused (CheckClientFileID).
//
// Key files are written 0600, certificate files 0644, each through a
// temporary file and a rename, so a crash never leaves half a file. A
// directory the package creates is 0700; an existing directory keeps its mode.
// Private keys are PKCS #8 ("PRIVATE KEY").
package certs
