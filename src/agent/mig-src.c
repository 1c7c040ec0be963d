/* ferry agent — the source side of a migration (libvirt's peer-to-peer
 * phases: Begin, Prepare on the destination, Perform here, Finish on the
 * destination, Confirm here).
 *
 * The source keeps a complete VM until the destination says it runs the
 * guest (design.md invariant 2). Before that, every failure resumes the
 * guest here and asks the destination to remove what it created.
 * Post-copy, from the switch on, is mig-src-postcopy.c.
 */
#include "agent.h"
#include "mig-src.h"
#include "strategy.h"

#include "jsonutil.h"

#define QEMU_TLS_CREDS_ID "ferry-migration-tls"
#define PROGRESS_POLL_MS 500
/* QEMU 7.2 caps migration at 128 MiB/s unless told otherwise; "unlimited"
 * is a rate no link reaches. */
#define UNLIMITED_BANDWIDTH (G_GINT64_CONSTANT (1) << 40)

char *
mig_src_incoming_path (FerryJob *job, const char *suffix)
{
  return g_strdup_printf ("/v1/migrations/incoming/%s%s", job->uuid, suffix ? suffix : "");
}

/* How long the destination agent has not answered a heartbeat. */
static gint64
peer_silent_ms (FerryJob *job)
{
  return (g_get_monotonic_time () - job->peer_last_seen_us) / 1000;
}

void
mig_src_stop_timers (FerryJob *job)
{
  g_clear_handle_id (&job->poll_timer, g_source_remove);
  g_clear_handle_id (&job->keepalive_timer, g_source_remove);
  g_clear_handle_id (&job->postcopy_timer, g_source_remove);
  g_clear_handle_id (&job->recover_timer, g_source_remove);
}

/* A new query-migrate snapshot becomes the job's statistics; ferry's own
 * members (prefixed "ferry-") and the limits asked for carry over. */
static void
update_stats (FerryJob *job, JsonObject *snapshot)
{
  JsonObjectIter iter;
  const char *name;
  JsonNode *value;
  json_object_iter_init (&iter, job->stats);
  while (json_object_iter_next (&iter, &name, &value))
    if (g_str_has_prefix (name, "ferry-") && !json_object_has_member (snapshot, name))
      json_object_set_member (snapshot, name, json_node_copy (value));
  json_object_set_int_member (snapshot, "bandwidth-limit-mib", job->options.bandwidth_mib);
  json_object_set_int_member (snapshot, "downtime-limit-ms", job->options.max_downtime_ms);
  if (job->downtime_limit_ms > 0)
    json_object_set_int_member (snapshot, "ferry-downtime-limit-now-ms", job->downtime_limit_ms);
  ferry_job_set_stats (job, snapshot);

  /* Progress of the copy: the share of memory sent against what is left,
   * mapped onto the copy phase's part of the scale (after a restart, what
   * the first stream left of it); pre-copy passes make "remaining" grow
   * again, and ferry_job_set_progress keeps the maximum.
   * ETA: what is left at the current rate. */
  JsonObject *ram = ferry_json_object_object (snapshot, "ram");
  if (ram == NULL)
    return;
  double transferred = ferry_json_object_int (ram, "transferred");
  double remaining = ferry_json_object_int (ram, "remaining");
  double rate = json_object_has_member (ram, "mbps") ? json_object_get_double_member (ram, "mbps") * 1e6 / 8 : 0;
  double share = transferred + remaining > 0 ? transferred / (transferred + remaining) : 0;
  double low = MAX (job->state == FERRY_JOB_POSTCOPY ? 50 : 5, job->copy_progress_floor);
  double eta_s = rate > 0 ? remaining / rate : -1;
  /* Before the switch, what is left at the current rate ignores the
   * passes and syncs still to come; the revised prediction counts them. */
  if (job->state == FERRY_JOB_PERFORMING && job->revised_total_s > 0 && job->perform_started_us > 0)
    eta_s = MAX (eta_s, job->revised_total_s - (g_get_monotonic_time () - job->perform_started_us) / 1e6);
  ferry_job_set_progress (job, low + share * (95 - low), eta_s);
}

/* ---- rollback ------------------------------------------------------------- */

/* The first steps of every stop of an outgoing stream (rollback, restart,
 * an agent restarted mid-migration), filling steps[0..CANCEL_STEPS).
 * migrate_cancel is harmless when nothing runs. The yank then shuts the
 * migration's connections: QEMU 7.2's cancel shuts the main stream but
 * leaves multifd channels blocked in writes to a dead link until it
 * comes back or TCP gives up. Errors (nothing left to yank) are expected
 * and ignored. */
#define CANCEL_STEPS 2
static void
cancel_stream_steps (FerryQmpStep *steps)
{
  steps[0] = (FerryQmpStep) { "migrate_cancel", NULL, TRUE };
  steps[1] = (FerryQmpStep) { "yank", ferry_qmp_args_yank_migration (), TRUE };
}

static void
on_peer_abort_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree char *what = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (reply == NULL && !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    g_info ("%s: destination cleanup: %s (its lease will expire)", what, error->message);
}

static void
rollback_finish_when_done (FerryJob *job)
{
  if (!job->rollback_guest_settled || job->rollback_waits_for_storage)
    return;
  /* A monitor that closes fails its pending commands before it reports
   * QEMU's exit: a rollback step that failed that way must not end the
   * job, or the exit would find no job, and a guest that ran only here
   * would stay off (QEMU 7.2 died of a corrupted heap during a storage
   * rollback in CI). The exit follows at once (mig_src_on_qmp_event): it
   * fails the job and boots the guest again. */
  FerryVm *vm = ferry_job_vm (job);
  if (vm != NULL && vm->qmp != NULL && ferry_qmp_is_closed (vm->qmp))
    return;
  FerryJobState terminal = job->abort_requested ? FERRY_JOB_CANCELLED : FERRY_JOB_FAILED;
  ferry_job_finish (job, terminal, job->error);
}

static void
release_destination (FerryJob *job)
{
  if (!job->options.live || job->peer_url == NULL)
    return;
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  g_autoptr (JsonObject) body = NULL;
  ferry_peer_request_async (job->agent, job->peer_url, "DELETE", path, body, 10, NULL, on_peer_abort_done,
                            g_strdup_printf ("job %" G_GINT64_FORMAT, job->id));
}

void
mig_src_storage_released (FerryJob *job)
{
  if (!job->rollback_waits_for_storage)
    return;
  job->rollback_waits_for_storage = FALSE;
  release_destination (job);
  rollback_finish_when_done (job);
}

static void
on_rollback_resumed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  if (job == NULL)
    return;
  FerryVm *vm = ferry_job_vm (job);
  const char *status = reply ? ferry_json_object_string (json_node_get_object (reply), "status") : NULL;
  if (vm != NULL && status != NULL)
    {
      g_free (vm->qemu_status);
      vm->qemu_status = g_strdup (status);
      ferry_vm_set_state (vm, g_str_equal (status, "running") ? FERRY_VM_RUNNING : FERRY_VM_PAUSED);
      ferry_job_event (job, "info", "guest is %s on this host", status);
    }
  else if (error != NULL)
    ferry_job_event (job, "error", "could not resume the guest on the source: %s", error->message);
  job->rollback_guest_settled = TRUE;
  rollback_finish_when_done (job);
}

/* Every failure before the destination confirmed ends here: the guest
 * must run on the source again and the destination must forget it. */
void
mig_src_rollback (FerryJob *job, const char *reason)
{
  FerryVm *vm = ferry_job_vm (job);

  if (job->state == FERRY_JOB_CANCELLING || ferry_job_state_is_terminal (job->state))
    return;
  if (job->state == FERRY_JOB_POSTCOPY)
    {
      /* The destination runs the guest; resuming here would run it twice. */
      ferry_job_event (job, "warning", "not rolling back during post-copy: %s", reason);
      return;
    }
  mig_src_stop_timers (job);
  ferry_job_transition (job, FERRY_JOB_CANCELLING, reason);
  gboolean resume = job->options.live && vm != NULL && vm->qmp != NULL;
  if (resume)
    {
      /* QEMU resumes a guest itself when pre-copy fails, but not after a
       * completed stream whose destination then failed (postmigrate):
       * cont re-activates the disks and resumes. The cancel goes first:
       * QEMU runs a monitor's commands in order, so the memory stream is
       * stopped before any disk mirror is cancelled below. */
      FerryQmpStep steps[CANCEL_STEPS + 2];
      cancel_stream_steps (steps);
      guint n = CANCEL_STEPS;
      /* A guest paused by its owner before the migration stays paused. */
      if (g_strcmp0 (vm->qemu_status, "paused") != 0)
        steps[n++] = (FerryQmpStep) { "cont", NULL, TRUE };
      steps[n++] = (FerryQmpStep) { "query-status", NULL };
      ferry_qmp_run_steps_async (vm->qmp, steps, n, NULL, on_rollback_resumed, ferry_job_ref_new (job));
    }
  /* With disk mirrors, the destination is told once they are torn down
   * (mig_src_storage_released); the guest is resumed meanwhile. */
  job->rollback_waits_for_storage = TRUE;
  if (!mig_storage_src_cancel (job))
    {
      job->rollback_waits_for_storage = FALSE;
      release_destination (job);
    }
  if (!resume)
    {
      job->rollback_guest_settled = TRUE;
      rollback_finish_when_done (job);
    }
}

