/* ferry agent — the source side of post-copy: switching a pre-copy to it
 * (on the user's word, a timer, strategy auto's pass or a watchdog), asking
 * the destination to resume the guest, and recovering a stream whose link
 * broke (migrate-pause / migrate-recover / migrate resume, with backoff).
 * From the switch on the guest belongs to the destination: nothing here
 * ever resumes it on the source. */
#include "agent.h"
#include "mig-src.h"

#include "jsonutil.h"

/* ---- post-copy ------------------------------------------------------------ */

static void
on_postcopy_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job == NULL)
    return;
  if (reply == NULL)
    {
      job->postcopy_requested = FALSE;
      ferry_job_event (job, "error", "QEMU refused to switch to post-copy: %s", error->message);
    }
}

/* Asks QEMU to switch; it does at its next iteration, and the MIGRATION
 * event "postcopy-active" continues in mig_src_postcopy_switched. */
gboolean
mig_src_request_postcopy (FerryJob *job, const char *why, GError **error)
{
  FerryVm *vm = ferry_job_vm (job);
  if (!job->options.postcopy)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "this migration was started without post-copy (use --postcopy)");
      return FALSE;
    }
  if (job->state != FERRY_JOB_PERFORMING || vm == NULL || vm->qmp == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "the migration is %s; post-copy starts from pre-copy only",
                   ferry_job_state_to_string (job->state));
      return FALSE;
    }
  if (job->postcopy_requested)
    return TRUE;
  job->postcopy_requested = TRUE;
  ferry_job_event (job, "info", "switching to post-copy: %s", why);
  ferry_qmp_execute_async (vm->qmp, "migrate-start-postcopy", NULL, NULL, on_postcopy_started,
                           ferry_job_ref_new (job));
  return TRUE;
}

static gboolean
on_postcopy_timer (gpointer user_data)
{
  FerryJob *job = user_data;
  job->postcopy_timer = 0;
  g_autofree char *why = g_strdup_printf ("pre-copy did not finish within %" G_GINT64_FORMAT
                                          " s (--postcopy-after)", job->options.postcopy_after_s);
  g_autoptr (GError) error = NULL;
  if (!mig_src_request_postcopy (job, why, &error))
    ferry_job_event (job, "warning", "%s", error->message);
  return G_SOURCE_REMOVE;
}

/* Strategy auto's switch point (postcopy_at_pass), from QEMU's
 * MIGRATION_PASS event or, should that be missed (an agent restarted
 * meanwhile), the next poll's dirty-sync count. A switch at pass 1 was
 * asked for with the migration already (mig_src_perform). */
void
mig_src_postcopy_at_pass (FerryJob *job, gint64 pass)
{
  if (job->options.postcopy_at_pass <= 0 || pass < job->options.postcopy_at_pass || job->postcopy_requested
      || job->state != FERRY_JOB_PERFORMING)
    return;
  const char *why = job->options.postcopy_at_pass <= 1 ? "QEMU's set-up is done (strategy auto)"
                                                       : "the first pass is done (strategy auto)";
  g_autoptr (GError) error = NULL;
  if (!mig_src_request_postcopy (job, why, &error))
    ferry_job_event (job, "warning", "%s", error->message);
}

static void
on_postcopy_resumed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job == NULL)
    return;
  if (reply != NULL)
    {
      mig_src_record_guest_downtime (job, ferry_json_object_int (reply, "resumed_us"));
      ferry_job_event (job, "info", "guest runs on the destination; remaining pages follow on demand");
      job->postcopy_dest_running = TRUE;
      if (job->stream_completed)
        mig_src_confirm (job);
      return;
    }
  /* Neither side runs the guest now: the source gave its state away and
   * the destination did not start. Never resume here (QEMU would run a
   * copy the destination may also run); say so. */
  mig_src_stop_timers (job);
  g_autofree char *reason = g_strdup_printf ("post-copy: the destination did not resume the guest (%s); "
                                             "the guest is paused — check the destination",
                                             error->message);
  ferry_job_finish (job, FERRY_JOB_FAILED, reason);
}

