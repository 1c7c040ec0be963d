/* ferry agent — the destination side of a cold migration with disks.
 *
 * The destination pulls: it connects to the source's read-only exports
 * (NBD over TLS) and writes into volumes it created in its own pools,
 * through a local writable export. Pulling keeps every write on the host
 * that owns the new copy, together with the record of which chunks are
 * done, and the source never opens anything for writing.
 *
 * Each finished chunk is persisted with its digest; a restarted agent or a
 * new attempt after a broken link copies only the chunks not recorded.
 * When a disk is copied, the source computes the digest of every chunk
 * from its own storage and the two lists must agree; disagreeing chunks
 * are copied again (once). Any failure removes the volumes created here.
 */
#include "agent.h"

#include <glib/gstdio.h>

#include "jsonutil.h"
#include "nbd-copy.h"
#include "nbd-export.h"

#define PROGRESS_MS 1000
/* Room asked of a pool beyond the source's allocation: qcow2 metadata and
 * allocation granularity differ between hosts. */
#define SPACE_MARGIN_PERCENT 5
#define SPACE_MARGIN_BYTES (64 * 1024 * 1024)
/* A link that stays down this long fails the copy. */
#define RETRY_BUDGET_S 600
#define RETRY_MAX_DELAY_S 30
#define DIGEST_BATCH 64
/* Finished chunks are recorded at most this long after they are done. */
#define SAVE_CHUNKS_MS 250
#define MAX_VERIFY_ROUNDS 2
#define PEER_TIMEOUT_S 30
#define DIGEST_TIMEOUT_S 300

typedef struct {
  guint index;               /* in the spec's disk list */
  char *pool;
  char *volume;
  char *format;
  guint64 virtual_size;
  guint64 allocated_bytes;
  guint16 port;
  char *export_name;
  char *bitmap;              /* warm pass: copy only what this bitmap marks (NULL = all) */
  gint64 pass_dirty_bytes;   /* what the source said that bitmap marks; -1 = not said */
  char *path;
  gboolean created;
  FerryNbdExport *local;
  char *local_socket;
  char *source_uri;
  char *local_uri;
  FerryNbdCopy *copy;        /* borrowed while a copy runs (the task owns it) */
  GHashTable *done;          /* gint64* chunk → digest */
  gboolean running;
  gboolean verified;
  guint verify_rounds;
  GArray *unverified;        /* guint64: digest to ask the source for (done, or started) */
  /* Chunks whose source digest was asked for when their copy started:
   * gint64* chunk → the source's digest once it came (NULL until then).
   * Compared, and dropped, when both digests are known. */
  GHashTable *asked_early;
  GArray *bad;               /* guint64: digest disagreed */
  guint verify_in_flight;     /* chunks in the batch the source is digesting */
  gboolean started;          /* its copy began in this agent process */
  guint64 bytes_read;        /* over every attempt */
  guint64 bytes_written;
  guint attempts;
  gint64 failing_since_us;   /* monotonic; 0 while fine */
  guint retry_timer;
  gint64 attempt_started_us; /* monotonic: when the running copy began */
  /* Source connections opened when the source announced the next warm
   * pass, for its copy to take; kept until that copy ends. */
  FerryNbdPreconnect *preconnect;
} ColdDisk;

/* A chunk a copy thread finished (flushed), on its way to the main thread. */
typedef struct {
  FerryJobRef ref;
  guint disk;
  guint64 chunk;
  char digest[FERRY_COPY_DIGEST_LEN];
} ChunkNote;

typedef struct {
  FerryJobRef ref;
  JsonObject *request;       /* as received: what a restarted agent needs */
  GPtrArray *disks;          /* of ColdDisk* */
  char *source_url;          /* https://ADDR:PORT of the source agent */
  char *peer_address;        /* where the source's exports listen */
  gboolean warm;             /* passes come one by one (POST …/pass) */
  guint pass;                /* the last pass asked for */
  char *client_tls;          /* QEMU-layout creds: ca, client cert */
  FerryRateLimit *limit;
  GCancellable *cancel;
  guint progress_timer;
  gint64 copy_started_us;
  gint64 copy_ended_us;      /* 0 while copying */
  guint64 rate_mark_bytes;
  gint64 rate_mark_us;
  double rate_bytes_s;
  GArray *unsaved;           /* ChunkNote: done, not yet in the store */
  guint save_timer;
} ColdDst;

static void
cold_disk_free (ColdDisk *disk)
{
  g_clear_handle_id (&disk->retry_timer, g_source_remove);
  g_clear_pointer (&disk->local, ferry_nbd_export_free);
  g_free (disk->pool);
  g_free (disk->volume);
  g_free (disk->format);
  g_free (disk->export_name);
  g_free (disk->bitmap);
  g_free (disk->path);
  g_free (disk->local_socket);
  g_free (disk->source_uri);
  g_free (disk->local_uri);
  g_clear_pointer (&disk->preconnect, ferry_nbd_preconnect_unref);
  g_clear_pointer (&disk->done, g_hash_table_unref);
  g_clear_pointer (&disk->unverified, g_array_unref);
  g_clear_pointer (&disk->asked_early, g_hash_table_unref);
  g_clear_pointer (&disk->bad, g_array_unref);
  g_free (disk);
}

static void
cold_dst_free (ColdDst *cold)
{
  /* Copy threads may still be winding down: they hold the cancellable
   * (their tasks' reference), and with it the rate limit. */
  g_cancellable_cancel (cold->cancel);
  g_clear_object (&cold->cancel);
  g_clear_handle_id (&cold->progress_timer, g_source_remove);
  g_clear_handle_id (&cold->save_timer, g_source_remove);
  g_clear_pointer (&cold->unsaved, g_array_unref);
  g_clear_pointer (&cold->request, json_object_unref);
  g_ptr_array_unref (cold->disks);
  g_free (cold->source_url);
  g_free (cold->peer_address);
  g_free (cold->client_tls);
  g_free (cold);
}

static ColdDst *
cold_of (FerryJob *job)
{
  return job->cold_free == (GDestroyNotify) cold_dst_free ? job->cold : NULL;
}

static void start_copies (FerryJob *job);
static void verify_next (FerryJob *job, ColdDisk *disk);
static ColdDisk *disk_by_index (ColdDst *cold, guint index);

/* ---- request --------------------------------------------------------------- */

static const char *const cold_fields[] = {
  "uuid", "spec", "live", "persistent", "tls", "source", "source_port", "copy_storage", "start",
  "bandwidth_mib", "parallel_disks", "disks", "dry_run", "warm", NULL
};
static const char *const disk_fields[] = {
  "index", "pool", "volume", "format", "virtual_size", "allocated_bytes", "port", "export", NULL
};

static gboolean
disk_error (GError **error, FerryErrorCode code, guint i, const char *format, ...) G_GNUC_PRINTF (4, 5);
static gboolean
disk_error (GError **error, FerryErrorCode code, guint i, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *message = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, FERRY_ERROR, code, "disks[%u].%s", i, message);
  return FALSE;
}

/* Parses and checks one disk of the request against the spec and this
 * host's pools. */
static ColdDisk *
parse_disk (FerryAgent *agent, const FerryVmSpec *spec, JsonNode *node, guint i, GError **error)
{
  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u]: must be an object", i);
      return NULL;
    }
  JsonObject *object = json_node_get_object (node);
  g_autoptr (GError) local = NULL;
  gint64 index = 0, virtual_size = 0, allocated = 0, port = 0;
  g_autofree char *pool_name = NULL, *volume = NULL, *format = NULL, *export_name = NULL;
  if (!ferry_json_reject_unknown (object, disk_fields, &local)
      || !ferry_json_get_int (object, "index", TRUE, 0, FERRY_SPEC_MAX_DISKS - 1, &index, &local)
      || !ferry_json_get_string (object, "pool", TRUE, &pool_name, &local)
      || !ferry_json_get_string (object, "volume", TRUE, &volume, &local)
      || !ferry_json_get_string (object, "format", TRUE, &format, &local)
      || !ferry_json_get_int (object, "virtual_size", TRUE, 512, FERRY_VOLUME_MAX_BYTES, &virtual_size, &local)
      || !ferry_json_get_int (object, "allocated_bytes", TRUE, 0, G_MAXINT64, &allocated, &local)
      || !ferry_json_get_int (object, "port", FALSE, 1, 65535, &port, &local)
      || !ferry_json_get_string (object, "export", FALSE, &export_name, &local))
    {
      g_set_error (error, FERRY_ERROR, local->code, "disks[%u].%s", i, local->message);
      return NULL;
    }
  if (!g_str_equal (format, "qcow2") && !g_str_equal (format, "raw"))
    return disk_error (error, FERRY_ERROR_INVALID_ARGUMENT, i, "format: '%s' is not supported "
                       "(qcow2 or raw)", format), NULL;
  if ((guint64) index >= spec->disks->len)
    return disk_error (error, FERRY_ERROR_INVALID_ARGUMENT, i, "index: the spec has %u disks",
                       spec->disks->len), NULL;
  const FerryDiskSpec *disk_spec = g_ptr_array_index (spec->disks, index);
  if (g_strcmp0 (disk_spec->pool, pool_name) != 0 || g_strcmp0 (disk_spec->volume, volume) != 0
      || !g_str_equal (ferry_disk_format_to_string (disk_spec->format), format))
    return disk_error (error, FERRY_ERROR_INVALID_ARGUMENT, i, "volume: does not match disks[%"
                       G_GINT64_FORMAT "] of the spec", index), NULL;
  FerryPool *pool = ferry_pool_lookup (agent, pool_name, &local);
  if (pool == NULL)
    return disk_error (error, local->code, i, "pool: %s", local->message), NULL;
  g_autofree char *path = ferry_pool_volume_path (pool, volume, &local);
  if (path == NULL)
    return disk_error (error, local->code, i, "volume: %s", local->message), NULL;
  if (g_file_test (path, G_FILE_TEST_EXISTS))
    return disk_error (error, FERRY_ERROR_CONFLICT, i, "volume: '%s/%s' already exists on host %s",
                       pool_name, volume, agent->config.host_name), NULL;

  ColdDisk *disk = g_new0 (ColdDisk, 1);
  disk->pass_dirty_bytes = -1;
  disk->index = (guint) index;
  disk->pool = g_steal_pointer (&pool_name);
  disk->volume = g_steal_pointer (&volume);
  disk->format = g_steal_pointer (&format);
  disk->virtual_size = (guint64) virtual_size;
  disk->allocated_bytes = (guint64) allocated;
  disk->port = (guint16) port;
  disk->export_name = g_steal_pointer (&export_name);
  disk->path = g_steal_pointer (&path);
  disk->done = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
  disk->unverified = g_array_new (FALSE, FALSE, sizeof (guint64));
  disk->asked_early = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
  disk->bad = g_array_new (FALSE, FALSE, sizeof (guint64));
  return disk;
}

