/* The agent's store: what is written is what a restarted agent reads. */
#include <glib.h>
#include <glib/gstdio.h>

#include "ferry-error.h"
#include "store.h"

typedef struct {
  char *dir;
  char *path;
  FerryStore *store;
} Fixture;

static void
setup (Fixture *fixture, gconstpointer data)
{
  fixture->dir = g_dir_make_tmp ("ferry-store-XXXXXX", NULL);
  fixture->path = g_build_filename (fixture->dir, "ferryd.db", NULL);
  g_autoptr (GError) error = NULL;
  fixture->store = ferry_store_open (fixture->path, &error);
  g_assert_no_error (error);
}

static void
teardown (Fixture *fixture, gconstpointer data)
{
  ferry_store_free (fixture->store);
  g_autofree char *wal = g_strconcat (fixture->path, "-wal", NULL);
  g_autofree char *shm = g_strconcat (fixture->path, "-shm", NULL);
  g_unlink (wal);
  g_unlink (shm);
  g_unlink (fixture->path);
  g_rmdir (fixture->dir);
  g_free (fixture->path);
  g_free (fixture->dir);
}

static void
insert_vm (FerryStore *store, const char *name)
{
  FerryStoreVm vm = { .name = (char *) name, .spec_json = "{}", .state = "shutoff", .persistent = TRUE };
  g_autoptr (GError) error = NULL;
  g_assert_true (ferry_store_vm_insert (store, &vm, &error));
  g_assert_no_error (error);
}

static void
test_vm_survives_reopen (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  insert_vm (fixture->store, "web1");
  g_assert_true (ferry_store_vm_set_runtime (fixture->store, "web1", "running", 4242, &error));
  ferry_store_free (fixture->store);
  fixture->store = ferry_store_open (fixture->path, &error);
  g_assert_no_error (error);

  g_autoptr (FerryStoreVm) vm = ferry_store_vm_get (fixture->store, "web1", &error);
  g_assert_no_error (error);
  g_assert_cmpstr (vm->state, ==, "running");
  g_assert_cmpint (vm->pid, ==, 4242);
  g_assert_true (vm->persistent);
}

