/* ferry agent — the source side of a cold migration with disks.
 *
 * Begin: checks, then the guest is shut down (ACPI; powered off after the
 * timeout only with force_stop). Prepare: each volume is exported
 * read-only (NBD over TLS for the destination, a unix socket for our own
 * digests) and the destination is asked to pull. Copying: the destination
 * reports progress when polled. Finish: the destination defines (and
 * starts) the VM. Confirm: only now are the source's definition and disks
 * removed, and only when asked. Any failure before Finish leaves the VM
 * here as it was: running again if it was running.
 */
#include "agent.h"

#include "jsonutil.h"
#include "nbd-copy.h"
#include "nbd-export.h"

#define POLL_MS 1000
#define PEER_TIMEOUT_S 30
#define PREPARE_TIMEOUT_S 120
/* The destination may be unreachable this long (a cut link) before the
 * migration is given up; the guest is stopped meanwhile, but its disks
 * are safe here. */
#define PEER_SILENCE_BUDGET_S 600
#define FORCE_GRACE_S 30
#define MAX_DIGEST_CHUNKS 256
#define REEXPORT_ATTEMPTS 60

typedef struct {
  guint index;
  char *pool;
  char *volume;
  char *format;
  char *path;
  guint64 virtual_size;
  guint64 allocated_bytes;
  guint16 port;              /* 0 until exported; kept across restarts */
  FerryNbdExport *tcp;
  FerryNbdExport *local;
  char *local_uri;
} SrcDisk;

typedef struct {
  FerryJobRef ref;
  GPtrArray *disks;          /* of SrcDisk* */
  JsonNode *dest_spec;       /* the spec with pools mapped */
  gboolean was_running;
  guint shutdown_timer;
  guint poll_timer;
  gboolean poll_in_flight;
  gint64 peer_seen_us;
  guint reexport_attempts;
  WarmSrc *warm;             /* a warm migration's passes (mig-warm.c) */
  gboolean finish_silence_logged;
  /* Digests being computed for the destination: cancelled, and waited
   * for, before a warm roll back removes the exports they read. */
  GCancellable *digests_cancellable;
  guint digests_in_flight;
} ColdSrc;

static void
src_disk_free (SrcDisk *disk)
{
  g_clear_pointer (&disk->tcp, ferry_nbd_export_free);
  g_clear_pointer (&disk->local, ferry_nbd_export_free);
  g_free (disk->pool);
  g_free (disk->volume);
  g_free (disk->format);
  g_free (disk->path);
  g_free (disk->local_uri);
  g_free (disk);
}

static void
cold_src_free (ColdSrc *cold)
{
  g_clear_handle_id (&cold->shutdown_timer, g_source_remove);
  g_clear_handle_id (&cold->poll_timer, g_source_remove);
  g_ptr_array_unref (cold->disks);
  if (cold->dest_spec)
    json_node_unref (cold->dest_spec);
  mig_warm_src_free (cold->warm);
  g_clear_object (&cold->digests_cancellable);
  g_free (cold);
}

static ColdSrc *
cold_of (FerryJob *job)
{
  return job->cold_free == (GDestroyNotify) cold_src_free ? job->cold : NULL;
}

WarmSrc *
mig_cold_src_warm (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  return cold ? cold->warm : NULL;
}

/* What a restarted agent needs: the disks (with their ports) and whether
 * the guest ran before. */
static void
save_state (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  JsonObject *state = json_object_new ();
  JsonArray *disks = json_array_new ();
  for (guint i = 0; i < cold->disks->len; i++)
    {
      SrcDisk *disk = g_ptr_array_index (cold->disks, i);
      JsonObject *entry = json_object_new ();
      json_object_set_int_member (entry, "index", disk->index);
      json_object_set_string_member (entry, "pool", disk->pool);
      json_object_set_string_member (entry, "volume", disk->volume);
      json_object_set_string_member (entry, "format", disk->format);
      json_object_set_string_member (entry, "path", disk->path);
      json_object_set_int_member (entry, "virtual_size", (gint64) disk->virtual_size);
      json_object_set_int_member (entry, "allocated_bytes", (gint64) disk->allocated_bytes);
      json_object_set_int_member (entry, "port", disk->port);
      /* So that a restarted agent can be sure they are gone. */
      json_object_set_int_member (entry, "tcp_pid", disk->tcp ? ferry_nbd_export_get_pid (disk->tcp) : 0);
      json_object_set_int_member (entry, "local_pid", disk->local ? ferry_nbd_export_get_pid (disk->local) : 0);
      json_array_add_object_element (disks, entry);
    }
  json_object_set_array_member (state, "disks", disks);
  json_object_set_boolean_member (state, "was_running", cold->was_running);
  json_object_set_member (state, "dest_spec", json_node_copy (cold->dest_spec));
  json_object_set_object_member (job->stats, "ferry-cold-source", state);
  ferry_job_save_stats (job);
}

static void
stop_exports (ColdSrc *cold)
{
  for (guint i = 0; i < cold->disks->len; i++)
    {
      SrcDisk *disk = g_ptr_array_index (cold->disks, i);
      g_clear_pointer (&disk->tcp, ferry_nbd_export_free);
      g_clear_pointer (&disk->local, ferry_nbd_export_free);
    }
}

/* ---- failure ------------------------------------------------------------------ */