/* Each pool must hold what the source allocated, plus a margin. */
static gboolean
check_space (FerryAgent *agent, GPtrArray *disks, GError **error)
{
  g_autoptr (GHashTable) needed = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, g_free);
  for (guint i = 0; i < disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (disks, i);
      guint64 *sum = g_hash_table_lookup (needed, disk->pool);
      if (sum == NULL)
        {
          sum = g_new0 (guint64, 1);
          g_hash_table_insert (needed, disk->pool, sum);
        }
      *sum += disk->allocated_bytes + disk->allocated_bytes * SPACE_MARGIN_PERCENT / 100;
    }
  GHashTableIter iter;
  const char *name;
  guint64 *sum;
  g_hash_table_iter_init (&iter, needed);
  while (g_hash_table_iter_next (&iter, (gpointer *) &name, (gpointer *) &sum))
    {
      guint64 capacity, available;
      FerryPool *pool = ferry_pool_lookup (agent, name, error);
      if (pool == NULL || !ferry_pool_space (pool, &capacity, &available, error))
        return FALSE;
      if (*sum + SPACE_MARGIN_BYTES > available)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_NO_SPACE,
                       "pool '%s' on host %s has %" G_GUINT64_FORMAT " MiB free; the disks need %"
                       G_GUINT64_FORMAT " MiB (their allocated size plus %d%% and %d MiB)",
                       name, agent->config.host_name, available >> 20, (*sum + SPACE_MARGIN_BYTES) >> 20,
                       SPACE_MARGIN_PERCENT, SPACE_MARGIN_BYTES >> 20);
          return FALSE;
        }
    }
  return TRUE;
}

static JsonArray *
disks_array (JsonObject *request, GError **error)
{
  JsonNode *node = json_object_get_member (request, "disks");
  if (node == NULL || !JSON_NODE_HOLDS_ARRAY (node) || json_array_get_length (json_node_get_array (node)) == 0
      || json_array_get_length (json_node_get_array (node)) > FERRY_SPEC_MAX_DISKS)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "disks: a list of 1 to %d disks to copy is required", FERRY_SPEC_MAX_DISKS);
      return NULL;
    }
  return json_node_get_array (node);
}

/* Every disk checked against the spec and this host (pools, names, room).
 * A copy needs each disk's export; a dry run and a warm migration (whose
 * exports come with each pass) do not. */
static GPtrArray *
parse_disks (FerryAgent *agent, JsonObject *request, const FerryVmSpec *spec, gboolean dry_run,
             GError **error)
{
  JsonArray *array = disks_array (request, error);
  if (array == NULL)
    return NULL;
  gboolean needs_export = !dry_run && !json_object_get_boolean_member_with_default (request, "warm", FALSE);
  g_autoptr (GPtrArray) disks = g_ptr_array_new_with_free_func ((GDestroyNotify) cold_disk_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      ColdDisk *disk = parse_disk (agent, spec, json_array_get_element (array, i), i, error);
      if (disk == NULL)
        return NULL;
      if (needs_export && (disk->port == 0 || disk->export_name == NULL))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u].port: required", i);
          cold_disk_free (disk);
          return NULL;
        }
      for (guint j = 0; j < disks->len; j++)
        {
          ColdDisk *other = g_ptr_array_index (disks, j);
          if (g_str_equal (other->path, disk->path) || other->index == disk->index)
            {
              g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "disks[%u]: the same volume or disk index twice", i);
              cold_disk_free (disk);
              return NULL;
            }
        }
      g_ptr_array_add (disks, disk);
    }
  if (!check_space (agent, disks, error))
    return NULL;
  return g_steal_pointer (&disks);
}

/* Bytes read before a restart, from the last persisted progress. */
static guint64
previous_bytes_read (FerryJob *job, guint index)
{
  JsonNode *copy = json_object_get_member (job->stats, "ferry-copy");
  JsonNode *disks = copy && JSON_NODE_HOLDS_OBJECT (copy)
                      ? json_object_get_member (json_node_get_object (copy), "disks") : NULL;
  if (disks == NULL || !JSON_NODE_HOLDS_ARRAY (disks))
    return 0;
  JsonArray *array = json_node_get_array (disks);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *entry = json_array_get_object_element (array, i);
      if (entry != NULL && ferry_json_object_int (entry, "index") == index)
        return (guint64) ferry_json_object_int (entry, "bytes_read");
    }
  return 0;
}

/* A restarted agent's disks: the volumes exist now, and they are ours. */
static GPtrArray *
restore_disks (FerryJob *job, JsonObject *request, GError **error)
{
  JsonArray *array = disks_array (request, error);
  if (array == NULL)
    return NULL;
  g_autoptr (GPtrArray) disks = g_ptr_array_new_with_free_func ((GDestroyNotify) cold_disk_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *object = json_array_get_object_element (array, i);
      ColdDisk *disk = g_new0 (ColdDisk, 1);
      disk->pass_dirty_bytes = -1;
      g_ptr_array_add (disks, disk);
      disk->index = (guint) ferry_json_object_int (object, "index");
      disk->pool = g_strdup (ferry_json_object_string (object, "pool"));
      disk->volume = g_strdup (ferry_json_object_string (object, "volume"));
      disk->format = g_strdup (ferry_json_object_string (object, "format"));
      disk->virtual_size = (guint64) ferry_json_object_int (object, "virtual_size");
      disk->allocated_bytes = (guint64) ferry_json_object_int (object, "allocated_bytes");
      disk->port = (guint16) ferry_json_object_int (object, "port");
      disk->export_name = g_strdup (ferry_json_object_string (object, "export"));
      FerryPool *pool = ferry_pool_lookup (job->agent, disk->pool ? disk->pool : "", error);
      disk->path = pool ? ferry_pool_volume_path (pool, disk->volume ? disk->volume : "", error) : NULL;
      if (disk->path == NULL)
        return NULL;
      disk->created = TRUE;
      disk->bytes_read = previous_bytes_read (job, disk->index);
      disk->done = ferry_store_chunks_get (job->agent->store, job->id, disk->index, NULL);
      if (disk->done == NULL)
        disk->done = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
      /* Chunks copied before the restart still need the source's word. */
      disk->unverified = g_array_new (FALSE, FALSE, sizeof (guint64));
      disk->asked_early = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);
      disk->bad = g_array_new (FALSE, FALSE, sizeof (guint64));
      GHashTableIter iter;
      gint64 *chunk;
      const char *digest;
      g_hash_table_iter_init (&iter, disk->done);
      while (g_hash_table_iter_next (&iter, (gpointer *) &chunk, (gpointer *) &digest))
        {
          guint64 index = (guint64) *chunk;
          /* A warm pass's unchanged chunks have nothing to compare. */
          if (digest != NULL && *digest != '\0')
            g_array_append_val (disk->unverified, index);
        }
    }
  return g_steal_pointer (&disks);
}

/* ---- teardown ---------------------------------------------------------------- */

static void
remove_created_volumes (FerryJob *job, ColdDst *cold)
{
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      g_clear_pointer (&disk->local, ferry_nbd_export_free);
      if (disk->created && g_unlink (disk->path) == 0)
        ferry_job_event (job, "info", "removed the partial copy %s/%s", disk->pool, disk->volume);
      disk->created = FALSE;
    }
}

static void
on_nudged (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, NULL);
}

/* Tells the source our state changed, so it need not wait for its next
 * poll (up to a second per copy or pass). A lost nudge costs only that. */
static void
nudge_source (FerryJob *job, ColdDst *cold)
{
  g_autofree char *path = g_strdup_printf ("/v1/migrations/outgoing/%s/nudge", job->uuid);
  ferry_peer_request_repeatable_async (job->agent, cold->source_url, "POST", path, NULL, 5, NULL, on_nudged, NULL);
}

