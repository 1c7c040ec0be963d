/* ferry agent — live migration without shared storage, source side
 * (virsh migrate --copy-storage-all).
 *
 * The destination created empty volumes, started its QEMU with them and
 * serves them writable over NBD (TLS). Here each disk is mirrored into
 * its NBD twin (blockdev-mirror, sync full); memory migration starts only
 * when every mirror is ready (the copy caught up, new writes follow). When
 * the memory stream completes the guest is paused, so cancelling a ready
 * mirror ends it with both sides identical; only then does the destination
 * get Finish. Any failure before cancels the mirrors and leaves the source
 * as it was: its own disks were only read.
 *
 * QEMU 7.2 cannot change a mirror's copy mode once started
 * (block-job-change arrived in 8.2), so the mode is chosen at the start:
 * write-blocking (every guest write waits for the destination) when the
 * guest already writes at more than half the link's rate, background
 * otherwise.
 */
#include "agent.h"

#include <glib/gstdio.h>
#include <signal.h>
#include <stdio.h>

#include "jsonutil.h"

/* Names QEMU knows a job's mirrors by: the job id makes them unique, so
 * what an earlier job left (a mirror still ending, an agent restarted
 * mid-mirror) never collides with them, and the reaper can tell whose
 * they are. The TLS object is the mirrors' own for the same reason: a
 * node that outlives its job keeps it in use. */
#define MIRROR_JOB_FORMAT "ferry-mirror-%" G_GINT64_FORMAT "-%u"
#define MIRROR_TARGET_FORMAT "ferry-mirror-%" G_GINT64_FORMAT "-disk%u"
#define MIRROR_CREDS_FORMAT "ferry-mirror-tls-%" G_GINT64_FORMAT
#define MIRROR_POLL_MS 1000
#define WRITE_SAMPLE_MS 1000
#define REMOVAL_DELAY_S 2
#define TEARDOWN_TIMEOUT_S 15

typedef struct {
  guint index;
  char *node;               /* the guest's format node, "diskN" */
  char *target;             /* our NBD client node */
  char *job_id;
  gboolean ready;
  gboolean ended;
  gint64 len;
  gint64 offset;
} Mirror;

typedef struct {
  FerryJobRef ref;
  GPtrArray *mirrors;
  char *host;
  guint16 port;
  gboolean write_blocking;
  gboolean completing;      /* after the stream: cancelling ready mirrors */
  gboolean failed;
  gboolean starting;        /* the start steps are under way */
  gboolean tearing_down;    /* rollback: the mirrors end, then their nodes go */
  gboolean removing_nodes;
  guint poll_timer;
  guint teardown_timer;
  guint removal_timer;      /* rollback: ended mirrors' nodes go when it fires */
  guint removal_attempts;
  gint64 written_before;    /* wr_bytes sum at the start of the sample */
  gint64 ready_us;
  gint64 started_us;
} Storage;

static void
mirror_free (Mirror *mirror)
{
  g_free (mirror->node);
  g_free (mirror->target);
  g_free (mirror->job_id);
  g_free (mirror);
}

static void
storage_free (Storage *storage)
{
  g_clear_handle_id (&storage->poll_timer, g_source_remove);
  g_clear_handle_id (&storage->teardown_timer, g_source_remove);
  g_ptr_array_unref (storage->mirrors);
  g_free (storage->host);
  g_free (storage);
}

static Storage *
storage_of (FerryJob *job)
{
  return job->storage_free == (GDestroyNotify) storage_free ? job->storage : NULL;
}

/* A command whose answer nobody waits for (its effect shows in events). */
static void
on_forgotten_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree char *what = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  /* Expected at times (a second removal finds nothing): debug only. */
  if (reply == NULL)
    g_debug ("QMP %s: %s", what, error->message);
}

static void
send_and_forget (FerryVm *vm, const char *command, JsonObject *arguments)
{
  g_autofree char *args = ferry_json_object_to_string (arguments, FALSE);
  ferry_qmp_execute_async (vm->qmp, command, arguments, NULL, on_forgotten_reply,
                           g_strdup_printf ("%s %s", command, args));
  json_object_unref (arguments);
}

static Mirror *
mirror_by_job_id (Storage *storage, const char *job_id)
{
  for (guint i = 0; job_id != NULL && i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      if (g_str_equal (mirror->job_id, job_id))
        return mirror;
    }
  return NULL;
}

/* ---- progress --------------------------------------------------------------- */