/* ---- confirm ---------------------------------------------------------------- */

static void
mig_src_complete (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  if (vm != NULL)
    {
      vm->job = NULL;
      if (job->options.undefine_source || !vm->persistent)
        {
          ferry_job_event (job, "info", "source definition removed%s",
                           job->options.undefine_source ? " (--undefine-source)" : " (transient VM)");
          ferry_vm_forget (vm);
        }
    }
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
}

static void
on_final_stats (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job == NULL)
    return;
  if (reply != NULL && JSON_NODE_HOLDS_OBJECT (reply))
    {
      update_stats (job, json_node_get_object (reply));
    }
  FerryVm *vm = ferry_job_vm (job);
  /* The source copy is stale now; stopping it completes the job when the
   * monitor closes (mig_src_on_qmp_event FERRY_QEMU_EXITED). */
  if (vm != NULL && vm->qmp != NULL)
    ferry_vm_destroy (vm, NULL);
  else
    mig_src_complete (job);
}

void
mig_src_confirm (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  ferry_job_transition (job, FERRY_JOB_CONFIRMING, "destination runs the guest");
  if (vm == NULL || vm->qmp == NULL)
    {
      mig_src_complete (job);
      return;
    }
  /* QEMU announces "completed" before it fills in total time and downtime;
   * by now it has, so read the final figures before stopping it. */
  ferry_qmp_execute_async (vm->qmp, "query-migrate", NULL, NULL, on_final_stats, ferry_job_ref_new (job));
}

/* ---- finish ----------------------------------------------------------------- */

static void mig_src_check_destination (FerryJob *job, gint64 deadline_us);

/* What the guest saw: paused here until running there (wall clocks of
 * two hosts; exact on one machine, skewed by NTP error across machines). */
void
mig_src_record_guest_downtime (FerryJob *job, gint64 resumed_us)
{
  if (resumed_us <= 0 || job->guest_stopped_us <= 0)
    return;
  gint64 downtime_ms = (resumed_us - job->guest_stopped_us) / 1000;
  json_object_set_int_member (job->stats, "ferry-guest-downtime-ms", downtime_ms);
  ferry_job_event (job, "info", "guest paused for %" G_GINT64_FORMAT " ms (source stop to destination resume)",
                   downtime_ms);
}

static void
on_finish_replied (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  gboolean maybe_delivered = FALSE;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, &maybe_delivered, &error);

  if (job == NULL)
    return;
  if (reply != NULL && ferry_json_object_string (reply, "state") != NULL
      && g_str_equal (ferry_json_object_string (reply, "state"), "completed"))
    {
      mig_src_record_guest_downtime (job, ferry_json_object_int (reply, "resumed_us"));
      mig_src_confirm (job);
      return;
    }
  if (reply != NULL || !maybe_delivered || !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE))
    {
      /* The destination answered no (or never got the request): it does
       * not run the guest, so the source takes it back. */
      g_autofree char *reason = g_strdup_printf ("destination could not take over: %s",
                                                 error ? error->message : "unexpected reply");
      mig_src_rollback (job, reason);
      return;
    }
  /* No answer to a request that may have arrived: ask until we know. */
  ferry_job_event (job, "warning", "no answer to finish (%s); asking the destination", error->message);
  mig_src_check_destination (job, g_get_monotonic_time ()
                                  + (gint64) job->agent->config.keepalive_timeout_ms * 1000 * 4);
}

typedef struct {
  FerryJobRef ref;
  gint64 deadline_us;
} CheckData;

static gboolean on_check_retry (gpointer user_data);

static void
on_check_replied (GObject *source, GAsyncResult *result, gpointer user_data)
{
  CheckData *check = user_data;
  FerryJob *job = ferry_job_ref_get (&check->ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);

  if (job == NULL)
    {
      g_free (check);
      return;
    }
  const char *state = reply ? ferry_json_object_string (reply, "state") : NULL;
  if (g_strcmp0 (state, "completed") == 0)
    {
      g_free (check);
      mig_src_confirm (job);
      return;
    }
  if (state != NULL && g_strcmp0 (state, "finishing") != 0 && g_strcmp0 (state, "prepared") != 0)
    {
      g_free (check);
      mig_src_rollback (job, "destination did not take over the guest");
      return;
    }
  if (g_get_monotonic_time () > check->deadline_us)
    {
      /* We cannot know whether the destination resumed the guest. Resuming
       * here could run it twice, so it stays paused for the operator. */
      mig_src_stop_timers (job);
      ferry_job_event (job, "error", "destination unreachable after finish; the guest stays paused "
                                     "on this host until the destination's state is known");
      ferry_job_finish (job, FERRY_JOB_FAILED,
                        "destination state unknown after finish; guest left paused on the source");
      g_free (check);
      return;
    }
  g_timeout_add (job->agent->config.keepalive_interval_ms, on_check_retry, check);
}

static gboolean
on_check_retry (gpointer user_data)
{
  CheckData *check = user_data;
  FerryJob *job = ferry_job_ref_get (&check->ref);
  if (job == NULL)
    {
      g_free (check);
      return G_SOURCE_REMOVE;
    }
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  ferry_peer_request_async (job->agent, job->peer_url, "GET", path, NULL, 5, NULL,
                            on_check_replied, check);
  return G_SOURCE_REMOVE;
}

static void
mig_src_check_destination (FerryJob *job, gint64 deadline_us)
{
  CheckData *check = g_new0 (CheckData, 1);
  check->ref.agent = job->agent;
  check->ref.job_id = job->id;
  check->deadline_us = deadline_us;
  on_check_retry (check);
}

void
mig_src_finish (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  mig_src_stop_timers (job);
  if (vm != NULL)
    ferry_vm_set_state (vm, FERRY_VM_MIGRATED);
  ferry_job_transition (job, FERRY_JOB_FINISHING, "memory transferred; asking the destination to resume");
  g_autofree char *path = mig_src_incoming_path (job, "/finish");
  g_autoptr (JsonObject) body = json_object_new ();
  ferry_peer_request_async (job->agent, job->peer_url, "POST", path, body, MIG_SRC_PEER_TIMEOUT_S, NULL,
                            on_finish_replied, ferry_job_ref_new (job));
}

/* ---- perform ---------------------------------------------------------------- */

typedef struct {
  FerryJobRef ref;
  char *reason;
} PeerViewData;

static void
on_peer_view (GObject *source, GAsyncResult *result, gpointer user_data)
{
  PeerViewData *data = user_data;
  FerryJob *job = ferry_job_ref_get (&data->ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job != NULL)
    {
      const char *why = ferry_json_object_string (reply, "error");
      g_autofree char *reason = why ? g_strdup_printf ("%s; destination: %s", data->reason, why)
                                    : g_strdup (data->reason);
      mig_src_rollback (job, reason);
    }
  g_free (data->reason);
  g_free (data);
}

/* QEMU's own message for a broken stream ("Cannot write to TLS channel")
 * rarely says why; the destination usually knows (its QEMU exited, it
 * refused the stream), so ask it before rolling back. */
static void
mig_src_fail_with_peer_view (FerryJob *job, const char *reason)
{
  PeerViewData *data = g_new0 (PeerViewData, 1);
  data->ref.agent = job->agent;
  data->ref.job_id = job->id;
  data->reason = g_strdup (reason);
  mig_src_stop_timers (job);
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  ferry_peer_request_async (job->agent, job->peer_url, "GET", path, NULL, 3, NULL, on_peer_view, data);
}

/* ---- restart as one stream -------------------------------------------------- */

static void mig_src_prepare (FerryJob *job, const char *reason);
static void handle_progress (FerryJob *job, JsonObject *stats);
static void on_restart_cancel_replied (GObject *source, GAsyncResult *result, gpointer user_data);

