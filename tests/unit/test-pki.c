/* Tests for the ferry PKI: certificate contents checked with GnuTLS, a real
 * mutual-TLS handshake through GIO (glib-networking), and QEMU loading the
 * credentials directory. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <gio/gio.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "ferry-config.h"
#include "ferry-error.h"
#include "pki.h"

G_DEFINE_AUTO_CLEANUP_FREE_FUNC (gnutls_x509_crt_t, gnutls_x509_crt_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC (gnutls_x509_privkey_t, gnutls_x509_privkey_deinit, NULL)

static const char *const hosta_addresses[] = { "10.77.0.1", "hosta.example", NULL };

/* ---- fixture: one fresh directory per test ------------------------------ */

typedef struct {
  char *dir;
  char *pki;
} Fixture;

static int
remove_entry (const char *path, const struct stat *st, int type, struct FTW *ftw)
{
  return remove (path);
}

static void
fixture_setup (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  f->dir = g_dir_make_tmp ("ferry-test-pki-XXXXXX", &error);
  g_assert_no_error (error);
  f->pki = g_build_filename (f->dir, "pki", NULL);
}

static void
fixture_teardown (Fixture *f, gconstpointer data)
{
  g_assert_cmpint (nftw (f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS), ==, 0);
  g_free (f->pki);
  g_free (f->dir);
}

/* ---- helpers ------------------------------------------------------------ */

static void
init_ca (const char *pki)
{
  g_autoptr(GError) error = NULL;
  g_assert_true (ferry_pki_init (pki, "test CA", FALSE, &error));
  g_assert_no_error (error);
}

static char *
issue_hosta (const char *pki)
{
  g_autoptr(GError) error = NULL;
  char *dir = ferry_pki_issue_host (pki, "hosta", hosta_addresses, &error);
  g_assert_no_error (error);
  g_assert_nonnull (dir);
  return dir;
}

static char *
issue_client (const char *pki, const char *name)
{
  g_autoptr(GError) error = NULL;
  char *dir = ferry_pki_issue_client (pki, name, &error);
  g_assert_no_error (error);
  g_assert_nonnull (dir);
  return dir;
}

static gnutls_x509_crt_t
load_crt (const char *dir, const char *file)
{
  g_autofree char *path = g_build_filename (dir, file, NULL);
  g_autofree char *pem = NULL;
  gsize size = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true (g_file_get_contents (path, &pem, &size, &error));
  g_assert_no_error (error);

  gnutls_datum_t datum = { (unsigned char *) pem, (unsigned int) size };
  gnutls_x509_crt_t crt = NULL;
  g_assert_cmpint (gnutls_x509_crt_init (&crt), ==, 0);
  g_assert_cmpint (gnutls_x509_crt_import (crt, &datum, GNUTLS_X509_FMT_PEM), ==, 0);
  return crt;
}

static gnutls_x509_privkey_t
load_key (const char *dir, const char *file)
{
  g_autofree char *path = g_build_filename (dir, file, NULL);
  g_autofree char *pem = NULL;
  gsize size = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true (g_file_get_contents (path, &pem, &size, &error));
  g_assert_no_error (error);
  /* PKCS#8 is the form GLib's PEM parser and every other consumer read. */
  g_assert_nonnull (strstr (pem, "-----BEGIN PRIVATE KEY-----"));

  gnutls_datum_t datum = { (unsigned char *) pem, (unsigned int) size };
  gnutls_x509_privkey_t key = NULL;
  g_assert_cmpint (gnutls_x509_privkey_init (&key), ==, 0);
  g_assert_cmpint (gnutls_x509_privkey_import2 (key, &datum, GNUTLS_X509_FMT_PEM, NULL, 0), ==, 0);
  return key;
}

static guint
file_mode (const char *dir, const char *file)
{
  g_autofree char *path = file != NULL ? g_build_filename (dir, file, NULL) : g_strdup (dir);
  struct stat st;
  g_assert_cmpint (stat (path, &st), ==, 0);
  return st.st_mode & 07777;
}

static gboolean
verifies (gnutls_x509_crt_t crt, gnutls_x509_crt_t ca)
{
  unsigned int status = ~0u;
  g_assert_cmpint (gnutls_x509_crt_verify (crt, &ca, 1, 0, &status), ==, 0);
  return status == 0;
}

static gboolean
has_purpose (gnutls_x509_crt_t crt, const char *wanted)
{
  for (unsigned int i = 0;; i++)
    {
      char oid[128];
      size_t size = sizeof oid;
      int rc = gnutls_x509_crt_get_key_purpose_oid (crt, i, oid, &size, NULL);
      if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        return FALSE;
      g_assert_cmpint (rc, ==, 0);
      if (g_str_equal (oid, wanted))
        return TRUE;
    }
}

static guint
count_purposes (gnutls_x509_crt_t crt)
{
  guint n = 0;
  for (;; n++)
    {
      char oid[128];
      size_t size = sizeof oid;
      if (gnutls_x509_crt_get_key_purpose_oid (crt, n, oid, &size, NULL) < 0)
        return n;
    }
}