/* Chunk notes of a copy that is being thrown away (its records go too). */
static void
drop_unsaved_chunks (ColdDst *cold)
{
  g_clear_handle_id (&cold->save_timer, g_source_remove);
  g_array_set_size (cold->unsaved, 0);
}

static void
cold_teardown (FerryJob *job, FerryJobState terminal, const char *reason)
{
  ColdDst *cold = cold_of (job);
  if (cold != NULL)
    {
      g_cancellable_cancel (cold->cancel);
      remove_created_volumes (job, cold);
      drop_unsaved_chunks (cold);
    }
  ferry_store_chunks_delete (job->agent->store, job->id, -1, -1, NULL);
  /* Sent before the job ends (which frees `cold`); the source's poll it
   * sets off is answered after, from this same main loop. */
  if (cold != NULL)
    nudge_source (job, cold);
  ferry_job_finish (job, terminal, reason);
}

void
mig_cold_dst_abort (FerryJob *job, const char *reason)
{
  cold_teardown (job, FERRY_JOB_CANCELLED, reason ? reason : "aborted by the source");
}

/* ---- progress ----------------------------------------------------------------- */

JsonObject *
mig_cold_dst_status (FerryJob *job)
{
  ColdDst *cold = cold_of (job);
  JsonObject *status = json_object_new ();
  JsonArray *disks = json_array_new ();
  guint64 total = 0, done = 0, read = 0, written = 0, changed = 0;
  for (guint i = 0; cold != NULL && i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      guint64 chunks = ferry_copy_chunk_count (disk->virtual_size);
      guint64 disk_done = 0, disk_read = disk->bytes_read, disk_written = disk->bytes_written, disk_changed = 0;
      GHashTableIter iter;
      gint64 *chunk;
      const char *digest;
      g_hash_table_iter_init (&iter, disk->done);
      while (g_hash_table_iter_next (&iter, (gpointer *) &chunk, (gpointer *) &digest))
        {
          disk_done += MIN ((guint64) FERRY_COPY_CHUNK_BYTES,
                            disk->virtual_size - (guint64) *chunk * FERRY_COPY_CHUNK_BYTES);
          disk_changed += digest != NULL && *digest != '\0';
        }
      if (disk->copy != NULL)
        {
          FerryNbdCopyProgress progress;
          ferry_nbd_copy_get_progress (disk->copy, &progress);
          disk_read += progress.bytes_read;
          disk_written += progress.bytes_written;
        }
      JsonObject *entry = json_object_new ();
      json_object_set_int_member (entry, "index", disk->index);
      json_object_set_string_member (entry, "pool", disk->pool);
      json_object_set_string_member (entry, "volume", disk->volume);
      json_object_set_int_member (entry, "virtual_size", (gint64) disk->virtual_size);
      json_object_set_int_member (entry, "allocated_bytes", (gint64) disk->allocated_bytes);
      json_object_set_int_member (entry, "bytes_done", (gint64) disk_done);
      json_object_set_int_member (entry, "bytes_read", (gint64) disk_read);
      json_object_set_int_member (entry, "bytes_written", (gint64) disk_written);
      json_object_set_int_member (entry, "chunks_changed", (gint64) disk_changed);
      json_object_set_int_member (entry, "chunks_done", g_hash_table_size (disk->done));
      json_object_set_int_member (entry, "chunks_total", (gint64) chunks);
      json_object_set_int_member (entry, "attempts", disk->attempts);
      json_object_set_boolean_member (entry, "verified", disk->verified);
      json_array_add_object_element (disks, entry);
      total += disk->virtual_size;
      done += disk_done;
      read += disk_read;
      written += disk_written;
      changed += disk_changed;
    }
  json_object_set_array_member (status, "disks", disks);
  json_object_set_int_member (status, "bytes_total", (gint64) total);
  json_object_set_int_member (status, "bytes_done", (gint64) done);
  json_object_set_int_member (status, "bytes_read", (gint64) read);
  json_object_set_int_member (status, "bytes_written", (gint64) written);
  json_object_set_int_member (status, "chunks_changed", (gint64) changed);
  if (cold != NULL && cold->warm)
    json_object_set_int_member (status, "pass", cold->pass);
  if (cold != NULL && cold->copy_started_us != 0)
    json_object_set_int_member (status, "elapsed_ms", ((cold->copy_ended_us ? cold->copy_ended_us
                                                                            : g_get_monotonic_time ())
                                                       - cold->copy_started_us) / 1000);
  if (cold != NULL)
    {
      json_object_set_double_member (status, "rate_mib_s", cold->rate_bytes_s / 1048576.0);
      double left = (double) (total - done);
      json_object_set_double_member (status, "eta_s", cold->rate_bytes_s > 0 ? left / cold->rate_bytes_s : -1);
    }
  return status;
}

static gboolean
on_progress_timer (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold == NULL)
    return G_SOURCE_REMOVE;
  g_autoptr (JsonObject) status = mig_cold_dst_status (job);
  guint64 done = (guint64) ferry_json_object_int (status, "bytes_done");
  guint64 total = (guint64) ferry_json_object_int (status, "bytes_total");
  gint64 now = g_get_monotonic_time ();
  /* Rate over virtual bytes (holes count: they are "done" too), smoothed. */
  if (cold->rate_mark_us > 0 && now > cold->rate_mark_us)
    {
      double rate = (double) (done - MIN (done, cold->rate_mark_bytes)) * 1e6 / (double) (now - cold->rate_mark_us);
      cold->rate_bytes_s = cold->rate_bytes_s > 0 ? 0.7 * cold->rate_bytes_s + 0.3 * rate : rate;
    }
  cold->rate_mark_bytes = done;
  cold->rate_mark_us = now;
  json_object_set_object_member (job->stats, "ferry-copy", json_object_ref (status));
  /* Persisted too: a restarted agent reports bytes over every attempt. */
  ferry_job_save_stats (job);
  double share = total > 0 ? (double) done / (double) total : 0;
  ferry_job_set_progress (job, 5 + share * 85,
                          cold->rate_bytes_s > 0 ? (double) (total - done) / cold->rate_bytes_s : -1);
  return G_SOURCE_CONTINUE;
}

/* ---- copying -------------------------------------------------------------------- */

/* Writes the chunks noted since the last save in one transaction. A crash
 * before it only costs copying them again. */
static void
save_chunks (FerryJob *job, ColdDst *cold)
{
  g_clear_handle_id (&cold->save_timer, g_source_remove);
  if (cold->unsaved->len == 0)
    return;
  g_autofree FerryStoreChunk *chunks = g_new (FerryStoreChunk, cold->unsaved->len);
  for (guint i = 0; i < cold->unsaved->len; i++)
    {
      const ChunkNote *note = &g_array_index (cold->unsaved, ChunkNote, i);
      chunks[i] = (FerryStoreChunk) { note->disk, note->chunk, note->digest };
    }
  g_autoptr (GError) error = NULL;
  if (!ferry_store_chunks_put (job->agent->store, job->id, chunks, cold->unsaved->len, &error))
    g_warning ("job %" G_GINT64_FORMAT ": %s", job->id, error->message);
  g_array_set_size (cold->unsaved, 0);
}

static gboolean
on_save_timer (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold != NULL)
    {
      cold->save_timer = 0;
      save_chunks (job, cold);
    }
  return G_SOURCE_REMOVE;
}

/* A chunk is on the destination's storage (an empty digest: a warm
 * pass left it unchanged): known at once, in the store within
 * SAVE_CHUNKS_MS. */
static void
record_chunk_done (ColdDst *cold, ColdDisk *disk, const ChunkNote *note)
{
  g_array_append_val (cold->unsaved, *note);
  if (cold->save_timer == 0)
    cold->save_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, SAVE_CHUNKS_MS, on_save_timer,
                                           g_memdup2 (&cold->ref, sizeof cold->ref), g_free);
  gint64 key = (gint64) note->chunk;
  g_hash_table_replace (disk->done, g_memdup2 (&key, sizeof key), g_strdup (note->digest));
}

/* Main thread: a chunk is on the destination's storage; remember it. */
static gboolean
on_chunk_noted (gpointer user_data)
{
  g_autofree ChunkNote *note = user_data;
  FerryJob *job = ferry_job_ref_get (&note->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold == NULL || note->disk >= cold->disks->len)
    return G_SOURCE_REMOVE;
  ColdDisk *disk = g_ptr_array_index (cold->disks, note->disk);
  record_chunk_done (cold, disk, note);
  gint64 key = (gint64) note->chunk;
  guint64 chunk = note->chunk;
  gpointer source_digest = NULL;
  /* A warm pass's unchanged chunk (empty digest) has nothing to compare. */
  if (note->digest[0] == '\0')
    ;
  else if (!g_hash_table_lookup_extended (disk->asked_early, &key, NULL, &source_digest))
    g_array_append_val (disk->unverified, chunk);
  else if (source_digest != NULL)
    {
      /* The source's word came while the chunk was being copied. */
      if (!g_str_equal (source_digest, note->digest))
        g_array_append_val (disk->bad, chunk);
      g_hash_table_remove (disk->asked_early, &key);
    }
  /* else: asked, not answered yet; the answer compares it. */
  if (job->state == FERRY_JOB_COPYING)
    verify_next (job, disk);
  return G_SOURCE_REMOVE;
}

/* A chunk started to be copied, on its way to the main thread. */
typedef struct {
  FerryJobRef ref;
  guint disk;
  guint64 chunk;
} StartNote;

