#include "store.h"

#include <sqlite3.h>

#include "ferry-error.h"

struct _FerryStore {
  sqlite3 *db;
};

/* Schema version 1. Later versions add ALTERs guarded by user_version. */
static const char schema_sql[] =
  "CREATE TABLE IF NOT EXISTS vms ("
  "  name TEXT PRIMARY KEY,"
  "  spec TEXT NOT NULL,"
  "  state TEXT NOT NULL,"
  "  pid INTEGER NOT NULL DEFAULT 0,"
  "  persistent INTEGER NOT NULL DEFAULT 1,"
  "  updated_us INTEGER NOT NULL);"
  "CREATE TABLE IF NOT EXISTS jobs ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
  "  uuid TEXT NOT NULL,"
  "  vm_name TEXT NOT NULL,"
  "  kind TEXT NOT NULL,"
  "  role TEXT NOT NULL,"
  "  state TEXT NOT NULL,"
  "  peer_url TEXT,"
  "  options TEXT,"
  "  stats TEXT,"
  "  error TEXT,"
  "  created_us INTEGER NOT NULL,"
  "  updated_us INTEGER NOT NULL);"
  "CREATE INDEX IF NOT EXISTS jobs_vm ON jobs (vm_name, id);"
  "CREATE INDEX IF NOT EXISTS jobs_uuid ON jobs (uuid, role);"
  "CREATE TABLE IF NOT EXISTS job_events ("
  "  job_id INTEGER NOT NULL,"
  "  time_us INTEGER NOT NULL,"
  "  level TEXT NOT NULL,"
  "  message TEXT NOT NULL);"
  "CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, time_us);"
  "CREATE TABLE IF NOT EXISTS copy_chunks ("
  "  job_id INTEGER NOT NULL,"
  "  disk INTEGER NOT NULL,"
  "  chunk INTEGER NOT NULL,"
  "  digest TEXT NOT NULL,"
  "  PRIMARY KEY (job_id, disk, chunk));"
  "PRAGMA user_version = 1;";

static gboolean
set_sqlite_error (FerryStore *store, const char *what, GError **error)
{
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "store: %s: %s",
               what, sqlite3_errmsg (store->db));
  return FALSE;
}

FerryStore *
ferry_store_open (const char *path, GError **error)
{
  g_autoptr (FerryStore) store = g_new0 (FerryStore, 1);
  char *errmsg = NULL;

  if (sqlite3_open_v2 (path, &store->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                       NULL) != SQLITE_OK)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot open store %s: %s", path,
                   store->db ? sqlite3_errmsg (store->db) : "out of memory");
      return NULL;
    }
  sqlite3_busy_timeout (store->db, 5000);
  if (sqlite3_exec (store->db,
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                    NULL, NULL, &errmsg) != SQLITE_OK
      || sqlite3_exec (store->db, schema_sql, NULL, NULL, &errmsg) != SQLITE_OK)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot initialise store %s: %s",
                   path, errmsg);
      sqlite3_free (errmsg);
      return NULL;
    }
  return g_steal_pointer (&store);
}

void
ferry_store_free (FerryStore *store)
{
  if (store == NULL)
    return;
  sqlite3_close_v2 (store->db);
  g_free (store);
}

typedef sqlite3_stmt FerryStmt;
static void
ferry_stmt_finalize (FerryStmt *stmt)
{
  sqlite3_finalize (stmt);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryStmt, ferry_stmt_finalize)

static FerryStmt *
prepare (FerryStore *store, const char *sql, GError **error)
{
  FerryStmt *stmt = NULL;
  if (sqlite3_prepare_v2 (store->db, sql, -1, &stmt, NULL) != SQLITE_OK)
    {
      set_sqlite_error (store, "prepare", error);
      return NULL;
    }
  return stmt;
}

static char *
column_strdup (FerryStmt *stmt, int column)
{
  const unsigned char *text = sqlite3_column_text (stmt, column);
  return text ? g_strdup ((const char *) text) : NULL;
}

/* ---- VMs ---------------------------------------------------------------- */

void
ferry_store_vm_free (FerryStoreVm *vm)
{
  if (vm == NULL)
    return;
  g_free (vm->name);
  g_free (vm->spec_json);
  g_free (vm->state);
  g_free (vm);
}

