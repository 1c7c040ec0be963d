/* ferry — a small certificate authority for agents, clients and QEMU's
 * migration TLS, built on GnuTLS.
 *
 * Layout of a PKI directory (default $XDG_CONFIG_HOME/ferry/pki):
 *   ca-cert.pem, ca-key.pem            the CA (key mode 0600)
 *   hosts/HOST/cert.pem, key.pem       agent + QEMU migration certificate,
 *                                      usable as TLS server and client
 *   clients/NAME/cert.pem, key.pem     client (CLI/controller) certificate
 * A host's TLS directory (ferryd --tls-dir) holds ca-cert.pem, cert.pem
 * and key.pem; ferry_pki_issue_* writes exactly that layout, so
 * hosts/HOST/ can be copied to the host as its --tls-dir.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Creates the CA. Refuses (FERRY_ERROR_CONFLICT) if ca-cert.pem exists
 * unless force. Validity: 10 years. */
gboolean ferry_pki_init (const char *pki_dir, const char *ca_name, gboolean force, GError **error);

/* Host certificate: CN = host, SAN = host plus every entry of addresses
 * (each an IP address or DNS name), key usage for TLS server and client.
 * Writes pki_dir/hosts/HOST/{ca-cert.pem,cert.pem,key.pem}. Returns that directory.
 * host is a DNS name of at most 64 characters (the common-name limit) or an
 * IP literal; IP literals become IP SANs. Re-issuing replaces the files.
 * Errors: FERRY_ERROR_INVALID_ARGUMENT naming "host" or "addresses",
 * FERRY_ERROR_TOO_LARGE for too many addresses, FERRY_ERROR_NOT_FOUND
 * without a CA. */
char *ferry_pki_issue_host (const char *pki_dir, const char *host,
                            const char *const *addresses, GError **error);

/* Client certificate: CN = name ([A-Za-z0-9._-]{1,64}, not "." or ".."),
 * TLS client usage only. Errors as for ferry_pki_issue_host ("name").
 * Writes pki_dir/clients/NAME/{ca-cert.pem,cert.pem,key.pem}. Returns that directory. */
char *ferry_pki_issue_client (const char *pki_dir, const char *name, GError **error);

/* Default PKI directory: $FERRY_PKI_DIR, else $XDG_CONFIG_HOME/ferry/pki. */
char *ferry_pki_default_dir (void);

/* Most entries ferry_pki_issue_host accepts in addresses
 * (more: FERRY_ERROR_TOO_LARGE). */
#define FERRY_PKI_MAX_ADDRESSES 64

/* Lays out a host TLS directory (ca-cert.pem, cert.pem, key.pem) the way
 * QEMU's tls-creds-x509 "dir=" property wants it: out_dir/{ca-cert.pem,
 * server-cert.pem, server-key.pem, client-cert.pem, client-key.pem}, the
 * server and client pairs being copies of the host pair. Creates out_dir
 * (0700) if needed; keys are written 0600. The same directory serves
 * both endpoint=server and endpoint=client. It also holds dh-params.pem
 * (RFC 7919's ffdhe3072), without which QEMU generates parameters for
 * every server-side TLS object (up to 1.7 s each). */
gboolean ferry_pki_write_qemu_creds_dir (const char *tls_dir, const char *out_dir,
                                         GError **error);

G_END_DECLS