static void
publish (FerryJob *job)
{
  Storage *storage = storage_of (job);
  JsonObject *status = json_object_new ();
  JsonArray *list = json_array_new ();
  gint64 len = 0, offset = 0;
  for (guint i = 0; i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      JsonObject *entry = json_object_new ();
      json_object_set_int_member (entry, "index", mirror->index);
      json_object_set_int_member (entry, "len", mirror->len);
      json_object_set_int_member (entry, "offset", mirror->offset);
      json_object_set_boolean_member (entry, "ready", mirror->ready);
      json_array_add_object_element (list, entry);
      len += mirror->len;
      offset += mirror->offset;
    }
  json_object_set_array_member (status, "disks", list);
  json_object_set_int_member (status, "len", len);
  json_object_set_int_member (status, "offset", offset);
  json_object_set_string_member (status, "copy_mode", storage->write_blocking ? "write-blocking" : "background");
  if (storage->ready_us > 0)
    json_object_set_int_member (status, "ready_after_ms", (storage->ready_us - storage->started_us) / 1000);
  json_object_set_object_member (job->stats, "ferry-mirror", status);
  /* Mirroring is the first half of the scale; memory fills the rest. */
  if (storage->ready_us == 0 && len > 0)
    ferry_job_set_progress (job, 5 + 45.0 * (double) offset / (double) len, -1);
}

static void
on_block_jobs (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  Storage *storage = job ? storage_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (storage == NULL || reply == NULL || !JSON_NODE_HOLDS_ARRAY (reply))
    return;
  JsonArray *jobs = json_node_get_array (reply);
  for (guint i = 0; i < json_array_get_length (jobs); i++)
    {
      JsonObject *entry = json_array_get_object_element (jobs, i);
      Mirror *mirror = entry ? mirror_by_job_id (storage, ferry_json_object_string (entry, "device")) : NULL;
      if (mirror == NULL)
        continue;
      mirror->len = ferry_json_object_int (entry, "len");
      mirror->offset = ferry_json_object_int (entry, "offset");
    }
  publish (job);
}

static gboolean
on_mirror_poll (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  FerryVm *vm = job ? ferry_job_vm (job) : NULL;
  if (job == NULL || storage_of (job) == NULL)
    return G_SOURCE_REMOVE;
  if (vm != NULL && vm->qmp != NULL)
    ferry_qmp_execute_async (vm->qmp, "query-block-jobs", NULL, NULL, on_block_jobs, ferry_job_ref_new (job));
  return G_SOURCE_CONTINUE;
}

/* ---- failure ------------------------------------------------------------------ */

static void
storage_fail (FerryJob *job, const char *reason)
{
  Storage *storage = storage_of (job);
  if (storage->failed)
    return;
  storage->failed = TRUE;
  g_clear_handle_id (&storage->poll_timer, g_source_remove);
  mig_src_rollback (job, reason);
}

/* The rollback's teardown. The destination serves its new disks to our
 * mirrors' NBD clients; it is told to go (mig_src_storage_released) only
 * once every mirror has ended and its client node is gone, so that no
 * client sees its server vanish under in-flight requests. After that
 * (the destination killed while a mirror wrote at 2 MiB/s), QEMU 7.2's
 * source process died seconds later of a corrupted heap, taking the
 * guest with it. */

static void
teardown_done (FerryJob *job)
{
  Storage *storage = storage_of (job);
  if (storage == NULL || !storage->tearing_down)
    return;
  storage->tearing_down = FALSE;
  g_clear_handle_id (&storage->teardown_timer, g_source_remove);
  mig_src_storage_released (job);
}

static gboolean
on_teardown_timeout (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  Storage *storage = job ? storage_of (job) : NULL;
  if (storage == NULL)
    return G_SOURCE_REMOVE;
  storage->teardown_timer = 0;
  /* What is left is the reaper's once it ends. */
  ferry_job_event (job, "warning", "the disk mirrors did not end within %u s of the cancel", TEARDOWN_TIMEOUT_S);
  teardown_done (job);
  return G_SOURCE_REMOVE;
}

static void schedule_removal (FerryVm *vm, gint64 job_id, guint index, gboolean node_too);
static gboolean parse_mirror_name (const char *name, gboolean node, gint64 *job_id, guint *index);

#define REMOVAL_ATTEMPTS 10

static gboolean on_teardown_removal_due (gpointer user_data);

/* The destination may go only once none of this job's NBD client nodes is
 * left in QEMU: a client whose server vanishes is what QEMU 7.2 died of
 * (below). A node still there is removed again, a second later. */