static void
on_peer_told (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (reply == NULL && !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    g_info ("destination not told to remove its copy: %s (it removes it when the source's exports vanish)",
            error->message);
}

/* Before Finish: the VM stays here, as it was. */
void
mig_cold_src_fail (FerryJob *job, FerryJobState terminal, const char *reason, gboolean tell_destination)
{
  ColdSrc *cold = cold_of (job);
  FerryVm *vm = ferry_job_vm (job);
  if (cold != NULL)
    {
      g_clear_handle_id (&cold->shutdown_timer, g_source_remove);
      g_clear_handle_id (&cold->poll_timer, g_source_remove);
      g_cancellable_cancel (cold->digests_cancellable);
      stop_exports (cold);
    }
  if (tell_destination)
    {
      g_autofree char *path = g_strdup_printf ("/v1/migrations/incoming/%s", job->uuid);
      ferry_peer_request_async (job->agent, job->peer_url, "DELETE", path, NULL, 10, NULL, on_peer_told, NULL);
    }
  if (cold != NULL && cold->warm != NULL)
    {
      /* The guest never stopped (or boots again): QEMU's side is undone
       * (once no digest reads its exports: mig_warm_src_roll_back). */
      mig_warm_src_roll_back (job, terminal, reason);
      return;
    }
  gboolean restart = cold != NULL && cold->was_running && vm != NULL && vm->state == FERRY_VM_SHUTOFF;
  ferry_job_finish (job, terminal, reason);
  if (restart)
    {
      FerryVmStartOptions start = { 0 };
      g_info ("vm %s: starting it again (it ran before the failed migration)", vm->name);
      ferry_vm_start_async (vm, &start, NULL, NULL, NULL);
    }
}

/* ---- confirm ------------------------------------------------------------------- */

static void remove_source (FerryJob *job);

static void
cold_src_confirm (FerryJob *job, JsonObject *reply)
{
  ColdSrc *cold = cold_of (job);
  FerryVm *vm = ferry_job_vm (job);

  g_clear_handle_id (&cold->poll_timer, g_source_remove);
  stop_exports (cold);
  if (cold->warm != NULL)
    mig_warm_src_destination_running (job);
  ferry_job_transition (job, FERRY_JOB_CONFIRMING, cold->warm ? "destination runs the VM"
                                                              : "destination defined the VM");
  JsonNode *copy = reply ? json_object_get_member (reply, "copy") : NULL;
  if (copy != NULL && JSON_NODE_HOLDS_OBJECT (copy))
    json_object_set_member (job->stats, "ferry-copy", json_node_copy (copy));
  if (reply != NULL && json_object_get_boolean_member_with_default (reply, "starting", FALSE))
    ferry_job_event (job, "info", "destination is starting the VM");
  if (cold->warm != NULL && vm != NULL && vm->state != FERRY_VM_SHUTOFF)
    {
      /* The powered-off guest's QEMU waited to serve the last changes;
       * it goes now, and the rest follows once it is gone. */
      g_autoptr (GError) error = NULL;
      if (ferry_vm_destroy (vm, &error))
        return;
      ferry_job_event (job, "warning", "cannot stop the source's QEMU: %s", error->message);
    }
  remove_source (job);
}

/* The destination has the VM: the source's definition and disks go when
 * asked. */
static void
remove_source (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  FerryVm *vm = ferry_job_vm (job);
  g_autoptr (GError) error = NULL;
  if (vm != NULL && job->options.undefine_source)
    {
      vm->job = NULL;
      ferry_vm_forget (vm);
      ferry_job_event (job, "info", "source definition removed (--undefine-source)");
    }
  if (job->options.delete_source_disks)
    for (guint i = 0; i < cold->disks->len; i++)
      {
        SrcDisk *disk = g_ptr_array_index (cold->disks, i);
        FerryPool *pool = ferry_pool_lookup (job->agent, disk->pool, &error);
        if (pool == NULL || !ferry_volume_delete (job->agent, pool, disk->volume, &error))
          {
            ferry_job_event (job, "warning", "source disk %s/%s kept: %s", disk->pool, disk->volume,
                             error->message);
            g_clear_error (&error);
          }
        else
          ferry_job_event (job, "info", "source disk %s/%s deleted (--delete-source-disks)", disk->pool,
                           disk->volume);
      }
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
}

/* ---- polling the destination ------------------------------------------------------ */

static void
on_polled (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (cold == NULL)
    return;
  cold->poll_in_flight = FALSE;
  gint64 now = g_get_monotonic_time ();
  if (reply == NULL)
    {
      if (g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
        {
          mig_cold_src_fail (job, FERRY_JOB_FAILED, "the destination forgot the migration", FALSE);
          return;
        }
      gint64 silent_s = (now - cold->peer_seen_us) / G_USEC_PER_SEC;
      if (silent_s > PEER_SILENCE_BUDGET_S && job->state == FERRY_JOB_FINISHING)
        {
          /* Finish may have reached it: the destination may run the VM
           * already, so starting it here again could run it twice. Only
           * the destination's answer ends this job. */
          if (!cold->finish_silence_logged)
            ferry_job_event (job, "warning", "destination unreachable for %" G_GINT64_FORMAT " s after Finish; "
                             "waiting for its answer (the VM is not started here again)", silent_s);
          cold->finish_silence_logged = TRUE;
        }
      else if (silent_s > PEER_SILENCE_BUDGET_S)
        {
          g_autofree char *reason = g_strdup_printf ("destination unreachable for %" G_GINT64_FORMAT " s: %s",
                                                     silent_s, error->message);
          mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, TRUE);
        }
      return;
    }
  cold->peer_seen_us = now;
  const char *state = ferry_json_object_string (reply, "state");
  JsonNode *copy = json_object_get_member (reply, "copy");
  if (copy != NULL && JSON_NODE_HOLDS_OBJECT (copy))
    json_object_set_member (job->stats, "ferry-copy", json_node_copy (copy));
  if (cold->warm != NULL && mig_warm_src_on_destination (job, state, reply))
    return;
  if (copy != NULL && JSON_NODE_HOLDS_OBJECT (copy))
    {
      JsonObject *progress = json_node_get_object (copy);
      double total = (double) ferry_json_object_int (progress, "bytes_total");
      double done = (double) ferry_json_object_int (progress, "bytes_done");
      double eta = json_object_get_double_member_with_default (progress, "eta_s", -1);
      ferry_job_set_progress (job, total > 0 ? 5 + 85 * done / total : 5, eta);
    }
  if (g_strcmp0 (state, "prepared") == 0 && job->state == FERRY_JOB_COPYING)
    mig_cold_src_finish (job);
  else if (g_strcmp0 (state, "completed") == 0 && job->state == FERRY_JOB_FINISHING)
    cold_src_confirm (job, reply);
  else if (g_strcmp0 (state, "failed") == 0 || g_strcmp0 (state, "cancelled") == 0)
    {
      g_autofree char *reason = g_strdup_printf ("destination: %s",
                                                 ferry_json_object_string (reply, "error")
                                                   ? ferry_json_object_string (reply, "error") : state);
      mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, FALSE);
    }
}

