/* ferry agent — the source side of a warm migration: passes and cutover.
 *
 * The guest keeps running while its disks go over in passes. Each pass
 * takes a point-in-time snapshot of every disk in one QMP transaction: a
 * qcow2 node backed by the disk and filled by a copy-before-write backup
 * job (sync none) with the old content of every block the guest
 * overwrites afterwards, so the snapshot reads as the disk was at that
 * instant. The same transaction starts a new dirty bitmap (the changes
 * from this instant, for the next pass) and freezes the previous one (the
 * changes between the previous snapshot and this one). QEMU's own NBD
 * server exports the snapshots read-only over TLS, with the frozen bitmap
 * as the meta context qemu:dirty-bitmap:NAME. The destination pulls: the
 * first pass copies everything allocated, later passes only dirty blocks.
 *
 * At most two bitmaps exist per disk (the one recording, the one being
 * copied), so passes are not limited in number the way VMware's 28
 * snapshots limit MTV; the job keeps the last MAX_ITERATIONS_KEPT passes'
 * records.
 *
 * Cutover: QEMU is told to pause rather than exit when the guest powers
 * off (set-action), the guest gets an ACPI shutdown (frozen with `stop`
 * after the timeout with force_stop), the last pass copies what changed
 * since the previous snapshot, the destination defines and starts the VM,
 * and only then does the source's QEMU quit (mig-cold-src.c confirms). The
 * downtime runs from the guest's SHUTDOWN event to the destination's
 * answer that the VM runs there.
 *
 * The passes' state is in the job's stats, written before each step is
 * taken, so a restarted agent carries on: a pass in flight continues (QEMU
 * kept the snapshot and its export), the next pass copies only changes.
 */
#include "agent.h"

#include <glib/gstdio.h>

#include "jsonutil.h"
#include "nbd-export.h"

#define MAX_ITERATIONS_KEPT 28
#define PEER_TIMEOUT_S 30
#define PASS_POST_RETRY_S 5
#define PASS_POST_ATTEMPTS 120
#define QMP_WAIT_RETRY_S 1
#define NBD_TLS_ID "ferry-nbd-tls"
#define CUTOVER_POLL_MS 100
#define ROLL_BACK_DEADLINE_S 30
/* At the cutover, more changed than this since the last pass is copied
 * while the guest still runs (at most MAX_CATCH_UP_PASSES passes). */
#define CATCH_UP_BYTES (32 * 1024 * 1024)
#define MAX_CATCH_UP_PASSES 3
#define PASS_POLL_MS 250
#define IDLE_POLL_MS 1000

typedef struct {
  guint index;
  char *path;
  gboolean persistent;        /* qcow2: bitmaps are kept in the image */
  guint64 virtual_size;
  /* What the pass's bitmap marks, as QEMU counted it when the snapshot
   * was taken: tells the destination how many connections are worth
   * opening. -1 = not known (pass 1, or a restarted agent). */
  gint64 pass_dirty_bytes;
} WarmDisk;

struct _WarmSrc {
  FerryJobRef ref;
  GPtrArray *disks;           /* of WarmDisk* */
  guint pass;                 /* passes begun; the last one's snapshot exists while it runs */
  gboolean pass_running;      /* snapshot exported, the destination copies */
  gboolean pass_final;
  guint precreated_pass;      /* its overlay files exist already (made during the shutdown) */
  guint announced_pass;       /* the destination was told it comes (POST …/pass-coming) */
  gboolean qmp_busy;          /* a sequence of ours is under way */
  guint16 nbd_port;           /* QEMU's NBD server; 0 = not started */
  gint64 pass_started_us;     /* wall clock */
  gint64 next_pass_at_us;     /* wall clock; 0 = none scheduled */
  gint64 cutover_at_us;       /* wall clock; 0 = not asked */
  gint64 guest_stopped_us;    /* wall clock of the guest's shutdown at cutover */
  guint pass_timer;
  guint cutover_timer;
  guint shutdown_timer;
  guint post_attempts;
  guint catch_up_passes;      /* passes run at the cutover before the guest stops */
  JsonArray *iterations;
  guint64 iterations_dropped;
  /* A pass's snapshot sequence is under way: a roll back asked for
   * meanwhile waits for it (its removals would race the creations) and
   * runs with these when it ends. */
  gboolean snapshotting;
  char *deferred_roll_back;   /* the reason; NULL = none */
  FerryJobState deferred_terminal;
  gboolean roll_back_deadline_armed;
};

static void
warm_disk_free (WarmDisk *disk)
{
  g_free (disk->path);
  g_free (disk);
}

void
mig_warm_src_free (WarmSrc *warm)
{
  if (warm == NULL)
    return;
  g_clear_handle_id (&warm->pass_timer, g_source_remove);
  g_clear_handle_id (&warm->cutover_timer, g_source_remove);
  g_clear_handle_id (&warm->shutdown_timer, g_source_remove);
  g_ptr_array_unref (warm->disks);
  json_array_unref (warm->iterations);
  g_free (warm->deferred_roll_back);
  g_free (warm);
}

static WarmSrc *
warm_of (FerryJob *job)
{
  return job ? mig_cold_src_warm (job) : NULL;
}

/* ---- names ----------------------------------------------------------------------- */

/* Bitmap N records the changes from pass N's snapshot on. */
static char *
bitmap_name (FerryJob *job, guint pass)
{
  return g_strdup_printf ("ferry-%" G_GINT64_FORMAT "-%u", job->id, pass);
}

static char *
snapshot_node (FerryJob *job, guint pass, guint disk)
{
  return g_strdup_printf ("ferry-snap-%" G_GINT64_FORMAT "-%u-disk%u", job->id, pass, disk);
}

static char *
snapshot_file (FerryJob *job, guint pass, guint disk)
{
  g_autofree char *name = g_strdup_printf ("ferry-snap-%" G_GINT64_FORMAT "-%u-disk%u.qcow2", job->id, pass,
                                           disk);
  return g_build_filename (job->agent->config.state_dir, "run", name, NULL);
}

static char *
export_id (FerryJob *job, guint disk)
{
  return g_strdup_printf ("ferry-warm-%" G_GINT64_FORMAT "-disk%u", job->id, disk);
}

static char *
export_name (guint disk)
{
  return g_strdup_printf ("disk%u", disk);
}

/* The guest's format node of a disk, as ferryd names it on the command line. */
static char *
disk_node_name (guint disk)
{
  return g_strdup_printf ("disk%u", disk);
}

/* ---- state ------------------------------------------------------------------------ */

