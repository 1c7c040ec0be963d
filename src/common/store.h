/* ferry — the agent's durable state (SQLite).
 *
 * Holds VM definitions and their last known runtime, migration jobs and
 * their event logs. Every job state change goes through here before the
 * agent acts on it (design.md, safety invariant 4), so writes are
 * synchronous (journal_mode=WAL, synchronous=FULL).
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

typedef struct _FerryStore FerryStore;

FerryStore *ferry_store_open (const char *path, GError **error);
void ferry_store_free (FerryStore *store);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryStore, ferry_store_free)

/* ---- VMs ---------------------------------------------------------------- */

typedef struct {
  char *name;
  char *spec_json;      /* canonical spec (ferry_vm_spec_to_json_string) */
  char *state;          /* FerryVmState as string */
  gint64 pid;           /* QEMU pid when running, else 0 */
  gboolean persistent;  /* definition survives shut-off */
  gint64 updated_us;
} FerryStoreVm;

void ferry_store_vm_free (FerryStoreVm *vm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryStoreVm, ferry_store_vm_free)

/* Insert; FERRY_ERROR_CONFLICT if the name exists. */
gboolean ferry_store_vm_insert (FerryStore *store, const FerryStoreVm *vm, GError **error);
/* Update state and pid; FERRY_ERROR_NOT_FOUND if absent. */
gboolean ferry_store_vm_set_runtime (FerryStore *store, const char *name,
                                     const char *state, gint64 pid, GError **error);
gboolean ferry_store_vm_set_persistent (FerryStore *store, const char *name,
                                        gboolean persistent, GError **error);
gboolean ferry_store_vm_set_spec (FerryStore *store, const char *name, const char *spec_json,
                                  GError **error);
gboolean ferry_store_vm_delete (FerryStore *store, const char *name, GError **error);
FerryStoreVm *ferry_store_vm_get (FerryStore *store, const char *name, GError **error);
/* Array of FerryStoreVm*, ordered by name. */
GPtrArray *ferry_store_vm_list (FerryStore *store, GError **error);

/* ---- jobs --------------------------------------------------------------- */

typedef struct {
  gint64 id;
  char *uuid;           /* shared by the source and destination records */
  char *vm_name;
  char *kind;           /* "migrate-live", "migrate-offline" */
  char *role;           /* "source", "destination" */
  char *state;          /* FerryJobState as string */
  char *peer_url;
  char *options_json;   /* request options */
  char *stats_json;     /* last progress / final statistics */
  char *error;          /* why it failed, NULL otherwise */
  gint64 created_us;
  gint64 updated_us;
} FerryStoreJob;

void ferry_store_job_free (FerryStoreJob *job);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryStoreJob, ferry_store_job_free)

/* Inserts and sets job->id. */
gboolean ferry_store_job_insert (FerryStore *store, FerryStoreJob *job, GError **error);
/* Persists state, error, stats (NULL stats/error leave them unchanged). */
gboolean ferry_store_job_update (FerryStore *store, gint64 id, const char *state,
                                 const char *error_message, const char *stats_json,
                                 GError **error);
FerryStoreJob *ferry_store_job_get (FerryStore *store, gint64 id, GError **error);
FerryStoreJob *ferry_store_job_get_by_uuid (FerryStore *store, const char *uuid,
                                            const char *role, GError **error);
/* The most recent job of a VM (NOT_FOUND when none). */
FerryStoreJob *ferry_store_job_latest_for_vm (FerryStore *store, const char *vm_name,
                                              GError **error);
/* Jobs whose state is not in terminal_states (NULL-terminated). */
GPtrArray *ferry_store_job_list_unfinished (FerryStore *store,
                                            const char *const *terminal_states,
                                            GError **error);

typedef struct {
  gint64 time_us;
  char *level;          /* "info", "warning", "error" */
  char *message;
} FerryStoreEvent;

void ferry_store_event_free (FerryStoreEvent *event);
gboolean ferry_store_job_add_event (FerryStore *store, gint64 job_id, const char *level,
                                    const char *message, GError **error);
GPtrArray *ferry_store_job_events (FerryStore *store, gint64 job_id, GError **error);

/* ---- copied chunks (resumable disk copies) -------------------------------- */

/* A chunk copied and flushed on the destination, with its digest. */
typedef struct {
  guint disk;
  guint64 chunk;
  const char *digest;
} FerryStoreChunk;

/* Records n chunks in one transaction: one sync for the lot (a sync per
 * chunk made the copy wait on the disk, and blocked the main loop). All
 * or none are recorded. */
gboolean ferry_store_chunks_put (FerryStore *store, gint64 job_id, const FerryStoreChunk *chunks, guint n,
                                 GError **error);
/* gint64* chunk → char* digest. */
GHashTable *ferry_store_chunks_get (FerryStore *store, gint64 job_id, guint disk, GError **error);
/* disk < 0: every disk; chunk < 0: every chunk. */
gboolean ferry_store_chunks_delete (FerryStore *store, gint64 job_id, gint disk, gint64 chunk,
                                    GError **error);

G_END_DECLS