static void
poll_destination (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  if (cold->poll_in_flight)
    return;
  cold->poll_in_flight = TRUE;
  g_autofree char *path = g_strdup_printf ("/v1/migrations/incoming/%s", job->uuid);
  ferry_peer_request_async (job->agent, job->peer_url, "GET", path, NULL, 10, NULL, on_polled,
                            ferry_job_ref_new (job));
}

static gboolean
on_poll_timer (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  if (cold == NULL)
    return G_SOURCE_REMOVE;
  poll_destination (job);
  return G_SOURCE_CONTINUE;
}

gboolean
mig_cold_src_nudge (FerryAgent *agent, const char *uuid, GError **error)
{
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_SOURCE);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  if (cold == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "source: no disk copy for migration %s", uuid);
      return FALSE;
    }
  /* Only while polling: before, the destination is not asked yet; after,
   * the job has moved on. */
  if (cold->poll_timer != 0)
    poll_destination (job);
  return TRUE;
}

static void
start_polling (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  cold->peer_seen_us = g_get_monotonic_time ();
  if (cold->poll_timer == 0)
    cold->poll_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, POLL_MS, on_poll_timer,
                                           ferry_job_ref_new (job), g_free);
}

void
mig_cold_src_poll_every (FerryJob *job, guint interval_ms)
{
  ColdSrc *cold = cold_of (job);
  g_clear_handle_id (&cold->poll_timer, g_source_remove);
  cold->poll_timer = g_timeout_add_full (G_PRIORITY_DEFAULT, interval_ms, on_poll_timer,
                                         ferry_job_ref_new (job), g_free);
}

/* ---- finish ------------------------------------------------------------------------ */

static void
on_finish_replied (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  gboolean maybe_delivered = FALSE;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, &maybe_delivered, &error);
  if (job == NULL || cold_of (job) == NULL)
    return;
  if (reply != NULL && g_strcmp0 (ferry_json_object_string (reply, "state"), "completed") == 0)
    {
      cold_src_confirm (job, reply);
      return;
    }
  if (reply == NULL && maybe_delivered && g_error_matches (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE))
    {
      /* It may have defined the VM: its job's state will say. */
      ferry_job_event (job, "warning", "no answer to finish (%s); asking the destination", error->message);
      return;
    }
  g_autofree char *reason = g_strdup_printf ("destination could not define the VM: %s",
                                             error ? error->message : "unexpected reply");
  mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, TRUE);
}

void
mig_cold_src_finish (FerryJob *job)
{
  ferry_job_transition (job, FERRY_JOB_FINISHING, "disks copied and verified; asking the destination to define the VM");
  g_autofree char *path = g_strdup_printf ("/v1/migrations/incoming/%s/finish", job->uuid);
  g_autoptr (JsonObject) body = json_object_new ();
  ferry_peer_request_async (job->agent, job->peer_url, "POST", path, body, PEER_TIMEOUT_S, NULL,
                            on_finish_replied, ferry_job_ref_new (job));
}

/* ---- prepare -------------------------------------------------------------------------- */