static void
save_state (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  JsonObject *state = json_object_new ();
  JsonArray *disks = json_array_new ();
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      JsonObject *entry = json_object_new ();
      json_object_set_int_member (entry, "index", disk->index);
      json_object_set_string_member (entry, "path", disk->path);
      json_object_set_boolean_member (entry, "persistent", disk->persistent);
      json_object_set_int_member (entry, "virtual_size", (gint64) disk->virtual_size);
      json_array_add_object_element (disks, entry);
    }
  json_object_set_array_member (state, "disks", disks);
  json_object_set_int_member (state, "pass", warm->pass);
  json_object_set_boolean_member (state, "pass_running", warm->pass_running);
  json_object_set_boolean_member (state, "pass_final", warm->pass_final);
  json_object_set_int_member (state, "nbd_port", warm->nbd_port);
  json_object_set_int_member (state, "pass_started_us", warm->pass_started_us);
  json_object_set_int_member (state, "next_pass_at_us", warm->next_pass_at_us);
  json_object_set_int_member (state, "cutover_at_us", warm->cutover_at_us);
  json_object_set_int_member (state, "guest_stopped_us", warm->guest_stopped_us);
  json_object_set_int_member (state, "precopy_interval_s", job->options.precopy_interval_s);
  json_object_set_int_member (state, "iterations_dropped", (gint64) warm->iterations_dropped);
  json_object_set_array_member (state, "iterations", json_array_ref (warm->iterations));
  json_object_set_object_member (job->stats, "ferry-warm", state);
  ferry_job_save_stats (job);
}

WarmSrc *
mig_warm_src_new (FerryJob *job, const FerryWarmDisk *disks, guint n_disks)
{
  WarmSrc *warm = g_new0 (WarmSrc, 1);
  warm->ref.agent = job->agent;
  warm->ref.job_id = job->id;
  warm->disks = g_ptr_array_new_with_free_func ((GDestroyNotify) warm_disk_free);
  for (guint i = 0; i < n_disks; i++)
    {
      WarmDisk *disk = g_new0 (WarmDisk, 1);
      disk->index = disks[i].index;
      disk->path = g_strdup (disks[i].path);
      disk->persistent = g_strcmp0 (disks[i].format, "qcow2") == 0;
      disk->virtual_size = disks[i].virtual_size;
      disk->pass_dirty_bytes = -1;
      g_ptr_array_add (warm->disks, disk);
    }
  warm->iterations = json_array_new ();
  if (job->options.cutover_at > 0)
    warm->cutover_at_us = job->options.cutover_at * G_USEC_PER_SEC;
  return warm;
}

static FerryQmp *
job_qmp (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  return vm != NULL && vm->qmp != NULL && !ferry_qmp_is_closed (vm->qmp) ? vm->qmp : NULL;
}

static void pass_begin (FerryJob *job, gboolean final);
static void cutover_begin (FerryJob *job);
static gboolean on_pass_due (gpointer user_data);
static gboolean on_post_retry (gpointer user_data);

/* QMP steps removing the current pass's export, backup job and snapshot
 * node on every disk, and the bitmaps of passes first..last (0 = none).
 * Each may find its object gone (a restarted agent): errors are ignored.
 * Cancelling an idle sync=none backup completes at once, so the node is
 * free for blockdev-del right after. */
static void
add_pass_removal (FerryJob *job, GArray *steps, guint first, guint last)
{
  WarmSrc *warm = warm_of (job);
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      g_autofree char *id = export_id (job, disk->index);
      g_autofree char *node = snapshot_node (job, warm->pass, disk->index);
      g_autofree char *disk_node = disk_node_name (disk->index);
      g_array_append_val (steps, ((FerryQmpStep) { "block-export-del", ferry_qmp_args_block_export_del (id), TRUE }));
      g_array_append_val (steps, ((FerryQmpStep) { "block-job-cancel",
                                                   ferry_qmp_args_block_job_cancel (node, TRUE), TRUE }));
      g_array_append_val (steps, ((FerryQmpStep) { "blockdev-del", ferry_qmp_args_id ("node-name", node), TRUE }));
      for (guint pass = MAX (first, 1); pass <= last; pass++)
        {
          g_autofree char *bitmap = bitmap_name (job, pass);
          g_array_append_val (steps, ((FerryQmpStep) { "block-dirty-bitmap-remove",
                                                       ferry_qmp_args_bitmap_remove (disk_node, bitmap), TRUE }));
        }
    }
}

/* ---- rolling back --------------------------------------------------------------------
 *
 * Cancel or failure: every trace on the source goes (exports, snapshot
 * nodes and files, bitmaps, the NBD server); a guest stopped for the
 * cutover boots again. The job ends once QEMU confirmed. */

typedef struct {
  FerryJobRef ref;
  FerryJobState terminal;
  char *reason;
} RollBack;

static void
roll_back_free (RollBack *roll)
{
  g_free (roll->reason);
  g_free (roll);
}

static void
remove_snapshot_files (FerryJob *job, guint pass)
{
  WarmSrc *warm = warm_of (job);
  for (guint i = 0; i < warm->disks->len; i++)
    {
      g_autofree char *file = snapshot_file (job, pass, ((WarmDisk *) g_ptr_array_index (warm->disks, i))->index);
      g_unlink (file);
    }
}

/* A roll back: the current pass's overlays, and the final pass's if they
 * were made ahead (precreate_final_files) and never used. */
static void
remove_pass_files (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  remove_snapshot_files (job, warm->pass);
  if (warm->precreated_pass > warm->pass)
    remove_snapshot_files (job, warm->precreated_pass);
  warm->precreated_pass = 0;
}

/* A guest that stopped with QEMU wrote its persistent bitmaps into its
 * qcow2 images: they go with qemu-img. */
static void
remove_stored_bitmaps (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      if (!disk->persistent)
        continue;
      for (guint pass = MAX (warm->pass, 1) - 1; pass <= warm->pass; pass++)
        {
          g_autofree char *name = bitmap_name (job, pass);
          const char *argv[] = { "qemu-img", "bitmap", "--remove", disk->path, name, NULL };
          g_autoptr (GSubprocess) process = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDOUT_SILENCE
                                                                       | G_SUBPROCESS_FLAGS_STDERR_SILENCE, NULL);
          if (process != NULL)
            g_subprocess_wait (process, NULL, NULL);
        }
    }
}

static void
on_rolled_back (GObject *source, GAsyncResult *result, gpointer user_data)
{
  RollBack *roll = user_data;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, NULL);
  FerryJob *job = ferry_job_ref_get (&roll->ref);
  WarmSrc *warm = warm_of (job);
  if (warm != NULL)
    {
      FerryVm *vm = ferry_job_vm (job);
      remove_pass_files (job);
      if (warm->guest_stopped_us != 0 && vm != NULL && vm->qmp != NULL)
        {
          ferry_vm_set_state (vm, FERRY_VM_RUNNING);
          ferry_job_event (job, "info", "the guest boots again on the source");
        }
      ferry_job_event (job, "info", "removed the snapshots, exports and dirty bitmaps from the source");
      ferry_job_finish (job, roll->terminal, roll->reason);
    }
  roll_back_free (roll);
}

