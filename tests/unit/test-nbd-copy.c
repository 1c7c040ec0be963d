/* The copy engine against real qemu-nbd exports: the source over TCP with
 * TLS (certificates made here), the destination on a unix socket. */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ferry-error.h"
#include "nbd-copy.h"
#include "nbd-export.h"
#include "pki.h"

#define DISK_BYTES (96 * 1024 * 1024)   /* 6 chunks */

typedef struct {
  char *dir;
  char *qemu_tls;        /* server + client creds, QEMU layout */
  char *source_image;
  char *destination_image;
  FerryNbdExport *source_export;
  FerryNbdExport *destination_export;
  char *source_uri;
  char *destination_uri;
  guint64 data_bytes;    /* bytes of non-zero data written to the source */
} Fixture;

static void
run (const char *const *argv)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GSubprocess) process = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDOUT_SILENCE, &error);
  g_assert_no_error (error);
  g_subprocess_wait_check (process, NULL, &error);
  g_assert_no_error (error);
}

static void
qemu_io (const char *image, const char *format, const char *command)
{
  run ((const char *const[]) { "qemu-io", "-f", format, "-c", command, image, NULL });
}

static guint64
allocated_bytes (const char *path)
{
  struct stat st;
  g_assert_cmpint (stat (path, &st), ==, 0);
  return (guint64) st.st_blocks * 512;
}

static FerryNbdExport *
export_bitmap (Fixture *f, const char *image, const char *format, gboolean source, const char *bitmap)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *socket = g_build_filename (f->dir, "dst.sock", NULL);
  FerryNbdExportOptions options = {
    .image = image,
    .format = format,
    .export_name = "disk0",
    .writable = !source,
    .tcp_host = source ? "127.0.0.1" : NULL,
    .unix_socket = source ? NULL : socket,
    .tls_creds_dir = source ? f->qemu_tls : NULL,
    .bitmap = bitmap,
  };
  FerryNbdExport *export = ferry_nbd_export_start (&options, &error);
  g_assert_no_error (error);
  return export;
}

static FerryNbdExport *
export (Fixture *f, const char *image, const char *format, gboolean source)
{
  return export_bitmap (f, image, format, source, NULL);
}

static void
start_exports (Fixture *f, const char *destination_format)
{
  g_autofree char *size = g_strdup_printf ("%d", DISK_BYTES);
  run ((const char *const[]) { "qemu-img", "create", "-q", "-f", destination_format,
                               f->destination_image, size, NULL });
  f->source_export = export (f, f->source_image, "qcow2", TRUE);
  f->destination_export = export (f, f->destination_image, destination_format, FALSE);
  f->source_uri = ferry_nbd_export_uri (f->source_export, "127.0.0.1", f->qemu_tls);
  f->destination_uri = ferry_nbd_export_uri (f->destination_export, NULL, NULL);
}

static void
fixture_set_up (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  f->dir = g_dir_make_tmp ("ferry-nbd-copy-XXXXXX", &error);
  g_assert_no_error (error);
  g_autofree char *pki = g_build_filename (f->dir, "pki", NULL);
  const char *addresses[] = { "127.0.0.1", NULL };
  g_assert_true (ferry_pki_init (pki, "test CA", FALSE, &error));
  g_autofree char *host_dir = ferry_pki_issue_host (pki, "127.0.0.1", addresses, &error);
  g_assert_no_error (error);
  f->qemu_tls = g_build_filename (f->dir, "qemu-tls", NULL);
  g_assert_true (ferry_pki_write_qemu_creds_dir (host_dir, f->qemu_tls, &error));

  /* The source: a qcow2 with scattered data, a written run of zeroes
   * (data to the format, zero to the copy), a partial last chunk. */
  f->source_image = g_build_filename (f->dir, "src.qcow2", NULL);
  f->destination_image = g_build_filename (f->dir, "dst.img", NULL);
  g_autofree char *size = g_strdup_printf ("%d", DISK_BYTES);
  run ((const char *const[]) { "qemu-img", "create", "-q", "-f", "qcow2", f->source_image, size, NULL });
  qemu_io (f->source_image, "qcow2", "write -P 0xab 1M 3M");
  qemu_io (f->source_image, "qcow2", "write -P 0x00 8M 2M");
  qemu_io (f->source_image, "qcow2", "write -P 0x5c 33M 64k");
  qemu_io (f->source_image, "qcow2", "write -P 0x17 70M 5M");
  qemu_io (f->source_image, "qcow2", "write -P 0xee 95M 1M");
  f->data_bytes = (3 + 5 + 1) * 1024 * 1024 + 64 * 1024;
}