static gboolean
start_exports (FerryJob *job, GError **error)
{
  ColdSrc *cold = cold_of (job);
  g_autofree char *creds = g_build_filename (job->agent->config.state_dir, "qemu-tls", NULL);
  g_autofree char *run_dir = g_build_filename (job->agent->config.state_dir, "run", NULL);
  g_mkdir_with_parents (run_dir, 0700);
  for (guint i = 0; i < cold->disks->len; i++)
    {
      SrcDisk *disk = g_ptr_array_index (cold->disks, i);
      g_autofree char *name = g_strdup_printf ("disk%u", disk->index);
      g_autofree char *socket = g_strdup_printf ("%s/export-%" G_GINT64_FORMAT "-%u.sock", run_dir, job->id,
                                                 disk->index);
      FerryNbdExportOptions network = {
        .image = disk->path, .format = disk->format, .export_name = name,
        .tcp_host = job->agent->listen_host, .tcp_port = disk->port, .tls_creds_dir = creds,
      };
      FerryNbdExportOptions local = {
        .image = disk->path, .format = disk->format, .export_name = name, .unix_socket = socket,
      };
      g_clear_pointer (&disk->tcp, ferry_nbd_export_free);
      g_clear_pointer (&disk->local, ferry_nbd_export_free);
      disk->tcp = ferry_nbd_export_start (&network, error);
      if (disk->tcp == NULL)
        return FALSE;
      disk->local = ferry_nbd_export_start (&local, error);
      if (disk->local == NULL)
        return FALSE;
      disk->port = ferry_nbd_export_get_port (disk->tcp);
      g_free (disk->local_uri);
      disk->local_uri = ferry_nbd_export_uri (disk->local, NULL, NULL);
    }
  save_state (job);
  return TRUE;
}

static void
on_prepared (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job == NULL || cold_of (job) == NULL)
    return;
  if (reply == NULL)
    {
      /* Pool room, name clashes and formats are refused here, before any copy. */
      g_autofree char *reason = g_strdup_printf ("destination refused the disks: %s", error->message);
      mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, FALSE);
      return;
    }
  if (job->abort_requested)
    {
      mig_cold_src_fail (job, FERRY_JOB_CANCELLED, "aborted by the user", TRUE);
      return;
    }
  start_polling (job);
  if (cold_of (job)->warm != NULL)
    mig_warm_src_start (job);
  else
    ferry_job_transition (job, FERRY_JOB_COPYING, "the destination pulls the disks");
}

static JsonObject *prepare_request (FerryJob *job, gboolean dry_run);
static JsonObject *disk_entry (const SrcDisk *disk, const FerryMigrateOptions *options);

static void
cold_src_prepare (FerryJob *job)
{
  FerryAgent *agent = job->agent;
  g_autoptr (GError) error = NULL;

  if (cold_of (job)->warm != NULL)
    /* The guest runs: QEMU exports snapshots of its disks, pass by pass. */
    ferry_job_transition (job, FERRY_JOB_PREPARING, "asking the destination to create the volumes");
  else
    ferry_job_transition (job, FERRY_JOB_PREPARING, "exporting the disks");
  if (cold_of (job)->warm == NULL && !start_exports (job, &error))
    {
      g_autofree char *reason = g_strdup_printf ("cannot export the disks: %s", error->message);
      mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, FALSE);
      return;
    }
  g_autoptr (JsonObject) request = prepare_request (job, FALSE);
  ferry_peer_request_async (agent, job->peer_url, "POST", "/v1/migrations/offline", request,
                            PREPARE_TIMEOUT_S, NULL, on_prepared, ferry_job_ref_new (job));
}

/* The Prepare request; a dry run asks whether it would be accepted. */
static JsonObject *
prepare_request (FerryJob *job, gboolean dry_run)
{
  ColdSrc *cold = cold_of (job);
  FerryAgent *agent = job->agent;
  JsonObject *request = json_object_new ();
  if (dry_run)
    json_object_set_boolean_member (request, "dry_run", TRUE);
  json_object_set_string_member (request, "uuid", job->uuid);
  json_object_set_member (request, "spec", json_node_copy (cold->dest_spec));
  json_object_set_boolean_member (request, "persistent", TRUE);
  json_object_set_boolean_member (request, "copy_storage", TRUE);
  json_object_set_boolean_member (request, "start", job->options.start);
  if (job->options.warm)
    json_object_set_boolean_member (request, "warm", TRUE);
  json_object_set_int_member (request, "bandwidth_mib", job->options.bandwidth_mib);
  json_object_set_int_member (request, "parallel_disks", job->options.parallel_disks);
  json_object_set_int_member (request, "source_port", agent->listen_port);
  if (agent->tls->common_name)
    json_object_set_string_member (request, "source", agent->tls->common_name);
  JsonArray *disks = json_array_new ();
  for (guint i = 0; i < cold->disks->len; i++)
    json_array_add_object_element (disks, disk_entry (g_ptr_array_index (cold->disks, i), &job->options));
  json_object_set_array_member (request, "disks", disks);
  return request;
}

/* ---- begin: the guest stops first --------------------------------------------------------- */

void
mig_cold_src_on_vm_state (FerryJob *job, FerryVmState state)
{
  ColdSrc *cold = cold_of (job);
  if (cold != NULL && cold->warm != NULL)
    {
      if (state == FERRY_VM_SHUTOFF && job->state == FERRY_JOB_CONFIRMING)
        remove_source (job);
      else if (state == FERRY_VM_SHUTOFF)
        mig_warm_src_on_vm_gone (job);
      return;
    }
  /* Only once we asked it to stop (not while the destination is asked). */
  if (cold == NULL || job->state != FERRY_JOB_BEGIN || state != FERRY_VM_SHUTOFF || cold->shutdown_timer == 0)
    return;
  g_clear_handle_id (&cold->shutdown_timer, g_source_remove);
  ferry_job_event (job, "info", "guest shut down");
  cold_src_prepare (job);
}

