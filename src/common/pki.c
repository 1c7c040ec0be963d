/* ferry — a small certificate authority on GnuTLS.
 *
 * Keys are ECDSA P-256: QEMU's tls-creds-x509 (GnuTLS), glib-networking
 * (GnuTLS) and OpenSSL peers all accept them, they are generated in
 * milliseconds, and they keep handshakes cheap for the many NBD and
 * migration connections one job opens. Keys are written as unencrypted
 * PKCS#8 ("BEGIN PRIVATE KEY"), the one PEM form every consumer parses.
 */
#include "pki.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "ferry-error.h"

G_DEFINE_AUTO_CLEANUP_FREE_FUNC (gnutls_x509_crt_t, gnutls_x509_crt_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC (gnutls_x509_privkey_t, gnutls_x509_privkey_deinit, NULL)

/* Datums hold exported private keys too, so wipe before freeing. */
static void
datum_clear (gnutls_datum_t *datum)
{
  if (datum->data != NULL)
    {
      gnutls_memset (datum->data, 0, datum->size);
      gnutls_free (datum->data);
    }
  datum->data = NULL;
  datum->size = 0;
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (gnutls_datum_t, datum_clear)

/* g_autofd arrived in GLib 2.76; we support 2.74. */
static void
fd_close (int *fd)
{
  if (*fd >= 0)
    g_close (*fd, NULL);
  *fd = -1;
}
#define autofd __attribute__ ((cleanup (fd_close)))

#define CA_VALIDITY_YEARS 10
#define LEAF_VALIDITY_YEARS 3
/* Peers whose clocks run a little behind must still accept a fresh cert. */
#define CLOCK_SKEW_SECONDS 3600
/* RFC 5280 ub-common-name. */
#define MAX_COMMON_NAME 64
#define MAX_CLIENT_NAME 64
#define MAX_DNS_NAME 253
/* Certificates and keys are a few KiB; anything bigger is not ours. */
#define MAX_PEM_FILE (1024 * 1024)
#define SERIAL_BYTES 20
#define KEY_ID_MAX 64

#define CA_CERT_FILE "ca-cert.pem"
#define CA_KEY_FILE "ca-key.pem"
#define CERT_FILE "cert.pem"
#define KEY_FILE "key.pem"

static gboolean
gnutls_ok (int rc, const char *what, GError **error)
{
  if (rc >= 0)
    return TRUE;
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
               "%s: %s", what, gnutls_strerror (rc));
  return FALSE;
}

/* ---- files -------------------------------------------------------------- */

static gboolean
make_private_dir (const char *path, GError **error)
{
  if (g_mkdir_with_parents (path, 0700) < 0)
    {
      int saved_errno = errno;
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                   "Cannot create directory %s: %s", path, g_strerror (saved_errno));
      return FALSE;
    }
  return TRUE;
}

/* Atomic: a temporary file created O_EXCL with the final mode, fsynced and
 * renamed over path, so readers see the old or the new file, never half,
 * and a key is never readable by others even for an instant. */
static gboolean
write_file (const char *path, const void *data, gsize size, int mode, GError **error)
{
  return g_file_set_contents_full (path, data, size, G_FILE_SET_CONTENTS_CONSISTENT,
                                   mode, error);
}

static gboolean
write_datum (const char *path, const gnutls_datum_t *datum, int mode, GError **error)
{
  return write_file (path, datum->data, datum->size, mode, error);
}

/* Missing files are FERRY_ERROR_NOT_FOUND so callers can tell "not set up"
 * apart from "broken". */