static void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  g_clear_pointer (&f->source_export, ferry_nbd_export_free);
  g_clear_pointer (&f->destination_export, ferry_nbd_export_free);
  g_autoptr (GSubprocess) rm = g_subprocess_new (G_SUBPROCESS_FLAGS_NONE, NULL, "rm", "-rf", f->dir, NULL);
  g_subprocess_wait (rm, NULL, NULL);
  g_free (f->dir);
  g_free (f->qemu_tls);
  g_free (f->source_image);
  g_free (f->destination_image);
  g_free (f->source_uri);
  g_free (f->destination_uri);
}

static gboolean
images_identical (Fixture *f, const char *destination_format)
{
  g_autoptr (GSubprocess) compare = g_subprocess_new (G_SUBPROCESS_FLAGS_STDOUT_SILENCE, NULL, "qemu-img",
                                                      "compare", "-q", "-U", "-f", "qcow2", "-F",
                                                      destination_format, f->source_image,
                                                      f->destination_image, NULL);
  g_subprocess_wait (compare, NULL, NULL);
  return g_subprocess_get_if_exited (compare) && g_subprocess_get_exit_status (compare) == 0;
}

typedef struct {
  GMutex lock;
  GArray *indexes;
  GPtrArray *digests;
} Seen;

static void
on_chunk_done (const FerryCopyChunk *chunk, gpointer user_data)
{
  Seen *seen = user_data;
  g_mutex_lock (&seen->lock);
  g_array_append_val (seen->indexes, chunk->index);
  g_ptr_array_add (seen->digests, g_strdup_printf ("%" G_GUINT64_FORMAT "=%s", chunk->index, chunk->digest));
  g_mutex_unlock (&seen->lock);
}

static void
test_copy_sparse_identical (Fixture *f, gconstpointer data)
{
  const char *format = data;
  g_autoptr (GError) error = NULL;
  start_exports (f, format);

  g_autoptr (FerryNbdCopy) copy = ferry_nbd_copy_new (f->source_uri, f->destination_uri, NULL);
  Seen seen = { .indexes = g_array_new (FALSE, FALSE, sizeof (guint64)),
                .digests = g_ptr_array_new_with_free_func (g_free) };
  g_mutex_init (&seen.lock);
  ferry_nbd_copy_set_chunk_done (copy, on_chunk_done, &seen);
  g_assert_true (ferry_nbd_copy_run (copy, NULL, &error));
  g_assert_no_error (error);

  FerryNbdCopyProgress progress;
  ferry_nbd_copy_get_progress (copy, &progress);
  g_assert_cmpuint (progress.size, ==, DISK_BYTES);
  g_assert_cmpuint (progress.chunks_total, ==, 6);
  g_assert_cmpuint (progress.chunks_done, ==, 6);
  g_assert_cmpuint (progress.bytes_done, ==, DISK_BYTES);
  /* Only data crosses: the written zeroes are read (the format calls them
   * data) but never written. */
  g_assert_cmpuint (progress.bytes_read, >=, progress.bytes_written);
  g_assert_cmpuint (progress.bytes_read, <=, f->data_bytes + 2 * 1024 * 1024 + 256 * 1024);
  g_assert_cmpuint (progress.bytes_written, ==, f->data_bytes);
  g_assert_cmpuint (seen.indexes->len, ==, 6);
  g_assert_true (images_identical (f, format));
  /* Sparse: the destination holds little more than the data. */
  g_assert_cmpuint (allocated_bytes (f->destination_image), <=, f->data_bytes + 2 * 1024 * 1024);

  /* The source side computes the same digests from its own storage. */
  guint64 indexes[6] = { 0, 1, 2, 3, 4, 5 };
  char digests[6 * FERRY_COPY_DIGEST_LEN];
  g_assert_true (ferry_nbd_chunk_digests (f->source_uri, indexes, 6, digests, NULL, &error));
  g_assert_no_error (error);
  for (guint i = 0; i < 6; i++)
    {
      g_autofree char *expected = g_strdup_printf ("%u=%s", i, digests + i * FERRY_COPY_DIGEST_LEN);
      g_assert_true (g_ptr_array_find_with_equal_func (seen.digests, expected, g_str_equal, NULL));
    }
  /* A chunk with nothing in it digests like any other empty chunk. */
  g_assert_cmpstr (digests + 3 * FERRY_COPY_DIGEST_LEN, ==, digests + 1 * FERRY_COPY_DIGEST_LEN);
  g_assert_cmpstr (digests + 0 * FERRY_COPY_DIGEST_LEN, !=, digests + 1 * FERRY_COPY_DIGEST_LEN);
  g_array_unref (seen.indexes);
  g_ptr_array_unref (seen.digests);
  g_mutex_clear (&seen.lock);
}