static char *
common_name (gnutls_x509_crt_t crt)
{
  char buf[256];
  size_t size = sizeof buf;
  g_assert_cmpint (gnutls_x509_crt_get_dn_by_oid (crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0,
                                                  buf, &size), ==, 0);
  return g_strdup (buf);
}

static GBytes *
key_id_of_crt (gnutls_x509_crt_t crt)
{
  guint8 id[64];
  size_t size = sizeof id;
  g_assert_cmpint (gnutls_x509_crt_get_key_id (crt, GNUTLS_KEYID_USE_SHA256, id, &size), ==, 0);
  return g_bytes_new (id, size);
}

static GBytes *
key_id_of_key (gnutls_x509_privkey_t key)
{
  guint8 id[64];
  size_t size = sizeof id;
  g_assert_cmpint (gnutls_x509_privkey_get_key_id (key, GNUTLS_KEYID_USE_SHA256, id, &size), ==, 0);
  return g_bytes_new (id, size);
}

static void
assert_key_matches_crt (const char *dir)
{
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");
  g_auto(gnutls_x509_privkey_t) key = load_key (dir, "key.pem");
  g_autoptr(GBytes) a = key_id_of_crt (crt);
  g_autoptr(GBytes) b = key_id_of_key (key);
  g_assert_true (g_bytes_equal (a, b));
}

static void
assert_p256_sha256 (gnutls_x509_crt_t crt)
{
  unsigned int bits = 0;
  g_assert_cmpint (gnutls_x509_crt_get_pk_algorithm (crt, &bits), ==, GNUTLS_PK_ECDSA);
  gnutls_ecc_curve_t curve = GNUTLS_ECC_CURVE_INVALID;
  gnutls_datum_t x = { NULL, 0 }, y = { NULL, 0 };
  g_assert_cmpint (gnutls_x509_crt_get_pk_ecc_raw (crt, &curve, &x, &y), ==, 0);
  gnutls_free (x.data);
  gnutls_free (y.data);
  g_assert_cmpint (curve, ==, GNUTLS_ECC_CURVE_SECP256R1);
  g_assert_cmpint (gnutls_x509_crt_get_signature_algorithm (crt), ==, GNUTLS_SIGN_ECDSA_SHA256);

  guint8 serial[64];
  size_t serial_size = sizeof serial;
  g_assert_cmpint (gnutls_x509_crt_get_serial (crt, serial, &serial_size), ==, 0);
  g_assert_cmpuint (serial_size, ==, 20);
  g_assert_cmpuint (serial[0] & 0x80, ==, 0);
}

static void
assert_validity_years (gnutls_x509_crt_t crt, int years)
{
  time_t now = time (NULL);
  time_t not_before = gnutls_x509_crt_get_activation_time (crt);
  time_t not_after = gnutls_x509_crt_get_expiration_time (crt);
  /* Backdated by an hour for peers whose clocks lag. */
  g_assert_cmpint (not_before, <=, now - 3600 + 5);
  g_assert_cmpint (not_before, >=, now - 3600 - 60);
  gint64 expected = now + (gint64) years * 365 * 86400;
  g_assert_cmpint (not_after, >=, expected);
  g_assert_cmpint (not_after, <=, expected + 3 * 86400 + 60);
}

static void
assert_invalid_argument (GError *error, const char *argument)
{
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_autofree char *prefix = g_strconcat (argument, ":", NULL);
  if (!g_str_has_prefix (error->message, prefix))
    g_error ("error “%s” does not name the argument “%s”", error->message, argument);
}

/* ---- init --------------------------------------------------------------- */

static void
test_init_creates_ca_files (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);

  g_assert_cmpuint (file_mode (f->pki, NULL), ==, 0700);
  g_assert_cmpuint (file_mode (f->pki, "ca-key.pem"), ==, 0600);
  g_assert_cmpuint (file_mode (f->pki, "ca-cert.pem"), ==, 0644);

  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");
  g_auto(gnutls_x509_privkey_t) key = load_key (f->pki, "ca-key.pem");
  g_autoptr(GBytes) crt_id = key_id_of_crt (ca);
  g_autoptr(GBytes) key_id = key_id_of_key (key);
  g_assert_true (g_bytes_equal (crt_id, key_id));
  g_autofree char *cn = common_name (ca);
  g_assert_cmpstr (cn, ==, "test CA");
}

static void
test_init_ca_extensions (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");

  assert_p256_sha256 (ca);
  assert_validity_years (ca, 10);
  g_assert_true (verifies (ca, ca));

  unsigned int critical = 0;
  g_assert_cmpint (gnutls_x509_crt_get_ca_status (ca, &critical), ==, 1);
  g_assert_cmpuint (critical, ==, 1);

  unsigned int usage = 0;
  critical = 0;
  g_assert_cmpint (gnutls_x509_crt_get_key_usage (ca, &usage, &critical), ==, 0);
  g_assert_cmpuint (usage, ==, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN);
  g_assert_cmpuint (critical, ==, 1);

  guint8 ski[64];
  size_t ski_size = sizeof ski;
  g_assert_cmpint (gnutls_x509_crt_get_subject_key_id (ca, ski, &ski_size, NULL), ==, 0);
  g_assert_cmpuint (ski_size, >, 0);
}