static GBytes *
read_pem_file (const char *path, GError **error)
{
  autofd int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    {
      int saved_errno = errno;
      g_set_error (error, FERRY_ERROR,
                   saved_errno == ENOENT ? FERRY_ERROR_NOT_FOUND : FERRY_ERROR_FAILED,
                   "Cannot open %s: %s", path, g_strerror (saved_errno));
      return NULL;
    }

  struct stat st;
  if (fstat (fd, &st) < 0)
    {
      int saved_errno = errno;
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "Cannot stat %s: %s", path, g_strerror (saved_errno));
      return NULL;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s is not a regular file", path);
      return NULL;
    }
  if (st.st_size > MAX_PEM_FILE)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                   "%s is larger than %d bytes", path, MAX_PEM_FILE);
      return NULL;
    }

  gsize capacity = (gsize) st.st_size;
  g_autofree guint8 *buf = g_malloc (capacity + 1);
  gsize length = 0;
  /* Read to EOF rather than trusting st_size: the file may shrink. */
  while (length < capacity)
    {
      ssize_t n = read (fd, buf + length, capacity - length);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          int saved_errno = errno;
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                       "Cannot read %s: %s", path, g_strerror (saved_errno));
          return NULL;
        }
      if (n == 0)
        break;
      length += (gsize) n;
    }
  return g_bytes_new_take (g_steal_pointer (&buf), length);
}

static gboolean
copy_pem_file (const char *from, const char *to, int mode, GError **error)
{
  g_autoptr(GBytes) contents = read_pem_file (from, error);
  if (contents == NULL)
    return FALSE;
  gsize size;
  const void *data = g_bytes_get_data (contents, &size);
  return write_file (to, data, size, mode, error);
}

/* ---- names -------------------------------------------------------------- */

static gboolean
is_dns_label_char (char c)
{
  return g_ascii_isalnum (c) || c == '-';
}

/* RFC 1123 host name: ASCII (IDNs must come punycoded), labels of 1-63
 * letters, digits and inner hyphens, 253 characters at most. */
static gboolean
is_valid_dns_name (const char *name)
{
  gsize total = strlen (name);
  if (total == 0 || total > MAX_DNS_NAME)
    return FALSE;

  const char *label = name;
  for (;;)
    {
      const char *end = strchr (label, '.');
      gsize len = end != NULL ? (gsize) (end - label) : strlen (label);
      if (len == 0 || len > 63)
        return FALSE;
      if (label[0] == '-' || label[len - 1] == '-')
        return FALSE;
      for (gsize i = 0; i < len; i++)
        if (!is_dns_label_char (label[i]))
          return FALSE;
      if (end == NULL)
        return TRUE;
      label = end + 1;
    }
}

/* An IP literal as GInetAddress, or NULL for anything else (including
 * scoped IPv6, which a certificate cannot name). */
static GInetAddress *
parse_ip_literal (const char *text)
{
  if (!g_hostname_is_ip_address (text))
    return NULL;
  return g_inet_address_new_from_string (text);
}

static gboolean
validate_host_name (const char *what, const char *name, GError **error)
{
  if (name == NULL || *name == '\0')
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must not be empty", what);
      return FALSE;
    }
  if (g_hostname_is_ip_address (name))
    {
      g_autoptr(GInetAddress) address = parse_ip_literal (name);
      if (address == NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "%s: “%s” is not a plain IPv4 or IPv6 address", what, name);
          return FALSE;
        }
      return TRUE;
    }
  if (!g_str_is_ascii (name) || !is_valid_dns_name (name))
    {
      g_autofree char *shown = g_utf8_make_valid (name, -1);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: “%s” is neither an IP address nor a DNS name "
                   "(letters, digits, hyphens and dots; punycode for IDNs)", what, shown);
      return FALSE;
    }
  return TRUE;
}

static gboolean
validate_client_name (const char *name, GError **error)
{
  gsize len = name != NULL ? strlen (name) : 0;
  gboolean ok = len >= 1 && len <= MAX_CLIENT_NAME;
  for (gsize i = 0; ok && i < len; i++)
    ok = g_ascii_isalnum (name[i]) || name[i] == '.' || name[i] == '_' || name[i] == '-';
  /* The name becomes a directory under clients/. */
  if (ok && (g_str_equal (name, ".") || g_str_equal (name, "..")))
    ok = FALSE;
  if (!ok)
    {
      g_autofree char *shown = g_utf8_make_valid (name != NULL ? name : "", -1);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "name: “%s” must be 1-%d characters of A-Z a-z 0-9 . _ - "
                   "(and not “.” or “..”)", shown, MAX_CLIENT_NAME);
      return FALSE;
    }
  return TRUE;
}