static void
test_duplicate_name_conflicts (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  insert_vm (fixture->store, "web1");
  FerryStoreVm again = { .name = "web1", .spec_json = "{}", .state = "shutoff" };
  g_assert_false (ferry_store_vm_insert (fixture->store, &again, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);
  g_assert_nonnull (strstr (error->message, "web1"));
}

static void
test_unknown_vm_not_found (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_assert_null (ferry_store_vm_get (fixture->store, "ghost", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_false (ferry_store_vm_delete (fixture->store, "ghost", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error (&error);
  g_assert_false (ferry_store_vm_set_runtime (fixture->store, "ghost", "running", 1, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

static void
test_vm_list_ordered (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  insert_vm (fixture->store, "zeta");
  insert_vm (fixture->store, "alpha");
  g_autoptr (GPtrArray) list = ferry_store_vm_list (fixture->store, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 2);
  g_assert_cmpstr (((FerryStoreVm *) list->pdata[0])->name, ==, "alpha");
  g_assert_cmpstr (((FerryStoreVm *) list->pdata[1])->name, ==, "zeta");
}

static FerryStoreJob
sample_job (const char *uuid, const char *role, const char *state)
{
  return (FerryStoreJob) {
    .uuid = (char *) uuid, .vm_name = "web1", .kind = "migrate-live", .role = (char *) role,
    .state = (char *) state, .peer_url = "https://10.0.0.2:7711", .options_json = "{\"live\":true}",
  };
}

static void
test_job_state_and_error_persist (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  FerryStoreJob job = sample_job ("u-1", "source", "begin");
  g_assert_true (ferry_store_job_insert (fixture->store, &job, &error));
  g_assert_cmpint (job.id, >, 0);
  g_assert_true (ferry_store_job_update (fixture->store, job.id, "failed", "link cut",
                                         "{\"ram\":{}}", &error));
  /* NULL error/stats keep what is there. */
  g_assert_true (ferry_store_job_update (fixture->store, job.id, "failed", NULL, NULL, &error));
  g_autoptr (FerryStoreJob) read = ferry_store_job_get (fixture->store, job.id, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (read->state, ==, "failed");
  g_assert_cmpstr (read->error, ==, "link cut");
  g_assert_cmpstr (read->stats_json, ==, "{\"ram\":{}}");
  g_assert_cmpstr (read->peer_url, ==, "https://10.0.0.2:7711");
}

static void
test_job_lookup_by_uuid_and_role (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  FerryStoreJob source = sample_job ("shared", "source", "performing");
  FerryStoreJob destination = sample_job ("shared", "destination", "prepared");
  g_assert_true (ferry_store_job_insert (fixture->store, &source, &error));
  g_assert_true (ferry_store_job_insert (fixture->store, &destination, &error));
  g_autoptr (FerryStoreJob) found = ferry_store_job_get_by_uuid (fixture->store, "shared", "destination", &error);
  g_assert_no_error (error);
  g_assert_cmpint (found->id, ==, destination.id);
  g_autoptr (FerryStoreJob) latest = ferry_store_job_latest_for_vm (fixture->store, "web1", &error);
  g_assert_cmpint (latest->id, ==, destination.id);
}

static void
test_unfinished_jobs_skip_terminal (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  const char *const terminal[] = { "completed", "failed", "cancelled", NULL };
  FerryStoreJob done = sample_job ("a", "source", "completed");
  FerryStoreJob running = sample_job ("b", "source", "performing");
  g_assert_true (ferry_store_job_insert (fixture->store, &done, &error));
  g_assert_true (ferry_store_job_insert (fixture->store, &running, &error));
  g_autoptr (GPtrArray) list = ferry_store_job_list_unfinished (fixture->store, terminal, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (list->len, ==, 1);
  g_assert_cmpstr (((FerryStoreJob *) list->pdata[0])->uuid, ==, "b");
}

static void
test_job_events_in_order (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  FerryStoreJob job = sample_job ("e", "source", "begin");
  g_assert_true (ferry_store_job_insert (fixture->store, &job, &error));
  g_assert_true (ferry_store_job_add_event (fixture->store, job.id, "info", "first", &error));
  g_assert_true (ferry_store_job_add_event (fixture->store, job.id, "error", "second", &error));
  g_autoptr (GPtrArray) events = ferry_store_job_events (fixture->store, job.id, &error);
  g_assert_cmpuint (events->len, ==, 2);
  g_assert_cmpstr (((FerryStoreEvent *) events->pdata[0])->message, ==, "first");
  g_assert_cmpstr (((FerryStoreEvent *) events->pdata[1])->level, ==, "error");
}

static void
test_chunks_batch_all_or_none (Fixture *fixture, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  FerryStoreJob job = sample_job ("c", "destination", "copying");
  g_assert_true (ferry_store_job_insert (fixture->store, &job, &error));
  const FerryStoreChunk batch[] = { { 0, 3, "aa" }, { 0, 7, "bb" }, { 1, 3, "cc" } };
  g_assert_true (ferry_store_chunks_put (fixture->store, job.id, batch, G_N_ELEMENTS (batch), &error));
  g_assert_no_error (error);
  /* A bad record (no digest) fails the batch and records none of it. */
  const FerryStoreChunk bad[] = { { 0, 9, "dd" }, { 0, 10, NULL } };
  g_assert_false (ferry_store_chunks_put (fixture->store, job.id, bad, G_N_ELEMENTS (bad), &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_FAILED);
  g_clear_error (&error);

  ferry_store_free (fixture->store);
  fixture->store = ferry_store_open (fixture->path, &error);
  g_assert_no_error (error);
  g_autoptr (GHashTable) disk0 = ferry_store_chunks_get (fixture->store, job.id, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (disk0), ==, 2);
  gint64 seven = 7, nine = 9;
  g_assert_cmpstr (g_hash_table_lookup (disk0, &seven), ==, "bb");
  g_assert_null (g_hash_table_lookup (disk0, &nine));
  /* The store takes writes again after the failed batch. */
  const FerryStoreChunk again[] = { { 0, 9, "dd" } };
  g_assert_true (ferry_store_chunks_put (fixture->store, job.id, again, 1, &error));
  g_assert_no_error (error);
}

static void
test_open_unwritable_path_fails (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryStore) store = ferry_store_open ("/nonexistent-dir/ferry/x.db", &error);
  g_assert_null (store);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_FAILED);
  g_assert_nonnull (strstr (error->message, "/nonexistent-dir/ferry/x.db"));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, fn) g_test_add (path, Fixture, NULL, setup, fn, teardown)
  ADD ("/store/vm-survives-reopen", test_vm_survives_reopen);
  ADD ("/store/duplicate-name-conflicts", test_duplicate_name_conflicts);
  ADD ("/store/unknown-vm-not-found", test_unknown_vm_not_found);
  ADD ("/store/vm-list-ordered", test_vm_list_ordered);
  ADD ("/store/job-state-and-error-persist", test_job_state_and_error_persist);
  ADD ("/store/job-lookup-by-uuid-and-role", test_job_lookup_by_uuid_and_role);
  ADD ("/store/unfinished-jobs-skip-terminal", test_unfinished_jobs_skip_terminal);
  ADD ("/store/job-events-in-order", test_job_events_in_order);
  ADD ("/store/chunks-batch-all-or-none", test_chunks_batch_all_or_none);
  g_test_add_func ("/store/open-unwritable-path-fails", test_open_unwritable_path_fails);
  return g_test_run ();
}