/* Main thread: ask the source for the chunk's digest now, so that it is
 * known when the chunk is done (the last chunks' digests would otherwise
 * be asked for, and computed, only after the copy: a tail of about 0.4 s
 * per warm pass). */
static gboolean
on_chunk_start_noted (gpointer user_data)
{
  g_autofree StartNote *note = user_data;
  FerryJob *job = ferry_job_ref_get (&note->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold == NULL || note->disk >= cold->disks->len || job->state != FERRY_JOB_COPYING)
    return G_SOURCE_REMOVE;
  ColdDisk *disk = g_ptr_array_index (cold->disks, note->disk);
  gint64 key = (gint64) note->chunk;
  /* Asked already (an earlier attempt), or done and queued already. */
  if (g_hash_table_contains (disk->asked_early, &key) || g_hash_table_contains (disk->done, &key))
    return G_SOURCE_REMOVE;
  g_hash_table_insert (disk->asked_early, g_memdup2 (&key, sizeof key), NULL);
  g_array_append_val (disk->unverified, note->chunk);
  verify_next (job, disk);
  return G_SOURCE_REMOVE;
}

typedef struct {
  FerryJobRef ref;
  guint disk;
} CopyTaskData;

/* Worker thread. */
static void
on_chunk_done (const FerryCopyChunk *chunk, gpointer user_data)
{
  CopyTaskData *data = user_data;
  ChunkNote *note = g_new0 (ChunkNote, 1);
  note->ref = data->ref;
  note->disk = data->disk;
  note->chunk = chunk->index;
  g_strlcpy (note->digest, chunk->digest, sizeof note->digest);
  g_main_context_invoke (NULL, on_chunk_noted, note);
}

/* Worker thread. */
static void
on_chunk_started (guint64 index, gpointer user_data)
{
  CopyTaskData *data = user_data;
  StartNote *note = g_new0 (StartNote, 1);
  note->ref = data->ref;
  note->disk = data->disk;
  note->chunk = index;
  g_main_context_invoke (NULL, on_chunk_start_noted, note);
}

static void
run_copy_thread (GTask *task, gpointer source_object, gpointer task_data, GCancellable *cancellable)
{
  FerryNbdCopy *copy = g_object_get_data (G_OBJECT (task), "copy");
  GError *error = NULL;
  if (ferry_nbd_copy_run (copy, cancellable, &error))
    g_task_return_boolean (task, TRUE);
  else
    g_task_return_error (task, error);
}

static gboolean on_retry (gpointer user_data);

static void
schedule_retry (FerryJob *job, ColdDisk *disk, const GError *error)
{
  gint64 now = g_get_monotonic_time ();
  if (disk->failing_since_us == 0)
    disk->failing_since_us = now;
  guint delay_s = MIN (RETRY_MAX_DELAY_S, 1u << MIN (disk->attempts, 5u));
  ferry_job_event (job, "warning", "disk %s/%s: %s; retrying in %u s (finished chunks are kept)",
                   disk->pool, disk->volume, error->message, delay_s);
  CopyTaskData *data = g_new0 (CopyTaskData, 1);
  data->ref = cold_of (job)->ref;
  data->disk = disk->index;
  disk->retry_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, delay_s, on_retry, data, g_free);
}

static gboolean
transient (const GError *error)
{
  return g_error_matches (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE)
         || g_error_matches (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT);
}

static ColdDisk *
disk_by_index (ColdDst *cold, guint index)
{
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      if (disk->index == index)
        return disk;
    }
  return NULL;
}

static void
on_copy_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  CopyTaskData *data = g_task_get_task_data (G_TASK (result));
  FerryJob *job = ferry_job_ref_get (&data->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  gboolean ok = g_task_propagate_boolean (G_TASK (result), &error);
  if (cold == NULL || job->state != FERRY_JOB_COPYING)
    return;
  ColdDisk *disk = disk_by_index (cold, data->disk);
  FerryNbdCopyProgress progress;
  ferry_nbd_copy_get_progress (disk->copy, &progress);
  disk->bytes_read += progress.bytes_read;
  disk->bytes_written += progress.bytes_written;
  disk->copy = NULL;
  disk->running = FALSE;
  if (ok)
    {
      disk->failing_since_us = 0;
      double seconds = (g_get_monotonic_time () - disk->attempt_started_us) / (double) G_USEC_PER_SEC;
      g_autofree char *ahead = NULL;
      if (disk->preconnect != NULL)
        {
          guint ready, claimed;
          ferry_nbd_preconnect_get_counts (disk->preconnect, &ready, &claimed);
          ahead = g_strdup_printf (" (%u source connection%s opened ahead, %u used)", ready, ready == 1 ? "" : "s",
                                   claimed);
        }
      g_clear_pointer (&disk->preconnect, ferry_nbd_preconnect_unref);
      ferry_job_event (job, "info", "disk %s/%s: copy ended, %.1f MiB written in %.1f s%s; %u chunks await "
                       "the source's digests", disk->pool, disk->volume, progress.bytes_written / 1048576.0,
                       seconds, ahead ? ahead : "", disk->unverified->len + disk->verify_in_flight);
      verify_next (job, disk);
      return;
    }
  gint64 failing_s = disk->failing_since_us ? (g_get_monotonic_time () - disk->failing_since_us) / G_USEC_PER_SEC : 0;
  if (transient (error) && failing_s < RETRY_BUDGET_S && !g_cancellable_is_cancelled (cold->cancel))
    {
      schedule_retry (job, disk, error);
      return;
    }
  g_autofree char *reason = g_strdup_printf ("copying disk %s/%s failed: %s", disk->pool, disk->volume,
                                             error->message);
  cold_teardown (job, FERRY_JOB_FAILED, reason);
}

static void
start_disk_copy (FerryJob *job, ColdDisk *disk)
{
  ColdDst *cold = cold_of (job);
  guint64 n_chunks = ferry_copy_chunk_count (disk->virtual_size);
  g_autoptr (GArray) todo = g_array_new (FALSE, FALSE, sizeof (guint64));
  for (guint64 chunk = 0; chunk < n_chunks; chunk++)
    {
      gint64 key = (gint64) chunk;
      if (!g_hash_table_contains (disk->done, &key))
        g_array_append_val (todo, chunk);
    }
  FerryNbdCopyOptions options = { .rate_limit = cold->limit, .dirty_bitmap = disk->bitmap };
  /* A pass whose changes the source counted opens no more connections
   * than they can keep busy: a disk the guest left alone, one (to scan
   * its bitmap), not eight TLS handshakes with the guest's QEMU. */
  if (disk->bitmap != NULL && disk->pass_dirty_bytes >= 0)
    options.connections = ferry_copy_connections_for_delta ((guint64) disk->pass_dirty_bytes);
  options.preconnected = disk->preconnect;
  FerryNbdCopy *copy = ferry_nbd_copy_new (disk->source_uri, disk->local_uri, &options);
  ferry_nbd_copy_select_chunks (copy, (const guint64 *) todo->data, todo->len);
  CopyTaskData *data = g_new0 (CopyTaskData, 1);
  data->ref = cold->ref;
  data->disk = disk->index;
  ferry_nbd_copy_set_chunk_done (copy, on_chunk_done, data);
  ferry_nbd_copy_set_chunk_started (copy, on_chunk_started, data);

  disk->attempts++;
  disk->attempt_started_us = g_get_monotonic_time ();
  disk->started = TRUE;
  disk->running = TRUE;
  disk->copy = copy;
  if (disk->attempts == 1 && todo->len == n_chunks && disk->bitmap != NULL)
    {
      g_autofree char *marked = disk->pass_dirty_bytes < 0 ? g_strdup ("")
                                : g_strdup_printf (" (%.1f MiB marked; %u connection%s)",
                                                   disk->pass_dirty_bytes / 1048576.0, options.connections,
                                                   options.connections == 1 ? "" : "s");
      ferry_job_event (job, "info", "pass %u: copying the blocks of disk %s/%s changed since the last pass%s",
                       cold->pass, disk->pool, disk->volume, marked);
    }
  else if (disk->attempts == 1 && todo->len == n_chunks)
    ferry_job_event (job, "info", "copying disk %s/%s (%" G_GUINT64_FORMAT " MiB allocated of %"
                     G_GUINT64_FORMAT " MiB)", disk->pool, disk->volume, disk->allocated_bytes >> 20,
                     disk->virtual_size >> 20);
  else
    ferry_job_event (job, "info", "disk %s/%s: %u of %" G_GUINT64_FORMAT " chunks left to copy (attempt %u)",
                     disk->pool, disk->volume, todo->len, n_chunks, disk->attempts);
  GTask *task = g_task_new (NULL, cold->cancel, on_copy_done, NULL);
  g_task_set_task_data (task, data, g_free);
  g_object_set_data_full (G_OBJECT (task), "copy", copy, (GDestroyNotify) ferry_nbd_copy_free);
  g_task_run_in_thread (task, run_copy_thread);
  g_object_unref (task);
}

static gboolean
on_retry (gpointer user_data)
{
  CopyTaskData *data = user_data;
  FerryJob *job = ferry_job_ref_get (&data->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold != NULL)
    {
      ColdDisk *disk = disk_by_index (cold, data->disk);
      disk->retry_timer = 0;
      if (job->state == FERRY_JOB_COPYING)
        start_disk_copy (job, disk);
    }
  return G_SOURCE_REMOVE;
}