static gboolean
validate_ca_name (const char *ca_name, GError **error)
{
  gsize len = strlen (ca_name);
  gboolean ok = len > 0 && len <= MAX_COMMON_NAME && g_utf8_validate (ca_name, -1, NULL);
  for (const char *p = ca_name; ok && *p != '\0'; p = g_utf8_next_char (p))
    ok = !g_unichar_iscntrl (g_utf8_get_char (p));
  if (!ok)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "ca_name: must be 1-%d bytes of printable UTF-8", MAX_COMMON_NAME);
      return FALSE;
    }
  return TRUE;
}

/* ---- certificate building ----------------------------------------------- */

static gboolean
generate_key (gnutls_x509_privkey_t *out, GError **error)
{
  g_auto(gnutls_x509_privkey_t) key = NULL;
  if (!gnutls_ok (gnutls_x509_privkey_init (&key), "Cannot allocate private key", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_privkey_generate (key, GNUTLS_PK_ECDSA,
                                                GNUTLS_CURVE_TO_BITS (GNUTLS_ECC_CURVE_SECP256R1), 0),
                  "Cannot generate ECDSA P-256 key", error))
    return FALSE;
  *out = g_steal_pointer (&key);
  return TRUE;
}

static gboolean
export_key_pem (gnutls_x509_privkey_t key, gnutls_datum_t *out, GError **error)
{
  return gnutls_ok (gnutls_x509_privkey_export2_pkcs8 (key, GNUTLS_X509_FMT_PEM, NULL,
                                                       GNUTLS_PKCS_PLAIN, out),
                    "Cannot export private key", error);
}

static time_t
years_from (time_t start, int years)
{
  g_autoptr(GDateTime) from = g_date_time_new_from_unix_utc (start);
  g_autoptr(GDateTime) until = g_date_time_add_years (from, years);
  return (time_t) g_date_time_to_unix (until);
}

/* Common to CA and leaf: version, random positive serial, subject CN,
 * validity, public key and its subject key identifier. */
static gboolean
crt_new (gnutls_x509_privkey_t key, const char *common_name, time_t not_after,
         gnutls_x509_crt_t *out, GError **error)
{
  g_auto(gnutls_x509_crt_t) crt = NULL;
  if (!gnutls_ok (gnutls_x509_crt_init (&crt), "Cannot allocate certificate", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_set_version (crt, 3), "Cannot set certificate version", error))
    return FALSE;

  /* RFC 5280: at most 20 octets, positive. Clearing the top bit keeps it
   * positive; setting the next one keeps the DER encoding 20 bytes long. */
  guint8 serial[SERIAL_BYTES];
  if (!gnutls_ok (gnutls_rnd (GNUTLS_RND_RANDOM, serial, sizeof serial),
                  "Cannot generate serial number", error))
    return FALSE;
  serial[0] = (serial[0] & 0x7f) | 0x40;
  if (!gnutls_ok (gnutls_x509_crt_set_serial (crt, serial, sizeof serial),
                  "Cannot set serial number", error))
    return FALSE;

  if (!gnutls_ok (gnutls_x509_crt_set_dn_by_oid (crt, GNUTLS_OID_X520_COMMON_NAME, 0,
                                                 common_name, strlen (common_name)),
                  "Cannot set subject", error))
    return FALSE;

  time_t now = time (NULL);
  if (!gnutls_ok (gnutls_x509_crt_set_activation_time (crt, now - CLOCK_SKEW_SECONDS),
                  "Cannot set activation time", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_set_expiration_time (crt, not_after),
                  "Cannot set expiration time", error))
    return FALSE;

  if (!gnutls_ok (gnutls_x509_crt_set_key (crt, key), "Cannot set public key", error))
    return FALSE;

  guint8 key_id[KEY_ID_MAX];
  size_t key_id_size = sizeof key_id;
  if (!gnutls_ok (gnutls_x509_crt_get_key_id (crt, GNUTLS_KEYID_USE_SHA1, key_id, &key_id_size),
                  "Cannot compute subject key identifier", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_set_subject_key_id (crt, key_id, key_id_size),
                  "Cannot set subject key identifier", error))
    return FALSE;

  *out = g_steal_pointer (&crt);
  return TRUE;
}

typedef struct {
  gnutls_x509_crt_t crt;
  gnutls_x509_privkey_t key;
  GBytes *crt_pem;
} CaPair;