static void
test_init_twice_conflicts (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  init_ca (f->pki);
  g_autofree char *path = g_build_filename (f->pki, "ca-cert.pem", NULL);
  g_autofree char *before = NULL;
  g_assert_true (g_file_get_contents (path, &before, NULL, NULL));

  g_assert_false (ferry_pki_init (f->pki, "test CA", FALSE, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);

  g_autofree char *after = NULL;
  g_assert_true (g_file_get_contents (path, &after, NULL, NULL));
  g_assert_cmpstr (before, ==, after);
}

static void
test_init_force_replaces (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  init_ca (f->pki);
  g_autofree char *hosta = issue_hosta (f->pki);
  g_auto(gnutls_x509_crt_t) old_host = load_crt (hosta, "cert.pem");

  g_assert_true (ferry_pki_init (f->pki, "test CA", TRUE, &error));
  g_assert_no_error (error);
  g_auto(gnutls_x509_crt_t) new_ca = load_crt (f->pki, "ca-cert.pem");
  g_assert_false (verifies (old_host, new_ca));
}

/* ---- host certificates -------------------------------------------------- */

static void
test_host_verifies_against_ca (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *dir = issue_hosta (f->pki);
  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");

  g_assert_true (verifies (crt, ca));
  assert_key_matches_crt (dir);
}

static void
test_host_names_match (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *dir = issue_hosta (f->pki);
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");

  g_assert_true (gnutls_x509_crt_check_hostname (crt, "hosta"));
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "10.77.0.1"));
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "hosta.example"));
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "HOSTA.example"));
  g_assert_false (gnutls_x509_crt_check_hostname (crt, "10.77.0.2"));
  g_assert_false (gnutls_x509_crt_check_hostname (crt, "hostb"));
  g_assert_false (gnutls_x509_crt_check_hostname (crt, "example"));
}

static void
test_host_ip_addresses_are_ip_sans (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  const char *const addresses[] = { "fd00:77::1", "10.77.0.9", NULL };
  init_ca (f->pki);
  g_autofree char *dir = ferry_pki_issue_host (f->pki, "10.77.0.8", addresses, &error);
  g_assert_no_error (error);
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");

  guint n_ip = 0, n_dns = 0;
  for (unsigned int i = 0;; i++)
    {
      char san[256];
      size_t size = sizeof san;
      int type = gnutls_x509_crt_get_subject_alt_name (crt, i, san, &size, NULL);
      if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
        break;
      g_assert_cmpint (type, >=, 0);
      if (type == GNUTLS_SAN_IPADDRESS)
        n_ip++;
      else if (type == GNUTLS_SAN_DNSNAME)
        n_dns++;
    }
  g_assert_cmpuint (n_ip, ==, 3);
  g_assert_cmpuint (n_dns, ==, 0);
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "10.77.0.8"));
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "fd00:77::1"));
  g_assert_true (gnutls_x509_crt_check_hostname (crt, "10.77.0.9"));
  g_assert_false (gnutls_x509_crt_check_hostname (crt, "fd00:77::2"));
}

static void
test_host_extensions (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *dir = issue_hosta (f->pki);
  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");

  assert_p256_sha256 (crt);
  assert_validity_years (crt, 3);
  g_autofree char *cn = common_name (crt);
  g_assert_cmpstr (cn, ==, "hosta");

  g_assert_cmpint (gnutls_x509_crt_get_ca_status (crt, NULL), ==, 0);

  unsigned int usage = 0;
  g_assert_cmpint (gnutls_x509_crt_get_key_usage (crt, &usage, NULL), ==, 0);
  g_assert_cmpuint (usage, ==, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT);

  g_assert_true (has_purpose (crt, GNUTLS_KP_TLS_WWW_SERVER));
  g_assert_true (has_purpose (crt, GNUTLS_KP_TLS_WWW_CLIENT));
  g_assert_cmpuint (count_purposes (crt), ==, 2);

  guint8 ski[64], aki[64];
  size_t ski_size = sizeof ski, aki_size = sizeof aki;
  g_assert_cmpint (gnutls_x509_crt_get_subject_key_id (ca, ski, &ski_size, NULL), ==, 0);
  g_assert_cmpint (gnutls_x509_crt_get_authority_key_id (crt, aki, &aki_size, NULL), ==, 0);
  g_assert_cmpmem (ski, ski_size, aki, aki_size);
}

static void
test_host_file_layout (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *dir = issue_hosta (f->pki);
  g_autofree char *expected = g_build_filename (f->pki, "hosts", "hosta", NULL);
  g_assert_cmpstr (dir, ==, expected);

  g_assert_cmpuint (file_mode (dir, NULL), ==, 0700);
  g_assert_cmpuint (file_mode (dir, "key.pem"), ==, 0600);
  g_assert_cmpuint (file_mode (dir, "cert.pem"), ==, 0644);
  g_assert_cmpuint (file_mode (dir, "ca-cert.pem"), ==, 0644);

  g_autofree char *ca_path = g_build_filename (f->pki, "ca-cert.pem", NULL);
  g_autofree char *copy_path = g_build_filename (dir, "ca-cert.pem", NULL);
  g_autofree char *ca = NULL, *copy = NULL;
  g_assert_true (g_file_get_contents (ca_path, &ca, NULL, NULL));
  g_assert_true (g_file_get_contents (copy_path, &copy, NULL, NULL));
  g_assert_cmpstr (ca, ==, copy);
}