static void
on_teardown_nodes_checked (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, NULL);
  FerryJob *job = ferry_job_ref_get (ref);
  Storage *storage = job ? storage_of (job) : NULL;
  FerryVm *vm = job ? ferry_job_vm (job) : NULL;
  if (storage == NULL)
    return;
  JsonArray *nodes = reply && JSON_NODE_HOLDS_ARRAY (reply) ? json_node_get_array (reply) : NULL;
  g_autoptr (GString) left = g_string_new (NULL);
  for (guint i = 0; nodes != NULL && i < json_array_get_length (nodes); i++)
    {
      JsonObject *node = json_array_get_object_element (nodes, i);
      const char *name = node ? ferry_json_object_string (node, "node-name") : NULL;
      gint64 job_id = 0;
      guint index = 0;
      if (parse_mirror_name (name, TRUE, &job_id, &index) && job_id == job->id)
        g_string_append_printf (left, "%s%s", left->len ? ", " : "", name);
    }
  if (left->len > 0 && vm != NULL && vm->qmp != NULL && ++storage->removal_attempts < REMOVAL_ATTEMPTS)
    {
      ferry_job_event (job, "warning", "mirror node(s) %s still in QEMU after their removal; again in 1 s "
                       "(the destination waits)", left->str);
      storage->removal_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, 1000, on_teardown_removal_due,
                                                   ferry_job_ref_new (job), g_free);
      return;
    }
  if (left->len > 0)
    ferry_job_event (job, "warning", "mirror node(s) %s still in QEMU after %u removals; telling the "
                     "destination anyway", left->str, REMOVAL_ATTEMPTS);
  /* The TLS object a little later again, as after a completed mirror. */
  if (vm != NULL)
    schedule_removal (vm, job->id, 0, FALSE);
  teardown_done (job);
}

/* Test hook: with FERRY_FAULT_KILL_QEMU_AT_TEARDOWN naming a file that
 * exists, the file goes and the guest's QEMU is killed as the node check
 * is sent, so that QEMU dies with a rollback command pending, as it did
 * of a corrupted heap in CI (test_live_storage). */
static void
fault_kill_qemu_at_teardown (FerryVm *vm)
{
  const char *flag = g_getenv ("FERRY_FAULT_KILL_QEMU_AT_TEARDOWN");
  if (flag == NULL || vm->pid <= 0 || g_unlink (flag) != 0)
    return;
  g_warning ("vm %s: test hook: killing QEMU (pid %d) during the storage rollback", vm->name, vm->pid);
  kill (vm->pid, SIGKILL);
}

/* The ended mirrors' jobs and NBD client nodes go REMOVAL_DELAY_S after
 * the last one ended, as the reaper's do: QEMU 7.2 died of a corrupted
 * heap when they went the moment a write-blocking mirror was
 * force-cancelled (CI, and a completion timeout's rollback here). With
 * the delay alone it died once more in CI, 180 ms after the destination
 * went, where the removals' errors were not looked at: hence the check
 * (on_teardown_nodes_checked) before the destination is told. QEMU runs a
 * monitor's commands in order, so the node query sees the removals done. */
static gboolean
on_teardown_removal_due (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  Storage *storage = job ? storage_of (job) : NULL;
  FerryVm *vm = job ? ferry_job_vm (job) : NULL;
  if (storage == NULL)
    return G_SOURCE_REMOVE;
  storage->removal_timer = 0;
  if (vm == NULL || vm->qmp == NULL)
    {
      teardown_done (job);
      return G_SOURCE_REMOVE;
    }
  for (guint i = 0; i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      send_and_forget (vm, "job-dismiss", ferry_qmp_args_id ("id", mirror->job_id));
      send_and_forget (vm, "blockdev-del", ferry_qmp_args_id ("node-name", mirror->target));
    }
  g_autoptr (JsonObject) flat = json_object_new ();
  json_object_set_boolean_member (flat, "flat", TRUE);
  ferry_qmp_execute_async (vm->qmp, "query-named-block-nodes", flat, NULL, on_teardown_nodes_checked,
                           ferry_job_ref_new (job));
  fault_kill_qemu_at_teardown (vm);
  return G_SOURCE_REMOVE;
}

/* Once every mirror has ended: its job and NBD client node go (after
 * REMOVAL_DELAY_S), then the destination is told, then the TLS object
 * goes. Errors are expected and ignored (a mirror that never started has
 * no node; QEMU dismissed the job itself). */
static void
teardown_continue (FerryJob *job)
{
  Storage *storage = storage_of (job);
  FerryVm *vm = ferry_job_vm (job);
  if (!storage->tearing_down || storage->starting || storage->removing_nodes)
    return;
  for (guint i = 0; i < storage->mirrors->len; i++)
    if (!((Mirror *) g_ptr_array_index (storage->mirrors, i))->ended)
      return;
  if (vm == NULL || vm->qmp == NULL)
    {
      teardown_done (job);
      return;
    }
  storage->removing_nodes = TRUE;
  /* Every mirror ended: the rest is bounded by our own delay. */
  g_clear_handle_id (&storage->teardown_timer, g_source_remove);
  storage->removal_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, REMOVAL_DELAY_S, on_teardown_removal_due,
                                                       ferry_job_ref_new (job), g_free);
}