static gboolean
on_roll_back_deadline (gpointer user_data)
{
  RollBack *roll = user_data;
  FerryJob *job = ferry_job_ref_get (&roll->ref);
  if (job != NULL && job->state == FERRY_JOB_CANCELLING)
    {
      ferry_job_event (job, "warning", "QEMU did not confirm the clean-up within %d s; `ferry vm block %s` "
                       "shows what is left", ROLL_BACK_DEADLINE_S, job->vm_name);
      ferry_job_finish (job, roll->terminal, roll->reason);
    }
  return G_SOURCE_REMOVE;
}

void
mig_warm_src_resume_roll_back (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || warm->deferred_roll_back == NULL)
    return;
  g_autofree char *reason = g_steal_pointer (&warm->deferred_roll_back);
  mig_warm_src_roll_back (job, warm->deferred_terminal, reason);
}

void
mig_warm_src_roll_back (FerryJob *job, FerryJobState terminal, const char *reason)
{
  WarmSrc *warm = warm_of (job);
  g_clear_handle_id (&warm->pass_timer, g_source_remove);
  g_clear_handle_id (&warm->cutover_timer, g_source_remove);
  g_clear_handle_id (&warm->shutdown_timer, g_source_remove);
  if (job->state != FERRY_JOB_CANCELLING)
    ferry_job_transition (job, FERRY_JOB_CANCELLING, reason);
  if (!warm->roll_back_deadline_armed)
    {
      /* A QEMU that never answers (one seen under ASan, stuck closing an
       * NBD export) must not keep the job open forever. */
      RollBack *deadline = g_new0 (RollBack, 1);
      deadline->ref = warm->ref;
      deadline->terminal = terminal;
      deadline->reason = g_strdup (reason);
      g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, ROLL_BACK_DEADLINE_S, on_roll_back_deadline, deadline,
                                  (GDestroyNotify) roll_back_free);
      warm->roll_back_deadline_armed = TRUE;
    }
  /* Not while a snapshot sequence runs (what it creates exists only at
   * its end), nor while the source's digests read the exports (a client
   * reading while its export went left QEMU 7.2's monitor silent in CI;
   * the cancel stopped them, mig_warm_src_resume_roll_back follows). */
  guint digests = mig_cold_src_digests_in_flight (job);
  if (warm->snapshotting || digests > 0)
    {
      if (digests > 0 && warm->deferred_roll_back == NULL)
        ferry_job_event (job, "info", "waiting for %u digest computations to stop", digests);
      g_free (warm->deferred_roll_back);
      warm->deferred_roll_back = g_strdup (reason);
      warm->deferred_terminal = terminal;
      return;
    }
  FerryQmp *qmp = job_qmp (job);
  if (qmp == NULL)
    {
      remove_pass_files (job);
      remove_stored_bitmaps (job);
      ferry_job_finish (job, terminal, reason);
      return;
    }
  /* Every step may find its object gone already (a pass between
   * snapshots, a restarted agent): errors are expected and ignored. */
  g_autoptr (GArray) steps = g_array_new (FALSE, TRUE, sizeof (FerryQmpStep));
  add_pass_removal (job, steps, MAX (warm->pass, 1) - 1, warm->pass);
  if (warm->nbd_port != 0)
    {
      g_array_append_val (steps, ((FerryQmpStep) { "nbd-server-stop", NULL, TRUE }));
      g_array_append_val (steps, ((FerryQmpStep) { "object-del", ferry_qmp_args_id ("id", NBD_TLS_ID), TRUE }));
    }
  g_array_append_val (steps, ((FerryQmpStep) { "set-action", ferry_qmp_args_set_shutdown_action (FALSE), TRUE }));
  if (warm->guest_stopped_us != 0)
    {
      /* It ran before the cutover stopped it: it boots again. */
      g_array_append_val (steps, ((FerryQmpStep) { "system_reset", NULL, TRUE }));
      g_array_append_val (steps, ((FerryQmpStep) { "cont", NULL, TRUE }));
    }
  RollBack *roll = g_new0 (RollBack, 1);
  roll->ref = warm->ref;
  roll->terminal = terminal;
  roll->reason = g_strdup (reason);
  ferry_qmp_run_steps_async (qmp, (FerryQmpStep *) steps->data, steps->len, NULL, on_rolled_back, roll);
}

/* A timer for the job that fires at a wall-clock time (never before it:
 * the delay is rounded up). */
static guint
timeout_at (FerryJob *job, gint64 wall_us, GSourceFunc callback)
{
  gint64 now = g_get_real_time ();
  guint delay_ms = (guint) MIN ((wall_us - MIN (now, wall_us) + 999) / 1000, G_MAXUINT);
  return g_timeout_add_full (G_PRIORITY_DEFAULT, delay_ms, callback, ferry_job_ref_new (job), g_free);
}

static void
warm_fail (FerryJob *job, const char *format, ...) G_GNUC_PRINTF (2, 3);
static void
warm_fail (FerryJob *job, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *reason = g_strdup_vprintf (format, args);
  va_end (args);
  mig_cold_src_fail (job, job->abort_requested ? FERRY_JOB_CANCELLED : FERRY_JOB_FAILED, reason, TRUE);
}

/* ---- a pass ---------------------------------------------------------------------------- */

static void
on_pass_posted (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  WarmSrc *warm = warm_of (job);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (warm == NULL || !warm->pass_running)
    return;
  if (reply != NULL)
    {
      warm->post_attempts = 0;
      return;
    }
  if (g_error_matches (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE) && ++warm->post_attempts < PASS_POST_ATTEMPTS)
    {
      /* The destination is unreachable for now; the pass is idempotent. */
      ferry_job_event (job, "warning", "pass %u: destination not reached (%s); trying again in %d s", warm->pass,
                       error->message, PASS_POST_RETRY_S);
      warm->pass_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, PASS_POST_RETRY_S, on_post_retry,
                                                     ferry_job_ref_new (job), g_free);
      return;
    }
  warm_fail (job, "destination refused pass %u: %s", warm->pass, error->message);
}

static void post_pass (FerryJob *job);

static gboolean
on_post_retry (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  WarmSrc *warm = warm_of (job);
  if (warm != NULL)
    {
      warm->pass_timer = 0;
      if (warm->pass_running)
        post_pass (job);
    }
  return G_SOURCE_REMOVE;
}

/* The body of POST …/pass (and …/pass-coming) for `pass`; dirty_bytes:
 * per disk (in order), what its bitmap marks, -1 = not known; NULL =
 * none known. */