/* Strategy auto sends a pre-copy over multifd channels only when the
 * guest dirtied well below what the link carries (strategy.c). A guest
 * that speeds up afterwards breaks that premise, and QEMU cannot switch
 * multifd channels to post-copy; auto-converge alone throttles it ten
 * points a pass, and a guest that outruns the link still never finishes.
 * So the stream is cancelled (the guest runs on here, as through all of
 * pre-copy) and the migration starts again as one stream with post-copy
 * after the first pass. What was sent goes again: little, since multifd
 * was chosen only for a pre-copy short against the completion limit.
 * Not with disk mirrors: they would have to start again too. */
static gboolean
restartable_as_one_stream (FerryJob *job)
{
  return job->options.strategy == FERRY_STRATEGY_AUTO && ferry_migrate_options_multifd (&job->options)
         && !job->options.postcopy && !job->options.copy_storage;
}

/* QEMU ends a cancelled stream in well under a second once the yank
 * has shut its channels; should it not, the guest stays here. */
#define RESTART_CANCEL_DEADLINE_S 30

static gboolean
on_restart_cancel_overdue (gpointer user_data)
{
  FerryJob *job = ferry_job_ref_get (user_data);
  if (job != NULL && job->state == FERRY_JOB_PERFORMING && job->restart_reason != NULL && !job->restart_releasing)
    {
      g_clear_pointer (&job->restart_reason, g_free);
      mig_src_rollback (job, "QEMU did not end the cancelled multifd stream within "
                        G_STRINGIFY (RESTART_CANCEL_DEADLINE_S) " s; the guest stays on the source");
    }
  return G_SOURCE_REMOVE;
}

static void
restart_as_one_stream (FerryJob *job, const char *why, JsonObject *ram)
{
  FerryVm *vm = ferry_job_vm (job);
  if (vm == NULL || vm->qmp == NULL)
    return;
  /* The destination's incoming QEMU fails with the stream: its agent's
   * answers are not this job's failure any more (watching_destination). */
  mig_src_stop_timers (job);
  /* Where the new stream switches: what the stalled pass had left is
   * what the guest rewrites in a pass (strategy.h). */
  JsonObject *measured = ferry_json_object_object (ferry_json_object_object (job->stats, "ferry-plan"), "measured");
  gint64 resident = measured ? ferry_json_object_int (measured, "resident_bytes") : ferry_json_object_int (ram, "total");
  double link = measured ? json_object_get_double_member_with_default (measured, "link_mib_s", 0) * 1048576.0 : 0;
  gint64 switch_at_pass;
  g_autofree char *switch_clause = ferry_choose_postcopy_switch_after_stall (
    resident, ferry_json_object_int (ram, "remaining"), link, &switch_at_pass);
  job->restart_reason = g_strdup_printf ("starting again as one stream with %s (%s; QEMU cannot switch multifd "
                                         "channels to post-copy)", switch_clause, why);
  JsonObject *restart = json_object_new ();
  json_object_set_string_member (restart, "reason", job->restart_reason);
  json_object_set_int_member (restart, "after_ms", (g_get_monotonic_time () - job->perform_started_us) / 1000);
  json_object_set_int_member (restart, "passes", ferry_json_object_int (ram, "dirty-sync-count"));
  json_object_set_int_member (restart, "transferred", ferry_json_object_int (ram, "transferred"));
  json_object_set_int_member (restart, "switch_at_pass", switch_at_pass);
  json_object_set_object_member (job->stats, "ferry-restart", restart);
  ferry_job_save_stats (job);
  ferry_job_event (job, "info", "cancelling the multifd stream, the guest runs on here: %s", why);
  /* The channels must not wait on a destination whose QEMU is gone. The
   * stream's end comes with the steps' query-migrate or a MIGRATION
   * event; handle_progress goes on from there. */
  FerryQmpStep steps[CANCEL_STEPS + 1];
  cancel_stream_steps (steps);
  steps[CANCEL_STEPS] = (FerryQmpStep) { "query-migrate", NULL };
  ferry_qmp_run_steps_async (vm->qmp, steps, G_N_ELEMENTS (steps), NULL, on_restart_cancel_replied,
                             ferry_job_ref_new (job));
  g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, RESTART_CANCEL_DEADLINE_S, on_restart_cancel_overdue,
                              ferry_job_ref_new (job), g_free);
}

static void
on_restart_released (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);
  if (job == NULL || job->state != FERRY_JOB_PERFORMING || job->restart_reason == NULL)
    return;
  if (reply == NULL && !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    {
      g_autofree char *reason = g_strdup_printf ("cannot start the stream again: the destination did not "
                                                 "release the first one: %s", error->message);
      mig_src_rollback (job, reason);
      return;
    }
  if (job->abort_requested)
    {
      mig_src_rollback (job, "aborted by the user");
      return;
    }
  g_autofree char *reason = g_steal_pointer (&job->restart_reason);
  job->restart_releasing = FALSE;
  g_clear_pointer (&job->incoming_uri, g_free);
  g_clear_pointer (&job->tls_hostname, g_free);
  job->last_pass = 0;
  job->last_pass_remaining = 0;
  job->best_remaining = 0;
  job->progress_at_us = 0;
  job->throttle_percent = 0;
  job->guest_stopped_us = 0;
  job->setup_reported = FALSE;
  /* The plan's prediction was for the multifd stream; the guest no
   * longer dirties what was measured, so the ETA goes by the stream. */
  job->revised_total_s = 0;
  /* The second stream's copy fills the rest of the scale, so the
   * percentage moves on from where the first one got to. */
  job->copy_progress_floor = MIN (job->progress_percent, 90);
  JsonObject *restart = ferry_json_object_object (job->stats, "ferry-restart");
  gint64 switch_at_pass = restart ? ferry_json_object_int (restart, "switch_at_pass") : 0;
  ferry_migrate_options_postcopy (&job->options, switch_at_pass == 1 ? 1 : 2);
  mig_src_prepare (job, reason);
}

/* QEMU's multifd stream has ended: the destination drops its incoming
 * QEMU (most likely gone with the stream already), then mig_src_prepare
 * asks for a new one. */
static void
restart_stream_ended (FerryJob *job)
{
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  ferry_peer_request_async (job->agent, job->peer_url, "DELETE", path, NULL, MIG_SRC_PEER_TIMEOUT_S, NULL,
                            on_restart_released, ferry_job_ref_new (job));
}

/* ---- watchdogs -------------------------------------------------------------- */

static void set_qemu_parameter (FerryJob *job, FerryVm *vm, const char *name, gint64 value);

/* A pre-copy that started below the allowed downtime (strategy auto's
 * plan, options.downtime_start_ms) and whose new pass began with more
 * than half of what the one before did: QEMU's limit doubles, or goes to
 * the maximum at once when the pass stalled (the stall that would
 * otherwise switch to post-copy or start again; that escalation waits for
 * the next pass). TRUE when raised. */
static gboolean
raise_downtime_limit (FerryJob *job, gint64 pass, gint64 remaining, gboolean stalled)
{
  if (pass < 2 || job->last_pass_remaining <= 0 || job->downtime_limit_ms <= 0
      || job->downtime_limit_ms >= job->options.max_downtime_ms || remaining <= job->last_pass_remaining / 2)
    return FALSE;
  FerryVm *vm = ferry_job_vm (job);
  if (vm == NULL || vm->qmp == NULL)
    return FALSE;
  gint64 raised = stalled ? job->options.max_downtime_ms : MIN (job->downtime_limit_ms * 2, job->options.max_downtime_ms);
  ferry_job_event (job, "info", "pass %" G_GINT64_FORMAT " left %" G_GINT64_FORMAT " MiB, the previous %" G_GINT64_FORMAT
                   " MiB: downtime limit raised from %" G_GINT64_FORMAT " to %" G_GINT64_FORMAT " ms (%" G_GINT64_FORMAT
                   " allowed)", pass, remaining / 1048576, job->last_pass_remaining / 1048576, job->downtime_limit_ms,
                   raised, job->options.max_downtime_ms);
  job->downtime_limit_ms = raised;
  set_qemu_parameter (job, vm, "downtime-limit", raised);
  return TRUE;
}

/* KubeVirt's two limits: the whole migration may take completion timeout
 * per GiB of guest RAM, and "remaining" must shrink at least once every
 * progress timeout. On expiry: abort (the source keeps running) or
 * switch to post-copy, as the user chose. */