typedef struct {
  FerryJobRef ref;
  guint index;
} MirrorRef;

/* A cancel refused means there is no such job (it never started, or it
 * ended and QEMU dismissed it): that mirror has ended. */
static void
on_teardown_cancel_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree MirrorRef *ref = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  FerryJob *job = ferry_job_ref_get (&ref->ref);
  Storage *storage = job ? storage_of (job) : NULL;
  if (storage == NULL || reply != NULL || ref->index >= storage->mirrors->len)
    return;
  ((Mirror *) g_ptr_array_index (storage->mirrors, ref->index))->ended = TRUE;
  teardown_continue (job);
}

/* Forced: a mirror that is not ready ends at once; the target is thrown
 * away with the destination's volumes. */
static void
teardown_cancel_mirrors (FerryJob *job)
{
  Storage *storage = storage_of (job);
  FerryVm *vm = ferry_job_vm (job);
  for (guint i = 0; vm != NULL && vm->qmp != NULL && i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      if (mirror->ended)
        continue;
      MirrorRef *ref = g_new0 (MirrorRef, 1);
      ref->ref.agent = job->agent;
      ref->ref.job_id = job->id;
      ref->index = i;
      JsonObject *args = ferry_qmp_args_block_job_cancel (mirror->job_id, TRUE);
      ferry_qmp_execute_async (vm->qmp, "block-job-cancel", args, NULL, on_teardown_cancel_reply, ref);
      json_object_unref (args);
    }
  teardown_continue (job);
}

gboolean
mig_storage_src_cancel (FerryJob *job)
{
  Storage *storage = storage_of (job);
  FerryVm *vm = ferry_job_vm (job);
  if (storage == NULL || storage->tearing_down || vm == NULL || vm->qmp == NULL)
    return FALSE;
  storage->failed = TRUE;
  storage->tearing_down = TRUE;
  g_clear_handle_id (&storage->poll_timer, g_source_remove);
  storage->teardown_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, TEARDOWN_TIMEOUT_S, on_teardown_timeout,
                                                        ferry_job_ref_new (job), g_free);
  /* Mirrors still starting are cancelled once their steps are done. */
  if (!storage->starting)
    teardown_cancel_mirrors (job);
  return TRUE;
}

/* ---- events --------------------------------------------------------------------- */

static void on_mirrors_completed (FerryJob *job);

/* What is removed once a mirror has ended, a little later: its NBD
 * client may still be closing its connection (QEMU 7.2 crashed, in CI,
 * when the node and its TLS object went the moment a write-blocking
 * mirror was force-cancelled). */
typedef struct {
  FerryAgent *agent;
  char *vm_name;
  gint64 job_id;
  guint index;
  gboolean node_too;        /* else the TLS object only */
} Removal;

static void
removal_free (Removal *removal)
{
  g_free (removal->vm_name);
  g_free (removal);
}

/* Errors are ignored: the TLS object is refused while another mirror of
 * the job still uses it (the last removal succeeds), and a second
 * removal of the same mirror finds nothing. */
static gboolean
on_removal_due (gpointer user_data)
{
  Removal *removal = user_data;
  FerryVm *vm = g_hash_table_lookup (removal->agent->vms, removal->vm_name);
  if (vm == NULL || vm->qmp == NULL)
    return G_SOURCE_REMOVE;
  if (removal->node_too)
    {
      g_autofree char *block_job = g_strdup_printf (MIRROR_JOB_FORMAT, removal->job_id, removal->index);
      g_autofree char *target = g_strdup_printf (MIRROR_TARGET_FORMAT, removal->job_id, removal->index);
      send_and_forget (vm, "job-dismiss", ferry_qmp_args_id ("id", block_job));
      send_and_forget (vm, "blockdev-del", ferry_qmp_args_id ("node-name", target));
    }
  g_autofree char *creds = g_strdup_printf (MIRROR_CREDS_FORMAT, removal->job_id);
  send_and_forget (vm, "object-del", ferry_qmp_args_id ("id", creds));
  return G_SOURCE_REMOVE;
}