static JsonObject *
pass_body (FerryJob *job, guint pass, gboolean final, const gint64 *dirty_bytes)
{
  WarmSrc *warm = warm_of (job);
  JsonObject *body = json_object_new ();
  json_object_set_int_member (body, "pass", pass);
  json_object_set_boolean_member (body, "final", final);
  JsonArray *disks = json_array_new ();
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      JsonObject *entry = json_object_new ();
      g_autofree char *name = export_name (disk->index);
      json_object_set_int_member (entry, "index", disk->index);
      json_object_set_int_member (entry, "port", warm->nbd_port);
      json_object_set_string_member (entry, "export", name);
      if (pass > 1)
        {
          g_autofree char *bitmap = bitmap_name (job, pass - 1);
          json_object_set_string_member (entry, "bitmap", bitmap);
          if (dirty_bytes != NULL && dirty_bytes[i] >= 0)
            json_object_set_int_member (entry, "dirty_bytes", dirty_bytes[i]);
        }
      json_array_add_object_element (disks, entry);
    }
  json_object_set_array_member (body, "disks", disks);
  return body;
}

static void
on_pass_announced (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (reply == NULL)
    g_debug ("announcing a warm pass: %s", error->message);
}

/* Tells the destination that the next pass's snapshot is being taken, so
 * that it opens its connections to QEMU's NBD server meanwhile (see
 * mig_cold_dst_pass_coming). Only once that server runs (pass 2 on), and
 * only a hint: nothing waits for the answer. dirty_bytes: per disk, what
 * the recording bitmap marks so far (-1 = not counted); NULL = none. */
static void
announce_pass (FerryJob *job, gboolean final, const gint64 *dirty_bytes)
{
  WarmSrc *warm = warm_of (job);
  guint pass = warm->pass + 1;
  if (warm->nbd_port == 0 || warm->announced_pass == pass)
    return;
  warm->announced_pass = pass;
  g_autoptr (JsonObject) body = pass_body (job, pass, final, dirty_bytes);
  g_autofree char *path = g_strdup_printf ("/v1/migrations/incoming/%s/pass-coming", job->uuid);
  ferry_peer_request_repeatable_async (job->agent, job->peer_url, "POST", path, body, PEER_TIMEOUT_S, NULL,
                                       on_pass_announced, NULL);
}

/* Tells the destination to pull the pass whose snapshots are exported. */
static void
post_pass (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  g_autofree gint64 *dirty = g_new (gint64, warm->disks->len);
  for (guint i = 0; i < warm->disks->len; i++)
    dirty[i] = ((WarmDisk *) g_ptr_array_index (warm->disks, i))->pass_dirty_bytes;
  g_autoptr (JsonObject) body = pass_body (job, warm->pass, warm->pass_final, dirty);
  g_autofree char *path = g_strdup_printf ("/v1/migrations/incoming/%s/pass", job->uuid);
  ferry_peer_request_repeatable_async (job->agent, job->peer_url, "POST", path, body, PEER_TIMEOUT_S, NULL,
                                       on_pass_posted, ferry_job_ref_new (job));
}

/* Bytes `bitmap` marks on the node `node_name` in a
 * query-named-block-nodes reply; -1 when no such bitmap is there. */
static gint64
bitmap_count (JsonNode *nodes, const char *node_name, const char *bitmap)
{
  gint64 total = -1;
  JsonArray *array = nodes && JSON_NODE_HOLDS_ARRAY (nodes) ? json_node_get_array (nodes) : NULL;
  for (guint i = 0; array != NULL && i < json_array_get_length (array); i++)
    {
      JsonObject *node = json_array_get_object_element (array, i);
      JsonNode *bitmaps = node ? json_object_get_member (node, "dirty-bitmaps") : NULL;
      if (bitmaps == NULL || !JSON_NODE_HOLDS_ARRAY (bitmaps)
          || g_strcmp0 (ferry_json_object_string (node, "node-name"), node_name) != 0)
        continue;
      for (guint j = 0; j < json_array_get_length (json_node_get_array (bitmaps)); j++)
        {
          JsonObject *entry = json_array_get_object_element (json_node_get_array (bitmaps), j);
          if (entry != NULL && g_strcmp0 (ferry_json_object_string (entry, "name"), bitmap) == 0)
            total = MAX (total, 0) + ferry_json_object_int (entry, "count");
        }
    }
  return total;
}

/* Each disk's count of `bitmap` (in disk order, -1 where it is not
 * there) in a query-named-block-nodes reply; returns their sum. */
static gint64
count_per_disk (FerryJob *job, JsonNode *nodes, const char *bitmap, gint64 *counts)
{
  WarmSrc *warm = warm_of (job);
  gint64 total = 0;
  for (guint i = 0; i < warm->disks->len; i++)
    {
      g_autofree char *node = disk_node_name (((WarmDisk *) g_ptr_array_index (warm->disks, i))->index);
      counts[i] = bitmap_count (nodes, node, bitmap);
      total += MAX (counts[i], 0);
    }
  return total;
}

static void
on_snapshot_ready (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  FerryJob *job = ferry_job_ref_get (ref);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL)
    return;
  warm->qmp_busy = FALSE;
  warm->snapshotting = FALSE;
  if (warm->deferred_roll_back != NULL)
    {
      /* Whatever the sequence created exists now, so the roll back
       * removes it all. */
      mig_warm_src_resume_roll_back (job);
      return;
    }
  if (reply == NULL)
    {
      warm_fail (job, "pass %u: cannot snapshot the disks: %s", warm->pass, error->message);
      return;
    }
  if (warm->pass > 1)
    {
      g_autofree char *frozen = bitmap_name (job, warm->pass - 1);
      g_autofree gint64 *counts = g_new (gint64, warm->disks->len);
      count_per_disk (job, reply, frozen, counts);
      for (guint i = 0; i < warm->disks->len; i++)
        ((WarmDisk *) g_ptr_array_index (warm->disks, i))->pass_dirty_bytes = counts[i];
    }
  warm->pass_running = TRUE;
  warm->pass_started_us = g_get_real_time ();
  warm->post_attempts = 0;
  save_state (job);
  /* The pass's end is noticed by polling: often while it runs. */
  mig_cold_src_poll_every (job, warm->pass_final ? CUTOVER_POLL_MS : PASS_POLL_MS);
  if (warm->pass == 1)
    ferry_job_event (job, "info", "pass 1: snapshot taken; the destination copies every allocated block");
  else
    ferry_job_event (job, "info", "pass %u%s: snapshot taken; the destination copies the blocks changed since "
                     "pass %u", warm->pass, warm->pass_final ? " (final)" : "", warm->pass - 1);
  post_pass (job);
}