static void
ca_pair_clear (CaPair *ca)
{
  g_clear_pointer (&ca->crt, gnutls_x509_crt_deinit);
  g_clear_pointer (&ca->key, gnutls_x509_privkey_deinit);
  g_clear_pointer (&ca->crt_pem, g_bytes_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (CaPair, ca_pair_clear)

static gboolean
ca_load (const char *pki_dir, CaPair *ca, GError **error)
{
  g_autofree char *crt_path = g_build_filename (pki_dir, CA_CERT_FILE, NULL);
  g_autofree char *key_path = g_build_filename (pki_dir, CA_KEY_FILE, NULL);
  g_autoptr(GError) local_error = NULL;

  ca->crt_pem = read_pem_file (crt_path, &local_error);
  g_autoptr(GBytes) key_pem = ca->crt_pem != NULL ? read_pem_file (key_path, &local_error) : NULL;
  if (key_pem == NULL)
    {
      if (g_error_matches (local_error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                     "No certificate authority in %s (%s); run `ferry pki init` first",
                     pki_dir, local_error->message);
      else
        g_propagate_error (error, g_steal_pointer (&local_error));
      return FALSE;
    }

  gsize size;
  gnutls_datum_t crt_datum = { (unsigned char *) g_bytes_get_data (ca->crt_pem, &size), 0 };
  crt_datum.size = (unsigned int) size;
  gnutls_datum_t key_datum = { (unsigned char *) g_bytes_get_data (key_pem, &size), 0 };
  key_datum.size = (unsigned int) size;

  if (!gnutls_ok (gnutls_x509_crt_init (&ca->crt), "Cannot allocate certificate", error))
    return FALSE;
  if (gnutls_x509_crt_import (ca->crt, &crt_datum, GNUTLS_X509_FMT_PEM) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "%s is not a PEM certificate", crt_path);
      return FALSE;
    }
  if (!gnutls_ok (gnutls_x509_privkey_init (&ca->key), "Cannot allocate private key", error))
    return FALSE;
  if (gnutls_x509_privkey_import2 (ca->key, &key_datum, GNUTLS_X509_FMT_PEM, NULL, 0) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "%s is not an unencrypted PEM private key", key_path);
      return FALSE;
    }

  /* A half-finished forced re-init could pair an old certificate with a
   * new key; everything signed then would fail to verify, silently. */
  guint8 crt_id[KEY_ID_MAX], key_id[KEY_ID_MAX];
  size_t crt_id_size = sizeof crt_id, key_id_size = sizeof key_id;
  if (!gnutls_ok (gnutls_x509_crt_get_key_id (ca->crt, GNUTLS_KEYID_USE_SHA256, crt_id, &crt_id_size),
                  "Cannot compute CA key identifier", error)
      || !gnutls_ok (gnutls_x509_privkey_get_key_id (ca->key, GNUTLS_KEYID_USE_SHA256, key_id, &key_id_size),
                     "Cannot compute CA key identifier", error))
    return FALSE;
  if (crt_id_size != key_id_size || memcmp (crt_id, key_id, crt_id_size) != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "%s and %s do not belong together; run `ferry pki init --force`",
                   crt_path, key_path);
      return FALSE;
    }

  time_t ca_not_after = gnutls_x509_crt_get_expiration_time (ca->crt);
  if (ca_not_after != (time_t) -1 && ca_not_after <= time (NULL))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "The certificate authority in %s has expired; "
                   "run `ferry pki init --force` and re-issue every certificate", pki_dir);
      return FALSE;
    }
  return TRUE;
}

static gboolean
set_authority_key_id (gnutls_x509_crt_t crt, gnutls_x509_crt_t issuer, GError **error)
{
  guint8 id[KEY_ID_MAX];
  size_t id_size = sizeof id;
  unsigned int critical = 0;
  /* A CA made elsewhere may lack the extension; derive it the same way. */
  if (gnutls_x509_crt_get_subject_key_id (issuer, id, &id_size, &critical) < 0)
    {
      id_size = sizeof id;
      if (!gnutls_ok (gnutls_x509_crt_get_key_id (issuer, GNUTLS_KEYID_USE_SHA1, id, &id_size),
                      "Cannot compute authority key identifier", error))
        return FALSE;
    }
  return gnutls_ok (gnutls_x509_crt_set_authority_key_id (crt, id, id_size),
                    "Cannot set authority key identifier", error);
}