static void
schedule_removal (FerryVm *vm, gint64 job_id, guint index, gboolean node_too)
{
  Removal *removal = g_new0 (Removal, 1);
  removal->agent = vm->agent;
  removal->vm_name = g_strdup (vm->name);
  removal->job_id = job_id;
  removal->index = index;
  removal->node_too = node_too;
  g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, REMOVAL_DELAY_S, on_removal_due, removal,
                              (GDestroyNotify) removal_free);
}

/* A mirror that completed (the guest paused, the copy identical): the
 * job and node go now, as they always did; the TLS object later. */
static void
remove_completed_mirror (FerryVm *vm, Mirror *mirror, gint64 job_id)
{
  if (vm == NULL || vm->qmp == NULL)
    return;
  send_and_forget (vm, "job-dismiss", ferry_qmp_args_id ("id", mirror->job_id));
  send_and_forget (vm, "blockdev-del", ferry_qmp_args_id ("node-name", mirror->target));
  schedule_removal (vm, job_id, mirror->index, FALSE);
}

/* Parses "ferry-mirror-J-N" (a block job) or "ferry-mirror-J-diskN" (its
 * target node). */
static gboolean
parse_mirror_name (const char *name, gboolean node, gint64 *job_id, guint *index)
{
  int consumed = 0;
  const char *format = node ? "ferry-mirror-%" G_GINT64_FORMAT "-disk%u%n" : "ferry-mirror-%" G_GINT64_FORMAT "-%u%n";
  return name != NULL && sscanf (name, format, job_id, index, &consumed) == 2 && name[consumed] == '\0';
}

static gboolean
owned_by_running_storage (FerryVm *vm, gint64 job_id)
{
  FerryJob *owner = vm->job != NULL && vm->job->id == job_id ? vm->job : NULL;
  Storage *storage = owner ? storage_of (owner) : NULL;
  /* A job tearing its mirrors down still owns them. */
  return storage != NULL && (!storage->failed || storage->tearing_down);
}

void
mig_storage_src_reap (FerryVm *vm, const char *name, JsonObject *data)
{
  const char *id = g_str_equal (name, "JOB_STATUS_CHANGE") ? ferry_json_object_string (data, "id") : NULL;
  const char *status = ferry_json_object_string (data, "status");
  gint64 job_id = 0;
  guint index = 0;
  if (status == NULL || !parse_mirror_name (id, FALSE, &job_id, &index) || owned_by_running_storage (vm, job_id))
    return;
  if (g_str_equal (status, "running") || g_str_equal (status, "ready") || g_str_equal (status, "paused"))
    {
      g_info ("vm %s: cancelling mirror %s: its migration ended", vm->name, id);
      send_and_forget (vm, "block-job-cancel", ferry_qmp_args_block_job_cancel (id, TRUE));
    }
  else if (g_str_equal (status, "concluded"))
    {
      g_info ("vm %s: removing mirror %s in %u s: its migration ended", vm->name, id, REMOVAL_DELAY_S);
      schedule_removal (vm, job_id, index, TRUE);
    }
}

/* A VM by name: it may be undefined before a reply comes. */
typedef struct {
  FerryAgent *agent;
  char *name;
} VmRef;

static void
vm_ref_free (VmRef *ref)
{
  g_free (ref->name);
  g_free (ref);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (VmRef, vm_ref_free)

static void
on_sweep_nodes (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (VmRef) ref = user_data;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, NULL);
  FerryVm *vm = g_hash_table_lookup (ref->agent->vms, ref->name);
  JsonArray *nodes = reply && JSON_NODE_HOLDS_ARRAY (reply) ? json_node_get_array (reply) : NULL;
  for (guint i = 0; vm != NULL && vm->qmp != NULL && nodes != NULL && i < json_array_get_length (nodes); i++)
    {
      JsonObject *node = json_array_get_object_element (nodes, i);
      gint64 job_id = 0;
      guint index = 0;
      if (node == NULL || !parse_mirror_name (ferry_json_object_string (node, "node-name"), TRUE, &job_id, &index)
          || owned_by_running_storage (vm, job_id))
        continue;
      g_info ("vm %s: removing %s, left by an earlier agent", vm->name, ferry_json_object_string (node, "node-name"));
      schedule_removal (vm, job_id, index, TRUE);
    }
}