static gboolean
create_snapshot_file (FerryJob *job, WarmDisk *disk, guint pass, GError **error)
{
  g_autofree char *run_dir = g_build_filename (job->agent->config.state_dir, "run", NULL);
  g_mkdir_with_parents (run_dir, 0700);
  g_autofree char *file = snapshot_file (job, pass, disk->index);
  g_autofree char *size = g_strdup_printf ("%" G_GUINT64_FORMAT, disk->virtual_size);
  const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", file, size, NULL };
  g_autoptr (GSubprocess) process = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDERR_PIPE, error);
  g_autofree char *err = NULL;
  if (process == NULL || !g_subprocess_communicate_utf8 (process, NULL, NULL, NULL, &err, error))
    return FALSE;
  if (g_subprocess_get_exit_status (process) != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "qemu-img create %s: %s", file, g_strstrip (err));
      return FALSE;
    }
  return TRUE;
}

static void
pass_begin (FerryJob *job, gboolean final)
{
  WarmSrc *warm = warm_of (job);
  g_autoptr (GError) error = NULL;
  if (warm->pass_running || warm->qmp_busy)
    return;
  g_clear_handle_id (&warm->pass_timer, g_source_remove);
  FerryQmp *qmp = job_qmp (job);
  if (qmp == NULL)
    {
      /* A restarted agent before it reattached to QEMU: shortly. */
      warm->pass_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, QMP_WAIT_RETRY_S,
                                                     on_pass_due,
                                                     ferry_job_ref_new (job), g_free);
      return;
    }
  guint pass = warm->pass + 1;
  announce_pass (job, final, NULL);
  g_autoptr (GArray) steps = g_array_new (FALSE, TRUE, sizeof (FerryQmpStep));
  if (warm->nbd_port == 0)
    {
      warm->nbd_port = ferry_free_tcp_port (job->agent->listen_host, &error);
      if (warm->nbd_port == 0)
        {
          warm_fail (job, "cannot find a port for the disk exports: %s", error->message);
          return;
        }
      g_autofree char *creds = g_build_filename (job->agent->config.state_dir, "qemu-tls", NULL);
      g_array_append_val (steps, ((FerryQmpStep) { "object-add", ferry_qmp_args_tls_creds (NBD_TLS_ID, creds, TRUE) }));
      g_array_append_val (steps, ((FerryQmpStep) { "nbd-server-start",
                                                   ferry_qmp_args_nbd_server_start (job->agent->listen_host,
                                                                                    warm->nbd_port, NBD_TLS_ID) }));
    }
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  g_autofree FerryQmpSnapshotDisk *snapshots = g_new0 (FerryQmpSnapshotDisk, warm->disks->len);
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      if (warm->precreated_pass != pass && !create_snapshot_file (job, disk, pass, &error))
        {
          warm_fail (job, "pass %u: %s", pass, error->message);
          return;
        }
      char *node = snapshot_node (job, pass, disk->index);
      char *disk_node = disk_node_name (disk->index);
      char *file = snapshot_file (job, pass, disk->index);
      char *new_bitmap = final ? NULL : bitmap_name (job, pass);
      char *old_bitmap = pass > 1 ? bitmap_name (job, pass - 1) : NULL;
      g_ptr_array_add (names, node);
      g_ptr_array_add (names, disk_node);
      g_ptr_array_add (names, file);
      g_ptr_array_add (names, new_bitmap);
      g_ptr_array_add (names, old_bitmap);
      snapshots[i] = (FerryQmpSnapshotDisk) { disk_node, new_bitmap, disk->persistent, old_bitmap, node, node };
      g_array_append_val (steps, ((FerryQmpStep) { "blockdev-add",
                                                   ferry_qmp_args_blockdev_add_snapshot (node, file, disk_node) }));
    }
  g_array_append_val (steps, ((FerryQmpStep) { "transaction",
                                               ferry_qmp_args_snapshot_transaction (snapshots, warm->disks->len) }));
  for (guint i = 0; i < warm->disks->len; i++)
    {
      WarmDisk *disk = g_ptr_array_index (warm->disks, i);
      g_autofree char *id = export_id (job, disk->index);
      g_autofree char *name = export_name (disk->index);
      g_array_append_val (steps, ((FerryQmpStep) {
        "block-export-add", ferry_qmp_args_block_export_add_snapshot (id, snapshots[i].snapshot_node, name,
                                                                     snapshots[i].node, snapshots[i].old_bitmap) }));
    }
  /* Last, so the sequence completes with it: what each frozen bitmap
   * marks (read only; without it the destination just does not know). */
  if (pass > 1)
    {
      JsonObject *flat = json_object_new ();
      json_object_set_boolean_member (flat, "flat", TRUE);
      g_array_append_val (steps, ((FerryQmpStep) { "query-named-block-nodes", flat, .ignore_error = TRUE }));
    }
  /* Persisted first: a restarted agent knows which names may exist. */
  warm->pass = pass;
  warm->pass_final = final;
  warm->next_pass_at_us = 0;
  warm->qmp_busy = TRUE;
  warm->snapshotting = TRUE;
  save_state (job);
  ferry_qmp_run_steps_async (qmp, (FerryQmpStep *) steps->data, steps->len, NULL, on_snapshot_ready,
                             ferry_job_ref_new (job));
}

static gboolean
on_pass_due (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL)
    return G_SOURCE_REMOVE;
  warm->pass_timer = 0;
  if (job->state == FERRY_JOB_PRECOPY)
    pass_begin (job, FALSE);
  else if (job->state == FERRY_JOB_CUTOVER && warm->guest_stopped_us != 0)
    pass_begin (job, TRUE);
  return G_SOURCE_REMOVE;
}

static void
schedule_next_pass (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  if (warm->next_pass_at_us == 0)
    warm->next_pass_at_us = MAX (g_get_real_time (),
                                 warm->pass_started_us + job->options.precopy_interval_s * G_USEC_PER_SEC);
  save_state (job);
  g_clear_handle_id (&warm->pass_timer, g_source_remove);
  warm->pass_timer = timeout_at (job, warm->next_pass_at_us, on_pass_due);
}