static void
test_host_reissue_replaces (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *first = issue_hosta (f->pki);
  g_auto(gnutls_x509_crt_t) old_crt = load_crt (first, "cert.pem");
  g_autoptr(GBytes) old_id = key_id_of_crt (old_crt);

  g_autofree char *second = issue_hosta (f->pki);
  g_assert_cmpstr (first, ==, second);
  g_auto(gnutls_x509_crt_t) new_crt = load_crt (second, "cert.pem");
  g_autoptr(GBytes) new_id = key_id_of_crt (new_crt);

  g_assert_false (g_bytes_equal (old_id, new_id));
  assert_key_matches_crt (second);
}

static void
test_host_other_ca_does_not_verify (Fixture *f, gconstpointer data)
{
  g_autofree char *other_pki = g_build_filename (f->dir, "other-pki", NULL);
  init_ca (f->pki);
  init_ca (other_pki);
  g_autofree char *other_dir = issue_hosta (other_pki);

  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");
  g_auto(gnutls_x509_crt_t) foreign = load_crt (other_dir, "cert.pem");
  g_assert_false (verifies (foreign, ca));
}

static void
test_host_without_ca_not_found (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *dir = ferry_pki_issue_host (f->pki, "hosta", NULL, &error);
  g_assert_null (dir);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (error->message, "ferry pki init"));
}

static void
test_host_invalid_names (Fixture *f, gconstpointer data)
{
  static const char *const bad[] = {
    "", "-hosta", "hosta-", "host..a", ".hosta", "hosta.", "host a", "host_a",
    "../hosta", "hosta/x", "h\xc3\xb6sta", "fe80::1%eth0",
    /* 64-character label */
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  };
  init_ca (f->pki);

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *dir = ferry_pki_issue_host (f->pki, bad[i], NULL, &error);
      g_assert_null (dir);
      assert_invalid_argument (error, "host");
    }
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr(GError) error = NULL;
      const char *const addresses[] = { "10.77.0.1", bad[i], NULL };
      g_autofree char *dir = ferry_pki_issue_host (f->pki, "hosta", addresses, &error);
      g_assert_null (dir);
      assert_invalid_argument (error, "addresses");
    }

  g_autoptr(GError) error = NULL;
  g_autofree char *dir = ferry_pki_issue_host (f->pki, NULL, NULL, &error);
  g_assert_null (dir);
  assert_invalid_argument (error, "host");
  g_autofree char *hosts = g_build_filename (f->pki, "hosts", NULL);
  g_assert_false (g_file_test (hosts, G_FILE_TEST_EXISTS));
}

static void
test_host_too_many_addresses (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) addresses = g_ptr_array_new_with_free_func (g_free);
  for (int i = 0; i <= FERRY_PKI_MAX_ADDRESSES; i++)
    g_ptr_array_add (addresses, g_strdup_printf ("10.77.1.%d", i));
  g_ptr_array_add (addresses, NULL);
  init_ca (f->pki);

  g_autofree char *dir = ferry_pki_issue_host (f->pki, "hosta",
                                               (const char *const *) addresses->pdata, &error);
  g_assert_null (dir);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE);
  g_assert_true (g_str_has_prefix (error->message, "addresses:"));
}

/* ---- client certificates ------------------------------------------------ */

static void
test_client_usage_only (Fixture *f, gconstpointer data)
{
  init_ca (f->pki);
  g_autofree char *dir = issue_client (f->pki, "admin.cli");
  g_autofree char *expected = g_build_filename (f->pki, "clients", "admin.cli", NULL);
  g_assert_cmpstr (dir, ==, expected);
  g_assert_cmpuint (file_mode (dir, "key.pem"), ==, 0600);
  g_assert_cmpuint (file_mode (dir, "cert.pem"), ==, 0644);
  g_assert_cmpuint (file_mode (dir, "ca-cert.pem"), ==, 0644);

  g_auto(gnutls_x509_crt_t) ca = load_crt (f->pki, "ca-cert.pem");
  g_auto(gnutls_x509_crt_t) crt = load_crt (dir, "cert.pem");
  g_assert_true (verifies (crt, ca));
  assert_key_matches_crt (dir);
  assert_validity_years (crt, 3);
  g_autofree char *cn = common_name (crt);
  g_assert_cmpstr (cn, ==, "admin.cli");

  g_assert_true (has_purpose (crt, GNUTLS_KP_TLS_WWW_CLIENT));
  g_assert_cmpuint (count_purposes (crt), ==, 1);
  g_assert_cmpint (gnutls_x509_crt_get_ca_status (crt, NULL), ==, 0);
}