static void
check_watchdogs (FerryJob *job, JsonObject *stats)
{
  JsonObject *ram = ferry_json_object_object (stats, "ram");
  if (ram == NULL || job->postcopy_requested || job->restart_reason != NULL)
    return;
  gint64 now = g_get_monotonic_time ();
  gint64 remaining = ferry_json_object_int (ram, "remaining");
  gint64 total = ferry_json_object_int (ram, "total");
  if (job->progress_at_us == 0 || remaining < job->best_remaining)
    {
      job->best_remaining = remaining;
      job->progress_at_us = now;
    }
  /* strategy auto watches every pass: a pass that does not shrink what is
   * left by a tenth means pre-copy is not converging; switch now rather
   * than wait for a timeout. */
  gint64 pass = ferry_json_object_int (ram, "dirty-sync-count");
  mig_src_postcopy_at_pass (job, pass);
  if (job->postcopy_requested)
    return;
  if (pass > job->last_pass)
    {
      gboolean stalled = job->last_pass_remaining > 0 && remaining > job->last_pass_remaining * 9 / 10;
      /* Below the allowed downtime a raise comes first; the next stall
       * escalates. */
      gboolean raised = raise_downtime_limit (job, pass, remaining, stalled);
      if (!raised && stalled && job->options.strategy == FERRY_STRATEGY_AUTO && pass >= 3
          && (job->options.postcopy || restartable_as_one_stream (job)))
        {
          g_autofree char *why = g_strdup_printf ("pass %" G_GINT64_FORMAT " left %" G_GINT64_FORMAT
                                                  " MiB, the previous %" G_GINT64_FORMAT
                                                  " MiB: pre-copy is not converging", pass,
                                                  remaining / 1048576, job->last_pass_remaining / 1048576);
          if (!job->options.postcopy)
            {
              restart_as_one_stream (job, why, ram);
              return;
            }
          g_autoptr (GError) error = NULL;
          if (!mig_src_request_postcopy (job, why, &error))
            ferry_job_event (job, "warning", "%s", error->message);
          return;
        }
      job->last_pass = pass;
      job->last_pass_remaining = remaining;
      if (raised)
        return;
    }
  gint64 completion_limit_ms = MAX (1000, job->options.completion_timeout_per_gib_s * 1000
                                          * total / (1024 * 1024 * 1024));
  gint64 elapsed_ms = (now - job->perform_started_us) / 1000;
  gint64 stalled_ms = (now - job->progress_at_us) / 1000;
  g_autofree char *why = NULL;
  if (elapsed_ms > completion_limit_ms)
    why = g_strdup_printf ("completion timeout: %" G_GINT64_FORMAT " s for %.2f GiB "
                           "(%" G_GINT64_FORMAT " s per GiB)", completion_limit_ms / 1000,
                           total / (1024.0 * 1024 * 1024), job->options.completion_timeout_per_gib_s);
  else if (stalled_ms > job->options.progress_timeout_s * 1000)
    why = g_strdup_printf ("progress timeout: remaining data has not shrunk for %" G_GINT64_FORMAT " s",
                           job->options.progress_timeout_s);
  if (why == NULL)
    return;
  if (job->options.timeout_action == FERRY_TIMEOUT_POSTCOPY)
    {
      g_autoptr (GError) error = NULL;
      if (!mig_src_request_postcopy (job, why, &error))
        mig_src_rollback (job, why);
      return;
    }
  g_autofree char *reason = g_strdup_printf ("%s; aborted, the guest stays on the source", why);
  mig_src_rollback (job, reason);
}

/* Strategy auto's prediction again, with the dirty-bitmap sync's cost per
 * page that QEMU's set-up just showed (strategy.h): said as an event, kept
 * in the stats (ferry-revised) and used for the ETA. */
static void
revise_plan (FerryJob *job, JsonObject *stats, gint64 setup_ms)
{
  JsonObject *plan = ferry_json_object_object (stats, "ferry-plan");
  g_autoptr (JsonObject) revised = plan ? ferry_plan_revise (plan, setup_ms) : NULL;
  if (revised == NULL)
    return;
  JsonObject *prediction = json_object_get_object_member (revised, "prediction");
  JsonObject *measured = ferry_json_object_object (plan, "measured");
  if (json_object_has_member (prediction, "total_s"))
    {
      job->revised_total_s = json_object_get_double_member (prediction, "total_s");
      ferry_job_event (job, "info", "revised after QEMU's set-up (%.1f s, %.0f µs a page where the plan assumed "
                       "%.0f): %.1f s total, %.0f ms downtime", setup_ms / 1000.0,
                       json_object_get_double_member (revised, "sync_us_per_page"),
                       json_object_get_double_member_with_default (measured, "sync_us_per_page", 0),
                       job->revised_total_s, json_object_get_double_member (prediction, "downtime_ms"));
    }
  else
    ferry_job_event (job, "warning", "revised after QEMU's set-up (%.1f s, %.0f µs a page): pre-copy alone does "
                     "not converge at that cost", setup_ms / 1000.0,
                     json_object_get_double_member (revised, "sync_us_per_page"));
  json_object_set_object_member (job->stats, "ferry-revised", g_steal_pointer (&revised));
}

/* Under TCG with the lost-dirty-page padding (agent.h), QEMU's set-up
 * sync of a busy guest takes seconds and the guest stands still through
 * it: no tick (bench/live: a guest dirtying at its maximum ticked not once
 * in a 43 s set-up, while QEMU's downtime said 214 ms), and no page
 * written (QEMU's trace: none in an 11.4 s sync). QEMU does not count it
 * as downtime. Said once, as soon as QEMU reports how long its set-up
 * took. */
static void
report_setup_stall (FerryJob *job, JsonObject *stats)
{
  gint64 setup_ms = ferry_json_object_int (stats, "setup-time");
  if (job->setup_reported || setup_ms <= 0)
    return;
  job->setup_reported = TRUE;
  if (job->agent->pad_ram_for_tcg && setup_ms > job->options.max_downtime_ms)
    {
      ferry_job_event (job, "warning", "QEMU's set-up took %.1f s; under TCG the guest stood still through its "
                       "dirty-bitmap sync, which QEMU does not count as downtime (under KVM the sync takes "
                       "milliseconds)", setup_ms / 1000.0);
      json_object_set_int_member (job->stats, "ferry-setup-stall-ms", setup_ms);
    }
  /* The plan was for the first stream of a restarted migration. */
  if (!json_object_has_member (job->stats, "ferry-restart"))
    revise_plan (job, stats, setup_ms);
}

/* Auto-converge's throttle, said each time QEMU raises it: the guest's
 * vCPUs run that much slower until the stream ends. */
static void
report_throttle (FerryJob *job, JsonObject *stats)
{
  gint64 percent = ferry_json_object_int (stats, "cpu-throttle-percentage");
  if (percent <= job->throttle_percent)
    return;
  job->throttle_percent = percent;
  ferry_job_event (job, "info", "pre-copy is not converging: QEMU slows the guest's vCPUs by %" G_GINT64_FORMAT
                   " %% (auto-converge)", percent);
}

/* A query-migrate reply: statistics, then whatever its status calls for. */
static void
handle_progress (FerryJob *job, JsonObject *stats)
{
  update_stats (job, stats);
  report_setup_stall (job, stats);
  report_throttle (job, stats);

  const char *status = ferry_json_object_string (stats, "status");
  if (status == NULL || (job->state != FERRY_JOB_PERFORMING && job->state != FERRY_JOB_POSTCOPY))
    return;
  if (g_str_equal (status, "completed"))
    {
      /* Both a MIGRATION event's query and the poll timer's may say so. */
      if (job->stream_completed)
        return;
      job->stream_completed = TRUE;
      if (job->restart_reason != NULL)
        {
          ferry_job_event (job, "info", "the multifd stream completed before the cancel reached it: finishing it");
          g_clear_pointer (&job->restart_reason, g_free);
          json_object_remove_member (job->stats, "ferry-restart");
        }
      JsonObject *ram = json_object_get_object_member (stats, "ram");
      ferry_job_event (job, "info", "stream completed: %" G_GINT64_FORMAT " ms total, %"
                       G_GINT64_FORMAT " ms downtime, %" G_GINT64_FORMAT " bytes",
                       ferry_json_object_int (stats, "total-time"),
                       ferry_json_object_int (stats, "downtime"),
                       ferry_json_object_int (ram, "transferred"));
      if (job->state == FERRY_JOB_POSTCOPY)
        {
          mig_src_stop_timers (job);
          /* A short post-copy can end before the destination has answered
           * that it resumed the guest: confirm only once both are true. */
          if (job->postcopy_dest_running)
            mig_src_confirm (job);
        }
      else if (job->storage != NULL)
        {
          /* The guest is paused: finish the disk mirrors, then Finish. */
          mig_src_stop_timers (job);
          mig_storage_src_complete (job);
        }
      else
        mig_src_finish (job);
    }
  else if (job->state == FERRY_JOB_PERFORMING && g_str_equal (status, "postcopy-active"))
    mig_src_postcopy_switched (job);
  else if (job->state == FERRY_JOB_POSTCOPY && g_str_equal (status, "postcopy-paused"))
    mig_src_schedule_recovery (job);
  else if (job->state == FERRY_JOB_POSTCOPY && g_str_equal (status, "failed"))
    {
      mig_src_stop_timers (job);
      ferry_job_finish (job, FERRY_JOB_FAILED,
                        "post-copy failed in QEMU: the guest is paused on the destination with part "
                        "of its memory still here");
    }
  else if (job->restart_reason != NULL && (g_str_equal (status, "failed") || g_str_equal (status, "cancelled")))
    {
      /* Both the steps' query and a MIGRATION event's may say so. */
      if (!job->restart_releasing)
        {
          job->restart_releasing = TRUE;
          restart_stream_ended (job);
        }
    }
  else if (g_str_equal (status, "failed") || g_str_equal (status, "cancelled"))
    {
      const char *desc = ferry_json_object_string (stats, "error-desc");
      g_autofree char *reason = g_strdup_printf ("QEMU migration %s%s%s", status,
                                                 desc ? ": " : "", desc ? desc : "");
      if (job->abort_requested)
        mig_src_rollback (job, "aborted by the user");
      else
        mig_src_fail_with_peer_view (job, reason);
    }
  else if (job->state == FERRY_JOB_PERFORMING)
    check_watchdogs (job, stats);
}