static gboolean
on_shutdown_timeout (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  if (cold == NULL)
    return G_SOURCE_REMOVE;
  cold->shutdown_timer = 0;
  /* Not forced: the guest keeps running as before (it may be shutting down
   * on its own now; that is the guest's doing). */
  cold->was_running = FALSE;
  g_autofree char *reason = g_strdup_printf ("the guest did not shut down within %u s; pass --force-stop "
                                             "to power it off", job->agent->config.shutdown_timeout_s);
  mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, FALSE);
  return G_SOURCE_REMOVE;
}

static void
on_checked (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (cold == NULL)
    return;
  FerryVm *vm = ferry_job_vm (job);
  if (reply == NULL || job->abort_requested || vm == NULL)
    {
      /* Nothing was stopped: the guest stays as it was. */
      cold->was_running = FALSE;
      g_autofree char *reason = reply == NULL ? g_strdup_printf ("destination refused the disks: %s", error->message)
                                              : g_strdup (job->abort_requested ? "aborted by the user" : "the VM disappeared");
      mig_cold_src_fail (job, job->abort_requested ? FERRY_JOB_CANCELLED : FERRY_JOB_FAILED, reason, FALSE);
      return;
    }
  if (vm->state == FERRY_VM_SHUTOFF || cold->warm != NULL)
    {
      cold->was_running = cold->warm != NULL;
      cold_src_prepare (job);
      return;
    }
  guint timeout_s = job->agent->config.shutdown_timeout_s;
  ferry_job_event (job, "info", "shutting the guest down (ACPI, %u s%s)", timeout_s,
                   job->options.force_stop ? ", then powered off" : "");
  if (!ferry_vm_shutdown (vm, job->options.force_stop ? timeout_s : 0, &error))
    {
      cold->was_running = FALSE;
      mig_cold_src_fail (job, FERRY_JOB_FAILED, error->message, FALSE);
      return;
    }
  cold->shutdown_timer = g_timeout_add_seconds_full (G_PRIORITY_DEFAULT,
                                                     timeout_s + (job->options.force_stop ? FORCE_GRACE_S : 0),
                                                     on_shutdown_timeout, ferry_job_ref_new (job), g_free);
}

static SrcDisk *
inspect_disk (FerryAgent *agent, const FerryDiskSpec *spec_disk, guint index, GError **error)
{
  if (spec_disk->volume == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "disks[%u]: '%s' is a path, not a pool volume; only volumes are copied (move the "
                   "image into a pool, or migrate without copy_storage on shared storage)",
                   index, spec_disk->path);
      return NULL;
    }
  g_autofree char *path = ferry_disk_resolve_path (agent, spec_disk, error);
  g_autoptr (FerryVolumeInfo) info = path ? ferry_volume_inspect (path, error) : NULL;
  if (info == NULL)
    {
      g_prefix_error (error, "disks[%u]: ", index);
      return NULL;
    }
  SrcDisk *disk = g_new0 (SrcDisk, 1);
  disk->index = index;
  disk->pool = g_strdup (spec_disk->pool);
  disk->volume = g_strdup (spec_disk->volume);
  disk->format = g_strdup (info->format);
  disk->path = g_steal_pointer (&path);
  disk->virtual_size = info->virtual_size;
  disk->allocated_bytes = info->allocated_bytes;
  return disk;
}

/* Every disk of the VM, checked (pool volumes only, formats as declared)
 * and measured; *dest_spec is the spec with pools mapped. */
static GPtrArray *
inspect_disks (FerryVm *vm, const FerryMigrateOptions *options, JsonNode **dest_spec, GError **error)
{
  FerryAgent *agent = vm->agent;
  if (vm->spec->disks->len == 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "copy_storage: VM '%s' has no disks to copy", vm->name);
      return NULL;
    }
  for (guint i = 0; i < options->n_storage_map; i++)
    if (ferry_pool_lookup (agent, options->storage_map_from[i], NULL) == NULL)
      {
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                     "storage_map[%u]: pool '%s' does not exist on host %s", i, options->storage_map_from[i],
                     agent->config.host_name);
        return NULL;
      }
  if (!ferry_spec_check_disks (agent, vm->spec, error))
    return NULL;
  g_autoptr (GPtrArray) disks = g_ptr_array_new_with_free_func ((GDestroyNotify) src_disk_free);
  g_autoptr (FerryVmSpec) mapped = ferry_vm_spec_copy (vm->spec);
  for (guint i = 0; i < vm->spec->disks->len; i++)
    {
      SrcDisk *disk = inspect_disk (agent, g_ptr_array_index (vm->spec->disks, i), i, error);
      if (disk == NULL)
        return NULL;
      g_ptr_array_add (disks, disk);
      FerryDiskSpec *spec_disk = g_ptr_array_index (mapped->disks, i);
      const char *pool = ferry_migrate_options_map_pool (options, spec_disk->pool);
      if (pool != spec_disk->pool)
        {
          g_free (spec_disk->pool);
          spec_disk->pool = g_strdup (pool);
        }
    }
  *dest_spec = ferry_vm_spec_to_json (mapped);
  return g_steal_pointer (&disks);
}