static void
test_client_invalid_names (Fixture *f, gconstpointer data)
{
  static const char *const bad[] = {
    "", ".", "..", "a/b", "a b", "adm\xc3\xafn", "a:b",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 */
  };
  init_ca (f->pki);

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr(GError) error = NULL;
      g_autofree char *dir = ferry_pki_issue_client (f->pki, bad[i], &error);
      g_assert_null (dir);
      assert_invalid_argument (error, "name");
    }

  /* The longest allowed name still works. */
  g_autofree char *dir = issue_client (f->pki,
                                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  g_assert_true (g_file_test (dir, G_FILE_TEST_IS_DIR));
}

/* ---- a real TLS handshake through GIO ---------------------------------- */

typedef struct {
  GMainLoop *loop;
  guint pending;
  gboolean timed_out;
  GSocket *server_socket;
  GSocket *client_socket;
  gboolean server_ok;
  gboolean client_ok;
  GError *server_error;
  GError *client_error;
} Handshake;

static void
handshake_clear (Handshake *h)
{
  g_clear_pointer (&h->loop, g_main_loop_unref);
  g_clear_object (&h->server_socket);
  g_clear_object (&h->client_socket);
  g_clear_error (&h->server_error);
  g_clear_error (&h->client_error);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Handshake, handshake_clear)

static void
on_server_handshake (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Handshake *h = user_data;
  h->server_ok = g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), result,
                                                    &h->server_error);
  /* The peer of a side that gives up would otherwise wait for the next
   * handshake message forever. */
  if (!h->server_ok)
    g_socket_shutdown (h->server_socket, TRUE, TRUE, NULL);
  if (--h->pending == 0)
    g_main_loop_quit (h->loop);
}

static void
on_client_handshake (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Handshake *h = user_data;
  h->client_ok = g_tls_connection_handshake_finish (G_TLS_CONNECTION (source), result,
                                                    &h->client_error);
  if (!h->client_ok)
    g_socket_shutdown (h->client_socket, TRUE, TRUE, NULL);
  if (--h->pending == 0)
    g_main_loop_quit (h->loop);
}

static gboolean
on_handshake_timeout (gpointer user_data)
{
  Handshake *h = user_data;
  h->timed_out = TRUE;
  g_main_loop_quit (h->loop);
  return G_SOURCE_REMOVE;
}

/* glib-networking's server side never accepts a client certificate on its
 * own, not even a flawless one: the application must answer
 * accept-certificate. ferryd's server does the same as this. */
static gboolean
on_accept_client_certificate (GTlsConnection *connection, GTlsCertificate *peer,
                              GTlsCertificateFlags errors, gpointer user_data)
{
  return errors == 0;
}

static GTlsCertificate *
load_tls_certificate (const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *cert = g_build_filename (dir, "cert.pem", NULL);
  g_autofree char *key = g_build_filename (dir, "key.pem", NULL);
  GTlsCertificate *certificate = g_tls_certificate_new_from_files (cert, key, &error);
  g_assert_no_error (error);
  return certificate;
}

static GTlsDatabase *
load_tls_database (const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *ca = g_build_filename (dir, "ca-cert.pem", NULL);
  GTlsDatabase *database = g_tls_file_database_new (ca, &error);
  g_assert_no_error (error);
  return database;
}

/* Server presents server_dir's certificate and trusts server_dir's CA;
 * the client presents client_dir's certificate, trusts trust_dir's CA and
 * expects the server to be identity. On return *server_peer holds the
 * certificate the server saw. */
static void
run_handshake (const char *server_dir, const char *client_dir, const char *trust_dir,
               const char *identity, Handshake *h, GTlsCertificate **server_peer)
{
  g_autoptr(GError) error = NULL;
  int fds[2];
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  h->server_socket = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  h->client_socket = g_socket_new_from_fd (fds[1], &error);
  g_assert_no_error (error);
  g_autoptr(GSocketConnection) server_base =
      g_socket_connection_factory_create_connection (h->server_socket);
  g_autoptr(GSocketConnection) client_base =
      g_socket_connection_factory_create_connection (h->client_socket);

  g_autoptr(GTlsCertificate) server_cert = load_tls_certificate (server_dir);
  g_autoptr(GTlsCertificate) client_cert = load_tls_certificate (client_dir);
  g_autoptr(GTlsDatabase) server_db = load_tls_database (server_dir);
  g_autoptr(GTlsDatabase) client_db = load_tls_database (trust_dir);

  g_autoptr(GIOStream) server = g_tls_server_connection_new (G_IO_STREAM (server_base),
                                                             server_cert, &error);
  g_assert_no_error (error);
  g_object_set (server, "authentication-mode", G_TLS_AUTHENTICATION_REQUIRED, NULL);
  g_tls_connection_set_database (G_TLS_CONNECTION (server), server_db);
  g_signal_connect (server, "accept-certificate", G_CALLBACK (on_accept_client_certificate), NULL);

  g_autoptr(GSocketConnectable) server_identity = g_network_address_new (identity, 443);
  g_autoptr(GIOStream) client = g_tls_client_connection_new (G_IO_STREAM (client_base),
                                                             server_identity, &error);
  g_assert_no_error (error);
  g_tls_connection_set_certificate (G_TLS_CONNECTION (client), client_cert);
  g_tls_connection_set_database (G_TLS_CONNECTION (client), client_db);

  h->loop = g_main_loop_new (NULL, FALSE);
  h->pending = 2;
  g_tls_connection_handshake_async (G_TLS_CONNECTION (server), G_PRIORITY_DEFAULT, NULL,
                                    on_server_handshake, h);
  g_tls_connection_handshake_async (G_TLS_CONNECTION (client), G_PRIORITY_DEFAULT, NULL,
                                    on_client_handshake, h);
  /* A guard, not a wait: a healthy handshake takes milliseconds. */
  guint timeout = g_timeout_add_seconds (60, on_handshake_timeout, h);
  g_main_loop_run (h->loop);
  g_assert_false (h->timed_out);
  g_source_remove (timeout);

  GTlsCertificate *peer = g_tls_connection_get_peer_certificate (G_TLS_CONNECTION (server));
  *server_peer = peer != NULL ? g_object_ref (peer) : NULL;

  g_io_stream_close (client, NULL, NULL);
  g_io_stream_close (server, NULL, NULL);
}

