#include "tls.h"

#include <gnutls/x509.h>

#include "ferry-error.h"

void
ferry_tls_free (FerryTls *tls)
{
  if (tls == NULL)
    return;
  g_free (tls->dir);
  g_clear_object (&tls->certificate);
  g_clear_object (&tls->ca_database);
  g_free (tls->common_name);
  g_free (tls);
}

static char *
certificate_common_name (GTlsCertificate *certificate)
{
  g_autofree char *pem = NULL;
  g_object_get (certificate, "certificate-pem", &pem, NULL);
  if (pem == NULL)
    return NULL;
  gnutls_x509_crt_t crt;
  if (gnutls_x509_crt_init (&crt) < 0)
    return NULL;
  gnutls_datum_t datum = { (unsigned char *) pem, strlen (pem) };
  char name[256];
  size_t size = sizeof name;
  char *result = NULL;
  if (gnutls_x509_crt_import (crt, &datum, GNUTLS_X509_FMT_PEM) >= 0
      && gnutls_x509_crt_get_dn_by_oid (crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, name, &size) >= 0)
    result = g_strdup (name);
  gnutls_x509_crt_deinit (crt);
  return result;
}

FerryTls *
ferry_tls_load (const char *dir, GError **error)
{
  g_autoptr (FerryTls) tls = g_new0 (FerryTls, 1);
  /* GTlsFileDatabase wants an absolute anchor path. */
  g_autofree char *absolute = g_canonicalize_filename (dir, NULL);
  dir = absolute;
  g_autofree char *ca = g_build_filename (dir, "ca-cert.pem", NULL);
  g_autofree char *cert = g_build_filename (dir, "cert.pem", NULL);
  g_autofree char *key = g_build_filename (dir, "key.pem", NULL);
  g_autoptr (GError) local_error = NULL;

  if (!g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "GIO has no TLS backend (install glib-networking)");
      return NULL;
    }
  tls->dir = g_strdup (dir);
  tls->certificate = g_tls_certificate_new_from_files (cert, key, &local_error);
  if (tls->certificate == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "TLS directory %s: cannot load cert.pem/key.pem: %s "
                   "(create them with `ferry pki issue-host` or `ferry pki issue-client`)",
                   dir, local_error->message);
      return NULL;
    }
  tls->ca_database = g_tls_file_database_new (ca, &local_error);
  if (tls->ca_database == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "TLS directory %s: cannot load ca-cert.pem: %s", dir, local_error->message);
      return NULL;
    }
  /* The cluster CA is the only trust this process has, for every TLS
   * connection it makes or accepts. It also saves a connection's set-up
   * the system store: glib-networking builds each connection's
   * credentials from the default database before libsoup hands it ours,
   * and parsing /etc/ssl/certs (twice for the CLI's first connection)
   * took 15-28 ms per connection. */
  g_tls_backend_set_default_database (g_tls_backend_get_default (), tls->ca_database);
  tls->common_name = certificate_common_name (tls->certificate);
  return g_steal_pointer (&tls);
}
