/* ferry agent — migration job lifecycle: one enum, one transition function. */
#include "agent.h"

#include "jsonutil.h"

static const char *const job_state_names[] = {
  [FERRY_JOB_BEGIN] = "begin",
  [FERRY_JOB_PREPARING] = "preparing",
  [FERRY_JOB_PREPARED] = "prepared",
  [FERRY_JOB_COPYING] = "copying",
  [FERRY_JOB_PERFORMING] = "performing",
  [FERRY_JOB_POSTCOPY] = "postcopy",
  [FERRY_JOB_FINISHING] = "finishing",
  [FERRY_JOB_CONFIRMING] = "confirming",
  [FERRY_JOB_CANCELLING] = "cancelling",
  [FERRY_JOB_PRECOPY] = "precopy",
  [FERRY_JOB_CUTOVER] = "cutover",
  [FERRY_JOB_COMPLETED] = "completed",
  [FERRY_JOB_FAILED] = "failed",
  [FERRY_JOB_CANCELLED] = "cancelled",
};

const char *const ferry_job_terminal_states[] = { "completed", "failed", "cancelled", NULL };

const char *
ferry_job_state_to_string (FerryJobState state)
{
  return state < G_N_ELEMENTS (job_state_names) ? job_state_names[state] : "unknown";
}

FerryJobState
ferry_job_state_from_string (const char *name)
{
  for (guint i = 0; name != NULL && i < G_N_ELEMENTS (job_state_names); i++)
    if (g_str_equal (job_state_names[i], name))
      return i;
  return FERRY_JOB_FAILED;
}

gboolean
ferry_job_state_is_terminal (FerryJobState state)
{
  return state == FERRY_JOB_COMPLETED || state == FERRY_JOB_FAILED || state == FERRY_JOB_CANCELLED;
}

static double phase_floor (FerryJobState state);

/* Allowed transitions. Rolling back (cancelling/failed/cancelled) is allowed
 * from every non-terminal state except once the destination runs the VM:
 * after FINISHING on the destination or CONFIRMING on the source the VM
 * belongs to the destination (design.md, safety invariant 3). */
static gboolean
transition_allowed (FerryJobRole role, FerryJobState from, FerryJobState to)
{
  if (ferry_job_state_is_terminal (from))
    return FALSE;
  /* Once the destination runs the guest (post-copy, or confirmed) there is
   * nothing to roll back to: a failure is final, never a resume here. */
  gboolean guest_on_destination = from == FERRY_JOB_POSTCOPY
                                  || (role == FERRY_JOB_ROLE_SOURCE && from == FERRY_JOB_CONFIRMING);
  if (to == FERRY_JOB_CANCELLING || to == FERRY_JOB_CANCELLED)
    return !guest_on_destination;
  if (to == FERRY_JOB_FAILED)
    return !(role == FERRY_JOB_ROLE_SOURCE && from == FERRY_JOB_CONFIRMING);

  if (role == FERRY_JOB_ROLE_SOURCE)
    switch (from)
      {
      case FERRY_JOB_BEGIN:
        return to == FERRY_JOB_PREPARING;
      case FERRY_JOB_PREPARING:
        /* Offline migration has no perform phase; with disks, it copies;
         * a warm one copies while the guest runs. */
        return to == FERRY_JOB_PERFORMING || to == FERRY_JOB_CONFIRMING || to == FERRY_JOB_COPYING
               || to == FERRY_JOB_PRECOPY;
      case FERRY_JOB_PRECOPY:
        return to == FERRY_JOB_CUTOVER;
      case FERRY_JOB_CUTOVER:
        return to == FERRY_JOB_FINISHING;
      case FERRY_JOB_COPYING:
        return to == FERRY_JOB_FINISHING;
      case FERRY_JOB_PERFORMING:
        /* Back to PREPARING: strategy auto starts a stalled multifd
         * stream again as one stream with post-copy. */
        return to == FERRY_JOB_FINISHING || to == FERRY_JOB_POSTCOPY || to == FERRY_JOB_PREPARING;
      case FERRY_JOB_POSTCOPY:
        return to == FERRY_JOB_CONFIRMING;
      case FERRY_JOB_FINISHING:
        return to == FERRY_JOB_CONFIRMING;
      case FERRY_JOB_CONFIRMING:
        return to == FERRY_JOB_COMPLETED;
      default:
        return FALSE;
      }
  switch (from)
    {
    case FERRY_JOB_PREPARING:
      return to == FERRY_JOB_PREPARED || to == FERRY_JOB_COMPLETED || to == FERRY_JOB_COPYING;
    case FERRY_JOB_COPYING:
      return to == FERRY_JOB_PREPARED;
    case FERRY_JOB_PREPARED:
      /* A warm migration's next pass copies again. */
      return to == FERRY_JOB_FINISHING || to == FERRY_JOB_POSTCOPY || to == FERRY_JOB_COPYING;
    case FERRY_JOB_FINISHING:
    case FERRY_JOB_POSTCOPY:
      return to == FERRY_JOB_COMPLETED;
    default:
      return FALSE;
    }
}