static void
on_sweep_jobs (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (VmRef) ref = user_data;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, NULL);
  FerryVm *vm = g_hash_table_lookup (ref->agent->vms, ref->name);
  JsonArray *jobs = reply && JSON_NODE_HOLDS_ARRAY (reply) ? json_node_get_array (reply) : NULL;
  for (guint i = 0; vm != NULL && vm->qmp != NULL && jobs != NULL && i < json_array_get_length (jobs); i++)
    {
      JsonObject *entry = json_array_get_object_element (jobs, i);
      const char *id = entry ? ferry_json_object_string (entry, "id") : NULL;
      gint64 job_id = 0;
      guint index = 0;
      if (!parse_mirror_name (id, FALSE, &job_id, &index) || owned_by_running_storage (vm, job_id))
        continue;
      /* A running one is cancelled (the reaper removes it once it has
       * ended); one that has ended goes with its node below. */
      const char *status = ferry_json_object_string (entry, "status");
      if (g_strcmp0 (status, "concluded") != 0)
        {
          g_info ("vm %s: cancelling mirror %s, left by an earlier agent", vm->name, id);
          send_and_forget (vm, "block-job-cancel", ferry_qmp_args_block_job_cancel (id, TRUE));
        }
    }
  if (vm != NULL && vm->qmp != NULL)
    {
      JsonObject *args = json_object_new ();
      json_object_set_boolean_member (args, "flat", TRUE);
      ferry_qmp_execute_async (vm->qmp, "query-named-block-nodes", args, NULL, on_sweep_nodes,
                               g_steal_pointer (&ref));
      json_object_unref (args);
    }
}

void
mig_storage_src_sweep (FerryVm *vm)
{
  if (vm->qmp == NULL)
    return;
  VmRef *ref = g_new0 (VmRef, 1);
  ref->agent = vm->agent;
  ref->name = g_strdup (vm->name);
  ferry_qmp_execute_async (vm->qmp, "query-jobs", NULL, NULL, on_sweep_jobs, ref);
}

gboolean
mig_storage_src_on_event (FerryJob *job, const char *name, JsonObject *data)
{
  /* A QEMU that exits during the teardown ends the job from mig-src.c
   * (its exit handler tells the destination and finishes). */
  Storage *storage = storage_of (job);
  if (storage == NULL || !g_str_has_prefix (name, "BLOCK_JOB_"))
    return FALSE;
  Mirror *mirror = mirror_by_job_id (storage, ferry_json_object_string (data, "device"));
  if (mirror == NULL)
    return TRUE;
  FerryVm *vm = ferry_job_vm (job);
  if (g_str_equal (name, "BLOCK_JOB_READY") && !mirror->ready)
    {
      mirror->ready = TRUE;
      mirror->len = ferry_json_object_int (data, "len");
      mirror->offset = ferry_json_object_int (data, "offset");
      ferry_job_event (job, "info", "disk%u mirrored (%" G_GINT64_FORMAT " MiB); new writes follow",
                       mirror->index, mirror->len >> 20);
      gboolean all = TRUE;
      for (guint i = 0; i < storage->mirrors->len; i++)
        all &= ((Mirror *) g_ptr_array_index (storage->mirrors, i))->ready;
      if (all && !storage->failed && storage->ready_us == 0)
        {
          storage->ready_us = g_get_monotonic_time ();
          publish (job);
          ferry_job_event (job, "info", "every disk mirrored after %.1f s; migrating memory",
                           (double) (storage->ready_us - storage->started_us) / 1e6);
          if (job->abort_requested)
            storage_fail (job, "aborted by the user");
          else
            mig_src_perform (job);
        }
    }
  else if (g_str_equal (name, "BLOCK_JOB_COMPLETED") || g_str_equal (name, "BLOCK_JOB_CANCELLED"))
    {
      const char *failure = ferry_json_object_string (data, "error");
      mirror->ended = TRUE;
      if (storage->tearing_down)
        {
          teardown_continue (job);
          return TRUE;
        }
      if (!storage->failed)   /* else the reaper removes it */
        remove_completed_mirror (vm, mirror, job->id);
      if (storage->completing && !storage->failed)
        {
          if (failure != NULL || !mirror->ready)
            {
              g_autofree char *reason = g_strdup_printf ("mirror of disk%u ended badly: %s", mirror->index,
                                                         failure ? failure : "cancelled before it was ready");
              storage_fail (job, reason);
              return TRUE;
            }
          gboolean all = TRUE;
          for (guint i = 0; i < storage->mirrors->len; i++)
            all &= ((Mirror *) g_ptr_array_index (storage->mirrors, i))->ended;
          if (all)
            on_mirrors_completed (job);
        }
      else if (!storage->failed)
        {
          g_autofree char *reason = g_strdup_printf ("mirror of disk%u stopped: %s", mirror->index,
                                                     failure ? failure : "cancelled");
          storage_fail (job, reason);
        }
    }
  else if (g_str_equal (name, "BLOCK_JOB_ERROR") && !storage->failed)
    {
      g_autofree char *reason = g_strdup_printf ("mirror of disk%u: %s error (%s)", mirror->index,
                                                 ferry_json_object_string (data, "operation"),
                                                 ferry_json_object_string (data, "action"));
      storage_fail (job, reason);
    }
  return TRUE;
}