static gboolean
add_san (gnutls_x509_crt_t crt, GHashTable *seen, const char *name, GError **error)
{
  g_autoptr(GInetAddress) address = parse_ip_literal (name);
  int rc;

  if (address != NULL)
    {
      g_autofree char *canonical = g_inet_address_to_string (address);
      if (!g_hash_table_add (seen, g_strconcat ("ip:", canonical, NULL)))
        return TRUE;
      rc = gnutls_x509_crt_set_subject_alt_name (crt, GNUTLS_SAN_IPADDRESS,
                                                 g_inet_address_to_bytes (address),
                                                 (unsigned int) g_inet_address_get_native_size (address),
                                                 GNUTLS_FSAN_APPEND);
    }
  else
    {
      g_autofree char *lower = g_ascii_strdown (name, -1);
      if (!g_hash_table_add (seen, g_strconcat ("dns:", lower, NULL)))
        return TRUE;
      rc = gnutls_x509_crt_set_subject_alt_name (crt, GNUTLS_SAN_DNSNAME, name,
                                                 (unsigned int) strlen (name),
                                                 GNUTLS_FSAN_APPEND);
    }
  if (rc < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "Cannot add subject alternative name %s: %s", name, gnutls_strerror (rc));
      return FALSE;
    }
  return TRUE;
}

typedef enum {
  LEAF_HOST,   /* agent and QEMU: TLS server and client */
  LEAF_CLIENT, /* CLI and controller: TLS client only */
} LeafKind;

/* Issues a leaf into dir/{key.pem,cert.pem,ca-cert.pem}. The key is
 * written first: a crash in between leaves a stale pair that re-issuing
 * repairs, never a certificate whose key is missing. */
static gboolean
issue_leaf (const char *pki_dir, const char *dir, LeafKind kind, const char *common_name,
            const char *const *sans, GError **error)
{
  g_auto(CaPair) ca = { 0 };
  if (!ca_load (pki_dir, &ca, error))
    return FALSE;

  g_auto(gnutls_x509_privkey_t) key = NULL;
  if (!generate_key (&key, error))
    return FALSE;

  /* Never outlive the issuer: peers reject the chain from then on anyway,
   * and a shorter date tells the operator the truth. */
  time_t not_after = years_from (time (NULL), LEAF_VALIDITY_YEARS);
  time_t ca_not_after = gnutls_x509_crt_get_expiration_time (ca.crt);
  if (ca_not_after != (time_t) -1 && ca_not_after < not_after)
    not_after = ca_not_after;

  g_auto(gnutls_x509_crt_t) crt = NULL;
  if (!crt_new (key, common_name, not_after, &crt, error))
    return FALSE;

  if (!gnutls_ok (gnutls_x509_crt_set_basic_constraints (crt, 0, -1),
                  "Cannot set basic constraints", error))
    return FALSE;

  /* QEMU insists on keyEncipherment as well as digitalSignature whenever
   * keyUsage is critical, whatever the key type. */
  unsigned int usage = kind == LEAF_HOST
                       ? GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT
                       : GNUTLS_KEY_DIGITAL_SIGNATURE;
  if (!gnutls_ok (gnutls_x509_crt_set_key_usage (crt, usage), "Cannot set key usage", error))
    return FALSE;

  if (kind == LEAF_HOST
      && !gnutls_ok (gnutls_x509_crt_set_key_purpose_oid (crt, GNUTLS_KP_TLS_WWW_SERVER, 0),
                     "Cannot set extended key usage", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_set_key_purpose_oid (crt, GNUTLS_KP_TLS_WWW_CLIENT, 0),
                  "Cannot set extended key usage", error))
    return FALSE;

  g_autoptr(GHashTable) seen = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  for (gsize i = 0; sans != NULL && sans[i] != NULL; i++)
    if (!add_san (crt, seen, sans[i], error))
      return FALSE;

  if (!set_authority_key_id (crt, ca.crt, error))
    return FALSE;

  if (!gnutls_ok (gnutls_x509_crt_sign2 (crt, ca.crt, ca.key, GNUTLS_DIG_SHA256, 0),
                  "Cannot sign certificate", error))
    return FALSE;

  g_auto(gnutls_datum_t) key_pem = { NULL, 0 };
  g_auto(gnutls_datum_t) crt_pem = { NULL, 0 };
  if (!export_key_pem (key, &key_pem, error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_export2 (crt, GNUTLS_X509_FMT_PEM, &crt_pem),
                  "Cannot export certificate", error))
    return FALSE;

  g_autofree char *key_path = g_build_filename (dir, KEY_FILE, NULL);
  g_autofree char *crt_path = g_build_filename (dir, CERT_FILE, NULL);
  g_autofree char *ca_path = g_build_filename (dir, CA_CERT_FILE, NULL);
  gsize ca_size;
  const void *ca_data = g_bytes_get_data (ca.crt_pem, &ca_size);

  return make_private_dir (dir, error)
         && write_datum (key_path, &key_pem, 0600, error)
         && write_datum (crt_path, &crt_pem, 0644, error)
         && write_file (ca_path, ca_data, ca_size, 0644, error);
}