static void
on_progress (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job != NULL && reply != NULL && JSON_NODE_HOLDS_OBJECT (reply))
    handle_progress (job, json_node_get_object (reply));
}

static void
on_restart_cancel_replied (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  if (job == NULL)
    return;
  if (reply != NULL && JSON_NODE_HOLDS_OBJECT (reply))
    handle_progress (job, json_node_get_object (reply));
  else if (reply == NULL)
    {
      g_autofree char *reason = g_strdup_printf ("cannot cancel the multifd stream: %s", error->message);
      g_clear_pointer (&job->restart_reason, g_free);
      mig_src_rollback (job, reason);
    }
}

static void
query_progress (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  if (vm != NULL && vm->qmp != NULL)
    ferry_qmp_execute_async (vm->qmp, "query-migrate", NULL, NULL, on_progress, ferry_job_ref_new (job));
}

static gboolean
on_poll_timer (gpointer user_data)
{
  query_progress (user_data);
  return G_SOURCE_CONTINUE;
}

/* Whether the destination holds an incoming VM for us that it keeps only
 * while we keep asking (its lease): from its prepare reply through the
 * disk mirrors (PREPARING) and the stream (PERFORMING). Silence or a
 * failed destination then rolls the migration back. */
static gboolean
watching_destination (FerryJob *job)
{
  return (job->state == FERRY_JOB_PERFORMING && job->restart_reason == NULL)
         || (job->state == FERRY_JOB_PREPARING && job->incoming_uri != NULL);
}

static void
on_keepalive_replied (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);

  if (job == NULL)
    return;
  job->keepalive_in_flight = FALSE;
  if (!watching_destination (job))
    {
      if (reply != NULL)
        job->peer_last_seen_us = g_get_monotonic_time ();
      else if (job->state == FERRY_JOB_POSTCOPY
               && peer_silent_ms (job) >= job->agent->config.keepalive_timeout_ms)
        mig_src_pause_stuck_postcopy (job);
      return;
    }
  if (reply != NULL)
    {
      job->peer_last_seen_us = g_get_monotonic_time ();
      const char *state = ferry_json_object_string (reply, "state");
      if (state != NULL && (g_str_equal (state, "failed") || g_str_equal (state, "cancelled")))
        {
          const char *why = ferry_json_object_string (reply, "error");
          g_autofree char *reason = g_strdup_printf ("destination %s: %s", state, why ? why : "no reason given");
          mig_src_rollback (job, reason);
        }
      return;
    }
  if (g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    {
      mig_src_rollback (job, "destination no longer knows this migration");
      return;
    }
  gint64 silent_ms = peer_silent_ms (job);
  if (silent_ms >= job->agent->config.keepalive_timeout_ms)
    {
      g_autofree char *reason = g_strdup_printf ("destination agent unreachable for %" G_GINT64_FORMAT
                                                 " ms (%s)", silent_ms, error->message);
      mig_src_rollback (job, reason);
    }
}

static gboolean
on_keepalive_timer (gpointer user_data)
{
  FerryJob *job = user_data;
  gint64 silent_ms = peer_silent_ms (job);
  gboolean silent = silent_ms >= job->agent->config.keepalive_timeout_ms;
  if (job->keepalive_in_flight && job->state == FERRY_JOB_POSTCOPY && silent)
    mig_src_pause_stuck_postcopy (job);
  if (job->keepalive_in_flight && watching_destination (job))
    {
      /* A request hung (link cut): judge silence without waiting for it. */
      if (silent)
        {
          g_autofree char *reason = g_strdup_printf ("destination agent unreachable for %"
                                                     G_GINT64_FORMAT " ms", silent_ms);
          job->keepalive_timer = 0;
          mig_src_rollback (job, reason);
          return G_SOURCE_REMOVE;
        }
      return G_SOURCE_CONTINUE;
    }
  job->keepalive_in_flight = TRUE;
  g_autofree char *path = mig_src_incoming_path (job, NULL);
  guint timeout_s = MAX (1, job->agent->config.keepalive_timeout_ms / 1000);
  ferry_peer_request_async (job->agent, job->peer_url, "GET", path, NULL, timeout_s, NULL,
                            on_keepalive_replied, ferry_job_ref_new (job));
  return G_SOURCE_CONTINUE;
}

/* Idempotent: the keepalive runs from the prepare reply to the end. */
static void
start_keepalive (FerryJob *job)
{
  if (job->keepalive_timer == 0)
    job->keepalive_timer = g_timeout_add (job->agent->config.keepalive_interval_ms, on_keepalive_timer, job);
}

void
mig_src_watch (FerryJob *job)
{
  job->peer_last_seen_us = g_get_monotonic_time ();
  if (job->poll_timer == 0)
    job->poll_timer = g_timeout_add (PROGRESS_POLL_MS, on_poll_timer, job);
  start_keepalive (job);
}

/* Records what QEMU itself reports for the settings that matter, so the
 * job log shows the values in force, not only the ones asked for. */
static void
on_parameters_read (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job == NULL || reply == NULL || !JSON_NODE_HOLDS_OBJECT (reply))
    return;
  JsonObject *parameters = json_node_get_object (reply);
  const char *tls_creds = ferry_json_object_string (parameters, "tls-creds");
  ferry_job_event (job, "info", "QEMU parameters: max-bandwidth %" G_GINT64_FORMAT
                   " B/s, downtime-limit %" G_GINT64_FORMAT " ms, tls-creds '%s', tls-hostname '%s'",
                   ferry_json_object_int (parameters, "max-bandwidth"),
                   ferry_json_object_int (parameters, "downtime-limit"),
                   tls_creds ? tls_creds : "",
                   ferry_json_object_string (parameters, "tls-hostname")
                   ? ferry_json_object_string (parameters, "tls-hostname") : "");
  json_object_set_object_member (job->stats, "ferry-qemu-parameters", json_object_ref (parameters));
}

static void
on_capabilities_read (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job == NULL || reply == NULL || !JSON_NODE_HOLDS_ARRAY (reply))
    return;
  JsonArray *list = json_node_get_array (reply);
  JsonObject *enabled = json_object_new ();
  g_autoptr (GString) names = g_string_new (NULL);
  for (guint i = 0; i < json_array_get_length (list); i++)
    {
      JsonObject *capability = json_array_get_object_element (list, i);
      const char *name = ferry_json_object_string (capability, "capability");
      gboolean state = json_object_get_boolean_member_with_default (capability, "state", FALSE);
      if (name == NULL)
        continue;
      json_object_set_boolean_member (enabled, name, state);
      if (state)
        g_string_append_printf (names, "%s%s", names->len ? ", " : "", name);
    }
  ferry_job_event (job, "info", "QEMU capabilities on: %s", names->str);
  json_object_set_object_member (job->stats, "ferry-qemu-capabilities", enabled);
}