static gboolean
skip_without_tls_backend (void)
{
  if (g_tls_backend_supports_tls (g_tls_backend_get_default ()))
    return FALSE;
  g_test_skip ("GIO has no TLS backend; install glib-networking");
  return TRUE;
}

static void
assert_mutual_handshake (Fixture *f, const char *identity)
{
  init_ca (f->pki);
  g_autofree char *host_dir = issue_hosta (f->pki);
  g_autofree char *client_dir = issue_client (f->pki, "admin");

  g_auto(Handshake) h = { 0 };
  g_autoptr(GTlsCertificate) peer = NULL;
  run_handshake (host_dir, client_dir, f->pki, identity, &h, &peer);

  g_assert_no_error (h.client_error);
  g_assert_no_error (h.server_error);
  g_assert_true (h.server_ok);
  g_assert_true (h.client_ok);

  g_autoptr(GTlsCertificate) client_cert = load_tls_certificate (client_dir);
  g_assert_nonnull (peer);
  g_assert_true (g_tls_certificate_is_same (peer, client_cert));
}

static void
test_tls_handshake_dns_identity (Fixture *f, gconstpointer data)
{
  if (skip_without_tls_backend ())
    return;
  assert_mutual_handshake (f, "hosta.example");
}

/* libsoup and QEMU's tls-hostname check IP SANs when the URL or address
 * is an IP literal. */
static void
test_tls_handshake_ip_identity (Fixture *f, gconstpointer data)
{
  if (skip_without_tls_backend ())
    return;
  assert_mutual_handshake (f, "10.77.0.1");
}