static void
record_iteration (FerryJob *job, JsonObject *copy)
{
  WarmSrc *warm = warm_of (job);
  gint64 now = g_get_real_time ();
  JsonObject *entry = json_object_new ();
  json_object_set_int_member (entry, "pass", warm->pass);
  json_object_set_boolean_member (entry, "final", warm->pass_final);
  json_object_set_int_member (entry, "started_at", warm->pass_started_us / G_USEC_PER_SEC);
  json_object_set_double_member (entry, "duration_s", (double) (now - warm->pass_started_us) / 1e6);
  json_object_set_int_member (entry, "bytes_changed", copy ? ferry_json_object_int (copy, "bytes_written") : 0);
  json_object_set_int_member (entry, "bytes_copied", copy ? ferry_json_object_int (copy, "bytes_read") : 0);
  json_object_set_int_member (entry, "chunks_changed", copy ? ferry_json_object_int (copy, "chunks_changed") : 0);
  json_object_set_int_member (entry, "bytes_total", copy ? ferry_json_object_int (copy, "bytes_total") : 0);
  /* The destination's own time for the copy and its verification. */
  json_object_set_double_member (entry, "copy_s", copy ? (double) ferry_json_object_int (copy, "elapsed_ms") / 1000 : 0);
  ferry_job_event (job, "info", "pass %u%s done: %" G_GINT64_FORMAT " KiB changed, %" G_GINT64_FORMAT
                   " KiB copied in %.1f s", warm->pass, warm->pass_final ? " (final)" : "",
                   json_object_get_int_member (entry, "bytes_changed") >> 10,
                   json_object_get_int_member (entry, "bytes_copied") >> 10,
                   json_object_get_double_member (entry, "duration_s"));
  json_array_add_object_element (warm->iterations, entry);
  while (json_array_get_length (warm->iterations) > MAX_ITERATIONS_KEPT)
    {
      json_array_remove_element (warm->iterations, 0);
      warm->iterations_dropped++;
    }
}

typedef struct {
  FerryJobRef ref;
  JsonObject *copy;
} PassEnd;

static void
on_pass_cleaned (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PassEnd *end = user_data;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, NULL);
  FerryJob *job = ferry_job_ref_get (&end->ref);
  WarmSrc *warm = warm_of (job);
  if (warm != NULL && !ferry_job_state_is_terminal (job->state) && job->state != FERRY_JOB_CANCELLING)
    {
      warm->qmp_busy = FALSE;
      remove_snapshot_files (job, warm->pass);
      record_iteration (job, end->copy);
      warm->pass_running = FALSE;
      if (!warm->pass_final)
        mig_cold_src_poll_every (job, IDLE_POLL_MS);
      if (warm->pass_final)
        {
          save_state (job);
          mig_cold_src_finish (job);
        }
      else if (warm->cutover_at_us != 0 && warm->cutover_at_us <= g_get_real_time ())
        {
          save_state (job);
          cutover_begin (job);
        }
      else
        schedule_next_pass (job);
    }
  if (end->copy)
    json_object_unref (end->copy);
  g_free (end);
}

/* The destination has pass N: its snapshots, exports and the frozen bitmap
 * go (the bitmap recording since then stays). */
static void
pass_end (FerryJob *job, JsonObject *copy)
{
  WarmSrc *warm = warm_of (job);
  FerryQmp *qmp = job_qmp (job);
  if (warm->qmp_busy || qmp == NULL)
    return; /* the next poll asks again */
  g_autoptr (GArray) steps = g_array_new (FALSE, TRUE, sizeof (FerryQmpStep));
  /* Only the frozen bitmap goes; the one recording since stays. */
  add_pass_removal (job, steps, warm->pass - 1, warm->pass - 1);
  warm->qmp_busy = TRUE;
  PassEnd *end = g_new0 (PassEnd, 1);
  end->ref = warm->ref;
  end->copy = copy ? json_object_ref (copy) : NULL;
  ferry_qmp_run_steps_async (qmp, (FerryQmpStep *) steps->data, steps->len, NULL, on_pass_cleaned, end);
}

/* The destination's answer to the source's poll. TRUE when it is about a
 * pass (nothing for mig-cold-src.c to do). */
gboolean
mig_warm_src_on_destination (FerryJob *job, const char *state, JsonObject *reply)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || (job->state != FERRY_JOB_PRECOPY && job->state != FERRY_JOB_CUTOVER))
    return FALSE;
  if (g_strcmp0 (state, "prepared") != 0 && g_strcmp0 (state, "copying") != 0)
    return FALSE;
  JsonNode *copy_node = json_object_get_member (reply, "copy");
  JsonObject *copy = copy_node && JSON_NODE_HOLDS_OBJECT (copy_node) ? json_node_get_object (copy_node) : NULL;
  guint pass = copy ? (guint) ferry_json_object_int (copy, "pass") : 0;
  if (warm->pass_running && pass == warm->pass && g_strcmp0 (state, "prepared") == 0)
    pass_end (job, copy);
  if (warm->pass_running && copy != NULL)
    {
      /* The first pass fills the bar up to 60 %; the final one to 90 %. */
      double total = (double) ferry_json_object_int (copy, "bytes_total");
      double done = (double) ferry_json_object_int (copy, "bytes_done");
      double share = total > 0 ? done / total : 0;
      if (warm->pass == 1)
        ferry_job_set_progress (job, 5 + 55 * share, json_object_get_double_member_with_default (copy, "eta_s", -1));
      else if (!warm->pass_final)
        /* Later passes keep the copy current: the bar waits at 60 % for the cutover. */
        ferry_job_set_progress (job, 60, -1);
      else
        ferry_job_set_progress (job, 80 + 10 * share, json_object_get_double_member_with_default (copy, "eta_s", -1));
    }
  return TRUE;
}

/* ---- start ---------------------------------------------------------------------------- */

static void arm_cutover_timer (FerryJob *job);

static gboolean
on_cutover_timer (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL)
    return G_SOURCE_REMOVE;
  warm->cutover_timer = 0;
  if (job->state != FERRY_JOB_PRECOPY)
    return G_SOURCE_REMOVE;
  if (g_get_real_time () < warm->cutover_at_us)
    {
      /* The timer runs on the monotonic clock; the time asked for is wall
       * clock (and the wall clock may have been set back). */
      arm_cutover_timer (job);
      return G_SOURCE_REMOVE;
    }
  ferry_job_event (job, "info", "cutover time reached");
  /* A pass in flight finishes first; its end starts the cutover. */
  if (!warm->pass_running && !warm->qmp_busy)
    cutover_begin (job);
  return G_SOURCE_REMOVE;
}

static void
arm_cutover_timer (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  g_clear_handle_id (&warm->cutover_timer, g_source_remove);
  if (warm->cutover_at_us == 0)
    return;
  warm->cutover_timer = timeout_at (job, warm->cutover_at_us, on_cutover_timer);
}

/* The destination created the volumes: the guest runs on, pass 1 begins. */
void
mig_warm_src_start (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  ferry_job_transition (job, FERRY_JOB_PRECOPY, "the disks go over while the guest runs");
  if (warm->cutover_at_us != 0)
    {
      g_autofree char *text = ferry_format_unix_time (warm->cutover_at_us / G_USEC_PER_SEC);
      ferry_job_event (job, "info", "cutover scheduled at %s", text);
    }
  arm_cutover_timer (job);
  pass_begin (job, FALSE);
}