gboolean
ferry_store_vm_insert (FerryStore *store, const FerryStoreVm *vm, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "INSERT INTO vms (name, spec, state, pid, persistent, updated_us) VALUES (?,?,?,?,?,?)",
    error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, vm->name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 2, vm->spec_json, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 3, vm->state, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 4, vm->pid);
  sqlite3_bind_int (stmt, 5, vm->persistent ? 1 : 0);
  sqlite3_bind_int64 (stmt, 6, g_get_real_time ());
  int rc = sqlite3_step (stmt);
  if (rc == SQLITE_CONSTRAINT)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "a VM named '%s' is already defined on this host", vm->name);
      return FALSE;
    }
  if (rc != SQLITE_DONE)
    return set_sqlite_error (store, "insert vm", error);
  return TRUE;
}

static gboolean
expect_one_change (FerryStore *store, const char *name, GError **error)
{
  if (sqlite3_changes (store->db) == 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no VM named '%s'", name);
      return FALSE;
    }
  return TRUE;
}

gboolean
ferry_store_vm_set_runtime (FerryStore *store, const char *name, const char *state,
                            gint64 pid, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "UPDATE vms SET state = ?, pid = ?, updated_us = ? WHERE name = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, state, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 2, pid);
  sqlite3_bind_int64 (stmt, 3, g_get_real_time ());
  sqlite3_bind_text (stmt, 4, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "update vm", error);
  return expect_one_change (store, name, error);
}

gboolean
ferry_store_vm_set_persistent (FerryStore *store, const char *name, gboolean persistent,
                               GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "UPDATE vms SET persistent = ?, updated_us = ? WHERE name = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int (stmt, 1, persistent ? 1 : 0);
  sqlite3_bind_int64 (stmt, 2, g_get_real_time ());
  sqlite3_bind_text (stmt, 3, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "update vm", error);
  return expect_one_change (store, name, error);
}

gboolean
ferry_store_vm_set_spec (FerryStore *store, const char *name, const char *spec_json, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "UPDATE vms SET spec = ?, updated_us = ? WHERE name = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, spec_json, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 2, g_get_real_time ());
  sqlite3_bind_text (stmt, 3, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "update vm spec", error);
  return expect_one_change (store, name, error);
}

gboolean
ferry_store_vm_delete (FerryStore *store, const char *name, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store, "DELETE FROM vms WHERE name = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, name, -1, SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "delete vm", error);
  return expect_one_change (store, name, error);
}

static FerryStoreVm *
vm_from_row (FerryStmt *stmt)
{
  FerryStoreVm *vm = g_new0 (FerryStoreVm, 1);
  vm->name = column_strdup (stmt, 0);
  vm->spec_json = column_strdup (stmt, 1);
  vm->state = column_strdup (stmt, 2);
  vm->pid = sqlite3_column_int64 (stmt, 3);
  vm->persistent = sqlite3_column_int (stmt, 4) != 0;
  vm->updated_us = sqlite3_column_int64 (stmt, 5);
  return vm;
}

#define VM_COLUMNS "name, spec, state, pid, persistent, updated_us"

FerryStoreVm *
ferry_store_vm_get (FerryStore *store, const char *name, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT " VM_COLUMNS " FROM vms WHERE name = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_text (stmt, 1, name, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    return vm_from_row (stmt);
  if (rc == SQLITE_DONE)
    g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no VM named '%s'", name);
  else
    set_sqlite_error (store, "get vm", error);
  return NULL;
}

GPtrArray *
ferry_store_vm_list (FerryStore *store, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT " VM_COLUMNS " FROM vms ORDER BY name", error);
  if (stmt == NULL)
    return NULL;
  g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_store_vm_free);
  int rc;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    g_ptr_array_add (list, vm_from_row (stmt));
  if (rc != SQLITE_DONE)
    {
      set_sqlite_error (store, "list vms", error);
      return NULL;
    }
  return g_steal_pointer (&list);
}

/* ---- jobs --------------------------------------------------------------- */

void
ferry_store_job_free (FerryStoreJob *job)
{
  if (job == NULL)
    return;
  g_free (job->uuid);
  g_free (job->vm_name);
  g_free (job->kind);
  g_free (job->role);
  g_free (job->state);
  g_free (job->peer_url);
  g_free (job->options_json);
  g_free (job->stats_json);
  g_free (job->error);
  g_free (job);
}