/* A disk as the destination's Prepare takes it. */
static JsonObject *
disk_entry (const SrcDisk *disk, const FerryMigrateOptions *options)
{
  JsonObject *entry = json_object_new ();
  json_object_set_int_member (entry, "index", disk->index);
  json_object_set_string_member (entry, "pool", ferry_migrate_options_map_pool (options, disk->pool));
  json_object_set_string_member (entry, "volume", disk->volume);
  json_object_set_string_member (entry, "format", disk->format);
  json_object_set_int_member (entry, "virtual_size", (gint64) disk->virtual_size);
  json_object_set_int_member (entry, "allocated_bytes", (gint64) disk->allocated_bytes);
  if (disk->port != 0)
    {
      g_autofree char *name = g_strdup_printf ("disk%u", disk->index);
      json_object_set_int_member (entry, "port", disk->port);
      json_object_set_string_member (entry, "export", name);
    }
  return entry;
}

FerryJob *
mig_cold_src_begin (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options, GError **error)
{
  FerryAgent *agent = vm->agent;

  if (vm->state != FERRY_VM_SHUTOFF && vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "VM '%s' is %s; wait until it is running or "
                   "shut off", vm->name, ferry_vm_state_to_string (vm->state));
      return NULL;
    }
  if (!vm->persistent)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is transient; a cold migration moves a definition, so define it persistently",
                   vm->name);
      return NULL;
    }
  if (options->warm && vm->state != FERRY_VM_RUNNING)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is %s; a warm migration copies the disks while the guest runs — use a cold "
                   "migration (--offline --copy-storage) for a VM that is not running", vm->name,
                   ferry_vm_state_to_string (vm->state));
      return NULL;
    }
  g_autoptr (JsonNode) dest_spec = NULL;
  g_autoptr (GPtrArray) disks = inspect_disks (vm, options, &dest_spec, error);
  if (disks == NULL)
    return NULL;
  gboolean was_running = vm->state != FERRY_VM_SHUTOFF;

  g_autofree char *uuid = g_uuid_string_random ();
  g_autofree char *base = g_str_has_suffix (dest_url, "/") ? g_strndup (dest_url, strlen (dest_url) - 1)
                                                           : g_strdup (dest_url);
  FerryJob *job = ferry_job_new (agent, uuid, vm->name, FERRY_JOB_ROLE_SOURCE, options, base,
                                 FERRY_JOB_BEGIN, error);
  if (job == NULL)
    return NULL;
  vm->job = job;
  ColdSrc *cold = g_new0 (ColdSrc, 1);
  cold->ref.agent = agent;
  cold->ref.job_id = job->id;
  cold->disks = g_steal_pointer (&disks);
  cold->dest_spec = g_steal_pointer (&dest_spec);
  cold->was_running = was_running;
  job->cold = cold;
  job->cold_free = (GDestroyNotify) cold_src_free;
  if (options->warm)
    {
      g_autofree FerryWarmDisk *warm_disks = g_new0 (FerryWarmDisk, cold->disks->len);
      for (guint i = 0; i < cold->disks->len; i++)
        {
          SrcDisk *disk = g_ptr_array_index (cold->disks, i);
          warm_disks[i] = (FerryWarmDisk) { disk->index, disk->path, disk->format, disk->virtual_size };
        }
      cold->warm = mig_warm_src_new (job, warm_disks, cold->disks->len);
    }
  save_state (job);

  if (cold->warm == NULL && vm->state == FERRY_VM_SHUTOFF)
    {
      /* Nothing to stop: Prepare makes the same checks (a refusal leaves
       * the disks as they were), one round trip sooner. */
      cold->was_running = FALSE;
      cold_src_prepare (job);
      return job;
    }
  /* Ask the destination before stopping anything: a refusal (name clash,
   * no room, unknown pool) leaves the guest as it is. */
  g_autoptr (JsonObject) request = prepare_request (job, TRUE);
  ferry_job_event (job, "info", "asking the destination whether it can take the disks");
  ferry_peer_request_async (agent, job->peer_url, "POST", "/v1/migrations/offline", request,
                            PEER_TIMEOUT_S, NULL, on_checked, ferry_job_ref_new (job));
  return job;
}

gboolean
mig_cold_src_abort (FerryJob *job, GError **error)
{
  if (job->state == FERRY_JOB_FINISHING || job->state == FERRY_JOB_CONFIRMING)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "too late to abort: the destination is defining VM '%s'", job->vm_name);
      return FALSE;
    }
  job->abort_requested = TRUE;
  ferry_job_event (job, "warning", "abort requested");
  if (job->state == FERRY_JOB_CANCELLING)
    return TRUE;
  if (job->state != FERRY_JOB_PREPARING)
    mig_cold_src_fail (job, FERRY_JOB_CANCELLED, "aborted by the user",
                       job->state == FERRY_JOB_COPYING || job->state == FERRY_JOB_PRECOPY
                         || job->state == FERRY_JOB_CUTOVER);
  /* In PREPARING the prepare reply sees abort_requested. */
  return TRUE;
}

/* ---- digests for the destination ------------------------------------------------------------ */

typedef struct {
  char *uri;
  GArray *chunks;
} DigestWork;

static void
digest_work_free (DigestWork *work)
{
  g_free (work->uri);
  g_array_unref (work->chunks);
  g_free (work);
}