static void
test_resume_copies_only_selected (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  start_exports (f, "qcow2");

  /* A first run that did chunks 0-3, then a resumed one for 4 and 5. */
  guint64 first[] = { 0, 1, 2, 3 };
  guint64 rest[] = { 4, 5 };
  g_autoptr (FerryNbdCopy) copy = ferry_nbd_copy_new (f->source_uri, f->destination_uri, NULL);
  ferry_nbd_copy_select_chunks (copy, first, G_N_ELEMENTS (first));
  g_assert_true (ferry_nbd_copy_run (copy, NULL, &error));
  g_assert_false (images_identical (f, "qcow2"));

  g_autoptr (FerryNbdCopy) resumed = ferry_nbd_copy_new (f->source_uri, f->destination_uri, NULL);
  ferry_nbd_copy_select_chunks (resumed, rest, G_N_ELEMENTS (rest));
  g_assert_true (ferry_nbd_copy_run (resumed, NULL, &error));
  g_assert_no_error (error);
  FerryNbdCopyProgress progress;
  ferry_nbd_copy_get_progress (resumed, &progress);
  g_assert_cmpuint (progress.chunks_done, ==, 2);
  /* 70M+5M spans chunks 4 (64-80M) and the 1M at 95M is in chunk 5. */
  g_assert_cmpuint (progress.bytes_read, ==, 6 * 1024 * 1024);
  g_assert_true (images_identical (f, "qcow2"));
}

/* A delta: after a full copy, the source changes under a persistent dirty
 * bitmap (data rewritten, data zeroed, data added); copying only what the
 * bitmap marks makes the images identical again, reading only that. */
/* A full copy to a raw destination; then a bitmap "since-full" on the
 * source, these qemu-io writes, and the source exported again with it. */
static void
copy_then_change (Fixture *f, const char *const *writes)
{
  g_autoptr (GError) error = NULL;
  start_exports (f, "raw");
  g_autoptr (FerryNbdCopy) full = ferry_nbd_copy_new (f->source_uri, f->destination_uri, NULL);
  g_assert_true (ferry_nbd_copy_run (full, NULL, &error));
  g_clear_pointer (&f->source_export, ferry_nbd_export_free);
  run ((const char *const[]) { "qemu-img", "bitmap", "--add", f->source_image, "since-full", NULL });
  for (guint i = 0; writes[i] != NULL; i++)
    qemu_io (f->source_image, "qcow2", writes[i]);
  g_assert_false (images_identical (f, "raw"));
  f->source_export = export_bitmap (f, f->source_image, "qcow2", TRUE, "since-full");
  g_free (f->source_uri);
  f->source_uri = ferry_nbd_export_uri (f->source_export, "127.0.0.1", f->qemu_tls);
}