FerryJob *
ferry_job_new (FerryAgent *agent, const char *uuid, const char *vm_name, FerryJobRole role,
               const FerryMigrateOptions *options, const char *peer_url, FerryJobState initial,
               GError **error)
{
  g_autoptr (JsonObject) options_json = ferry_migrate_options_to_json (options);
  g_autofree char *options_text = ferry_json_object_to_string (options_json, FALSE);

  FerryStoreJob stored = {
    .uuid = (char *) uuid,
    .vm_name = (char *) vm_name,
    .kind = options->live ? "migrate-live" : "migrate-offline",
    .role = role == FERRY_JOB_ROLE_SOURCE ? "source" : "destination",
    .state = (char *) ferry_job_state_to_string (initial),
    .peer_url = (char *) peer_url,
    .options_json = options_text,
  };
  if (!ferry_store_job_insert (agent->store, &stored, error))
    return NULL;

  FerryJob *job = g_new0 (FerryJob, 1);
  job->agent = agent;
  job->id = stored.id;
  job->uuid = g_strdup (uuid);
  job->vm_name = g_strdup (vm_name);
  job->role = role;
  job->options = *options;
  job->state = initial;
  job->peer_url = g_strdup (peer_url);
  job->stats = json_object_new ();
  job->started_us = g_get_monotonic_time ();
  job->created_wall_us = stored.created_us;
  job->eta_s = -1;
  g_hash_table_replace (agent->jobs, g_memdup2 (&job->id, sizeof job->id), job);
  ferry_job_event (job, "info", "%s job created (%s migration %s %s)",
                   stored.role, options->live ? "live" : "offline",
                   role == FERRY_JOB_ROLE_SOURCE ? "to" : "from", peer_url ? peer_url : "?");
  return job;
}

static void
job_free (FerryJob *job)
{
  if (job == NULL)
    return;
  g_clear_handle_id (&job->poll_timer, g_source_remove);
  g_clear_handle_id (&job->keepalive_timer, g_source_remove);
  g_clear_handle_id (&job->lease_timer, g_source_remove);
  g_clear_handle_id (&job->postcopy_timer, g_source_remove);
  g_clear_handle_id (&job->recover_timer, g_source_remove);
  g_clear_handle_id (&job->postcopy_watch, g_source_remove);
  if (job->pending_recover != NULL)
    {
      g_task_return_new_error (job->pending_recover, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "the migration ended");
      g_clear_object (&job->pending_recover);
    }
  g_free (job->uuid);
  g_free (job->vm_name);
  g_free (job->peer_url);
  g_free (job->error);
  g_free (job->incoming_uri);
  g_free (job->tls_hostname);
  g_free (job->restart_reason);
  g_free (job->incoming_status);
  g_clear_object (&job->pending_finish);
  if (job->cold_free)
    g_clear_pointer (&job->cold, job->cold_free);
  if (job->storage_free)
    g_clear_pointer (&job->storage, job->storage_free);
  g_strfreev (job->storage_volumes);
  json_object_unref (job->stats);
  g_free (job);
}

FerryJobRef *
ferry_job_ref_new (FerryJob *job)
{
  FerryJobRef *ref = g_new0 (FerryJobRef, 1);
  ref->agent = job->agent;
  ref->job_id = job->id;
  return ref;
}

FerryJob *
ferry_job_restore (FerryAgent *agent, FerryStoreJob *stored, const FerryMigrateOptions *options)
{
  FerryJob *job = g_new0 (FerryJob, 1);
  job->agent = agent;
  job->id = stored->id;
  job->uuid = g_strdup (stored->uuid);
  job->vm_name = g_strdup (stored->vm_name);
  job->role = g_strcmp0 (stored->role, "source") == 0 ? FERRY_JOB_ROLE_SOURCE : FERRY_JOB_ROLE_DESTINATION;
  job->options = *options;
  job->state = ferry_job_state_from_string (stored->state);
  job->peer_url = g_strdup (stored->peer_url);
  g_autoptr (JsonNode) stats = stored->stats_json ? json_from_string (stored->stats_json, NULL) : NULL;
  job->stats = stats && JSON_NODE_HOLDS_OBJECT (stats) ? json_object_ref (json_node_get_object (stats))
                                                       : json_object_new ();
  job->started_us = g_get_monotonic_time ();
  job->created_wall_us = stored->created_us;
  job->eta_s = -1;
  g_hash_table_replace (agent->jobs, g_memdup2 (&job->id, sizeof job->id), job);
  ferry_job_event (job, "info", "agent restarted; job resumed in state %s", stored->state);
  return job;
}