/* A warm pass over a disk whose frozen bitmap marks nothing (as the
 * source counted it): every chunk is as the last pass left it. Said so
 * without a connection: the engine would find the same after a TLS
 * handshake with the guest's busy QEMU and a scan, and that handshake
 * queues in QEMU's main loop behind or before those of the disks that
 * did change. */
static gboolean
pass_left_disk_alone (ColdDst *cold, ColdDisk *disk)
{
  return cold->warm && disk->bitmap != NULL && disk->pass_dirty_bytes == 0 && !disk->started && !disk->verified;
}

static void
skip_unchanged_disk (FerryJob *job, ColdDst *cold, ColdDisk *disk)
{
  guint64 n_chunks = ferry_copy_chunk_count (disk->virtual_size);
  for (guint64 chunk = 0; chunk < n_chunks; chunk++)
    {
      gint64 key = (gint64) chunk;
      if (g_hash_table_contains (disk->done, &key))
        continue;
      ChunkNote note = { .disk = disk->index, .chunk = chunk }; /* empty digest: unchanged */
      record_chunk_done (cold, disk, &note);
    }
  disk->started = disk->verified = TRUE;
  g_clear_pointer (&disk->preconnect, ferry_nbd_preconnect_unref);
  ferry_job_event (job, "info", "pass %u: disk %s/%s unchanged since the last pass (its bitmap marks nothing)",
                   cold->pass, disk->pool, disk->volume);
}

static void
start_copies (FerryJob *job)
{
  ColdDst *cold = cold_of (job);
  guint running = 0, verified = 0;
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      if (pass_left_disk_alone (cold, disk))
        skip_unchanged_disk (job, cold, disk);
      running += disk->running || disk->retry_timer != 0;
      verified += disk->verified;
    }
  if (verified == cold->disks->len)
    {
      on_progress_timer (&cold->ref);
      g_clear_handle_id (&cold->progress_timer, g_source_remove);
      cold->copy_ended_us = g_get_monotonic_time ();
      gint64 elapsed_ms = (cold->copy_ended_us - cold->copy_started_us) / 1000;
      g_autoptr (JsonObject) status = mig_cold_dst_status (job);
      json_object_set_int_member (status, "elapsed_ms", elapsed_ms);
      json_object_set_object_member (job->stats, "ferry-copy", json_object_ref (status));
      ferry_job_event (job, "info", "all disks copied and verified: %" G_GINT64_FORMAT " MiB read from the "
                       "source in %.1f s", ferry_json_object_int (status, "bytes_read") >> 20,
                       (double) elapsed_ms / 1000);
      g_autofree char *what = cold->warm ? g_strdup_printf ("pass %u copied and verified", cold->pass)
                                         : g_strdup ("disks copied and verified");
      save_chunks (job, cold);
      ferry_job_transition (job, FERRY_JOB_PREPARED, what);
      nudge_source (job, cold);
      return;
    }
  for (guint i = 0; i < cold->disks->len && running < (guint) MAX (job->options.parallel_disks, 1); i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      if (disk->verified || disk->running || disk->retry_timer != 0 || disk->started)
        continue;
      start_disk_copy (job, disk);
      running++;
    }
}

/* ---- verification ------------------------------------------------------------------
 *
 * Runs alongside the copy: one batch at a time, the source is asked for
 * its digests of the chunks done since the last batch (at most
 * DIGEST_BATCH). Small, steady batches spread the source's hashing over
 * the copy (large ones stalled its export on a small host, and left a
 * long tail after the copy); chunks that disagree are copied again
 * (at most MAX_VERIFY_ROUNDS times). A disk is verified when its copy has
 * ended and every chunk's digest agreed. */

static void verify_next (FerryJob *job, ColdDisk *disk);

typedef struct {
  FerryJobRef ref;
  guint disk;
  GArray *chunks;           /* guint64: this batch */
} VerifyBatch;

static void
verify_batch_free (VerifyBatch *batch)
{
  g_array_unref (batch->chunks);
  g_free (batch);
}

static gboolean
on_verify_retry (gpointer user_data)
{
  CopyTaskData *data = user_data;
  FerryJob *job = ferry_job_ref_get (&data->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold != NULL && job->state == FERRY_JOB_COPYING)
    verify_next (job, disk_by_index (cold, data->disk));
  return G_SOURCE_REMOVE;
}

/* The copy and every batch are over: the disk is verified, or its bad
 * chunks are copied again. */
static void
verify_settle (FerryJob *job, ColdDisk *disk)
{
  if (disk->running || disk->retry_timer != 0 || disk->verify_in_flight || disk->unverified->len > 0
      || g_hash_table_size (disk->asked_early) > 0)
    return;
  /* Notes of the last chunks may still be on their way from the workers. */
  if (disk->bad->len == 0 && g_hash_table_size (disk->done) < ferry_copy_chunk_count (disk->virtual_size))
    return;
  if (disk->bad->len == 0)
    {
      disk->verified = TRUE;
      ferry_job_event (job, "info", "disk %s/%s verified: %u chunk digests agree with the source's",
                       disk->pool, disk->volume, g_hash_table_size (disk->done));
      start_copies (job);
      return;
    }
  if (disk->verify_rounds >= MAX_VERIFY_ROUNDS)
    {
      g_autofree char *reason = g_strdup_printf ("disk %s/%s: %u chunks still differ from the source "
                                                 "after copying them again", disk->pool, disk->volume,
                                                 disk->bad->len);
      cold_teardown (job, FERRY_JOB_FAILED, reason);
      return;
    }
  disk->verify_rounds++;
  ferry_job_event (job, "warning", "disk %s/%s: %u chunks differ from the source; copying them again",
                   disk->pool, disk->volume, disk->bad->len);
  /* Their records go now, so none may land after the deletes below. */
  save_chunks (job, cold_of (job));
  for (guint i = 0; i < disk->bad->len; i++)
    {
      gint64 chunk = (gint64) g_array_index (disk->bad, guint64, i);
      g_hash_table_remove (disk->done, &chunk);
      ferry_store_chunks_delete (job->agent->store, job->id, (gint) disk->index, chunk, NULL);
    }
  g_array_set_size (disk->bad, 0);
  start_disk_copy (job, disk);
}

static void
on_digests (GObject *source, GAsyncResult *result, gpointer user_data)
{
  VerifyBatch *batch = user_data;
  FerryJob *job = ferry_job_ref_get (&batch->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (cold == NULL || job->state != FERRY_JOB_COPYING)
    {
      verify_batch_free (batch);
      return;
    }
  ColdDisk *disk = disk_by_index (cold, batch->disk);
  disk->verify_in_flight = 0;
  JsonNode *node = reply ? json_object_get_member (reply, "digests") : NULL;
  if (node == NULL || !JSON_NODE_HOLDS_ARRAY (node)
      || json_array_get_length (json_node_get_array (node)) != batch->chunks->len)
    {
      if (error != NULL && transient (error))
        {
          /* The source is unreachable or exporting again: ask later. */
          g_array_append_vals (disk->unverified, batch->chunks->data, batch->chunks->len);
          CopyTaskData *retry = g_new0 (CopyTaskData, 1);
          retry->ref = cold->ref;
          retry->disk = disk->index;
          g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, 2, on_verify_retry, retry, g_free);
          verify_batch_free (batch);
          return;
        }
      g_autofree char *reason = g_strdup_printf ("cannot verify disk %s/%s: %s", disk->pool, disk->volume,
                                                 error ? error->message : "the source sent no digests");
      verify_batch_free (batch);
      cold_teardown (job, FERRY_JOB_FAILED, reason);
      return;
    }
  JsonArray *digests = json_node_get_array (node);
  for (guint i = 0; i < batch->chunks->len; i++)
    {
      gint64 chunk = (gint64) g_array_index (batch->chunks, guint64, i);
      const char *theirs = json_array_get_string_element (digests, i);
      const char *ours = g_hash_table_lookup (disk->done, &chunk);
      if (ours == NULL && g_hash_table_contains (disk->asked_early, &chunk))
        {
          /* Still being copied: compared when it is done. */
          g_hash_table_insert (disk->asked_early, g_memdup2 (&chunk, sizeof chunk), g_strdup (theirs ? theirs : ""));
          continue;
        }
      g_hash_table_remove (disk->asked_early, &chunk);
      if (ours == NULL || g_strcmp0 (ours, theirs) != 0)
        g_array_append_val (disk->bad, chunk);
    }
  verify_batch_free (batch);
  verify_next (job, disk);
}

/* Sends the next batch when chunks wait and none is out, else settles
 * the disk once its copy is over. */
static void
verify_next (FerryJob *job, ColdDisk *disk)
{
  ColdDst *cold = cold_of (job);
  if (disk == NULL || disk->verify_in_flight)
    return;
  gboolean copy_over = !disk->running && disk->retry_timer == 0;
  if (disk->unverified->len == 0)
    {
      if (copy_over)
        verify_settle (job, disk);
      return;
    }
  VerifyBatch *batch = g_new0 (VerifyBatch, 1);
  batch->ref = cold->ref;
  batch->disk = disk->index;
  guint n = MIN (DIGEST_BATCH, disk->unverified->len);
  batch->chunks = g_array_sized_new (FALSE, FALSE, sizeof (guint64), n);
  g_array_append_vals (batch->chunks, disk->unverified->data, n);
  g_array_remove_range (disk->unverified, 0, n);
  disk->verify_in_flight = n;

  g_autoptr (JsonObject) body = json_object_new ();
  JsonArray *chunks = json_array_new ();
  for (guint i = 0; i < n; i++)
    json_array_add_int_element (chunks, (gint64) g_array_index (batch->chunks, guint64, i));
  json_object_set_int_member (body, "disk", disk->index);
  json_object_set_array_member (body, "chunks", chunks);
  g_autofree char *path = g_strdup_printf ("/v1/migrations/outgoing/%s/digests", job->uuid);
  ferry_peer_request_repeatable_async (job->agent, cold->source_url, "POST", path, body, DIGEST_TIMEOUT_S,
                                       NULL, on_digests, batch);
}