gboolean
ferry_store_job_insert (FerryStore *store, FerryStoreJob *job, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "INSERT INTO jobs (uuid, vm_name, kind, role, state, peer_url, options, stats, error,"
    " created_us, updated_us) VALUES (?,?,?,?,?,?,?,?,?,?,?)", error);
  if (stmt == NULL)
    return FALSE;
  gint64 now = g_get_real_time ();
  job->created_us = job->updated_us = now;
  sqlite3_bind_text (stmt, 1, job->uuid, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 2, job->vm_name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 3, job->kind, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 4, job->role, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 5, job->state, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 6, job->peer_url, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 7, job->options_json, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 8, job->stats_json, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 9, job->error, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 10, now);
  sqlite3_bind_int64 (stmt, 11, now);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "insert job", error);
  job->id = sqlite3_last_insert_rowid (store->db);
  return TRUE;
}

gboolean
ferry_store_job_update (FerryStore *store, gint64 id, const char *state,
                        const char *error_message, const char *stats_json, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "UPDATE jobs SET state = ?, error = COALESCE(?, error), stats = COALESCE(?, stats),"
    " updated_us = ? WHERE id = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, state, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 2, error_message, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 3, stats_json, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64 (stmt, 4, g_get_real_time ());
  sqlite3_bind_int64 (stmt, 5, id);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "update job", error);
  if (sqlite3_changes (store->db) == 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no job %" G_GINT64_FORMAT, id);
      return FALSE;
    }
  return TRUE;
}

#define JOB_COLUMNS "id, uuid, vm_name, kind, role, state, peer_url, options, stats, error," \
                    " created_us, updated_us"

static FerryStoreJob *
job_from_row (FerryStmt *stmt)
{
  FerryStoreJob *job = g_new0 (FerryStoreJob, 1);
  job->id = sqlite3_column_int64 (stmt, 0);
  job->uuid = column_strdup (stmt, 1);
  job->vm_name = column_strdup (stmt, 2);
  job->kind = column_strdup (stmt, 3);
  job->role = column_strdup (stmt, 4);
  job->state = column_strdup (stmt, 5);
  job->peer_url = column_strdup (stmt, 6);
  job->options_json = column_strdup (stmt, 7);
  job->stats_json = column_strdup (stmt, 8);
  job->error = column_strdup (stmt, 9);
  job->created_us = sqlite3_column_int64 (stmt, 10);
  job->updated_us = sqlite3_column_int64 (stmt, 11);
  return job;
}

static FerryStoreJob *
job_get_one (FerryStore *store, FerryStmt *stmt, const char *what, GError **error)
{
  int rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    return job_from_row (stmt);
  if (rc == SQLITE_DONE)
    g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no job for %s", what);
  else
    set_sqlite_error (store, "get job", error);
  return NULL;
}

FerryStoreJob *
ferry_store_job_get (FerryStore *store, gint64 id, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store, "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?",
                                        error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, id);
  g_autofree char *what = g_strdup_printf ("id %" G_GINT64_FORMAT, id);
  return job_get_one (store, stmt, what, error);
}

FerryStoreJob *
ferry_store_job_get_by_uuid (FerryStore *store, const char *uuid, const char *role,
                             GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT " JOB_COLUMNS " FROM jobs WHERE uuid = ? AND role = ? ORDER BY id DESC LIMIT 1",
    error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_text (stmt, 1, uuid, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 2, role, -1, SQLITE_TRANSIENT);
  g_autofree char *what = g_strdup_printf ("migration %s", uuid);
  return job_get_one (store, stmt, what, error);
}

FerryStoreJob *
ferry_store_job_latest_for_vm (FerryStore *store, const char *vm_name, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT " JOB_COLUMNS " FROM jobs WHERE vm_name = ? ORDER BY id DESC LIMIT 1", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_text (stmt, 1, vm_name, -1, SQLITE_TRANSIENT);
  g_autofree char *what = g_strdup_printf ("VM '%s'", vm_name);
  return job_get_one (store, stmt, what, error);
}

GPtrArray *
ferry_store_job_list_unfinished (FerryStore *store, const char *const *terminal_states,
                                 GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT " JOB_COLUMNS " FROM jobs ORDER BY id", error);
  if (stmt == NULL)
    return NULL;
  g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_store_job_free);
  int rc;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      FerryStoreJob *job = job_from_row (stmt);
      if (g_strv_contains (terminal_states, job->state))
        ferry_store_job_free (job);
      else
        g_ptr_array_add (list, job);
    }
  if (rc != SQLITE_DONE)
    {
      set_sqlite_error (store, "list jobs", error);
      return NULL;
    }
  return g_steal_pointer (&list);
}