/* ---- cutover ---------------------------------------------------------------------------- */

static void
guest_stopped (FerryJob *job, gint64 when_us, const char *how)
{
  WarmSrc *warm = warm_of (job);
  g_clear_handle_id (&warm->shutdown_timer, g_source_remove);
  warm->guest_stopped_us = when_us;
  save_state (job);
  /* The guest is down: every poll interval is downtime. */
  mig_cold_src_poll_every (job, CUTOVER_POLL_MS);
  ferry_job_event (job, "info", "guest %s; copying the last changes", how);
  pass_begin (job, TRUE);
}

static void
on_stopped (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  FerryJob *job = ferry_job_ref_get (ref);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || job->state != FERRY_JOB_CUTOVER || warm->guest_stopped_us != 0)
    return;
  if (reply == NULL)
    {
      warm_fail (job, "cannot stop the guest: %s", error->message);
      return;
    }
  guest_stopped (job, g_get_real_time (), "stopped (it ignored the ACPI shutdown; --force-stop)");
}

static gboolean
on_shutdown_timeout (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL)
    return G_SOURCE_REMOVE;
  warm->shutdown_timer = 0;
  guint timeout_s = job->agent->config.shutdown_timeout_s;
  FerryQmp *qmp = job_qmp (job);
  if (job->options.force_stop && qmp != NULL)
    {
      /* Frozen, not killed: QEMU must stay to serve the last changes. */
      ferry_qmp_execute_async (qmp, "stop", NULL, NULL, on_stopped, ferry_job_ref_new (job));
      return G_SOURCE_REMOVE;
    }
  warm_fail (job, "the guest did not shut down within %u s for the cutover; pass --force-stop to stop it "
             "anyway", timeout_s);
  return G_SOURCE_REMOVE;
}

static void
on_powerdown_sent (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  FerryJob *job = ferry_job_ref_get (ref);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || job->state != FERRY_JOB_CUTOVER)
    return;
  if (reply == NULL)
    {
      warm_fail (job, "cannot shut the guest down: %s", error->message);
      return;
    }
  if (warm->guest_stopped_us == 0 && warm->shutdown_timer == 0)
    warm->shutdown_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, job->agent->config.shutdown_timeout_s,
                                                       on_shutdown_timeout, ferry_job_ref_new (job), g_free);
}

static void cutover_shut_down (FerryJob *job);

static void
on_dirty_counted (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) nodes = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  FerryJob *job = ferry_job_ref_get (ref);
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || job->state != FERRY_JOB_PRECOPY)
    return;
  warm->qmp_busy = FALSE;
  /* What the recording bitmaps mark: what a pass now would copy. */
  g_autofree char *recording = bitmap_name (job, warm->pass);
  g_autofree gint64 *counted = g_new (gint64, warm->disks->len);
  gint64 dirty = nodes ? count_per_disk (job, nodes, recording, counted) : -1;
  if (dirty > CATCH_UP_BYTES && warm->catch_up_passes < MAX_CATCH_UP_PASSES)
    {
      /* The guest still runs: copy most of it now, so that the pass with
       * the guest stopped is short. Each disk's count so far sizes the
       * destination's connections. */
      warm->catch_up_passes++;
      ferry_job_event (job, "info", "cutover: %" G_GINT64_FORMAT " MiB changed since the last pass; one more pass "
                       "before the guest stops", dirty >> 20);
      announce_pass (job, FALSE, counted);
      pass_begin (job, FALSE);
      return;
    }
  cutover_shut_down (job);
}

/* The cutover is due: first, while the changes since the last pass are
 * large, passes go on with the guest running (at most a few). */
static void
cutover_begin (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  FerryQmp *qmp = job_qmp (job);
  if (qmp == NULL || warm->qmp_busy)
    {
      cutover_shut_down (job);
      return;
    }
  g_autoptr (JsonObject) args = json_object_new ();
  json_object_set_boolean_member (args, "flat", TRUE);
  warm->qmp_busy = TRUE;
  ferry_qmp_execute_async (qmp, "query-named-block-nodes", args, NULL, on_dirty_counted, ferry_job_ref_new (job));
}

/* The final pass's overlay files are made while the guest shuts down
 * (the powerdown is already on its way), not after it stopped: its
 * snapshot then waits for no qemu-img (5-10 ms a disk) in the downtime.
 * On failure pass_begin makes them as always. */
static void
precreate_final_files (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  guint pass = warm->pass + 1;
  for (guint i = 0; i < warm->disks->len; i++)
    {
      g_autoptr (GError) error = NULL;
      if (!create_snapshot_file (job, g_ptr_array_index (warm->disks, i), pass, &error))
        {
          g_info ("job %" G_GINT64_FORMAT ": the final pass's overlays wait for the pass: %s", job->id,
                  error->message);
          return;
        }
    }
  warm->precreated_pass = pass;
}

static void
cutover_shut_down (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  FerryQmp *qmp = job_qmp (job);
  g_clear_handle_id (&warm->pass_timer, g_source_remove);
  g_clear_handle_id (&warm->cutover_timer, g_source_remove);
  if (qmp == NULL)
    {
      warm_fail (job, "the guest's QEMU is gone; nothing to cut over");
      return;
    }
  guint timeout_s = job->agent->config.shutdown_timeout_s;
  g_autofree char *reason = g_strdup_printf ("shutting the guest down (ACPI, %u s%s)", timeout_s,
                                             job->options.force_stop ? ", then stopped" : "");
  ferry_job_transition (job, FERRY_JOB_CUTOVER, reason);
  save_state (job);
  /* The guest powers off, but QEMU stays (paused) to serve the last changes. */
  FerryQmpStep steps[] = {
    { "set-action", ferry_qmp_args_set_shutdown_action (TRUE) },
    { "system_powerdown", NULL },
  };
  ferry_qmp_run_steps_async (qmp, steps, G_N_ELEMENTS (steps), NULL, on_powerdown_sent, ferry_job_ref_new (job));
  announce_pass (job, TRUE, NULL);
  precreate_final_files (job);
}

gboolean
mig_warm_src_cutover (FerryJob *job, gint64 at, GError **error)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || job->state != FERRY_JOB_PRECOPY)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "VM '%s' has no warm migration in pre-copy "
                   "(its job is %s)", job->vm_name, warm ? ferry_job_state_to_string (job->state) : "not warm");
      return FALSE;
    }
  if (at != 0 && !ferry_check_future ("at", at, error))
    return FALSE;
  warm->cutover_at_us = at != 0 ? at * G_USEC_PER_SEC : g_get_real_time ();
  save_state (job);
  g_autofree char *text = ferry_format_unix_time (warm->cutover_at_us / G_USEC_PER_SEC);
  ferry_job_event (job, "info", at != 0 ? "cutover scheduled at %s" : "cutover asked for now (%s)", text);
  arm_cutover_timer (job);
  return TRUE;
}