static void
on_migrate_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);

  if (job == NULL || job->state != FERRY_JOB_PERFORMING)
    return;
  if (reply == NULL)
    {
      g_autofree char *reason = g_strdup_printf ("cannot start the migration: %s", error->message);
      mig_src_rollback (job, reason);
      return;
    }
  g_autofree char *allowed = job->downtime_limit_ms < job->options.max_downtime_ms
                               ? g_strdup_printf (" to start, %" G_GINT64_FORMAT " ms allowed",
                                                  job->options.max_downtime_ms)
                               : g_strdup ("");
  ferry_job_event (job, "info", "migration started to %s (TLS %s, bandwidth %s, downtime limit %"
                   G_GINT64_FORMAT " ms%s)", job->incoming_uri, job->options.tls ? "on" : "off",
                   job->options.bandwidth_mib ? "limited" : "unlimited", job->downtime_limit_ms, allowed);
  if (job->abort_requested)
    {
      mig_src_rollback (job, "aborted by the user");
      return;
    }
  FerryVm *vm = ferry_job_vm (job);
  if (vm != NULL && vm->qmp != NULL)
    {
      ferry_qmp_execute_async (vm->qmp, "query-migrate-parameters", NULL, NULL, on_parameters_read,
                               ferry_job_ref_new (job));
      ferry_qmp_execute_async (vm->qmp, "query-migrate-capabilities", NULL, NULL,
                               on_capabilities_read, ferry_job_ref_new (job));
    }
  job->perform_started_us = g_get_monotonic_time ();
  mig_src_watch (job);
  mig_src_arm_postcopy_timer (job);
}

/* QEMU is set up for the stream: start it. */
static void
on_migrate_configured (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  if (job == NULL || job->state != FERRY_JOB_PERFORMING)
    return;
  FerryVm *vm = ferry_job_vm (job);
  if (reply == NULL || vm == NULL || vm->qmp == NULL)
    {
      g_autofree char *reason = g_strdup_printf ("cannot start the migration: %s",
                                                 reply == NULL ? error->message : "source QEMU is gone");
      mig_src_rollback (job, reason);
      return;
    }
  g_autoptr (JsonObject) arguments = ferry_qmp_args_migrate (job->incoming_uri);
  ferry_qmp_execute_async (vm->qmp, "migrate", arguments, NULL, on_migrate_started, ferry_job_ref_new (job));
  /* A switch as soon as set-up is done goes right behind migrate, not
   * after its reply: QEMU then switches at its first iteration, the
   * moment set-up's sync ends. Asked for at QEMU's pass event, the guest
   * ran on meanwhile, and under TCG a busy guest rewrote 37 880 pages in
   * those 58 ms, which the stopped guest's sync took 1.7 s to collect
   * (bench/live, QEMU trace). After migrate's reply is too late as well:
   * set-up's sync may hold QEMU's lock by then, and the monitor only gets
   * to the request as the migration thread starts its first pass. Not
   * when the user aborted meanwhile: on_migrate_started rolls back, and a
   * stream that never switches is the simpler one to cancel. */
  if (job->options.postcopy && job->options.postcopy_at_pass == 1 && !job->abort_requested)
    {
      g_autoptr (GError) refused = NULL;
      if (!mig_src_request_postcopy (job, "QEMU's set-up is done (strategy auto; asked for together with "
                                     "migrate, so the guest stops the moment set-up's sync ends)", &refused))
        ferry_job_event (job, "warning", "%s", refused->message);
    }
}

void
mig_src_perform (FerryJob *job)
{
  FerryVm *vm = ferry_job_vm (job);
  if (vm == NULL || vm->qmp == NULL)
    {
      mig_src_rollback (job, "source QEMU is gone");
      return;
    }
  ferry_job_transition (job, FERRY_JOB_PERFORMING, NULL);
  g_autofree char *creds_dir = g_build_filename (job->agent->config.state_dir, "qemu-tls", NULL);
  gint64 bandwidth = job->options.bandwidth_mib > 0 ? job->options.bandwidth_mib * 1024 * 1024
                                                    : UNLIMITED_BANDWIDTH;
  FerryQmpStep steps[5];
  guint n = 0;
  if (job->options.tls)
    {
      /* Left over from an earlier migration of this QEMU? Replace it. */
      JsonObject *del = json_object_new ();
      json_object_set_string_member (del, "id", QEMU_TLS_CREDS_ID);
      steps[n++] = (FerryQmpStep) { "object-del", del, TRUE };
      steps[n++] = (FerryQmpStep) { "object-add",
                                    ferry_qmp_args_tls_creds (QEMU_TLS_CREDS_ID, creds_dir, FALSE) };
    }
  FerryQmpCapabilities capabilities = {
    .events = TRUE,
    .multifd = ferry_migrate_options_multifd (&job->options),
    .xbzrle = job->options.xbzrle,
    .auto_converge = job->options.auto_converge,
    .postcopy = job->options.postcopy,
  };
  /* Strategy auto may start below the allowed downtime (its plan says
   * what that buys) and raise it as the passes go (check_watchdogs). */
  job->downtime_limit_ms = job->options.downtime_start_ms > 0
                             ? MIN (job->options.downtime_start_ms, job->options.max_downtime_ms)
                             : job->options.max_downtime_ms;
  FerryQmpParameters parameters = {
    .max_bandwidth_bytes = bandwidth,
    .downtime_ms = job->downtime_limit_ms,
    .tls_creds = job->options.tls ? QEMU_TLS_CREDS_ID : NULL,
    .tls_hostname = job->options.tls ? job->tls_hostname : NULL,
    .multifd_channels = capabilities.multifd ? job->options.parallel_connections : 0,
    .multifd_compression = capabilities.multifd ? ferry_compress_to_string (job->options.compress) : NULL,
    .max_postcopy_bandwidth_bytes = job->options.bandwidth_mib > 0 ? bandwidth : 0,
  };
  steps[n++] = (FerryQmpStep) { "migrate-set-capabilities", ferry_qmp_args_migrate_capabilities (&capabilities) };
  steps[n++] = (FerryQmpStep) { "migrate-set-parameters", ferry_qmp_args_migrate_parameters (&parameters) };
  ferry_qmp_run_steps_async (vm->qmp, steps, n, NULL, on_migrate_configured, ferry_job_ref_new (job));
}

/* ---- the guest's QEMU gone while the guest was only here ------------------- */

typedef struct {
  FerryAgent *agent;
  gint64 job_id;
  char *vm_name;
} GuestRestart;

static void
on_guest_restarted (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GuestRestart *restart = user_data;
  g_autoptr (GError) error = NULL;
  FerryVm *vm = g_hash_table_lookup (restart->agent->vms, restart->vm_name);
  gboolean ok = vm != NULL && ferry_vm_start_finish (vm, result, &error);
  g_autofree char *message = ok ? g_strdup_printf ("VM %s started again on this host", restart->vm_name)
                                : g_strdup_printf ("VM %s could not be started again on this host: %s",
                                                   restart->vm_name, error ? error->message : "it is gone");
  if (ok)
    g_message ("job %" G_GINT64_FORMAT ": %s", restart->job_id, message);
  else
    g_warning ("job %" G_GINT64_FORMAT ": %s", restart->job_id, message);
  ferry_store_job_add_event (restart->agent->store, restart->job_id, ok ? "info" : "error", message, NULL);
  g_free (restart->vm_name);
  g_free (restart);
}

/* The source's QEMU exited with the guest running (a crash, or a kill
 * from outside) before the destination was ever told to run it: the
 * destination's QEMU waits paused (-S) for a Finish that will not come,
 * so this host is still the only one that may run the guest, and it
 * runs it again (the safety invariant: a failure before the hand-over
 * leaves the VM running where it was). From its disks: what the guest
 * held in memory is lost, as after a power cut. After a post-copy
 * switch or once Finish was sent, never: the destination may run it. */
static gboolean
guest_only_here (FerryJob *job, FerryVm *vm)
{
  if (vm == NULL || !vm->exited_while_running || job->postcopy_dest_running)
    return FALSE;
  switch (job->state)
    {
    case FERRY_JOB_BEGIN:
    case FERRY_JOB_PREPARING:
    case FERRY_JOB_PERFORMING:
    case FERRY_JOB_CANCELLING:
      return TRUE;
    default:
      return FALSE;
    }
}

#define RESTARTING_GUEST "the guest ran only on this host: starting it again here from its disks (a cold boot; " \
                         "what it held in memory is lost)"

static void
restart_guest (FerryAgent *agent, gint64 job_id, FerryVm *vm)
{
  GuestRestart *restart = g_new0 (GuestRestart, 1);
  *restart = (GuestRestart) { agent, job_id, g_strdup (vm->name) };
  FerryVmStartOptions options = { 0 };
  ferry_vm_start_async (vm, &options, NULL, on_guest_restarted, restart);
}