void
mig_src_postcopy_switched (FerryJob *job)
{
  /* Persist first: from now on the guest belongs to the destination. */
  ferry_job_transition (job, FERRY_JOB_POSTCOPY, "device state sent; the destination takes over");
  FerryVm *vm = ferry_job_vm (job);
  if (vm != NULL)
    ferry_vm_set_state (vm, FERRY_VM_MIGRATED);
  g_autofree char *path = mig_src_incoming_path (job, "/finish");
  g_autoptr (JsonObject) body = json_object_new ();
  json_object_set_boolean_member (body, "postcopy", TRUE);
  ferry_peer_request_async (job->agent, job->peer_url, "POST", path, body, MIG_SRC_PEER_TIMEOUT_S, NULL,
                            on_postcopy_resumed, ferry_job_ref_new (job));
}

/* ---- post-copy recovery -------------------------------------------------------- */

/* A broken link in post-copy pauses the guest on the destination (it waits
 * for pages) and both QEMUs enter postcopy-paused. Neither side may resume
 * on its own; the stream is resumed on a new connection: the destination
 * listens again (migrate-recover), the source reconnects (migrate resume).
 * ferry retries with backoff until the link is back. */
#define RECOVER_FIRST_DELAY_S 1
#define RECOVER_MAX_DELAY_S 30

static void attempt_recovery (FerryJob *job);

static gboolean
on_recover_timer (gpointer user_data)
{
  FerryJob *job = user_data;
  job->recover_timer = 0;
  attempt_recovery (job);
  return G_SOURCE_REMOVE;
}

void
mig_src_schedule_recovery (FerryJob *job)
{
  if (job->recover_timer != 0 || job->recover_in_flight)
    return;
  guint delay = MIN (RECOVER_FIRST_DELAY_S << MIN (job->recover_attempts, 5), RECOVER_MAX_DELAY_S);
  if (job->recover_attempts == 0)
    ferry_job_event (job, "warning", "post-copy paused (link broken): the guest waits on the "
                     "destination; recovering");
  job->recover_timer = g_timeout_add_seconds (delay, on_recover_timer, job);
}

static void
on_resumed_stream (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job == NULL)
    return;
  job->recover_in_flight = FALSE;
  if (reply == NULL)
    {
      ferry_job_event (job, "warning", "post-copy resume refused by QEMU: %s", error->message);
      mig_src_schedule_recovery (job);
      return;
    }
  ferry_job_event (job, "info", "post-copy resumed after %u attempt(s)", job->recover_attempts);
  job->recover_attempts = 0;
}

static void
on_destination_listening (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job == NULL)
    return;
  FerryVm *vm = ferry_job_vm (job);
  const char *uri = ferry_json_object_string (reply, "uri");
  if (reply == NULL || uri == NULL || vm == NULL || vm->qmp == NULL)
    {
      job->recover_in_flight = FALSE;
      ferry_job_event (job, "info", "recovery attempt %u: %s", job->recover_attempts,
                       error ? error->message : "no usable reply");
      mig_src_schedule_recovery (job);
      return;
    }
  g_free (job->incoming_uri);
  job->incoming_uri = g_strdup (uri);
  g_autoptr (JsonObject) arguments = ferry_qmp_args_migrate_resume (uri);
  ferry_qmp_execute_async (vm->qmp, "migrate", arguments, NULL, on_resumed_stream, ferry_job_ref_new (job));
}

static void
attempt_recovery (FerryJob *job)
{
  if (job->state != FERRY_JOB_POSTCOPY || job->recover_in_flight)
    return;
  job->recover_in_flight = TRUE;
  job->recover_attempts++;
  g_autofree char *path = mig_src_incoming_path (job, "/recover");
  g_autoptr (JsonObject) body = json_object_new ();
  ferry_peer_request_async (job->agent, job->peer_url, "POST", path, body, MIG_SRC_PEER_TIMEOUT_S, NULL,
                            on_destination_listening, ferry_job_ref_new (job));
}

static void
on_paused_here (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job != NULL && reply == NULL)
    ferry_job_event (job, "warning", "migrate-pause: %s", error->message);
}

/* The destination agent went silent during post-copy: the stream is most
 * likely stuck in a dead TCP connection that QEMU would wait on for
 * minutes. Pausing breaks it now, so that recovery can start. */