static void
test_tls_foreign_client_rejected (Fixture *f, gconstpointer data)
{
  if (skip_without_tls_backend ())
    return;
  g_autofree char *other_pki = g_build_filename (f->dir, "other-pki", NULL);
  init_ca (f->pki);
  init_ca (other_pki);
  g_autofree char *host_dir = issue_hosta (f->pki);
  g_autofree char *foreign_dir = issue_client (other_pki, "admin");

  g_auto(Handshake) h = { 0 };
  g_autoptr(GTlsCertificate) peer = NULL;
  /* The client trusts the right CA, so only its own certificate is wrong. */
  run_handshake (host_dir, foreign_dir, f->pki, "hosta.example", &h, &peer);

  g_assert_false (h.server_ok);
  g_assert_error (h.server_error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
}

/* The handshakes above pass because of the SANs, not despite them. */
static void
test_tls_wrong_identity_rejected (Fixture *f, gconstpointer data)
{
  if (skip_without_tls_backend ())
    return;
  init_ca (f->pki);
  g_autofree char *host_dir = issue_hosta (f->pki);
  g_autofree char *client_dir = issue_client (f->pki, "admin");

  g_auto(Handshake) h = { 0 };
  g_autoptr(GTlsCertificate) peer = NULL;
  run_handshake (host_dir, client_dir, f->pki, "10.77.0.2", &h, &peer);

  g_assert_false (h.client_ok);
  g_assert_error (h.client_error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE);
}

/* ---- QEMU credentials directory ---------------------------------------- */

static char *
write_qemu_dir (Fixture *f)
{
  g_autoptr(GError) error = NULL;
  init_ca (f->pki);
  g_autofree char *host_dir = issue_hosta (f->pki);
  char *out = g_build_filename (f->dir, "qemu-tls", "hosta", NULL);
  g_assert_true (ferry_pki_write_qemu_creds_dir (host_dir, out, &error));
  g_assert_no_error (error);
  return out;
}

static void
assert_same_file (const char *dir_a, const char *a, const char *dir_b, const char *b)
{
  g_autofree char *path_a = g_build_filename (dir_a, a, NULL);
  g_autofree char *path_b = g_build_filename (dir_b, b, NULL);
  g_autofree char *text_a = NULL, *text_b = NULL;
  g_assert_true (g_file_get_contents (path_a, &text_a, NULL, NULL));
  g_assert_true (g_file_get_contents (path_b, &text_b, NULL, NULL));
  g_assert_cmpstr (text_a, ==, text_b);

  struct stat st;
  g_assert_cmpint (lstat (path_b, &st), ==, 0);
  g_assert_true (S_ISREG (st.st_mode));
}

static void
test_qemu_creds_six_files (Fixture *f, gconstpointer data)
{
  g_autofree char *out = write_qemu_dir (f);
  g_autofree char *host_dir = g_build_filename (f->pki, "hosts", "hosta", NULL);

  g_assert_cmpuint (file_mode (out, NULL), ==, 0700);
  g_assert_cmpuint (file_mode (out, "server-key.pem"), ==, 0600);
  g_assert_cmpuint (file_mode (out, "client-key.pem"), ==, 0600);
  g_assert_cmpuint (file_mode (out, "server-cert.pem"), ==, 0644);
  g_assert_cmpuint (file_mode (out, "client-cert.pem"), ==, 0644);
  g_assert_cmpuint (file_mode (out, "ca-cert.pem"), ==, 0644);

  assert_same_file (host_dir, "ca-cert.pem", out, "ca-cert.pem");
  assert_same_file (host_dir, "cert.pem", out, "server-cert.pem");
  assert_same_file (host_dir, "cert.pem", out, "client-cert.pem");
  assert_same_file (host_dir, "key.pem", out, "server-key.pem");
  assert_same_file (host_dir, "key.pem", out, "client-key.pem");

  g_assert_cmpuint (file_mode (out, "dh-params.pem"), ==, 0644);
  g_autoptr(GDir) listing = g_dir_open (out, 0, NULL);
  guint n = 0;
  while (g_dir_read_name (listing) != NULL)
    n++;
  g_assert_cmpuint (n, ==, 6);
}

/* QEMU reads dh-params.pem instead of generating parameters: it must be
 * PKCS#3 PEM that GnuTLS imports, holding RFC 7919's 3072-bit group. */
static void
test_qemu_creds_dh_params (Fixture *f, gconstpointer data)
{
  g_autofree char *out = write_qemu_dir (f);
  g_autofree char *path = g_build_filename (out, "dh-params.pem", NULL);
  g_autofree char *text = NULL;
  gsize length = 0;
  g_assert_true (g_file_get_contents (path, &text, &length, NULL));
  g_assert_nonnull (strstr (text, "-----BEGIN DH PARAMETERS-----"));
  gnutls_dh_params_t params;
  g_assert_cmpint (gnutls_dh_params_init (&params), ==, 0);
  gnutls_datum_t pem = { (unsigned char *) text, (unsigned int) length };
  g_assert_cmpint (gnutls_dh_params_import_pkcs3 (params, &pem, GNUTLS_X509_FMT_PEM), ==, 0);
  gnutls_datum_t prime = { NULL, 0 }, generator = { NULL, 0 };
  unsigned int bits = 0;
  g_assert_cmpint (gnutls_dh_params_export_raw (params, &prime, &generator, &bits), ==, 0);
  g_assert_cmpuint (prime.size, ==, gnutls_ffdhe_3072_group_prime.size);
  g_assert_cmpint (memcmp (prime.data, gnutls_ffdhe_3072_group_prime.data, prime.size), ==, 0);
  g_assert_cmpuint (generator.size, ==, gnutls_ffdhe_3072_group_generator.size);
  g_assert_cmpint (memcmp (generator.data, gnutls_ffdhe_3072_group_generator.data, generator.size), ==, 0);
  gnutls_free (prime.data);
  gnutls_free (generator.data);
  gnutls_dh_params_deinit (params);
}

static void
test_qemu_creds_missing_tls_dir (Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *missing = g_build_filename (f->dir, "nowhere", NULL);
  g_autofree char *out = g_build_filename (f->dir, "out", NULL);
  g_assert_false (ferry_pki_write_qemu_creds_dir (missing, out, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

typedef struct {
  GMainLoop *loop;
  gboolean done;
  gboolean ok;
  char *out;
  char *err;
  GError *error;
} QemuRun;

static void
on_qemu_communicated (GObject *source, GAsyncResult *result, gpointer user_data)
{
  QemuRun *run = user_data;
  run->ok = g_subprocess_communicate_utf8_finish (G_SUBPROCESS (source), result,
                                                  &run->out, &run->err, &run->error);
  run->done = TRUE;
  g_main_loop_quit (run->loop);
}

static gboolean
on_qemu_timeout (gpointer user_data)
{
  QemuRun *run = user_data;
  g_main_loop_quit (run->loop);
  return G_SOURCE_REMOVE;
}

/* QEMU 7.2 sanity-checks the certificates when the object is created
 * (key usage, purposes, CA constraints, chain, key/cert match), once as
 * TLS server and once as TLS client. */
static void
test_qemu_accepts_creds (Fixture *f, gconstpointer data)
{
  g_autofree char *qemu = g_find_program_in_path (FERRY_QEMU_BINARY);
  if (qemu == NULL)
    {
      g_test_skip (FERRY_QEMU_BINARY " not found");
      return;
    }
  g_autofree char *out = write_qemu_dir (f);
  g_autofree char *server_object =
      g_strdup_printf ("tls-creds-x509,id=tls0,endpoint=server,dir=%s,verify-peer=on", out);
  g_autofree char *client_object =
      g_strdup_printf ("tls-creds-x509,id=tls1,endpoint=client,dir=%s", out);

  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) process =
      g_subprocess_new (G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE
                        | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error,
                        qemu, "-M", "none", "-nodefaults", "-display", "none",
                        "-object", server_object, "-object", client_object,
                        "-qmp", "stdio", NULL);
  g_assert_no_error (error);

  QemuRun run = { .loop = g_main_loop_new (NULL, FALSE) };
  g_subprocess_communicate_utf8_async (process,
                                       "{\"execute\":\"qmp_capabilities\"}\n"
                                       "{\"execute\":\"quit\"}\n",
                                       NULL, on_qemu_communicated, &run);
  guint timeout = g_timeout_add_seconds (60, on_qemu_timeout, &run);
  g_main_loop_run (run.loop);
  if (!run.done)
    {
      g_subprocess_force_exit (process);
      g_error ("QEMU did not exit within 60 s");
    }
  g_source_remove (timeout);
  g_main_loop_unref (run.loop);

  g_assert_no_error (run.error);
  g_assert_true (run.ok);
  if (strstr (run.err, "Unable to") != NULL || !g_subprocess_get_if_exited (process)
      || g_subprocess_get_exit_status (process) != 0)
    g_error ("QEMU rejected the credentials: %s", run.err);
  /* Proves QMP ran, i.e. both objects were created before main loop. */
  g_assert_nonnull (strstr (run.out, "\"return\""));
  g_free (run.out);
  g_free (run.err);
}

/* ---- default directory -------------------------------------------------- */

static void
test_default_dir (void)
{
  g_autofree char *saved = g_strdup (g_getenv ("FERRY_PKI_DIR"));

  g_setenv ("FERRY_PKI_DIR", "/srv/ferry-pki", TRUE);
  g_autofree char *from_env = ferry_pki_default_dir ();
  g_assert_cmpstr (from_env, ==, "/srv/ferry-pki");

  g_unsetenv ("FERRY_PKI_DIR");
  g_autofree char *fallback = ferry_pki_default_dir ();
  g_autofree char *expected = g_build_filename (g_get_user_config_dir (), "ferry", "pki", NULL);
  g_assert_cmpstr (fallback, ==, expected);

  if (saved != NULL)
    g_setenv ("FERRY_PKI_DIR", saved, TRUE);
}

#define ADD(path, fn) g_test_add (path, Fixture, NULL, fixture_setup, fn, fixture_teardown)

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* Mode assertions assume the usual umask. */
  umask (022);

  ADD ("/pki/init/creates-ca-files", test_init_creates_ca_files);
  ADD ("/pki/init/ca-extensions", test_init_ca_extensions);
  ADD ("/pki/init/twice-conflicts", test_init_twice_conflicts);
  ADD ("/pki/init/force-replaces", test_init_force_replaces);
  ADD ("/pki/host/verifies-against-ca", test_host_verifies_against_ca);
  ADD ("/pki/host/names-match", test_host_names_match);
  ADD ("/pki/host/ip-addresses-are-ip-sans", test_host_ip_addresses_are_ip_sans);
  ADD ("/pki/host/extensions", test_host_extensions);
  ADD ("/pki/host/file-layout", test_host_file_layout);
  ADD ("/pki/host/reissue-replaces", test_host_reissue_replaces);
  ADD ("/pki/host/other-ca-does-not-verify", test_host_other_ca_does_not_verify);
  ADD ("/pki/host/without-ca-not-found", test_host_without_ca_not_found);
  ADD ("/pki/host/invalid-names", test_host_invalid_names);
  ADD ("/pki/host/too-many-addresses", test_host_too_many_addresses);
  ADD ("/pki/client/usage-only", test_client_usage_only);
  ADD ("/pki/client/invalid-names", test_client_invalid_names);
  ADD ("/pki/tls/handshake-dns-identity", test_tls_handshake_dns_identity);
  ADD ("/pki/tls/handshake-ip-identity", test_tls_handshake_ip_identity);
  ADD ("/pki/tls/foreign-client-rejected", test_tls_foreign_client_rejected);
  ADD ("/pki/tls/wrong-identity-rejected", test_tls_wrong_identity_rejected);
  ADD ("/pki/qemu-creds/six-files", test_qemu_creds_six_files);
  ADD ("/pki/qemu-creds/dh-params", test_qemu_creds_dh_params);
  ADD ("/pki/qemu-creds/missing-tls-dir", test_qemu_creds_missing_tls_dir);
  ADD ("/pki/qemu-creds/qemu-accepts", test_qemu_accepts_creds);
  g_test_add_func ("/pki/default-dir", test_default_dir);

  return g_test_run ();
}