/* ---- completion (guest paused after the memory stream) ------------------------------ */

static void
on_mirrors_completed (FerryJob *job)
{
  Storage *storage = storage_of (job);
  g_clear_handle_id (&storage->poll_timer, g_source_remove);
  publish (job);
  ferry_job_event (job, "info", "disk mirrors completed: the destination's disks match");
  mig_src_finish (job);
}

gboolean
mig_storage_src_complete (FerryJob *job)
{
  Storage *storage = storage_of (job);
  FerryVm *vm = ferry_job_vm (job);
  if (storage == NULL)
    return FALSE;
  if (storage->completing)
    return TRUE;
  storage->completing = TRUE;
  if (vm == NULL || vm->qmp == NULL)
    {
      storage_fail (job, "source QEMU is gone");
      return TRUE;
    }
  /* The guest is paused: a ready mirror that is cancelled copies what is
   * left and ends with the target identical to the source. */
  for (guint i = 0; i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      send_and_forget (vm, "block-job-cancel", ferry_qmp_args_block_job_cancel (mirror->job_id, FALSE));
    }
  return TRUE;
}

/* ---- start ------------------------------------------------------------------------------ */

/* The start steps' result. NULL storage: the job has gone (its mirrors
 * are the reaper's), or it is being rolled back (the teardown cancels
 * the mirrors that started meanwhile). */
static Storage *
mirrors_start_result (FerryJob *job, GAsyncResult *result)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  Storage *storage = job ? storage_of (job) : NULL;
  if (storage == NULL)
    return NULL;
  storage->starting = FALSE;
  if (storage->tearing_down)
    {
      teardown_cancel_mirrors (job);   /* may end the job: nothing after it */
      return NULL;
    }
  if (storage->failed)
    return NULL;
  if (reply == NULL)
    {
      /* A step failed: the rollback's teardown ends the mirrors that started. */
      g_autofree char *reason = g_strdup_printf ("cannot mirror the disks to the destination: %s", error->message);
      storage_fail (job, reason);
      return NULL;
    }
  return storage;
}

static void
on_mirrors_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  Storage *storage = mirrors_start_result (job, result);
  if (storage == NULL)
    return;
  storage->poll_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, MIRROR_POLL_MS, on_mirror_poll,
                                            ferry_job_ref_new (job), g_free);
}

static void
start_mirrors (FerryJob *job)
{
  Storage *storage = storage_of (job);
  FerryVm *vm = ferry_job_vm (job);
  g_autofree char *creds_dir = g_build_filename (job->agent->config.state_dir, "qemu-tls", NULL);
  guint n = 0;
  g_autofree FerryQmpStep *steps = g_new0 (FerryQmpStep, 1 + 2 * storage->mirrors->len);
  g_autofree char *creds = g_strdup_printf (MIRROR_CREDS_FORMAT, job->id);
  if (job->options.tls)
    steps[n++] = (FerryQmpStep) { "object-add", ferry_qmp_args_tls_creds (creds, creds_dir, FALSE) };
  gint64 speed = job->options.bandwidth_mib > 0 ? job->options.bandwidth_mib * 1048576 : 0;
  for (guint i = 0; i < storage->mirrors->len; i++)
    {
      Mirror *mirror = g_ptr_array_index (storage->mirrors, i);
      g_autofree char *export_name = g_strdup_printf ("disk%u", mirror->index);
      steps[n++] = (FerryQmpStep) { "blockdev-add",
                                    ferry_qmp_args_blockdev_add_nbd (mirror->target, storage->host, storage->port,
                                                                     export_name,
                                                                     job->options.tls ? creds : NULL,
                                                                     job->options.tls ? job->tls_hostname : NULL) };
      steps[n++] = (FerryQmpStep) { "blockdev-mirror",
                                    ferry_qmp_args_blockdev_mirror (mirror->job_id, mirror->node, mirror->target,
                                                                    storage->write_blocking, speed) };
    }
  storage->started_us = g_get_monotonic_time ();
  storage->starting = TRUE;
  ferry_job_event (job, "info", "mirroring %u disks to %s:%u (%s copy mode)", storage->mirrors->len,
                   storage->host, storage->port, storage->write_blocking ? "write-blocking" : "background");
  ferry_qmp_run_steps_async (vm->qmp, steps, n, NULL, on_mirrors_started, ferry_job_ref_new (job));
}