void
mig_src_pause_stuck_postcopy (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  if (vm == NULL || vm->qmp == NULL || job->recover_attempts > 0 || job->recover_timer != 0)
    return;
  ferry_job_event (job, "warning", "destination unreachable during post-copy; pausing the stream");
  ferry_qmp_execute_oob_async (vm->qmp, "migrate-pause", NULL, NULL, on_paused_here, ferry_job_ref_new (job));
}

gboolean
mig_src_recover_postcopy (FerryVm *vm, GError **error)
{
  FerryJob *job = vm->job;
  if (job == NULL || job->role != FERRY_JOB_ROLE_SOURCE || job->state != FERRY_JOB_POSTCOPY)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' has no post-copy migration to recover", vm->name);
      return FALSE;
    }
  g_clear_handle_id (&job->recover_timer, g_source_remove);
  ferry_job_event (job, "info", "recovery requested by the user");
  attempt_recovery (job);
  return TRUE;
}

void
mig_src_arm_postcopy_timer (FerryJob *job)
{
  if (job->options.postcopy && job->options.postcopy_after_s > 0)
    job->postcopy_timer = g_timeout_add_seconds (job->options.postcopy_after_s, on_postcopy_timer, job);
}

/* ---- after an agent restart ------------------------------------------------------ */

static gboolean on_restored_check_due (gpointer user_data);

static void
on_restored_postcopy_checked (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job == NULL || job->state != FERRY_JOB_POSTCOPY)
    return;
  const char *state = ferry_json_object_string (reply, "state");
  if (g_strcmp0 (state, "postcopy") == 0 || g_strcmp0 (state, "completed") == 0)
    {
      job->postcopy_dest_running = TRUE;
      ferry_job_event (job, "info", "the destination runs the guest; following the post-copy stream");
      if (job->stream_completed)
        mig_src_confirm (job);
    }
  else if (g_strcmp0 (state, "prepared") == 0)
    {
      /* Finish never arrived: send it again. */
      g_autofree char *path = mig_src_incoming_path (job, "/finish");
      g_autoptr (JsonObject) body = json_object_new ();
      json_object_set_boolean_member (body, "postcopy", TRUE);
      ferry_peer_request_async (job->agent, job->peer_url, "POST", path, body, MIG_SRC_PEER_TIMEOUT_S, NULL,
                                on_postcopy_resumed, ferry_job_ref_new (job));
    }
  else if (reply == NULL)
    {
      /* Unreachable for now (the link may be down): ask again, the
       * confirmation waits for the answer. */
      if (!job->restored_check_logged)
        ferry_job_event (job, "warning", "cannot ask the destination yet (%s); asking again", error->message);
      job->restored_check_logged = TRUE;
      g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, 2, on_restored_check_due, ferry_job_ref_new (job), g_free);
    }
  else
    ferry_job_event (job, "warning", "destination state after the restart: %s", state);
}

static gboolean
on_restored_check_due (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  if (job != NULL && job->state == FERRY_JOB_POSTCOPY && !job->postcopy_dest_running)
    {
      g_autofree char *path = mig_src_incoming_path (job, NULL);
      ferry_peer_request_async (job->agent, job->peer_url, "GET", path, NULL, MIG_SRC_PEER_TIMEOUT_S, NULL,
                                on_restored_postcopy_checked, ferry_job_ref_new (job));
    }
  return G_SOURCE_REMOVE;
}

/* After an agent restart in post-copy with the source QEMU still there:
 * the destination runs the guest and may still need pages from our QEMU,
 * so follow the stream again, recovering it if it broke. */
void
mig_src_postcopy_restore (FerryAgent *agent, FerryStoreJob *stored, FerryVm *vm)
{
  FerryMigrateOptions options;
  ferry_migrate_options_from_stored (stored->options_json, &options);
  FerryJob *job = ferry_job_restore (agent, stored, &options);
  vm->job = job;
  ferry_vm_set_state (vm, FERRY_VM_MIGRATED);
  job->postcopy_requested = TRUE;
  mig_src_watch (job);
  /* Did the destination hear Finish before we went down? */
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  ferry_peer_request_async (agent, job->peer_url, "GET", path, NULL, MIG_SRC_PEER_TIMEOUT_S, NULL,
                            on_restored_postcopy_checked, ferry_job_ref_new (job));
}