static void
test_delta_copies_dirty_blocks (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  copy_then_change (f, (const char *const[]) {
    "write -P 0x77 2M 64k",   /* chunk 0: rewritten */
    "write -z 71M 1M",        /* chunk 4: zeroed */
    "write -P 0x42 40M 64k",  /* chunk 2: new data */
    NULL });
  /* As many connections as the source's count asks for (two, for three
   * scattered dirty chunks): a worker takes chunk after chunk. */
  FerryNbdCopyOptions options = { .dirty_bitmap = "since-full",
                                  .connections = ferry_copy_connections_for_delta (2 * 64 * 1024 + 1024 * 1024) };
  g_assert_cmpuint (options.connections, ==, 2);
  g_autoptr (FerryNbdCopy) delta = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &options);
  Seen seen = { .indexes = g_array_new (FALSE, FALSE, sizeof (guint64)),
                .digests = g_ptr_array_new_with_free_func (g_free) };
  g_mutex_init (&seen.lock);
  ferry_nbd_copy_set_chunk_done (delta, on_chunk_done, &seen);
  g_assert_true (ferry_nbd_copy_run (delta, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (images_identical (f, "raw"));
  qemu_io (f->destination_image, "raw", "read -P 0 71M 1M");

  FerryNbdCopyProgress progress;
  ferry_nbd_copy_get_progress (delta, &progress);
  g_assert_cmpuint (progress.chunks_done, ==, 6);
  g_assert_cmpuint (progress.chunks_changed, ==, 3);
  /* Only the two dirty data clusters cross; the zeroed range is not read. */
  g_assert_cmpuint (progress.bytes_read, ==, 2 * 64 * 1024);
  g_assert_cmpuint (progress.bytes_written, ==, 2 * 64 * 1024 + 1024 * 1024);

  /* Changed chunks carry the digest of the whole chunk, equal to the
   * source's; unchanged ones an empty digest. */
  guint64 indexes[6] = { 0, 1, 2, 3, 4, 5 };
  char digests[6 * FERRY_COPY_DIGEST_LEN];
  g_assert_true (ferry_nbd_chunk_digests (f->source_uri, indexes, 6, digests, NULL, &error));
  for (guint i = 0; i < 6; i++)
    {
      gboolean changed = i == 0 || i == 2 || i == 4;
      g_autofree char *expected = g_strdup_printf ("%u=%s", i, changed ? digests + i * FERRY_COPY_DIGEST_LEN : "");
      g_assert_true (g_ptr_array_find_with_equal_func (seen.digests, expected, g_str_equal, NULL));
    }
  g_array_unref (seen.indexes);
  g_ptr_array_unref (seen.digests);
  g_mutex_clear (&seen.lock);

  /* Asking for a bitmap the source lacks fails with its name. */
  FerryNbdCopyOptions missing = { .dirty_bitmap = "no-such-bitmap" };
  g_autoptr (FerryNbdCopy) wrong = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &missing);
  g_assert_false (ferry_nbd_copy_run (wrong, NULL, &error));
  g_assert_nonnull (strstr (error->message, "no-such-bitmap"));
}

/* Connections opened ahead, stopped before they name an export: the
 * copy takes them (asking for its export and the bitmap then), and
 * connects afresh for what they do not cover. */