void
ferry_job_save_stats (FerryJob *job)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *text = ferry_json_object_to_string (job->stats, FALSE);
  if (!ferry_store_job_update (job->agent->store, job->id, ferry_job_state_to_string (job->state), NULL,
                               text, &error))
    g_warning ("job %" G_GINT64_FORMAT ": cannot persist statistics: %s", job->id, error->message);
}

FerryVm *
ferry_job_vm (FerryJob *job)
{
  return g_hash_table_lookup (job->agent->vms, job->vm_name);
}

FerryJob *
ferry_job_ref_get (const FerryJobRef *ref)
{
  return g_hash_table_lookup (ref->agent->jobs, &ref->job_id);
}

void ferry_job_table_free (gpointer data);
void
ferry_job_table_free (gpointer data)
{
  job_free (data);
}

void
ferry_job_event (FerryJob *job, const char *level, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *message = g_strdup_vprintf (format, args);
  va_end (args);
  g_autoptr (GError) error = NULL;

  if (g_str_equal (level, "error"))
    g_warning ("job %" G_GINT64_FORMAT " (%s): %s", job->id, job->vm_name, message);
  else
    g_info ("job %" G_GINT64_FORMAT " (%s): %s", job->id, job->vm_name, message);
  if (!ferry_store_job_add_event (job->agent->store, job->id, level, message, &error))
    g_warning ("job %" G_GINT64_FORMAT ": cannot record event: %s", job->id, error->message);
  else
    ferry_api_job_event_added (job->agent, job->vm_name);
}

gboolean
ferry_job_transition (FerryJob *job, FerryJobState new_state, const char *reason)
{
  g_autoptr (GError) error = NULL;
  if (!transition_allowed (job->role, job->state, new_state))
    {
      g_warning ("job %" G_GINT64_FORMAT ": refused transition %s → %s", job->id,
                 ferry_job_state_to_string (job->state), ferry_job_state_to_string (new_state));
      return FALSE;
    }
  gboolean failing = new_state == FERRY_JOB_FAILED || new_state == FERRY_JOB_CANCELLED
                     || new_state == FERRY_JOB_CANCELLING;
  if (failing && reason != NULL && job->error == NULL)
    job->error = g_strdup (reason);

  g_autofree char *stats = ferry_json_object_to_string (job->stats, FALSE);
  /* Persist first: if we crash right after, the restarted agent resumes
   * from the state we were about to act on. */
  if (!ferry_store_job_update (job->agent->store, job->id, ferry_job_state_to_string (new_state),
                               failing ? job->error : NULL, stats, &error))
    g_warning ("job %" G_GINT64_FORMAT ": cannot persist state: %s", job->id, error->message);
  ferry_job_event (job, failing ? "error" : "info", "%s → %s%s%s",
                   ferry_job_state_to_string (job->state), ferry_job_state_to_string (new_state),
                   reason ? ": " : "", reason ? reason : "");
  job->state = new_state;
  ferry_job_set_progress (job, phase_floor (new_state), new_state == FERRY_JOB_COMPLETED ? 0 : job->eta_s);
  return TRUE;
}

/* Where each phase starts on the 0–100 scale; the copy (performing,
 * post-copy) fills most of it. */
static double
phase_floor (FerryJobState state)
{
  switch (state)
    {
    case FERRY_JOB_BEGIN: return 0;
    case FERRY_JOB_PREPARING: return 2;
    case FERRY_JOB_PREPARED: return 5;
    case FERRY_JOB_PERFORMING: return 5;
    case FERRY_JOB_COPYING: return 5;
    case FERRY_JOB_PRECOPY: return 5;
    case FERRY_JOB_CUTOVER: return 80;
    case FERRY_JOB_POSTCOPY: return 50;
    case FERRY_JOB_FINISHING: return 95;
    case FERRY_JOB_CONFIRMING: return 98;
    case FERRY_JOB_COMPLETED: return 100;
    default: return 0;
    }
}