/* ---- public API --------------------------------------------------------- */

gboolean
ferry_pki_init (const char *pki_dir, const char *ca_name, gboolean force, GError **error)
{
  g_return_val_if_fail (pki_dir != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (ca_name == NULL)
    ca_name = "ferry CA";
  if (!validate_ca_name (ca_name, error))
    return FALSE;

  g_autofree char *crt_path = g_build_filename (pki_dir, CA_CERT_FILE, NULL);
  g_autofree char *key_path = g_build_filename (pki_dir, CA_KEY_FILE, NULL);
  if (!force && g_file_test (crt_path, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "A certificate authority already exists in %s; "
                   "--force replaces it and invalidates every certificate it issued",
                   pki_dir);
      return FALSE;
    }

  g_auto(gnutls_x509_privkey_t) key = NULL;
  if (!generate_key (&key, error))
    return FALSE;

  g_auto(gnutls_x509_crt_t) crt = NULL;
  if (!crt_new (key, ca_name, years_from (time (NULL), CA_VALIDITY_YEARS), &crt, error))
    return FALSE;
  /* Path length 0: this CA signs leaves only, never another CA. */
  if (!gnutls_ok (gnutls_x509_crt_set_basic_constraints (crt, 1, 0),
                  "Cannot set basic constraints", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_set_key_usage (crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN),
                  "Cannot set key usage", error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_sign2 (crt, crt, key, GNUTLS_DIG_SHA256, 0),
                  "Cannot self-sign CA certificate", error))
    return FALSE;

  g_auto(gnutls_datum_t) key_pem = { NULL, 0 };
  g_auto(gnutls_datum_t) crt_pem = { NULL, 0 };
  if (!export_key_pem (key, &key_pem, error))
    return FALSE;
  if (!gnutls_ok (gnutls_x509_crt_export2 (crt, GNUTLS_X509_FMT_PEM, &crt_pem),
                  "Cannot export CA certificate", error))
    return FALSE;

  /* Key before certificate: ca-cert.pem is what marks the CA as present. */
  return make_private_dir (pki_dir, error)
         && write_datum (key_path, &key_pem, 0600, error)
         && write_datum (crt_path, &crt_pem, 0644, error);
}

char *
ferry_pki_issue_host (const char *pki_dir, const char *host,
                      const char *const *addresses, GError **error)
{
  g_return_val_if_fail (pki_dir != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!validate_host_name ("host", host, error))
    return NULL;
  /* host also names the subject; longer DNS names belong in addresses. */
  if (strlen (host) > MAX_COMMON_NAME)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "host: longer than %d characters, the limit of a certificate "
                   "common name; use a short name and pass the full one in addresses",
                   MAX_COMMON_NAME);
      return NULL;
    }

  guint n_addresses = addresses != NULL ? g_strv_length ((char **) addresses) : 0;
  if (n_addresses > FERRY_PKI_MAX_ADDRESSES)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                   "addresses: %u entries, at most %d allowed",
                   n_addresses, FERRY_PKI_MAX_ADDRESSES);
      return NULL;
    }
  g_autoptr(GPtrArray) sans = g_ptr_array_new ();
  g_ptr_array_add (sans, (gpointer) host);
  for (guint i = 0; i < n_addresses; i++)
    {
      if (!validate_host_name ("addresses", addresses[i], error))
        return NULL;
      g_ptr_array_add (sans, (gpointer) addresses[i]);
    }
  g_ptr_array_add (sans, NULL);

  g_autofree char *dir = g_build_filename (pki_dir, "hosts", host, NULL);
  if (!issue_leaf (pki_dir, dir, LEAF_HOST, host, (const char *const *) sans->pdata, error))
    return NULL;
  return g_steal_pointer (&dir);
}