static void
test_preconnected_delta (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  copy_then_change (f, (const char *const[]) { "write -P 0x61 1M 64k", "write -P 0x62 50M 1M",
                                               "write -P 0x63 90M 64k", NULL }); /* chunks 0, 3, 5 */

  /* Two of the three connections the copy opens are made ahead. */
  g_autoptr (FerryNbdPreconnect) pre = ferry_nbd_preconnect_start (f->source_uri, 2);
  g_assert_true (ferry_nbd_preconnect_wait (pre, 30000));
  FerryNbdCopyOptions options = { .dirty_bitmap = "since-full", .connections = 3, .preconnected = pre };
  g_autoptr (FerryNbdCopy) delta = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &options);
  g_assert_true (ferry_nbd_copy_run (delta, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (images_identical (f, "raw"));
  guint ready, claimed;
  ferry_nbd_preconnect_get_counts (pre, &ready, &claimed);
  g_assert_cmpuint (ready, ==, 2);
  g_assert_cmpuint (claimed, ==, 2);
  FerryNbdCopyProgress progress;
  ferry_nbd_copy_get_progress (delta, &progress);
  g_assert_cmpuint (progress.chunks_changed, ==, 3);

  /* Made for another URI (another export): not taken. */
  g_autofree char *other_uri = g_strdup (f->source_uri);
  char *export_at = strstr (other_uri, "/disk0");
  g_assert_nonnull (export_at);
  memcpy (export_at, "/disk9", 6);
  g_autoptr (FerryNbdPreconnect) other = ferry_nbd_preconnect_start (other_uri, 1);
  g_assert_true (ferry_nbd_preconnect_wait (other, 30000));
  FerryNbdCopyOptions other_options = { .dirty_bitmap = "since-full", .preconnected = other };
  g_autoptr (FerryNbdCopy) again = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &other_options);
  g_assert_true (ferry_nbd_copy_run (again, NULL, &error));
  g_assert_true (images_identical (f, "raw"));
  ferry_nbd_preconnect_get_counts (other, &ready, &claimed);
  g_assert_cmpuint (ready, ==, 1);
  g_assert_cmpuint (claimed, ==, 0);

  /* Taken for an export the server does not have: refused at NBD_OPT_GO,
   * so the caller connects afresh (and there learns why). */
  g_assert_null (ferry_nbd_preconnect_claim (other, other_uri, NULL, 10, NULL));
  ferry_nbd_preconnect_get_counts (other, &ready, &claimed);
  g_assert_cmpuint (claimed, ==, 0);

  /* Nothing listens: nothing is made, and the copy's own connection
   * says where it failed. */
  g_autofree char *nowhere = g_strdup_printf ("nbds://127.0.0.1:1/disk0?tls-certificates=%s", f->qemu_tls);
  g_autoptr (FerryNbdPreconnect) none = ferry_nbd_preconnect_start (nowhere, 2);
  g_assert_true (ferry_nbd_preconnect_wait (none, 30000));
  ferry_nbd_preconnect_get_counts (none, &ready, &claimed);
  g_assert_cmpuint (ready, ==, 0);
  g_assert_null (ferry_nbd_preconnect_claim (none, nowhere, NULL, 10, NULL));
}

static void
test_connections_for_delta (void)
{
  const guint64 chunk = FERRY_COPY_CHUNK_BYTES;
  g_assert_cmpuint (ferry_copy_connections_for_delta (0), ==, 1);          /* to scan the bitmap */
  g_assert_cmpuint (ferry_copy_connections_for_delta (1), ==, 2);
  g_assert_cmpuint (ferry_copy_connections_for_delta (chunk), ==, 2);
  g_assert_cmpuint (ferry_copy_connections_for_delta (chunk + 1), ==, 3);
  g_assert_cmpuint (ferry_copy_connections_for_delta (57 * 1024 * 1024), ==, 5);
  g_assert_cmpuint (ferry_copy_connections_for_delta (1ULL << 40), ==, 8);
}