static void
run_digests (GTask *task, gpointer source_object, gpointer task_data, GCancellable *cancellable)
{
  DigestWork *work = task_data;
  GError *error = NULL;
  g_autofree char *digests = g_malloc0 ((gsize) work->chunks->len * FERRY_COPY_DIGEST_LEN);
  if (!ferry_nbd_chunk_digests (work->uri, (const guint64 *) work->chunks->data, work->chunks->len, digests,
                                cancellable, &error))
    {
      g_task_return_error (task, error);
      return;
    }
  JsonObject *reply = json_object_new ();
  JsonArray *list = json_array_new ();
  for (guint i = 0; i < work->chunks->len; i++)
    json_array_add_string_element (list, digests + (gsize) i * FERRY_COPY_DIGEST_LEN);
  json_object_set_array_member (reply, "digests", list);
  g_task_return_pointer (task, reply, (GDestroyNotify) json_object_unref);
}

/* The caller's callback, and the job whose count of digests in flight
 * the task is in. */
typedef struct {
  FerryJobRef ref;
  GAsyncReadyCallback callback;
  gpointer user_data;
} DigestCaller;

static void
on_digests_computed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree DigestCaller *caller = user_data;
  FerryJob *job = ferry_job_ref_get (&caller->ref);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  caller->callback (source, result, caller->user_data);
  if (cold == NULL || cold->digests_in_flight == 0)
    return;
  cold->digests_in_flight--;
  if (cold->digests_in_flight == 0 && cold->warm != NULL)
    mig_warm_src_resume_roll_back (job);
}

guint
mig_cold_src_digests_in_flight (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  return cold ? cold->digests_in_flight : 0;
}

void
mig_cold_src_digests_async (FerryAgent *agent, const char *uuid, JsonObject *request,
                            GAsyncReadyCallback callback, gpointer user_data)
{
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_SOURCE);
  ColdSrc *cold = job ? cold_of (job) : NULL;
  if (cold == NULL || g_cancellable_is_cancelled (cold->digests_cancellable))
    {
      g_autoptr (GTask) refused = g_task_new (NULL, NULL, callback, user_data);
      if (cold == NULL)
        g_task_return_new_error (refused, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                                 "source: no disk copy for migration %s", uuid);
      else
        g_task_return_new_error (refused, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                                 "source: migration %s is being cancelled", uuid);
      return;
    }
  if (cold->digests_cancellable == NULL)
    cold->digests_cancellable = g_cancellable_new ();
  /* Counted until its callback: a warm roll back waits for it. */
  DigestCaller *caller = g_new0 (DigestCaller, 1);
  caller->ref = cold->ref;
  caller->callback = callback;
  caller->user_data = user_data;
  cold->digests_in_flight++;
  g_autoptr (GTask) task = g_task_new (NULL, cold->digests_cancellable, on_digests_computed, caller);
  static const char *const fields[] = { "disk", "chunks", NULL };
  g_autoptr (GError) error = NULL;
  gint64 index = 0;
  if (!ferry_json_reject_unknown (request, fields, &error)
      || !ferry_json_get_int (request, "disk", TRUE, 0, FERRY_SPEC_MAX_DISKS - 1, &index, &error))
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  SrcDisk *disk = NULL;
  for (guint i = 0; i < cold->disks->len; i++)
    if (((SrcDisk *) g_ptr_array_index (cold->disks, i))->index == (guint) index)
      disk = g_ptr_array_index (cold->disks, i);
  g_autofree char *uri = disk == NULL ? NULL
                         : cold->warm != NULL ? mig_warm_src_digest_uri (job, disk->index) : g_strdup (disk->local_uri);
  if (disk != NULL && uri == NULL)
    {
      /* A restarted agent exporting again: worth asking once more. */
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                               "source: disk %u is not exported at the moment", disk->index);
      return;
    }
  JsonNode *node = json_object_get_member (request, "chunks");
  if (disk == NULL || node == NULL || !JSON_NODE_HOLDS_ARRAY (node)
      || json_array_get_length (json_node_get_array (node)) > MAX_DIGEST_CHUNKS)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                               disk == NULL ? "disk: no such disk is being copied"
                                            : "chunks: a list of at most %d chunk numbers", MAX_DIGEST_CHUNKS);
      return;
    }
  JsonArray *array = json_node_get_array (node);
  guint64 n_chunks = ferry_copy_chunk_count (disk->virtual_size);
  DigestWork *work = g_new0 (DigestWork, 1);
  work->uri = g_steal_pointer (&uri);
  work->chunks = g_array_new (FALSE, FALSE, sizeof (guint64));
  g_task_set_task_data (task, work, (GDestroyNotify) digest_work_free);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      if (!JSON_NODE_HOLDS_VALUE (element) || json_node_get_value_type (element) != G_TYPE_INT64
          || json_node_get_int (element) < 0 || (guint64) json_node_get_int (element) >= n_chunks)
        {
          g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                                   "chunks[%u]: not a chunk of this disk (0..%" G_GUINT64_FORMAT ")", i,
                                   n_chunks - 1);
          return;
        }
      guint64 chunk = (guint64) json_node_get_int (element);
      g_array_append_val (work->chunks, chunk);
    }
  g_task_run_in_thread (task, run_digests);
}

JsonObject *
mig_cold_src_digests_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- restart ----------------------------------------------------------------------------------- */

