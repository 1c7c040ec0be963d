/* ferry — TLS material for the HTTPS API (agent and CLI).
 *
 * A TLS directory holds ca-cert.pem, cert.pem and key.pem (the layout
 * `ferry pki issue-host` / `issue-client` write). Peers are trusted only
 * when their certificate chains to ca-cert.pem.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct {
  char *dir;
  GTlsCertificate *certificate;   /* our own certificate + key */
  GTlsDatabase *ca_database;      /* trust anchors: ca-cert.pem only */
  char *common_name;              /* CN of our certificate */
} FerryTls;

FerryTls *ferry_tls_load (const char *dir, GError **error);
void ferry_tls_free (FerryTls *tls);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryTls, ferry_tls_free)

G_END_DECLS