static void
test_rate_limit_and_digest_mismatch (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  start_exports (f, "raw");
  g_autoptr (FerryRateLimit) limit = ferry_rate_limit_new (64 * 1024 * 1024);
  FerryNbdCopyOptions options = { .connections = 2, .requests_in_flight = 2, .rate_limit = limit };
  g_autoptr (FerryNbdCopy) copy = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &options);
  g_assert_true (ferry_nbd_copy_run (copy, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (images_identical (f, "raw"));

  /* Damage the destination behind the engine's back: digests disagree. */
  g_clear_pointer (&f->destination_export, ferry_nbd_export_free);
  qemu_io (f->destination_image, "raw", "write -P 0x01 70M 4k");
  f->destination_export = export (f, f->destination_image, "raw", FALSE);
  guint64 index = 4;
  char source_digest[FERRY_COPY_DIGEST_LEN], destination_digest[FERRY_COPY_DIGEST_LEN];
  g_assert_true (ferry_nbd_chunk_digests (f->source_uri, &index, 1, source_digest, NULL, &error));
  g_assert_true (ferry_nbd_chunk_digests (f->destination_uri, &index, 1, destination_digest, NULL, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (source_digest, !=, destination_digest);
}

static void
test_source_gone_fails_cleanly (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  start_exports (f, "qcow2");
  g_clear_pointer (&f->source_export, ferry_nbd_export_free);
  FerryNbdCopyOptions options = { .stall_timeout_s = 5 };
  g_autoptr (FerryNbdCopy) copy = ferry_nbd_copy_new (f->source_uri, f->destination_uri, &options);
  g_assert_false (ferry_nbd_copy_run (copy, NULL, &error));
  g_assert_nonnull (error);
  g_assert_true (strstr (error->message, "127.0.0.1") != NULL);
}

static void
test_client_without_certificate_refused (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  start_exports (f, "qcow2");
  /* Plain NBD to the TLS export, and TLS without a client certificate. */
  g_autofree char *plain = g_strdup_printf ("nbd://127.0.0.1:%u/disk0",
                                            ferry_nbd_export_get_port (f->source_export));
  guint64 size;
  g_assert_false (ferry_nbd_uri_size (plain, &size, &error));
  g_clear_error (&error);
  g_autofree char *no_client_cert = g_build_filename (f->dir, "ca-only", NULL);
  g_mkdir (no_client_cert, 0700);
  g_autofree char *ca_from = g_build_filename (f->qemu_tls, "ca-cert.pem", NULL);
  g_autofree char *ca_to = g_build_filename (no_client_cert, "ca-cert.pem", NULL);
  g_autofree char *ca = NULL;
  gsize length;
  g_assert_true (g_file_get_contents (ca_from, &ca, &length, NULL));
  g_assert_true (g_file_set_contents (ca_to, ca, length, NULL));
  g_autofree char *anonymous = ferry_nbd_export_uri (f->source_export, "127.0.0.1", no_client_cert);
  g_assert_false (ferry_nbd_uri_size (anonymous, &size, &error));
  g_assert_nonnull (error);
  g_clear_error (&error);
  g_assert_true (ferry_nbd_uri_size (f->source_uri, &size, &error));
  g_assert_cmpuint (size, ==, DISK_BYTES);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_autofree char *qemu_nbd = g_find_program_in_path ("qemu-nbd");
  if (qemu_nbd == NULL)
    {
      g_test_skip ("qemu-nbd is not installed");
      return g_test_run ();
    }
  g_test_add ("/nbd-copy/qcow2-to-qcow2", Fixture, "qcow2", fixture_set_up,
              test_copy_sparse_identical, fixture_tear_down);
  g_test_add ("/nbd-copy/qcow2-to-raw", Fixture, "raw", fixture_set_up,
              test_copy_sparse_identical, fixture_tear_down);
  g_test_add_func ("/nbd-copy/connections-for-delta", test_connections_for_delta);
  g_test_add ("/nbd-copy/delta", Fixture, NULL, fixture_set_up, test_delta_copies_dirty_blocks,
              fixture_tear_down);
  g_test_add ("/nbd-copy/preconnected-delta", Fixture, NULL, fixture_set_up, test_preconnected_delta,
              fixture_tear_down);
  g_test_add ("/nbd-copy/resume", Fixture, NULL, fixture_set_up, test_resume_copies_only_selected,
              fixture_tear_down);
  g_test_add ("/nbd-copy/rate-limit-digest-mismatch", Fixture, NULL, fixture_set_up,
              test_rate_limit_and_digest_mismatch, fixture_tear_down);
  g_test_add ("/nbd-copy/source-gone", Fixture, NULL, fixture_set_up, test_source_gone_fails_cleanly,
              fixture_tear_down);
  g_test_add ("/nbd-copy/tls-required", Fixture, NULL, fixture_set_up,
              test_client_without_certificate_refused, fixture_tear_down);
  return g_test_run ();
}