/* ---- prepare ------------------------------------------------------------------------ */

static gboolean
open_local_export (FerryJob *job, ColdDisk *disk, GError **error)
{
  g_autofree char *run_dir = g_build_filename (job->agent->config.state_dir, "run", NULL);
  g_mkdir_with_parents (run_dir, 0700);
  g_free (disk->local_socket);
  disk->local_socket = g_strdup_printf ("%s/copy-%" G_GINT64_FORMAT "-%u.sock", run_dir, job->id, disk->index);
  FerryNbdExportOptions options = {
    .image = disk->path,
    .format = disk->format,
    .export_name = "copy",
    .writable = TRUE,
    .bypass_page_cache = TRUE,
    .unix_socket = disk->local_socket,
  };
  disk->local = ferry_nbd_export_start (&options, error);
  if (disk->local == NULL)
    return FALSE;
  g_free (disk->local_uri);
  disk->local_uri = ferry_nbd_export_uri (disk->local, NULL, NULL);
  return TRUE;
}

static void
set_source_uri (ColdDst *cold, ColdDisk *disk, const char *host)
{
  if (disk->export_name == NULL)
    return; /* a warm migration's exports come with each pass */
  g_free (disk->source_uri);
  disk->source_uri = ferry_nbd_tls_uri (host, disk->port, disk->export_name, cold->client_tls);
}

static char *
pass_source_uri (ColdDst *cold, const FerryWarmPassDisk *pass_disk)
{
  return ferry_nbd_tls_uri (cold->peer_address, pass_disk->port, pass_disk->export_name, cold->client_tls);
}

/* Builds the in-memory state from a request (new, or stored for a
 * restarted agent). */
static ColdDst *
cold_dst_new (FerryJob *job, JsonObject *request, const FerryVmSpec *spec, const char *peer_address,
              GError **error)
{
  FerryAgent *agent = job->agent;
  gboolean restoring = job->state != FERRY_JOB_PREPARING;
  g_autoptr (GPtrArray) disks = restoring ? restore_disks (job, request, error)
                                          : parse_disks (agent, request, spec, FALSE, error);
  if (disks == NULL)
    return NULL;

  ColdDst *cold = g_new0 (ColdDst, 1);
  cold->unsaved = g_array_new (FALSE, FALSE, sizeof (ChunkNote));
  cold->ref.agent = agent;
  cold->ref.job_id = job->id;
  cold->request = json_object_ref (request);
  cold->disks = g_steal_pointer (&disks);
  cold->cancel = g_cancellable_new ();
  cold->client_tls = g_build_filename (agent->config.state_dir, "qemu-tls", NULL);
  cold->peer_address = g_strdup (peer_address);
  cold->warm = json_object_get_boolean_member_with_default (request, "warm", FALSE);
  gint64 source_port = ferry_json_object_int (request, "source_port");
  gboolean ipv6 = strchr (peer_address, ':') != NULL;
  cold->source_url = g_strdup_printf ("https://%s%s%s:%" G_GINT64_FORMAT, ipv6 ? "[" : "", peer_address,
                                      ipv6 ? "]" : "", source_port);
  for (guint i = 0; i < cold->disks->len; i++)
    set_source_uri (cold, g_ptr_array_index (cold->disks, i), peer_address);
  if (job->options.bandwidth_mib > 0)
    {
      cold->limit = ferry_rate_limit_new ((guint64) job->options.bandwidth_mib * 1048576);
      g_object_set_data_full (G_OBJECT (cold->cancel), "ferry-rate-limit", cold->limit,
                              (GDestroyNotify) ferry_rate_limit_free);
    }
  return cold;
}

static void
begin_copying (FerryJob *job)
{
  ColdDst *cold = cold_of (job);
  cold->rate_mark_us = 0;
  cold->rate_bytes_s = 0;
  g_clear_handle_id (&cold->progress_timer, g_source_remove);
  cold->copy_started_us = g_get_monotonic_time ();
  cold->copy_ended_us = 0;
  cold->progress_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, PROGRESS_MS, on_progress_timer,
                                             g_memdup2 (&cold->ref, sizeof cold->ref), g_free);
  start_copies (job);
}

JsonObject *
mig_cold_dst_prepare (FerryAgent *agent, JsonObject *request, const char *peer_address, GError **error)
{
  g_autofree char *uuid = NULL, *source = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;
  FerryMigrateOptions options;
  ferry_migrate_options_init (&options);
  gint64 source_port = 0;
  gboolean live = FALSE;

  if (!ferry_json_reject_unknown (request, cold_fields, error)
      || !ferry_json_get_string (request, "uuid", TRUE, &uuid, error)
      || !ferry_json_get_bool (request, "live", FALSE, &live, error)
      || !ferry_json_get_bool (request, "persistent", FALSE, &options.persistent, error)
      || !ferry_json_get_string (request, "source", FALSE, &source, error)
      || !ferry_json_get_int (request, "source_port", TRUE, 1, 65535, &source_port, error)
      || !ferry_json_get_bool (request, "start", FALSE, &options.start, error)
      || !ferry_json_get_int (request, "bandwidth_mib", FALSE, 0, 1024 * 1024, &options.bandwidth_mib, error)
      || !ferry_json_get_int (request, "parallel_disks", FALSE, 1, FERRY_MAX_PARALLEL_DISKS,
                              &options.parallel_disks, error)
      || !ferry_json_get_bool (request, "warm", FALSE, &options.warm, error))
    return NULL;
  options.copy_storage = TRUE;
  if (live || !g_uuid_string_is_valid (uuid))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   live ? "live: a storage copy here is for offline migration" : "uuid: not a UUID");
      return NULL;
    }
  JsonNode *spec_node = json_object_get_member (request, "spec");
  spec = spec_node ? ferry_vm_spec_from_json (spec_node, error) : NULL;
  if (spec == NULL)
    {
      if (spec_node == NULL)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "spec: required");
      else
        g_prefix_error (error, "spec: ");
      return NULL;
    }
  if (g_hash_table_lookup (agent->vms, spec->name) != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "a VM named '%s' is already defined on host %s",
                   spec->name, agent->config.host_name);
      return NULL;
    }
  if (ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION) != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "migration %s is already being prepared", uuid);
      return NULL;
    }
  gboolean dry_run = json_object_get_boolean_member_with_default (request, "dry_run", FALSE);
  if (dry_run)
    {
      /* The source asks before it stops its guest: would this be accepted? */
      g_autoptr (GPtrArray) disks = parse_disks (agent, request, spec, TRUE, error);
      if (disks == NULL)
        return NULL;
      JsonObject *reply = json_object_new ();
      json_object_set_boolean_member (reply, "accepted", TRUE);
      return reply;
    }

  FerryJob *job = ferry_job_new (agent, uuid, spec->name, FERRY_JOB_ROLE_DESTINATION, &options, source,
                                 FERRY_JOB_PREPARING, error);
  if (job == NULL)
    return NULL;
  g_autoptr (GError) invalid = NULL;
  ColdDst *cold = cold_dst_new (job, request, spec, peer_address, &invalid);
  if (cold == NULL)
    {
      ferry_job_finish (job, FERRY_JOB_FAILED, invalid->message);
      g_propagate_error (error, g_steal_pointer (&invalid));
      return NULL;
    }
  job->cold = cold;
  job->cold_free = (GDestroyNotify) cold_dst_free;
  /* What a restarted agent needs to carry on. */
  json_object_set_object_member (job->stats, "ferry-cold-request", json_object_ref (request));
  json_object_set_string_member (job->stats, "ferry-cold-peer", peer_address);
  ferry_job_save_stats (job);

  g_autoptr (GError) local = NULL;
  for (guint i = 0; i < cold->disks->len && local == NULL; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      FerryPool *pool = ferry_pool_lookup (agent, disk->pool, &local);
      if (pool == NULL || !ferry_volume_create (pool, disk->volume, disk->format, disk->virtual_size, &local))
        break;
      disk->created = TRUE;
      open_local_export (job, disk, &local);
    }
  if (local != NULL)
    {
      g_prefix_error (&local, "destination: ");
      cold_teardown (job, FERRY_JOB_FAILED, local->message);
      g_propagate_error (error, g_steal_pointer (&local));
      return NULL;
    }
  if (cold->warm)
    ferry_job_transition (job, FERRY_JOB_PREPARED, "volumes created; the source sends passes while its guest runs");
  else
    {
      ferry_job_transition (job, FERRY_JOB_COPYING, "volumes created; pulling the disks from the source");
      begin_copying (job);
    }
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", job->uuid);
  json_object_set_int_member (reply, "job_id", job->id);
  json_object_set_string_member (reply, "state", ferry_job_state_to_string (job->state));
  return reply;
}