void
ferry_job_set_progress (FerryJob *job, double percent, double eta_s)
{
  job->progress_percent = CLAMP (MAX (job->progress_percent, percent), 0, 100);
  job->eta_s = eta_s;
}

void
ferry_job_set_stats (FerryJob *job, JsonObject *stats)
{
  json_object_unref (job->stats);
  job->stats = json_object_ref (stats);
}

void
ferry_job_finish (FerryJob *job, FerryJobState terminal, const char *reason)
{
  g_return_if_fail (ferry_job_state_is_terminal (terminal));
  if (!ferry_job_state_is_terminal (job->state))
    ferry_job_transition (job, terminal, reason);
  /* Persist the final statistics. */
  g_autofree char *stats = ferry_json_object_to_string (job->stats, FALSE);
  ferry_store_job_update (job->agent->store, job->id, ferry_job_state_to_string (job->state),
                          NULL, stats, NULL);
  FerryVm *vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
  if (vm != NULL && vm->job == job)
    vm->job = NULL;
  FerryAgent *agent = job->agent;
  g_autofree char *vm_name = g_strdup (job->vm_name);
  g_hash_table_remove (agent->jobs, &job->id);
  ferry_api_job_ended (agent, vm_name);
}

FerryJob *
ferry_job_lookup_uuid (FerryAgent *agent, const char *uuid, FerryJobRole role)
{
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init (&iter, agent->jobs);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    {
      FerryJob *job = value;
      if (job->role == role && g_str_equal (job->uuid, uuid))
        return job;
    }
  return NULL;
}

JsonObject *
ferry_job_info_json (FerryAgent *agent, FerryStoreJob *stored, gboolean with_events)
{
  JsonObject *info = json_object_new ();
  FerryJob *live = g_hash_table_lookup (agent->jobs, &stored->id);

  json_object_set_int_member (info, "id", stored->id);
  json_object_set_string_member (info, "uuid", stored->uuid);
  json_object_set_string_member (info, "vm", stored->vm_name);
  json_object_set_string_member (info, "kind", stored->kind);
  json_object_set_string_member (info, "role", stored->role);
  json_object_set_string_member (info, "state", live ? ferry_job_state_to_string (live->state)
                                                     : stored->state);
  json_object_set_boolean_member (info, "active", live != NULL);
  if (stored->peer_url)
    json_object_set_string_member (info, "peer", stored->peer_url);
  const char *error = live && live->error ? live->error : stored->error;
  if (error)
    json_object_set_string_member (info, "error", error);
  json_object_set_int_member (info, "created_us", stored->created_us);
  json_object_set_int_member (info, "updated_us", stored->updated_us);
  if (live != NULL)
    json_object_set_int_member (info, "elapsed_ms",
                                (g_get_monotonic_time () - live->started_us) / 1000);
  else
    json_object_set_int_member (info, "elapsed_ms", (stored->updated_us - stored->created_us) / 1000);

  if (stored->options_json != NULL)
    {
      g_autoptr (JsonNode) node = json_from_string (stored->options_json, NULL);
      if (node != NULL)
        json_object_set_member (info, "options", g_steal_pointer (&node));
    }
  if (live != NULL)
    {
      JsonObject *progress = json_object_new ();
      json_object_set_double_member (progress, "percent", live->progress_percent);
      if (live->eta_s >= 0)
        json_object_set_double_member (progress, "eta_s", live->eta_s);
      json_object_set_string_member (progress, "phase", ferry_job_state_to_string (live->state));
      json_object_set_object_member (info, "progress", progress);
      json_object_set_object_member (info, "stats", json_object_ref (live->stats));
    }
  else if (stored->stats_json != NULL)
    {
      g_autoptr (JsonNode) node = json_from_string (stored->stats_json, NULL);
      if (node != NULL && JSON_NODE_HOLDS_OBJECT (node))
        json_object_set_member (info, "stats", g_steal_pointer (&node));
    }

  if (with_events)
    {
      g_autoptr (GPtrArray) events = ferry_store_job_events (agent->store, stored->id, NULL);
      JsonArray *array = json_array_new ();
      for (guint i = 0; events != NULL && i < events->len; i++)
        {
          FerryStoreEvent *event = g_ptr_array_index (events, i);
          JsonObject *entry = json_object_new ();
          json_object_set_int_member (entry, "time_us", event->time_us);
          json_object_set_string_member (entry, "level", event->level);
          json_object_set_string_member (entry, "message", event->message);
          json_array_add_object_element (array, entry);
        }
      json_object_set_array_member (info, "events", array);
    }
  return info;
}