void
mig_src_on_qmp_event (FerryJob *job, const char *name, JsonObject *data)
{
  if (mig_storage_src_on_event (job, name, data))
    return;
  if (g_str_equal (name, "FERRY_QEMU_EXITED"))
    {
      if (job->state == FERRY_JOB_CONFIRMING)
        mig_src_complete (job);
      else if (job->state == FERRY_JOB_FINISHING)
        ferry_job_event (job, "warning", "source QEMU exited while the destination resumes the guest");
      else
        {
          mig_src_stop_timers (job);
          FerryVm *vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
          g_autofree char *reason = ferry_vm_exit_reason (vm, "source QEMU exited during the migration");
          gboolean restart = guest_only_here (job, vm);
          if (job->state != FERRY_JOB_CANCELLING)
            ferry_job_transition (job, FERRY_JOB_CANCELLING, reason);
          else
            {
              /* It died during the rollback: that, not what started the
               * rollback, is why the job fails. */
              g_free (job->error);
              job->error = g_strdup (reason);
            }
          release_destination (job);
          if (restart)
            ferry_job_event (job, "warning", "%s", RESTARTING_GUEST);
          FerryAgent *agent = job->agent;
          gint64 job_id = job->id;
          ferry_job_finish (job, FERRY_JOB_FAILED, reason);
          if (restart)
            restart_guest (agent, job_id, vm);
        }
      return;
    }
  /* A switch to post-copy reports postcopy-active before it stops the
   * guest: the STOP finds the job in POSTCOPY already. */
  if (g_str_equal (name, "STOP") && job->guest_stopped_us == 0
      && (job->state == FERRY_JOB_PERFORMING || job->state == FERRY_JOB_POSTCOPY))
    {
      job->guest_stopped_us = g_get_real_time ();
      return;
    }
  if (g_str_equal (name, "MIGRATION_PASS"))
    {
      FerryVm *synced = ferry_job_vm (job);
      if (synced != NULL)
        synced->last_dirty_sync_us = g_get_monotonic_time ();
      mig_src_postcopy_at_pass (job, ferry_json_object_int (data, "pass"));
      /* What is left as the pass begins, not up to a poll later: the
       * watchdogs compare passes by it (check_watchdogs). */
      if (job->state == FERRY_JOB_PERFORMING && !job->postcopy_requested)
        query_progress (job);
      return;
    }
  if (!g_str_equal (name, "MIGRATION")
      || (job->state != FERRY_JOB_PERFORMING && job->state != FERRY_JOB_POSTCOPY))
    return;
  const char *status = ferry_json_object_string (data, "status");
  if (status == NULL)
    return;
  if (g_str_equal (status, "completed") || g_str_equal (status, "failed")
      || g_str_equal (status, "cancelled") || g_str_equal (status, "postcopy-active")
      || g_str_equal (status, "postcopy-paused"))
    /* Final statistics (downtime, total time) come with query-migrate;
     * on_progress acts on the terminal status. */
    query_progress (job);
}

/* ---- prepare ---------------------------------------------------------------- */

static void
on_prepared (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_peer_request_finish (result, NULL, &error);

  if (job == NULL)
    return;
  if (reply == NULL)
    {
      g_autofree char *reason = g_strdup_printf ("prepare failed: %s", error->message);
      mig_src_rollback (job, reason);
      return;
    }
  if (!job->options.live)
    {
      ferry_job_event (job, "info", "destination defined the VM");
      mig_src_confirm (job);
      return;
    }
  const char *uri = ferry_json_object_string (reply, "uri");
  const char *tls_hostname = ferry_json_object_string (reply, "tls_hostname");
  if (uri == NULL || !g_str_has_prefix (uri, "tcp:"))
    {
      mig_src_rollback (job, "destination's prepare reply has no usable migration URI");
      return;
    }
  g_free (job->incoming_uri);
  job->incoming_uri = g_strdup (uri);
  g_free (job->tls_hostname);
  job->tls_hostname = g_strdup (tls_hostname);
  if (job->abort_requested)
    {
      mig_src_rollback (job, "aborted by the user");
      return;
    }
  /* The destination's lease on the incoming VM runs from now: a disk
   * mirror can take longer than it. */
  job->peer_last_seen_us = g_get_monotonic_time ();
  start_keepalive (job);
  /* With storage, memory moves once the disks are mirrored. */
  if (mig_storage_src_start (job, reply))
    return;
  mig_src_perform (job);
}

static void
mig_src_prepare (FerryJob *job, const char *reason)
{
  FerryAgent *agent = job->agent;
  FerryVm *vm = ferry_job_vm (job);
  const FerryMigrateOptions *options = &job->options;
  if (vm == NULL)
    {
      ferry_job_finish (job, FERRY_JOB_FAILED, "the VM disappeared");
      return;
    }
  g_autoptr (JsonObject) request = json_object_new ();
  json_object_set_string_member (request, "uuid", job->uuid);
  json_object_set_member (request, "spec", ferry_vm_spec_to_json (vm->spec));
  json_object_set_boolean_member (request, "live", options->live);
  json_object_set_boolean_member (request, "persistent", options->persistent);
  json_object_set_boolean_member (request, "tls", options->tls);
  json_object_set_int_member (request, "parallel_connections", options->parallel_connections);
  json_object_set_string_member (request, "compress", ferry_compress_to_string (options->compress));
  json_object_set_boolean_member (request, "postcopy", options->postcopy);
  if (agent->tls->common_name)
    json_object_set_string_member (request, "source", agent->tls->common_name);
  if (options->live && options->copy_storage)
    {
      g_autoptr (GError) error = NULL;
      JsonNode *dest_spec = NULL;
      JsonArray *disks = mig_storage_src_disks (vm, options, &dest_spec, &error);
      if (disks == NULL)
        {
          mig_src_rollback (job, error->message);
          return;
        }
      json_object_set_member (request, "spec", dest_spec);
      json_object_set_boolean_member (request, "copy_storage", TRUE);
      json_object_set_array_member (request, "disks", disks);
    }

  ferry_job_transition (job, FERRY_JOB_PREPARING, reason);
  ferry_peer_request_async (agent, job->peer_url, "POST",
                            options->live ? "/v1/migrations/incoming" : "/v1/migrations/offline",
                            request, MIG_SRC_PEER_TIMEOUT_S, NULL, on_prepared, ferry_job_ref_new (job));
}

static void
on_planned (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  FerryMigrateOptions chosen;
  g_autoptr (JsonObject) plan = ferry_plan_finish (result, &chosen, &error);
  if (job == NULL)
    return;
  if (plan == NULL)
    {
      g_autofree char *reason = g_strdup_printf ("cannot plan the migration: %s", error->message);
      mig_src_rollback (job, reason);
      return;
    }
  JsonObject *prediction = json_object_get_object_member (plan, "prediction");
  JsonObject *measured = json_object_get_object_member (plan, "measured");
  ferry_job_event (job, "info", "measured: dirty rate %.0f MiB/s over 2 s (%.0f over 1 s), link %.0f MiB/s, %"
                   G_GINT64_FORMAT " MiB of guest RAM touched",
                   json_object_get_double_member (measured, "dirty_mib_s"),
                   json_object_get_double_member_with_default (measured, "dirty_1s_mib_s", 0),
                   json_object_get_double_member (measured, "link_mib_s"),
                   ferry_json_object_int (measured, "resident_bytes") / 1048576);
  ferry_job_event (job, "info", "strategy %s: %s", ferry_json_object_string (plan, "strategy"),
                   ferry_json_object_string (plan, "reason"));
  if (json_object_has_member (prediction, "total_s"))
    ferry_job_event (job, "info", "predicted: %.1f s total, %.0f ms downtime",
                     json_object_get_double_member (prediction, "total_s"),
                     json_object_get_double_member (prediction, "downtime_ms"));
  json_object_set_object_member (job->stats, "ferry-plan", json_object_ref (plan));
  job->options = chosen;
  if (job->abort_requested)
    {
      mig_src_rollback (job, "aborted by the user");
      return;
    }
  mig_src_prepare (job, NULL);
}

static gboolean
validate_dest_url (const char *url, GError **error)
{
  g_autoptr (GUri) uri = g_uri_parse (url, G_URI_FLAGS_NONE, NULL);
  if (uri == NULL || g_strcmp0 (g_uri_get_scheme (uri), "https") != 0 || g_uri_get_host (uri) == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "dest_url: '%s' is not an https://HOST:PORT URL", url);
      return FALSE;
    }
  return TRUE;
}