static gint64
written_bytes (JsonNode *reply)
{
  gint64 sum = 0;
  JsonArray *devices = reply && JSON_NODE_HOLDS_ARRAY (reply) ? json_node_get_array (reply) : NULL;
  for (guint i = 0; devices != NULL && i < json_array_get_length (devices); i++)
    {
      JsonObject *device = json_array_get_object_element (devices, i);
      JsonObject *stats = device && json_object_has_member (device, "stats")
                            ? json_object_get_object_member (device, "stats") : NULL;
      sum += stats ? ferry_json_object_int (stats, "wr_bytes") : 0;
    }
  return sum;
}

static void on_write_sample (GObject *source, GAsyncResult *result, gpointer user_data);

static gboolean
on_write_sample_due (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  FerryVm *vm = job ? ferry_job_vm (job) : NULL;
  if (job == NULL || storage_of (job) == NULL)
    return G_SOURCE_REMOVE;
  if (vm == NULL || vm->qmp == NULL)
    storage_fail (job, "source QEMU is gone");
  else
    ferry_qmp_execute_async (vm->qmp, "query-blockstats", NULL, NULL, on_write_sample, ferry_job_ref_new (job));
  return G_SOURCE_REMOVE;
}

/* Two blockstats readings a second apart give the guest's write rate. */
static void
on_write_sample (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  Storage *storage = job ? storage_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (storage == NULL || storage->failed)   /* rolled back before any mirror started */
    return;
  gint64 written = written_bytes (reply);
  if (storage->written_before < 0)
    {
      storage->written_before = written;
      g_timeout_add_full (G_PRIORITY_DEFAULT, WRITE_SAMPLE_MS, on_write_sample_due, ferry_job_ref_new (job), g_free);
      return;
    }
  double write_mib_s = (double) (written - storage->written_before) / 1048576.0 * 1000.0 / WRITE_SAMPLE_MS;
  JsonObject *plan = json_object_has_member (job->stats, "ferry-plan")
                       ? json_object_get_object_member (job->stats, "ferry-plan") : NULL;
  JsonObject *measured = plan && json_object_has_member (plan, "measured")
                           ? json_object_get_object_member (plan, "measured") : NULL;
  double link_mib_s = measured && json_object_has_member (measured, "link_mib_s")
                        ? json_object_get_double_member (measured, "link_mib_s") : 0;
  if (job->options.bandwidth_mib > 0 && (link_mib_s <= 0 || job->options.bandwidth_mib < link_mib_s))
    link_mib_s = (double) job->options.bandwidth_mib;
  storage->write_blocking = link_mib_s > 0 && write_mib_s > link_mib_s / 2;
  ferry_job_event (job, "info", "guest writes %.1f MiB/s to its disks, link %.0f MiB/s: %s copy mode",
                   write_mib_s, link_mib_s,
                   storage->write_blocking ? "write-blocking (writes wait for the destination)"
                                           : "background");
  start_mirrors (job);
}

gboolean
mig_storage_src_start (FerryJob *job, JsonObject *prepare_reply)
{
  if (!job->options.copy_storage)
    return FALSE;
  FerryVm *vm = ferry_job_vm (job);
  JsonObject *nbd = prepare_reply && json_object_has_member (prepare_reply, "nbd")
                      ? json_object_get_object_member (prepare_reply, "nbd") : NULL;
  const char *host = ferry_json_object_string (nbd, "host");
  gint64 port = ferry_json_object_int (nbd, "port");
  if (host == NULL || port <= 0 || port > 65535 || vm == NULL || vm->qmp == NULL)
    {
      mig_src_rollback (job, "the destination did not say where its disks are served");
      return TRUE;
    }
  Storage *storage = g_new0 (Storage, 1);
  storage->ref.agent = job->agent;
  storage->ref.job_id = job->id;
  storage->mirrors = g_ptr_array_new_with_free_func ((GDestroyNotify) mirror_free);
  storage->host = g_strdup (host);
  storage->port = (guint16) port;
  storage->written_before = -1;
  for (guint i = 0; i < vm->spec->disks->len; i++)
    {
      Mirror *mirror = g_new0 (Mirror, 1);
      mirror->index = i;
      mirror->node = g_strdup_printf ("disk%u", i);
      mirror->target = g_strdup_printf (MIRROR_TARGET_FORMAT, job->id, i);
      mirror->job_id = g_strdup_printf (MIRROR_JOB_FORMAT, job->id, i);
      g_ptr_array_add (storage->mirrors, mirror);
    }
  job->storage = storage;
  job->storage_free = (GDestroyNotify) storage_free;
  ferry_qmp_execute_async (vm->qmp, "query-blockstats", NULL, NULL, on_write_sample, ferry_job_ref_new (job));
  return TRUE;
}