void
ferry_store_event_free (FerryStoreEvent *event)
{
  if (event == NULL)
    return;
  g_free (event->level);
  g_free (event->message);
  g_free (event);
}

gboolean
ferry_store_job_add_event (FerryStore *store, gint64 job_id, const char *level,
                           const char *message, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "INSERT INTO job_events (job_id, time_us, level, message) VALUES (?,?,?,?)", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, job_id);
  sqlite3_bind_int64 (stmt, 2, g_get_real_time ());
  sqlite3_bind_text (stmt, 3, level, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text (stmt, 4, message, -1, SQLITE_TRANSIENT);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "add job event", error);
  return TRUE;
}

GPtrArray *
ferry_store_job_events (FerryStore *store, gint64 job_id, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT time_us, level, message FROM job_events WHERE job_id = ? ORDER BY rowid", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, job_id);
  g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_store_event_free);
  int rc;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      FerryStoreEvent *event = g_new0 (FerryStoreEvent, 1);
      event->time_us = sqlite3_column_int64 (stmt, 0);
      event->level = column_strdup (stmt, 1);
      event->message = column_strdup (stmt, 2);
      g_ptr_array_add (list, event);
    }
  if (rc != SQLITE_DONE)
    {
      set_sqlite_error (store, "list job events", error);
      return NULL;
    }
  return g_steal_pointer (&list);
}

/* ---- copied chunks -------------------------------------------------------- */

gboolean
ferry_store_chunks_put (FerryStore *store, gint64 job_id, const FerryStoreChunk *chunks, guint n,
                        GError **error)
{
  if (n == 0)
    return TRUE;
  if (sqlite3_exec (store->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return set_sqlite_error (store, "record copied chunks", error);
  g_autoptr (FerryStmt) stmt = prepare (store,
    "INSERT OR REPLACE INTO copy_chunks (job_id, disk, chunk, digest) VALUES (?,?,?,?)", error);
  gboolean ok = stmt != NULL;
  for (guint i = 0; ok && i < n; i++)
    {
      sqlite3_reset (stmt);
      sqlite3_bind_int64 (stmt, 1, job_id);
      sqlite3_bind_int64 (stmt, 2, chunks[i].disk);
      sqlite3_bind_int64 (stmt, 3, (sqlite3_int64) chunks[i].chunk);
      sqlite3_bind_text (stmt, 4, chunks[i].digest, -1, SQLITE_TRANSIENT);
      if (sqlite3_step (stmt) != SQLITE_DONE)
        ok = set_sqlite_error (store, "record a copied chunk", error);
    }
  if (ok && sqlite3_exec (store->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
    ok = set_sqlite_error (store, "record copied chunks", error);
  if (!ok)
    sqlite3_exec (store->db, "ROLLBACK", NULL, NULL, NULL);
  return ok;
}

GHashTable *
ferry_store_chunks_get (FerryStore *store, gint64 job_id, guint disk, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "SELECT chunk, digest FROM copy_chunks WHERE job_id = ? AND disk = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, job_id);
  sqlite3_bind_int64 (stmt, 2, disk);
  g_autoptr (GHashTable) chunks = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
  int rc;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      gint64 *chunk = g_new (gint64, 1);
      *chunk = sqlite3_column_int64 (stmt, 0);
      g_hash_table_insert (chunks, chunk, column_strdup (stmt, 1));
    }
  if (rc != SQLITE_DONE)
    {
      set_sqlite_error (store, "list copied chunks", error);
      return NULL;
    }
  return g_steal_pointer (&chunks);
}

gboolean
ferry_store_chunks_delete (FerryStore *store, gint64 job_id, gint disk, gint64 chunk, GError **error)
{
  g_autoptr (FerryStmt) stmt = prepare (store,
    "DELETE FROM copy_chunks WHERE job_id = ? AND (? < 0 OR disk = ?) AND (? < 0 OR chunk = ?)", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, job_id);
  sqlite3_bind_int64 (stmt, 2, disk);
  sqlite3_bind_int64 (stmt, 3, disk);
  sqlite3_bind_int64 (stmt, 4, chunk);
  sqlite3_bind_int64 (stmt, 5, chunk);
  if (sqlite3_step (stmt) != SQLITE_DONE)
    return set_sqlite_error (store, "forget copied chunks", error);
  return TRUE;
}