void
mig_warm_src_on_qmp_event (FerryJob *job, const char *name, JsonObject *data, gint64 timestamp_us)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL)
    return;
  if (g_str_equal (name, "SHUTDOWN") && job->state == FERRY_JOB_CUTOVER && warm->guest_stopped_us == 0)
    guest_stopped (job, timestamp_us > 0 ? timestamp_us : g_get_real_time (), "shut down");
  else if (g_str_equal (name, "BLOCK_JOB_COMPLETED") || g_str_equal (name, "BLOCK_JOB_ERROR"))
    {
      /* A snapshot's backup job ended on its own (its file could not
       * grow): the snapshot no longer holds the old blocks. */
      const char *device = data ? ferry_json_object_string (data, "device") : NULL;
      g_autofree char *prefix = g_strdup_printf ("ferry-snap-%" G_GINT64_FORMAT "-", job->id);
      if (device != NULL && g_str_has_prefix (device, prefix) && warm->pass_running)
        warm_fail (job, "pass %u: the snapshot of %s failed: %s", warm->pass, device,
                   data && ferry_json_object_string (data, "error") ? ferry_json_object_string (data, "error")
                                                                   : "its backup job ended");
    }
}

/* The guest died during pre-copy: nothing is left to cut over from. */
void
mig_warm_src_on_vm_gone (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || (job->state != FERRY_JOB_PRECOPY && job->state != FERRY_JOB_CUTOVER)
      || warm->guest_stopped_us != 0)
    return;
  warm_fail (job, "the guest stopped during pre-copy (its QEMU exited); the VM stays here, shut off — "
             "use a cold migration (--offline --copy-storage) to move it now");
}

/* ---- the source's own digests: of the snapshot the destination copies ----------------- */

char *
mig_warm_src_digest_uri (FerryJob *job, guint disk)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || !warm->pass_running || warm->nbd_port == 0)
    return NULL;
  g_autofree char *creds = g_build_filename (job->agent->config.state_dir, "qemu-tls", NULL);
  g_autofree char *name = export_name (disk);
  return ferry_nbd_tls_uri (job->agent->listen_host, warm->nbd_port, name, creds);
}

/* ---- downtime ------------------------------------------------------------------------------ */

void
mig_warm_src_destination_running (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  if (warm == NULL || warm->guest_stopped_us == 0)
    return;
  gint64 downtime_ms = (g_get_real_time () - warm->guest_stopped_us) / 1000;
  json_object_set_int_member (job->stats, "ferry-guest-downtime-ms", downtime_ms);
  save_state (job);
  ferry_job_event (job, "info", "cutover downtime %.1f s (source guest shut down → destination VM running)",
                   (double) downtime_ms / 1000);
}

/* ---- restart -------------------------------------------------------------------------------- */

WarmSrc *
mig_warm_src_restore (FerryJob *job)
{
  JsonNode *node = json_object_get_member (job->stats, "ferry-warm");
  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node))
    return NULL;
  JsonObject *state = json_node_get_object (node);
  JsonNode *disks_node = json_object_get_member (state, "disks");
  if (disks_node == NULL || !JSON_NODE_HOLDS_ARRAY (disks_node))
    return NULL;
  JsonArray *array = json_node_get_array (disks_node);
  g_autofree FerryWarmDisk *disks = g_new0 (FerryWarmDisk, json_array_get_length (array) + 1);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonObject *entry = json_array_get_object_element (array, i);
      disks[i].index = (guint) ferry_json_object_int (entry, "index");
      disks[i].path = ferry_json_object_string (entry, "path");
      disks[i].format = json_object_get_boolean_member_with_default (entry, "persistent", FALSE) ? "qcow2" : "raw";
      disks[i].virtual_size = (guint64) ferry_json_object_int (entry, "virtual_size");
    }
  WarmSrc *warm = mig_warm_src_new (job, disks, json_array_get_length (array));
  warm->pass = (guint) ferry_json_object_int (state, "pass");
  warm->pass_running = json_object_get_boolean_member_with_default (state, "pass_running", FALSE);
  warm->pass_final = json_object_get_boolean_member_with_default (state, "pass_final", FALSE);
  warm->nbd_port = (guint16) ferry_json_object_int (state, "nbd_port");
  warm->pass_started_us = ferry_json_object_int (state, "pass_started_us");
  warm->next_pass_at_us = ferry_json_object_int (state, "next_pass_at_us");
  warm->cutover_at_us = ferry_json_object_int (state, "cutover_at_us");
  warm->guest_stopped_us = ferry_json_object_int (state, "guest_stopped_us");
  warm->iterations_dropped = (guint64) ferry_json_object_int (state, "iterations_dropped");
  JsonNode *iterations = json_object_get_member (state, "iterations");
  if (iterations != NULL && JSON_NODE_HOLDS_ARRAY (iterations))
    {
      json_array_unref (warm->iterations);
      warm->iterations = json_node_dup_array (iterations);
    }
  return warm;
}

/* A restarted agent carries on from the persisted state (the job is
 * restored and polling). */
void
mig_warm_src_resume (FerryJob *job)
{
  WarmSrc *warm = warm_of (job);
  if (job->state == FERRY_JOB_CANCELLING)
    {
      mig_warm_src_roll_back (job, FERRY_JOB_FAILED, job->error ? job->error : "rolled back");
      return;
    }
  if (job->state == FERRY_JOB_PRECOPY)
    {
      arm_cutover_timer (job);
      if (warm->pass_running)
        ferry_job_event (job, "info", "pass %u continues (QEMU kept its snapshot and export)", warm->pass);
      else if (warm->next_pass_at_us == 0)
        {
          /* Stopped in the milliseconds between asking QEMU for the
           * snapshots and recording them: which bitmap covers what is not
           * known for sure, so the migration is rolled back rather than
           * risk missing a change. */
          warm_fail (job, "the agent restarted while pass %u was being set up", warm->pass);
        }
      else
        {
          g_autofree char *text = ferry_format_unix_time (warm->next_pass_at_us / G_USEC_PER_SEC);
          ferry_job_event (job, "info", "after %u passes; the next one at %s copies only the changes", warm->pass,
                           text);
          schedule_next_pass (job);
        }
      return;
    }
  if (job->state == FERRY_JOB_CUTOVER && warm->pass_running && warm->pass_final)
    {
      ferry_job_event (job, "info", "final pass %u continues", warm->pass);
      return;
    }
  if (job->state == FERRY_JOB_CUTOVER)
    warm_fail (job, "the agent restarted during the cutover before the last pass began");
}