/* ---- warm passes ------------------------------------------------------------------------ */

static const char *const pass_fields[] = { "pass", "final", "disks", NULL };
static const char *const pass_disk_fields[] = { "index", "port", "export", "bitmap", "dirty_bytes", NULL };

/* Export and bitmap names end up in NBD URIs and meta context names. */
static gboolean
name_is_safe (const char *name)
{
  if (name == NULL || *name == '\0' || strlen (name) > FERRY_WARM_MAX_NAME)
    return FALSE;
  for (const char *c = name; *c != '\0'; c++)
    if (!g_ascii_isalnum (*c) && *c != '-' && *c != '_' && *c != '.')
      return FALSE;
  return TRUE;
}

gboolean
mig_warm_pass_parse (JsonObject *request, FerryWarmPass *pass, GError **error)
{
  *pass = (FerryWarmPass) { 0 };
  if (!ferry_json_reject_unknown (request, pass_fields, error)
      || !ferry_json_get_int (request, "pass", TRUE, 1, G_MAXINT32, &pass->pass, error)
      || !ferry_json_get_bool (request, "final", FALSE, &pass->final, error))
    return FALSE;
  JsonNode *node = json_object_get_member (request, "disks");
  JsonArray *array = node && JSON_NODE_HOLDS_ARRAY (node) ? json_node_get_array (node) : NULL;
  if (array == NULL || json_array_get_length (array) == 0 || json_array_get_length (array) > FERRY_SPEC_MAX_DISKS)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks: a list of 1 to %d disks",
                   FERRY_SPEC_MAX_DISKS);
      return FALSE;
    }
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      JsonObject *entry = JSON_NODE_HOLDS_OBJECT (element) ? json_node_get_object (element) : NULL;
      FerryWarmPassDisk *disk = &pass->disks[i];
      g_autoptr (GError) local = NULL;
      gint64 index = 0, port = 0, dirty_bytes = -1;
      g_autofree char *export = NULL, *bitmap = NULL;
      if (entry == NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u]: must be an object", i);
          return FALSE;
        }
      if (!ferry_json_reject_unknown (entry, pass_disk_fields, &local)
          || !ferry_json_get_int (entry, "index", TRUE, 0, FERRY_SPEC_MAX_DISKS - 1, &index, &local)
          || !ferry_json_get_int (entry, "port", TRUE, 1, 65535, &port, &local)
          || !ferry_json_get_string (entry, "export", TRUE, &export, &local)
          || !ferry_json_get_string (entry, "bitmap", FALSE, &bitmap, &local)
          || !ferry_json_get_int (entry, "dirty_bytes", FALSE, 0, G_MAXINT64, &dirty_bytes, &local))
        {
          g_set_error (error, FERRY_ERROR, local->code, "disks[%u].%s", i, local->message);
          return FALSE;
        }
      if (!name_is_safe (export) || (bitmap != NULL && !name_is_safe (bitmap)))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u].%s: 1 to %d letters, digits, "
                       "'-', '_' or '.'", i, name_is_safe (export) ? "bitmap" : "export", FERRY_WARM_MAX_NAME);
          return FALSE;
        }
      for (guint j = 0; j < i; j++)
        if (pass->disks[j].index == (guint) index)
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u].index: disk %"
                         G_GINT64_FORMAT " is listed twice", i, index);
            return FALSE;
          }
      disk->index = (guint) index;
      disk->port = (guint16) port;
      g_strlcpy (disk->export_name, export, sizeof disk->export_name);
      if (bitmap != NULL)
        g_strlcpy (disk->bitmap, bitmap, sizeof disk->bitmap);
      disk->dirty_bytes = bitmap != NULL ? dirty_bytes : -1;
      pass->n_disks++;
    }
  return TRUE;
}

/* Points each disk at the pass's snapshot export. */
static gboolean
apply_pass (FerryJob *job, JsonObject *request, GError **error)
{
  ColdDst *cold = cold_of (job);
  FerryWarmPass pass;
  if (!mig_warm_pass_parse (request, &pass, error))
    return FALSE;
  for (guint i = 0; i < pass.n_disks; i++)
    if (disk_by_index (cold, pass.disks[i].index) == NULL)
      {
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u].index: no disk %u in this "
                     "migration", i, pass.disks[i].index);
        return FALSE;
      }
  if (pass.n_disks != cold->disks->len)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "disks: one entry for each of the %u disks", cold->disks->len);
      return FALSE;
    }
  for (guint i = 0; i < pass.n_disks; i++)
    {
      ColdDisk *disk = disk_by_index (cold, pass.disks[i].index);
      disk->port = pass.disks[i].port;
      g_free (disk->export_name);
      disk->export_name = g_strdup (pass.disks[i].export_name);
      g_free (disk->bitmap);
      disk->bitmap = pass.disks[i].bitmap[0] != '\0' ? g_strdup (pass.disks[i].bitmap) : NULL;
      disk->pass_dirty_bytes = pass.disks[i].dirty_bytes;
      set_source_uri (cold, disk, cold->peer_address);
    }
  return TRUE;
}

/* The warm migration a pass request is for, its body checked. */
static FerryJob *
warm_job_for_pass (FerryAgent *agent, const char *uuid, JsonObject *request, FerryWarmPass *parsed,
                   GError **error)
{
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold == NULL || !cold->warm)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "destination: no warm migration %s", uuid);
      return NULL;
    }
  return mig_warm_pass_parse (request, parsed, error) ? job : NULL;
}

/* POST /v1/migrations/incoming/UUID/pass: pull the next warm pass. */
JsonObject *
mig_cold_dst_pass (FerryAgent *agent, const char *uuid, JsonObject *request, GError **error)
{
  FerryWarmPass parsed;
  FerryJob *job = warm_job_for_pass (agent, uuid, request, &parsed, error);
  if (job == NULL)
    return NULL;
  ColdDst *cold = cold_of (job);
  gint64 pass = parsed.pass;
  gboolean final = parsed.final;
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", job->uuid);
  json_object_set_int_member (reply, "pass", pass);
  if ((guint) pass == cold->pass && (job->state == FERRY_JOB_COPYING || job->state == FERRY_JOB_PREPARED))
    return reply; /* asked again (a lost answer, a resent request): it runs or ran */
  if (job->state != FERRY_JOB_PREPARED || (guint) pass != cold->pass + 1)
    {
      json_object_unref (reply);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "destination: pass %" G_GINT64_FORMAT " does not "
                   "follow pass %u (state %s)", pass, cold->pass, ferry_job_state_to_string (job->state));
      return NULL;
    }
  if (!apply_pass (job, request, error))
    {
      json_object_unref (reply);
      return NULL;
    }
  cold->pass = (guint) pass;
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      g_hash_table_remove_all (disk->done);
      g_array_set_size (disk->unverified, 0);
      g_hash_table_remove_all (disk->asked_early);
      g_array_set_size (disk->bad, 0);
      disk->verified = disk->started = disk->running = FALSE;
      disk->attempts = disk->verify_rounds = 0;
      disk->bytes_read = disk->bytes_written = 0;
      disk->failing_since_us = 0;
    }
  drop_unsaved_chunks (cold);
  ferry_store_chunks_delete (agent->store, job->id, -1, -1, NULL);
  /* Persisted before acted on: a restarted agent resumes this pass. */
  json_object_set_object_member (job->stats, "ferry-warm-pass", json_object_ref (request));
  json_object_remove_member (job->stats, "ferry-copy");
  g_autofree char *what = g_strdup_printf ("pass %" G_GINT64_FORMAT "%s: pulling %s", pass, final ? " (final)" : "",
                                           pass == 1 ? "every allocated block" : "the blocks changed since the last pass");
  ferry_job_transition (job, FERRY_JOB_COPYING, what);
  begin_copying (job);
  return reply;
}

/* Connections worth opening ahead for a disk: as many as the changes the
 * source counted so far keep busy; without its count, as many as this
 * disk's last pass used, and for a final pass (the guest stopped soon
 * after that count) no more than two. */
static guint
connections_ahead (const FerryWarmPass *coming, const FerryWarmPassDisk *said, const ColdDisk *disk)
{
  gint64 hint = said->dirty_bytes >= 0 ? said->dirty_bytes : disk->pass_dirty_bytes;
  if (hint == 0)
    return 0;
  guint n = hint < 0 ? 1 : ferry_copy_connections_for_delta ((guint64) hint);
  return coming->final && said->dirty_bytes < 0 ? MIN (n, 2u) : n;
}

/* POST /v1/migrations/incoming/UUID/pass-coming: the source is about to
 * take the next pass's snapshot (its body is that pass's, the counts so
 * far). The TLS handshakes with the guest's QEMU happen now, while it
 * does, not after it (pass 3 of bench/warm: 17-22 ms before the first
 * read). Only a hint: the pass itself works without it. */