char *
ferry_pki_issue_client (const char *pki_dir, const char *name, GError **error)
{
  g_return_val_if_fail (pki_dir != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!validate_client_name (name, error))
    return NULL;

  g_autofree char *dir = g_build_filename (pki_dir, "clients", name, NULL);
  if (!issue_leaf (pki_dir, dir, LEAF_CLIENT, name, NULL, error))
    return NULL;
  return g_steal_pointer (&dir);
}

char *
ferry_pki_default_dir (void)
{
  const char *env = g_getenv ("FERRY_PKI_DIR");
  if (env != NULL && *env != '\0')
    return g_strdup (env);
  return g_build_filename (g_get_user_config_dir (), "ferry", "pki", NULL);
}

G_DEFINE_AUTO_CLEANUP_FREE_FUNC (gnutls_dh_params_t, gnutls_dh_params_deinit, NULL)

/* Without dh-params.pem, every tls-creds-x509 object with endpoint=server
 * (a qemu-nbd export, a migration's incoming side, an NBD server) makes
 * QEMU 7.2 generate Diffie-Hellman parameters: 0.1-1.7 s of CPU here,
 * 16 ms with the file. The group is RFC 7919's ffdhe3072, a published
 * constant (nothing secret, nothing to generate); DHE only serves
 * clients that offer neither TLS 1.3 nor ECDHE. */
static gboolean
write_dh_params (const char *out_dir, GError **error)
{
  g_auto (gnutls_dh_params_t) params = NULL;
  g_auto (gnutls_datum_t) pem = { NULL, 0 };
  g_autofree char *path = g_build_filename (out_dir, "dh-params.pem", NULL);
  return gnutls_ok (gnutls_dh_params_init (&params), "DH parameters", error)
         && gnutls_ok (gnutls_dh_params_import_raw2 (params, &gnutls_ffdhe_3072_group_prime,
                                                     &gnutls_ffdhe_3072_group_generator,
                                                     gnutls_ffdhe_3072_key_bits),
                       "DH parameters (RFC 7919 ffdhe3072)", error)
         && gnutls_ok (gnutls_dh_params_export2_pkcs3 (params, GNUTLS_X509_FMT_PEM, &pem), "DH parameters", error)
         && write_datum (path, &pem, 0644, error);
}

gboolean
ferry_pki_write_qemu_creds_dir (const char *tls_dir, const char *out_dir, GError **error)
{
  g_return_val_if_fail (tls_dir != NULL, FALSE);
  g_return_val_if_fail (out_dir != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  static const struct {
    const char *from;
    const char *to;
    int mode;
  } copies[] = {
    { KEY_FILE, "server-key.pem", 0600 },
    { KEY_FILE, "client-key.pem", 0600 },
    { CERT_FILE, "server-cert.pem", 0644 },
    { CERT_FILE, "client-cert.pem", 0644 },
    { CA_CERT_FILE, "ca-cert.pem", 0644 },
  };

  if (!make_private_dir (out_dir, error))
    return FALSE;
  /* Copies, not symlinks: QEMU may run confined (AppArmor/SELinux, a
   * private mount namespace) where the links' targets are out of reach. */
  for (gsize i = 0; i < G_N_ELEMENTS (copies); i++)
    {
      g_autofree char *from = g_build_filename (tls_dir, copies[i].from, NULL);
      g_autofree char *to = g_build_filename (out_dir, copies[i].to, NULL);
      if (!copy_pem_file (from, to, copies[i].mode, error))
        return FALSE;
    }
  return write_dh_params (out_dir, error);
}