FerryJob *
mig_src_begin (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options, GError **error)
{
  FerryAgent *agent = vm->agent;

  if (!validate_dest_url (dest_url, error))
    return NULL;
  if (vm->job != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is already migrating (job %" G_GINT64_FORMAT ")", vm->name, vm->job->id);
      return NULL;
    }
  if (!options->live && options->copy_storage)
    return mig_cold_src_begin (vm, dest_url, options, error);
  if (options->live && vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is %s; live migration needs a running VM (use --offline to move "
                   "its definition)", vm->name, ferry_vm_state_to_string (vm->state));
      return NULL;
    }
  if (!options->live && vm->state != FERRY_VM_SHUTOFF)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is %s; offline migration needs it shut off (shut it down, or use --live)",
                   vm->name, ferry_vm_state_to_string (vm->state));
      return NULL;
    }
  if (!options->live && !options->persistent)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "persistent: an offline migration moves the definition; pass --persistent");
      return NULL;
    }

  g_autofree char *uuid = g_uuid_string_random ();
  g_autofree char *base = g_str_has_suffix (dest_url, "/") ? g_strndup (dest_url, strlen (dest_url) - 1)
                                                           : g_strdup (dest_url);
  FerryJob *job = ferry_job_new (agent, uuid, vm->name, FERRY_JOB_ROLE_SOURCE, options, base,
                                 FERRY_JOB_BEGIN, error);
  if (job == NULL)
    return NULL;
  vm->job = job;
  ferry_vm_mark_log (vm);

  if (options->live)
    {
      /* Measure and predict first (strategy auto also chooses here); the
       * prediction is recorded for every live migration, so that the
       * outcome can be compared with it. */
      ferry_job_event (job, "info", "measuring the link and the guest's dirty rate");
      ferry_plan_async (vm, job->peer_url, options, on_planned, ferry_job_ref_new (job));
    }
  else
    mig_src_prepare (job, NULL);
  return job;
}

gboolean
mig_src_abort (FerryVm *vm, GError **error)
{
  FerryJob *job = vm->job;
  if (job == NULL || job->role != FERRY_JOB_ROLE_SOURCE)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                   "VM '%s' has no outgoing migration to abort", vm->name);
      return FALSE;
    }
  if (job->state == FERRY_JOB_FINISHING || job->state == FERRY_JOB_CONFIRMING
      || job->state == FERRY_JOB_POSTCOPY)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "too late to abort: the destination is taking over VM '%s'", vm->name);
      return FALSE;
    }
  if (job->cold != NULL)
    return mig_cold_src_abort (job, error);
  job->abort_requested = TRUE;
  ferry_job_event (job, "warning", "abort requested");
  /* Mirroring disks or streaming: roll back now (a slow mirror may be
   * minutes from ready). Before the prepare reply, it sees the flag. */
  if (watching_destination (job))
    mig_src_rollback (job, "aborted by the user");
  return TRUE;
}

/* ---- live controls ----------------------------------------------------------------- */

static FerryJob *
running_outgoing_job (FerryVm *vm, GError **error)
{
  FerryJob *job = vm->job;
  if (job == NULL || job->role != FERRY_JOB_ROLE_SOURCE || !job->options.live
      || (job->state != FERRY_JOB_PERFORMING && job->state != FERRY_JOB_POSTCOPY)
      || vm->qmp == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' has no live migration in progress", vm->name);
      return NULL;
    }
  return job;
}

static void
on_parameter_set (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree FerryJobRef *ref = user_data;
  FerryJob *job = ferry_job_ref_get (ref);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (job != NULL && reply == NULL)
    ferry_job_event (job, "error", "QEMU refused the new setting: %s", error->message);
}

gboolean
mig_src_set_parameter (FerryVm *vm, const char *name, gint64 value, GError **error)
{
  FerryJob *job = running_outgoing_job (vm, error);
  if (job == NULL)
    return FALSE;
  /* The user's downtime is the new allowed maximum, and QEMU's limit now. */
  if (g_str_equal (name, "downtime-limit"))
    job->options.max_downtime_ms = job->downtime_limit_ms = value;
  else if (g_str_equal (name, "max-bandwidth"))
    job->options.bandwidth_mib = value / (1024 * 1024);
  ferry_job_event (job, "info", "%s set to %" G_GINT64_FORMAT " while migrating", name, value);
  set_qemu_parameter (job, vm, name, value);
  return TRUE;
}

/* migrate-set-parameters NAME=VALUE, and QEMU's parameters read back into
 * the stats (ferry-qemu-parameters) for the job log and the tests. */
static void
set_qemu_parameter (FerryJob *job, FerryVm *vm, const char *name, gint64 value)
{
  g_autoptr (JsonObject) arguments = ferry_qmp_args_migrate_parameter (name, value);
  if (g_str_equal (name, "max-bandwidth"))
    json_object_set_int_member (arguments, "max-postcopy-bandwidth", value);
  ferry_qmp_execute_async (vm->qmp, "migrate-set-parameters", arguments, NULL, on_parameter_set,
                           ferry_job_ref_new (job));
  /* Read back what QEMU now uses, for the job log and the tests. */
  ferry_qmp_execute_async (vm->qmp, "query-migrate-parameters", NULL, NULL, on_parameters_read,
                           ferry_job_ref_new (job));
}

gboolean
mig_src_start_postcopy (FerryVm *vm, const char *why, GError **error)
{
  FerryJob *job = running_outgoing_job (vm, error);
  if (job == NULL)
    return FALSE;
  return mig_src_request_postcopy (job, why, error);
}

/* ---- restart recovery ---------------------------------------------------------- */

static gboolean
stored_job_is_live (FerryStoreJob *stored)
{
  FerryMigrateOptions options;
  ferry_migrate_options_from_stored (stored->options_json, &options);
  return options.live;
}

void
mig_src_recover (FerryAgent *agent, FerryStoreJob *stored)
{
  FerryJobState state = ferry_job_state_from_string (stored->state);
  FerryVm *vm = g_hash_table_lookup (agent->vms, stored->vm_name);

  if (state == FERRY_JOB_CONFIRMING)
    {
      /* The destination confirmed it runs the guest: our copy is stale. */
      if (vm != NULL)
        {
          ferry_vm_destroy (vm, NULL);
          if (!vm->persistent)
            ferry_vm_forget (vm);
        }
      ferry_store_job_update (agent->store, stored->id, "completed", NULL, NULL, NULL);
      ferry_store_job_add_event (agent->store, stored->id, "info",
                                 "agent restarted after the destination took over; source copy stopped",
                                 NULL);
      return;
    }
  if (state == FERRY_JOB_POSTCOPY && vm != NULL && vm->qmp != NULL)
    {
      mig_src_postcopy_restore (agent, stored, vm);
      return;
    }
  if (state == FERRY_JOB_POSTCOPY)
    {
      ferry_store_job_update (agent->store, stored->id, "failed",
                              "agent restarted during post-copy and the source QEMU is gone", NULL, NULL);
      return;
    }
  if (state == FERRY_JOB_FINISHING)
    {
      /* The destination may run the guest: never resume here. Leave the
       * source QEMU as it is (paused) and say so. */
      ferry_store_job_update (agent->store, stored->id, "failed",
                              "agent restarted while the destination was taking over; the guest "
                              "stays paused here until the destination's state is checked",
                              NULL, NULL);
      return;
    }
  /* Before Finish the source owns the guest: cancel any stream and
   * resume it. The destination's lease removes its side. */
  if (vm != NULL && vm->qmp != NULL)
    {
      FerryQmpStep steps[CANCEL_STEPS + 1];
      cancel_stream_steps (steps);
      steps[CANCEL_STEPS] = (FerryQmpStep) { "cont", NULL, TRUE };
      ferry_qmp_run_steps_async (vm->qmp, steps, G_N_ELEMENTS (steps), NULL, NULL, NULL);
      ferry_vm_set_state (vm, FERRY_VM_RUNNING);
    }
  else if (vm != NULL && state != FERRY_JOB_BEGIN && stored_job_is_live (stored))
    {
      /* A live migration's QEMU died while this agent was down, the
       * guest still only here (the destination's waits paused for a
       * Finish it never got): as when it dies under a running agent
       * (guest_only_here), the guest boots again from its disks. Not an
       * offline migration's (its guest was not running), nor in BEGIN
       * (before the checks that it ran). */
      const char *what = "agent restarted during the migration and the source QEMU is gone; " RESTARTING_GUEST;
      ferry_store_job_update (agent->store, stored->id, "failed", what, NULL, NULL);
      ferry_store_job_add_event (agent->store, stored->id, "warning", what, NULL);
      restart_guest (agent, stored->id, vm);
      return;
    }
  ferry_store_job_update (agent->store, stored->id, "failed",
                          "agent restarted during the migration; guest kept on the source", NULL, NULL);
  ferry_store_job_add_event (agent->store, stored->id, "error",
                             "agent restarted during the migration; guest kept on the source", NULL);
}