static gboolean on_reexport_timer (gpointer user_data);

/* Same ports as before: the destination keeps retrying them. The previous
 * agent's qemu-nbd got SIGTERM when that agent died but may hold its port
 * for a moment longer, so a busy port is tried again. */
static void
reexport (FerryJob *job)
{
  ColdSrc *cold = cold_of (job);
  g_autoptr (GError) error = NULL;
  if (start_exports (job, &error))
    {
      ferry_job_event (job, "info", "disks exported again on the same ports; following the destination's copy");
      return;
    }
  if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE) && cold->reexport_attempts++ < REEXPORT_ATTEMPTS)
    {
      g_timeout_add_full (G_PRIORITY_DEFAULT, 500, on_reexport_timer, ferry_job_ref_new (job), g_free);
      return;
    }
  g_autofree char *reason = g_strdup_printf ("cannot export the disks again: %s", error->message);
  mig_cold_src_fail (job, FERRY_JOB_FAILED, reason, TRUE);
}

static gboolean
on_reexport_timer (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  if (job != NULL && cold_of (job) != NULL)
    reexport (job);
  return G_SOURCE_REMOVE;
}

void
mig_cold_src_recover (FerryAgent *agent, FerryStoreJob *stored)
{
  FerryMigrateOptions options;
  ferry_migrate_options_from_stored (stored->options_json, &options);
  options.persistent = TRUE;
  options.copy_storage = TRUE;
  FerryJob *job = ferry_job_restore (agent, stored, &options);
  JsonObject *state = json_object_get_object_member (job->stats, "ferry-cold-source");
  FerryVm *vm = ferry_job_vm (job);
  ColdSrc *cold = g_new0 (ColdSrc, 1);
  cold->ref.agent = agent;
  cold->ref.job_id = job->id;
  cold->disks = g_ptr_array_new_with_free_func ((GDestroyNotify) src_disk_free);
  job->cold = cold;
  job->cold_free = (GDestroyNotify) cold_src_free;
  if (vm != NULL)
    vm->job = job;
  JsonArray *disks = state ? json_object_get_array_member (state, "disks") : NULL;
  for (guint i = 0; disks != NULL && i < json_array_get_length (disks); i++)
    {
      JsonObject *entry = json_array_get_object_element (disks, i);
      SrcDisk *disk = g_new0 (SrcDisk, 1);
      disk->index = (guint) ferry_json_object_int (entry, "index");
      disk->pool = g_strdup (ferry_json_object_string (entry, "pool"));
      disk->volume = g_strdup (ferry_json_object_string (entry, "volume"));
      disk->format = g_strdup (ferry_json_object_string (entry, "format"));
      disk->path = g_strdup (ferry_json_object_string (entry, "path"));
      disk->virtual_size = (guint64) ferry_json_object_int (entry, "virtual_size");
      disk->allocated_bytes = (guint64) ferry_json_object_int (entry, "allocated_bytes");
      disk->port = (guint16) ferry_json_object_int (entry, "port");
      /* The previous agent's exports got SIGTERM when it died, but one
       * busy with a slow client can hold its port for a long time. */
      for (guint k = 0; k < 2; k++)
        {
          GPid pid = (GPid) ferry_json_object_int (entry, k == 0 ? "tcp_pid" : "local_pid");
          if (ferry_nbd_export_kill_stale (pid, disk->path))
            ferry_job_event (job, "info", "stopped the export left by the previous agent (qemu-nbd %d)", pid);
          else if (pid > 0)
            ferry_job_event (job, "info", "the previous agent's export (pid %d) is gone", pid);
        }
      g_ptr_array_add (cold->disks, disk);
    }
  if (state != NULL)
    {
      cold->was_running = json_object_get_boolean_member_with_default (state, "was_running", FALSE);
      JsonNode *spec = json_object_get_member (state, "dest_spec");
      cold->dest_spec = spec ? json_node_copy (spec) : NULL;
    }
  if (options.warm && state != NULL && cold->dest_spec != NULL
      && (cold->warm = mig_warm_src_restore (job)) != NULL
      && (job->state == FERRY_JOB_PRECOPY || job->state == FERRY_JOB_CUTOVER
          || job->state == FERRY_JOB_FINISHING || job->state == FERRY_JOB_CANCELLING))
    {
      if (job->state != FERRY_JOB_CANCELLING)
        start_polling (job);
      mig_warm_src_resume (job);
      return;
    }
  if (state == NULL || cold->dest_spec == NULL || cold->disks->len == 0
      || (job->state != FERRY_JOB_COPYING && job->state != FERRY_JOB_FINISHING))
    {
      mig_cold_src_fail (job, FERRY_JOB_FAILED, "agent restarted before the disks were handed over", TRUE);
      return;
    }
  start_polling (job);
  reexport (job);
}

/* ---- live migration with storage: the disks to send ------------------------------ */

JsonArray *
mig_storage_src_disks (FerryVm *vm, const FerryMigrateOptions *options, JsonNode **dest_spec, GError **error)
{
  g_autoptr (GPtrArray) disks = inspect_disks (vm, options, dest_spec, error);
  if (disks == NULL)
    return NULL;
  JsonArray *array = json_array_new ();
  for (guint i = 0; i < disks->len; i++)
    json_array_add_object_element (array, disk_entry (g_ptr_array_index (disks, i), options));
  return array;
}