JsonObject *
mig_cold_dst_pass_coming (FerryAgent *agent, const char *uuid, JsonObject *request, GError **error)
{
  FerryWarmPass coming;
  FerryJob *job = warm_job_for_pass (agent, uuid, request, &coming, error);
  if (job == NULL)
    return NULL;
  ColdDst *cold = cold_of (job);
  if (job->state != FERRY_JOB_PREPARED || (guint) coming.pass != cold->pass + 1)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "destination: pass %" G_GINT64_FORMAT " does not "
                   "follow pass %u (state %s)", coming.pass, cold->pass, ferry_job_state_to_string (job->state));
      return NULL;
    }
  guint total = 0;
  for (guint i = 0; i < coming.n_disks; i++)
    {
      ColdDisk *disk = disk_by_index (cold, coming.disks[i].index);
      if (disk == NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "disks[%u]: no disk %u in this "
                       "migration", i, coming.disks[i].index);
          return NULL;
        }
      guint n = connections_ahead (&coming, &coming.disks[i], disk);
      g_clear_pointer (&disk->preconnect, ferry_nbd_preconnect_unref);
      if (n > 0)
        {
          g_autofree char *uri = pass_source_uri (cold, &coming.disks[i]);
          disk->preconnect = ferry_nbd_preconnect_start (uri, n);
        }
      total += n;
    }
  g_debug ("job %" G_GINT64_FORMAT ": pass %" G_GINT64_FORMAT " announced; opening %u source connections ahead",
           job->id, coming.pass, total);
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", job->uuid);
  json_object_set_int_member (reply, "pass", coming.pass);
  json_object_set_int_member (reply, "connections", total);
  return reply;
}

/* ---- finish ---------------------------------------------------------------------------- */

static JsonObject *
finish_reply (FerryJob *job, gboolean starting)
{
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", job->uuid);
  json_object_set_boolean_member (reply, "defined", TRUE);
  json_object_set_string_member (reply, "state", "completed");
  json_object_set_object_member (reply, "copy", mig_cold_dst_status (job));
  if (starting)
    json_object_set_boolean_member (reply, "starting", TRUE);
  return reply;
}

typedef struct {
  FerryJobRef ref;
  GTask *task;
} WarmStart;

/* A warm migration's VM started (or not) on the destination: only a
 * running VM completes the migration; otherwise the definition and the
 * volumes go, and the source boots its guest again. */
static void
on_warm_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree WarmStart *start = user_data;
  g_autoptr (GTask) task = start->task;
  g_autoptr (GError) error = NULL;
  FerryVm *vm;
  FerryJob *job = ferry_job_ref_get (&start->ref);
  ColdDst *cold = job ? cold_of (job) : NULL;
  if (cold == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED, "destination: the migration ended meanwhile");
      return;
    }
  vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
  if (vm == NULL || !ferry_vm_start_finish (vm, result, &error))
    {
      g_autofree char *reason = g_strdup_printf ("destination: the VM did not start: %s",
                                                 error ? error->message : "it vanished");
      if (vm != NULL)
        ferry_vm_forget (vm);
      for (guint i = 0; i < cold->disks->len; i++)
        ((ColdDisk *) g_ptr_array_index (cold->disks, i))->created = TRUE;
      cold_teardown (job, FERRY_JOB_FAILED, reason);
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED, "%s", reason);
      return;
    }
  ferry_job_event (job, "info", "VM defined and running");
  JsonObject *reply = finish_reply (job, FALSE);
  json_object_set_boolean_member (reply, "running", TRUE);
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
  g_task_return_pointer (task, reply, (GDestroyNotify) json_object_unref);
}

void
mig_cold_dst_finish (FerryJob *job, GTask *task)
{
  ColdDst *cold = cold_of (job);
  if (cold == NULL || job->state != FERRY_JOB_PREPARED)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "destination: the disks of migration %s are not all copied and verified (state %s)",
                               job->uuid, ferry_job_state_to_string (job->state));
      g_object_unref (task);
      return;
    }
  ferry_job_transition (job, FERRY_JOB_FINISHING, "defining the VM");
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      g_clear_pointer (&disk->local, ferry_nbd_export_free);
    }
  JsonNode *spec_node = json_object_get_member (cold->request, "spec");
  g_autoptr (GError) local = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_from_json (spec_node, &local);
  FerryVm *vm = spec ? ferry_vm_define (job->agent, spec, TRUE, &local) : NULL;
  if (vm == NULL)
    {
      g_prefix_error (&local, "destination: cannot define the VM: ");
      cold_teardown (job, FERRY_JOB_FAILED, local->message);
      g_task_return_error (task, g_steal_pointer (&local));
      g_object_unref (task);
      return;
    }
  /* The volumes belong to the VM now. */
  for (guint i = 0; i < cold->disks->len; i++)
    ((ColdDisk *) g_ptr_array_index (cold->disks, i))->created = FALSE;
  ferry_store_chunks_delete (job->agent->store, job->id, -1, -1, NULL);
  FerryVmStartOptions start_options = { 0 };
  if (cold->warm)
    {
      /* The source's guest is off until this answer: it comes once the VM
       * runs here (or failed to). */
      WarmStart *start = g_new0 (WarmStart, 1);
      start->ref = cold->ref;
      start->task = task;
      ferry_job_event (job, "info", "VM defined; starting it");
      ferry_vm_start_async (vm, &start_options, NULL, on_warm_started, start);
      return;
    }
  JsonObject *reply = finish_reply (job, job->options.start);
  if (job->options.start)
    {
      ferry_vm_start_async (vm, &start_options, NULL, NULL, NULL);
      ferry_job_event (job, "info", "VM defined; starting it");
    }
  else
    ferry_job_event (job, "info", "VM defined (not started)");
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
  g_task_return_pointer (task, reply, (GDestroyNotify) json_object_unref);
  g_object_unref (task);
}

/* ---- restart ------------------------------------------------------------------------------ */

void
mig_cold_dst_recover (FerryAgent *agent, FerryStoreJob *stored)
{
  FerryMigrateOptions options;
  ferry_migrate_options_init (&options);
  options.copy_storage = TRUE;
  options.persistent = TRUE;
  FerryJob *job = ferry_job_restore (agent, stored, &options);
  JsonNode *request_node = json_object_get_member (job->stats, "ferry-cold-request");
  const char *peer = ferry_json_object_string (job->stats, "ferry-cold-peer");
  g_autoptr (GError) error = NULL;
  if (request_node == NULL || !JSON_NODE_HOLDS_OBJECT (request_node) || peer == NULL
      || (job->state != FERRY_JOB_COPYING && job->state != FERRY_JOB_PREPARED))
    {
      ferry_job_finish (job, FERRY_JOB_FAILED, "agent restarted before the copy had begun");
      return;
    }
  JsonObject *request = json_node_get_object (request_node);
  job->options.start = json_object_get_boolean_member_with_default (request, "start", FALSE);
  job->options.bandwidth_mib = ferry_json_object_int (request, "bandwidth_mib");
  job->options.parallel_disks = MAX (1, ferry_json_object_int (request, "parallel_disks"));
  ColdDst *cold = cold_dst_new (job, request, NULL, peer, &error);
  if (cold == NULL)
    {
      ferry_job_finish (job, FERRY_JOB_FAILED, error->message);
      return;
    }
  job->cold = cold;
  job->cold_free = (GDestroyNotify) cold_dst_free;
  JsonNode *pass_node = json_object_get_member (job->stats, "ferry-warm-pass");
  if (cold->warm && pass_node != NULL && JSON_NODE_HOLDS_OBJECT (pass_node))
    {
      JsonObject *pass = json_node_get_object (pass_node);
      cold->pass = (guint) ferry_json_object_int (pass, "pass");
      if (!apply_pass (job, pass, &error))
        {
          cold_teardown (job, FERRY_JOB_FAILED, error->message);
          return;
        }
    }
  for (guint i = 0; i < cold->disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (cold->disks, i);
      if (!open_local_export (job, disk, &error))
        {
          cold_teardown (job, FERRY_JOB_FAILED, error->message);
          return;
        }
      if (job->state == FERRY_JOB_PREPARED)
        disk->verified = TRUE;
    }
  if (job->state == FERRY_JOB_COPYING && cold->warm && cold->pass == 0)
    {
      cold_teardown (job, FERRY_JOB_FAILED, "agent restarted with a pass it has no record of");
      return;
    }
  if (job->state == FERRY_JOB_COPYING)
    {
      ferry_job_event (job, "info", "resuming the copy from the chunks already on disk");
      begin_copying (job);
    }
}

/* ---- volumes for a live migration with storage ------------------------------------------ */

char **
mig_storage_dst_create_volumes (FerryAgent *agent, JsonObject *request, const FerryVmSpec *spec,
                                GError **error)
{
  g_autoptr (GPtrArray) disks = parse_disks (agent, request, spec, TRUE, error);
  if (disks == NULL)
    return NULL;
  g_autoptr (GStrvBuilder) created = g_strv_builder_new ();
  for (guint i = 0; i < disks->len; i++)
    {
      ColdDisk *disk = g_ptr_array_index (disks, i);
      FerryPool *pool = ferry_pool_lookup (agent, disk->pool, error);
      if (pool == NULL || !ferry_volume_create (pool, disk->volume, disk->format, disk->virtual_size, error))
        {
          g_auto (GStrv) made = g_strv_builder_end (created);
          mig_storage_dst_remove_volumes ((const char *const *) made);
          g_prefix_error (error, "destination: ");
          return NULL;
        }
      g_strv_builder_add (created, disk->path);
    }
  return g_strv_builder_end (created);
}

void
mig_storage_dst_remove_volumes (const char *const *paths)
{
  for (guint i = 0; paths != NULL && paths[i] != NULL; i++)
    if (g_unlink (paths[i]) == 0)
      g_info ("removed the incoming volume %s", paths[i]);
}
