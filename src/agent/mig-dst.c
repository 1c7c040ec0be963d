/* ferry agent — the destination side of a migration.
 *
 * Prepare: define the VM (transient until Finish), start QEMU with
 *   -incoming defer -S, enable TLS and events, listen, answer with the URI.
 * Finish: once QEMU has the whole state, resume the guest and make the
 *   definition permanent if asked. Until Finish resumed the guest, any
 *   failure removes everything this side created (design.md invariant 2).
 * A lease guards against a vanished source: without a heartbeat for
 * keepalive_timeout_ms the incoming VM is torn down.
 */
#include "agent.h"

#include "nbd-export.h"

#include "jsonutil.h"

#define QEMU_TLS_CREDS_ID "ferry-migration-tls"

static JsonObject *
job_status_json (FerryJob *job)
{
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", job->uuid);
  json_object_set_int_member (reply, "job_id", job->id);
  json_object_set_string_member (reply, "state", ferry_job_state_to_string (job->state));
  if (job->error)
    json_object_set_string_member (reply, "error", job->error);
  if (job->incoming_uri)
    json_object_set_string_member (reply, "uri", job->incoming_uri);
  if (job->tls_hostname)
    json_object_set_string_member (reply, "tls_hostname", job->tls_hostname);
  if (job->nbd_port != 0)
    {
      JsonObject *nbd = json_object_new ();
      json_object_set_string_member (nbd, "host", ferry_json_object_string (job->stats, "ferry-nbd-host"));
      json_object_set_int_member (nbd, "port", job->nbd_port);
      json_object_set_object_member (reply, "nbd", nbd);
    }
  return reply;
}

/* The job's stats member listing the volumes created for a storage copy
 * (until Finish makes them the VM's), for a restarted agent to remove. */
#define INCOMING_VOLUMES "ferry-incoming-volumes"

/* Removes what this side created and ends the job. Idempotent per job. */
static void
mig_dst_teardown (FerryJob *job, FerryJobState terminal, const char *reason)
{
  FerryAgent *agent = job->agent;
  FerryVm *vm = g_hash_table_lookup (agent->vms, job->vm_name);

  g_clear_handle_id (&job->lease_timer, g_source_remove);
  if (job->pending_finish != NULL)
    {
      g_task_return_new_error (job->pending_finish, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "destination: %s", reason);
      g_clear_object (&job->pending_finish);
    }
  ferry_job_transition (job, FERRY_JOB_CANCELLING, reason);
  if (vm != NULL && vm->job == job)
    {
      ferry_vm_kill (vm);
      vm->job = NULL;
      if (job->reused_definition)
        {
          /* Detach from the dying QEMU; the definition stays as it was. */
          if (vm->qmp)
            {
              g_clear_signal_handler (&vm->event_handler, vm->qmp);
              g_clear_signal_handler (&vm->closed_handler, vm->qmp);
              g_clear_object (&vm->qmp);
            }
          ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
        }
      else
        ferry_vm_forget (vm);
    }
  /* Volumes made for a storage copy hold nothing the source lacks. */
  mig_storage_dst_remove_volumes ((const char *const *) job->storage_volumes);
  g_clear_pointer (&job->storage_volumes, g_strfreev);
  ferry_job_finish (job, terminal, reason);
}

static gboolean
on_lease_check (gpointer user_data)
{
  FerryJob *job = user_data;
  gint64 silent_ms = (g_get_monotonic_time () - job->lease_renewed_us) / 1000;
  if (job->state != FERRY_JOB_PREPARED || silent_ms < job->agent->config.keepalive_timeout_ms)
    return G_SOURCE_CONTINUE;
  job->lease_timer = 0;
  g_autofree char *reason = g_strdup_printf ("source agent silent for %" G_GINT64_FORMAT
                                             " ms; incoming VM removed", silent_ms);
  mig_dst_teardown (job, FERRY_JOB_FAILED, reason);
  return G_SOURCE_REMOVE;
}

/* ---- prepare ---------------------------------------------------------------- */

typedef struct {
  FerryAgent *agent;
  gint64 job_id;
  char *listen_address;
} PrepareData;

static void
prepare_data_free (PrepareData *data)
{
  g_free (data->listen_address);
  g_free (data);
}

static FerryJob *
prepare_job (GTask *task)
{
  PrepareData *data = g_task_get_task_data (task);
  return g_hash_table_lookup (data->agent->jobs, &data->job_id);
}

static void
prepare_fail (GTask *task, GError *error)
{
  FerryJob *job = prepare_job (task);
  if (job != NULL)
    mig_dst_teardown (job, FERRY_JOB_FAILED, error->message);
  g_task_return_error (task, error);
}

static void
on_prepare_listening (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  FerryJob *job = prepare_job (task);

  if (job == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "destination: migration was cancelled while preparing");
      return;
    }
  if (reply == NULL)
    {
      g_prefix_error (&error, "destination: cannot set up incoming migration: ");
      prepare_fail (task, error);
      return;
    }
  /* query-migrate on the destination reports the address QEMU bound,
   * including the port the kernel picked for port 0. */
  JsonArray *addresses = json_object_get_array_member (json_node_get_object (reply), "socket-address");
  JsonObject *address = addresses && json_array_get_length (addresses) > 0
                        ? json_array_get_object_element (addresses, 0) : NULL;
  const char *port = ferry_json_object_string (address, "port");
  if (port == NULL)
    {
      prepare_fail (task, g_error_new (FERRY_ERROR, FERRY_ERROR_QEMU,
                                       "destination: QEMU did not report its listening port"));
      return;
    }
  PrepareData *data = g_task_get_task_data (task);
  gboolean ipv6 = strchr (data->listen_address, ':') != NULL;
  job->incoming_uri = g_strdup_printf ("tcp:%s%s%s:%s", ipv6 ? "[" : "", data->listen_address,
                                       ipv6 ? "]" : "", port);
  job->tls_hostname = g_strdup (data->agent->tls->common_name);
  ferry_job_transition (job, FERRY_JOB_PREPARED, NULL);
  ferry_job_event (job, "info", "waiting for the migration stream on %s (TLS %s)",
                   job->incoming_uri, job->options.tls ? "on" : "off");
  job->lease_renewed_us = g_get_monotonic_time ();
  job->lease_timer = g_timeout_add (500, on_lease_check, job);
  g_task_return_pointer (task, job_status_json (job), (GDestroyNotify) json_object_unref);
}

static void
on_prepare_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PrepareData *data = g_task_get_task_data (task);
  FerryJob *job = prepare_job (task);
  GError *error = NULL;

  if (job == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "destination: migration was cancelled while preparing");
      return;
    }
  FerryVm *vm = g_hash_table_lookup (data->agent->vms, job->vm_name);
  if (vm == NULL || !ferry_vm_start_finish (vm, result, &error))
    {
      if (error == NULL)
        error = g_error_new (FERRY_ERROR, FERRY_ERROR_FAILED, "destination VM vanished");
      g_prefix_error (&error, "destination: ");
      prepare_fail (task, error);
      return;
    }
  g_autofree char *creds_dir = g_build_filename (data->agent->config.state_dir, "qemu-tls", NULL);
  gboolean ipv6 = strchr (data->listen_address, ':') != NULL;
  g_autofree char *uri = g_strdup_printf ("tcp:%s%s%s:0", ipv6 ? "[" : "", data->listen_address,
                                          ipv6 ? "]" : "");
  FerryQmpStep steps[6 + FERRY_SPEC_MAX_DISKS];
  guint n = 0;
  if (job->options.tls)
    steps[n++] = (FerryQmpStep) { "object-add",
                                  ferry_qmp_args_tls_creds (QEMU_TLS_CREDS_ID, creds_dir, TRUE) };
  if (job->options.copy_storage)
    {
      /* The new disks are served to the source's mirrors (QEMU activates
       * an exported image although the VM waits for its state). */
      guint16 port = ferry_free_tcp_port (data->listen_address, &error);
      if (port == 0)
        {
          prepare_fail (task, error);
          return;
        }
      job->nbd_port = port;
      json_object_set_string_member (job->stats, "ferry-nbd-host", data->listen_address);
      steps[n++] = (FerryQmpStep) { "nbd-server-start",
                                    ferry_qmp_args_nbd_server_start (data->listen_address, port,
                                                                     job->options.tls ? QEMU_TLS_CREDS_ID : NULL) };
      for (guint i = 0; i < vm->spec->disks->len && i < FERRY_SPEC_MAX_DISKS; i++)
        {
          g_autofree char *id = g_strdup_printf ("ferry-export-disk%u", i);
          g_autofree char *node = g_strdup_printf ("disk%u", i);
          steps[n++] = (FerryQmpStep) { "block-export-add", ferry_qmp_args_block_export_add (id, node, node) };
        }
    }
  /* multifd and post-copy need the capability on both ends. */
  FerryQmpCapabilities capabilities = {
    .events = TRUE,
    .multifd = ferry_migrate_options_multifd (&job->options),
    .postcopy = job->options.postcopy,
  };
  FerryQmpParameters parameters = {
    .max_bandwidth_bytes = G_GINT64_CONSTANT (1) << 40,
    .tls_creds = job->options.tls ? QEMU_TLS_CREDS_ID : NULL,
    .multifd_channels = capabilities.multifd ? job->options.parallel_connections : 0,
    .multifd_compression = capabilities.multifd ? ferry_compress_to_string (job->options.compress) : NULL,
  };
  steps[n++] = (FerryQmpStep) { "migrate-set-capabilities", ferry_qmp_args_migrate_capabilities (&capabilities) };
  steps[n++] = (FerryQmpStep) { "migrate-set-parameters", ferry_qmp_args_migrate_parameters (&parameters) };
  steps[n++] = (FerryQmpStep) { "migrate-incoming", ferry_qmp_args_migrate_incoming (uri) };
  steps[n++] = (FerryQmpStep) { "query-migrate", NULL };
  ferry_qmp_run_steps_async (vm->qmp, steps, n, NULL, on_prepare_listening, g_steal_pointer (&task));
}

static const char *const prepare_fields[] = {
  "uuid", "spec", "live", "persistent", "tls", "source", "parallel_connections", "compress",
  "postcopy", "copy_storage", "disks", NULL
};

gboolean
mig_dst_parse_incoming_request (JsonObject *request, char **uuid, FerryVmSpec **spec,
                        FerryMigrateOptions *options, char **source, GError **error)
{
  if (!ferry_json_reject_unknown (request, prepare_fields, error)
      || !ferry_json_get_string (request, "uuid", TRUE, uuid, error)
      || !ferry_json_get_bool (request, "live", FALSE, &options->live, error)
      || !ferry_json_get_bool (request, "persistent", FALSE, &options->persistent, error)
      || !ferry_json_get_bool (request, "tls", FALSE, &options->tls, error)
      || !ferry_json_get_string (request, "source", FALSE, source, error)
      || !ferry_json_get_int (request, "parallel_connections", FALSE, 0, 16,
                              &options->parallel_connections, error)
      || !ferry_json_get_bool (request, "postcopy", FALSE, &options->postcopy, error)
      || !ferry_json_get_bool (request, "copy_storage", FALSE, &options->copy_storage, error))
    return FALSE;
  g_autofree char *compress = NULL;
  if (!ferry_json_get_string (request, "compress", FALSE, &compress, error))
    return FALSE;
  options->compress = FERRY_COMPRESS_NONE;
  for (guint i = FERRY_COMPRESS_NONE; compress != NULL && i <= FERRY_COMPRESS_ZSTD; i++)
    if (g_str_equal (compress, ferry_compress_to_string (i)))
      options->compress = i;
  if (compress != NULL && !g_str_equal (compress, ferry_compress_to_string (options->compress)))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "compress: must be one of none, zlib, zstd");
      return FALSE;
    }
  /* The destination applies what the source chose; only the pairing rules
   * matter here. */
  options->strategy = FERRY_STRATEGY_MANUAL;
  if (!ferry_migrate_options_validate (options, error))
    return FALSE;
  if (!g_uuid_string_is_valid (*uuid))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "uuid: not a UUID");
      return FALSE;
    }
  JsonNode *spec_node = json_object_get_member (request, "spec");
  if (spec_node == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "spec: required");
      return FALSE;
    }
  *spec = ferry_vm_spec_from_json (spec_node, error);
  if (*spec == NULL)
    {
      g_prefix_error (error, "spec: ");
      return FALSE;
    }
  return TRUE;
}

/* A name may already be defined here if the VM lived here before (A→B→A).
 * That is fine when it is the same VM (same UUID), shut off and idle. */
static FerryVm *
claim_definition (FerryAgent *agent, const FerryVmSpec *spec, gboolean *reused, GError **error)
{
  FerryVm *existing = g_hash_table_lookup (agent->vms, spec->name);
  *reused = FALSE;
  if (existing == NULL)
    return ferry_vm_define (agent, spec, FALSE, error);
  if (g_strcmp0 (existing->spec->uuid, spec->uuid) != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "destination: a different VM named '%s' is already defined here", spec->name);
      return NULL;
    }
  if (ferry_vm_is_active (existing) || existing->job != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "destination: VM '%s' is already %s here", spec->name,
                   existing->job ? "migrating" : ferry_vm_state_to_string (existing->state));
      return NULL;
    }
  /* Run the incoming QEMU with the source's configuration; the stored
   * definition is only replaced when the migration completes. */
  ferry_vm_spec_free (existing->spec);
  existing->spec = ferry_vm_spec_copy (spec);
  *reused = TRUE;
  return existing;
}

void
mig_dst_prepare_async (FerryAgent *agent, JsonObject *request, const char *listen_address,
                       GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  PrepareData *data = g_new0 (PrepareData, 1);
  data->agent = agent;
  data->listen_address = g_strdup (listen_address);
  g_task_set_task_data (task, data, (GDestroyNotify) prepare_data_free);

  g_autofree char *uuid = NULL;
  g_autofree char *source = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;
  FerryMigrateOptions options;
  ferry_migrate_options_init (&options);
  options.live = TRUE;
  GError *error = NULL;

  if (!mig_dst_parse_incoming_request (request, &uuid, &spec, &options, &source, &error))
    {
      g_task_return_error (task, error);
      return;
    }
  if (!options.live)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                               "live: this endpoint prepares live migrations only");
      return;
    }
  if (ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION) != NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "destination: migration %s is already being prepared", uuid);
      return;
    }
  gboolean reused = FALSE;
  FerryVm *vm = claim_definition (agent, spec, &reused, &error);
  if (vm == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  FerryJob *job = ferry_job_new (agent, uuid, spec->name, FERRY_JOB_ROLE_DESTINATION, &options,
                                 source, FERRY_JOB_PREPARING, &error);
  if (job == NULL)
    {
      if (!reused)
        ferry_vm_forget (vm);
      g_task_return_error (task, error);
      return;
    }
  job->reused_definition = reused;
  job->incoming_status = g_strdup ("none");
  vm->job = job;
  data->job_id = job->id;
  if (options.copy_storage)
    {
      /* Empty volumes for QEMU to open; the source's mirrors fill them. */
      job->storage_volumes = mig_storage_dst_create_volumes (agent, request, spec, &error);
      if (job->storage_volumes == NULL)
        {
          prepare_fail (task, error);
          return;
        }
      /* A restarted agent removes them (mig_dst_recover). */
      JsonArray *made = json_array_new ();
      for (char **path = job->storage_volumes; *path != NULL; path++)
        json_array_add_string_element (made, *path);
      json_object_set_array_member (job->stats, INCOMING_VOLUMES, made);
      ferry_job_save_stats (job);
    }

  FerryVmStartOptions start = { .incoming = TRUE, .paused = TRUE };
  ferry_vm_start_async (vm, &start, NULL, on_prepare_started, g_steal_pointer (&task));
}

JsonObject *
mig_dst_prepare_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- status (the source's heartbeat) ---------------------------------------- */

JsonObject *
mig_dst_status (FerryAgent *agent, const char *uuid, GError **error)
{
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION);
  if (job != NULL)
    {
      job->lease_renewed_us = g_get_monotonic_time ();
      JsonObject *reply = job_status_json (job);
      if (job->cold != NULL)
        json_object_set_object_member (reply, "copy", mig_cold_dst_status (job));
      return reply;
    }
  g_autoptr (FerryStoreJob) stored = ferry_store_job_get_by_uuid (agent->store, uuid,
                                                                  "destination", error);
  if (stored == NULL)
    return NULL;
  JsonObject *reply = json_object_new ();
  json_object_set_string_member (reply, "uuid", stored->uuid);
  json_object_set_int_member (reply, "job_id", stored->id);
  json_object_set_string_member (reply, "state", stored->state);
  if (stored->error)
    json_object_set_string_member (reply, "error", stored->error);
  return reply;
}

/* ---- finish ----------------------------------------------------------------- */

static void recover_listen (GTask *task);
static gboolean on_postcopy_watch (gpointer user_data);

/* The VM is ours for good: make the definition what the migration asked. */
static void
adopt_vm (FerryJob *job)
{
  FerryAgent *agent = job->agent;
  FerryVm *vm = g_hash_table_lookup (agent->vms, job->vm_name);
  gboolean persistent = job->options.persistent || job->reused_definition;
  if (vm == NULL)
    return;
  vm->persistent = persistent;
  ferry_store_vm_set_persistent (agent->store, vm->name, persistent, NULL);
  if (job->reused_definition)
    {
      g_autofree char *spec_json = ferry_vm_spec_to_json_string (vm->spec);
      ferry_store_vm_set_spec (agent->store, vm->name, spec_json, NULL);
    }
}

static void
on_finish_resumed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PrepareData *data = g_task_get_task_data (task);
  FerryJob *job = g_hash_table_lookup (data->agent->jobs, &data->job_id);
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_run_steps_finish (result, &error);
  gint64 resumed_us = g_get_real_time ();

  if (job == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "destination: the VM went away while resuming");
      return;
    }
  gboolean postcopy = job->state == FERRY_JOB_POSTCOPY;
  const char *status = reply ? ferry_json_object_string (json_node_get_object (reply), "status") : NULL;
  if (reply == NULL || g_strcmp0 (status, "running") != 0)
    {
      g_autofree char *reason = g_strdup_printf ("cannot resume the guest: %s",
                                                 error ? error->message : status);
      if (postcopy)
        /* Part of the memory is still on the source: keep both for recovery. */
        ferry_job_finish (job, FERRY_JOB_FAILED, reason);
      else
        mig_dst_teardown (job, FERRY_JOB_FAILED, reason);
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_QEMU, "destination: %s", reason);
      return;
    }
  FerryVm *vm = g_hash_table_lookup (data->agent->vms, job->vm_name);
  if (vm != NULL)
    ferry_vm_set_state (vm, FERRY_VM_RUNNING);
  JsonObject *answer = job_status_json (job);
  json_object_set_boolean_member (answer, "running", TRUE);
  json_object_set_int_member (answer, "resumed_us", resumed_us);
  if (postcopy)
    {
      /* Pages still arrive; the job ends with QEMU's "completed". */
      ferry_job_event (job, "info", "guest resumed on this host in post-copy");
      g_task_return_pointer (task, answer, (GDestroyNotify) json_object_unref);
      return;
    }
  adopt_vm (job);
  json_object_set_string_member (answer, "state", "completed");
  ferry_job_event (job, "info", "guest resumed on this host");
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
  g_task_return_pointer (task, answer, (GDestroyNotify) json_object_unref);
}

static void
finish_resume (GTask *task, FerryJob *job, gboolean postcopy)
{
  FerryVm *vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
  g_clear_handle_id (&job->lease_timer, g_source_remove);
  /* Persist before acting: from here a restarted agent keeps the VM. */
  if (postcopy)
    {
      ferry_job_transition (job, FERRY_JOB_POSTCOPY, "post-copy: device state here; resuming guest");
      job->lease_renewed_us = g_get_monotonic_time ();
      job->postcopy_watch = g_timeout_add (500, on_postcopy_watch, job);
    }
  else
    ferry_job_transition (job, FERRY_JOB_FINISHING, "migration stream complete; resuming guest");
  if (vm == NULL || vm->qmp == NULL)
    {
      if (postcopy)
        ferry_job_finish (job, FERRY_JOB_FAILED, "destination QEMU is gone");
      else
        mig_dst_teardown (job, FERRY_JOB_FAILED, "destination QEMU is gone");
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED, "destination: QEMU is gone");
      g_object_unref (task);
      return;
    }
  FerryQmpStep steps[] = {
    { "nbd-server-stop", NULL },
    { "cont", NULL },
    { "query-status", NULL },
  };
  /* The mirrors ended before Finish; nothing may write to the disks but
   * the guest from now on. */
  guint first = job->nbd_port != 0 ? 0 : 1;
  if (job->nbd_port != 0)
    {
      g_strfreev (job->storage_volumes);   /* the VM's disks now */
      job->storage_volumes = NULL;
      json_object_remove_member (job->stats, INCOMING_VOLUMES);
      ferry_job_save_stats (job);
    }
  ferry_qmp_run_steps_async (vm->qmp, steps + first, G_N_ELEMENTS (steps) - first, NULL, on_finish_resumed, task);
}

void
mig_dst_on_qmp_event (FerryJob *job, const char *name, JsonObject *data)
{
  if (!g_str_equal (name, "MIGRATION"))
    return;
  const char *status = ferry_json_object_string (data, "status");
  if (status == NULL)
    return;
  g_free (job->incoming_status);
  job->incoming_status = g_strdup (status);

  if (job->state == FERRY_JOB_POSTCOPY)
    {
      if (g_str_equal (status, "completed"))
        {
          adopt_vm (job);
          ferry_job_event (job, "info", "post-copy complete: all memory is here");
          ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
        }
      else if (g_str_equal (status, "postcopy-paused") || g_str_equal (status, "failed"))
        {
          ferry_job_event (job, "error", "post-copy stream %s: the guest waits for pages from the source",
                           status);
          if (job->pending_recover != NULL && g_str_equal (status, "postcopy-paused"))
            recover_listen (g_steal_pointer (&job->pending_recover));
        }
      return;
    }
  if (job->pending_finish == NULL)
    return;
  gboolean want_postcopy = GPOINTER_TO_INT (g_object_get_data (G_OBJECT (job->pending_finish), "postcopy"));
  if (g_str_equal (status, "completed") || (want_postcopy && g_str_equal (status, "postcopy-active")))
    finish_resume (g_steal_pointer (&job->pending_finish), job, want_postcopy && !g_str_equal (status, "completed"));
  else if (g_str_equal (status, "failed"))
    mig_dst_teardown (job, FERRY_JOB_FAILED, "incoming migration failed in QEMU");
}

void
mig_dst_finish_async (FerryAgent *agent, const char *uuid, gboolean postcopy,
                      GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION);
  if (job != NULL && job->cold != NULL)
    {
      mig_cold_dst_finish (job, task);
      return;
    }
  if (job == NULL || job->state != FERRY_JOB_PREPARED)
    {
      g_task_return_new_error (task, FERRY_ERROR, job ? FERRY_ERROR_CONFLICT : FERRY_ERROR_NOT_FOUND,
                               "destination: no prepared migration %s%s%s%s", uuid,
                               job ? " (state " : "",
                               job ? ferry_job_state_to_string (job->state) : "", job ? ")" : "");
      g_object_unref (task);
      return;
    }
  if (postcopy && !job->options.postcopy)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "destination: migration %s was prepared without post-copy", uuid);
      g_object_unref (task);
      return;
    }
  PrepareData *data = g_new0 (PrepareData, 1);
  data->agent = agent;
  data->job_id = job->id;
  g_task_set_task_data (task, data, (GDestroyNotify) prepare_data_free);
  g_object_set_data (G_OBJECT (task), "postcopy", GINT_TO_POINTER (postcopy));
  /* The source finishes sending before this QEMU has loaded the last
   * bytes (or, in post-copy, the device state): wait for its own event. */
  if (g_strcmp0 (job->incoming_status, "completed") == 0)
    finish_resume (task, job, FALSE);
  else if (postcopy && g_strcmp0 (job->incoming_status, "postcopy-active") == 0)
    finish_resume (task, job, TRUE);
  else
    job->pending_finish = task;
}

JsonObject *
mig_dst_finish_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- post-copy recovery ------------------------------------------------------- */

typedef struct {
  FerryAgent *agent;
  gint64 job_id;
  char *listen_address;
  char *uri;
} RecoverData;

static void
recover_data_free (RecoverData *data)
{
  g_free (data->listen_address);
  g_free (data->uri);
  g_free (data);
}

static void
on_recover_listening (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  RecoverData *data = g_task_get_task_data (task);
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  FerryJob *job = g_hash_table_lookup (data->agent->jobs, &data->job_id);
  if (reply == NULL)
    {
      g_prefix_error (&error, "destination: cannot listen for the resumed stream: ");
      g_task_return_error (task, error);
      return;
    }
  if (job != NULL)
    ferry_job_event (job, "info", "waiting for the resumed post-copy stream on %s", data->uri);
  JsonObject *answer = json_object_new ();
  json_object_set_string_member (answer, "uri", data->uri);
  g_task_return_pointer (task, answer, (GDestroyNotify) json_object_unref);
}

static void
recover_listen (GTask *task)
{
  RecoverData *data = g_task_get_task_data (task);
  FerryJob *job = g_hash_table_lookup (data->agent->jobs, &data->job_id);
  FerryVm *vm = job ? g_hash_table_lookup (data->agent->vms, job->vm_name) : NULL;
  guint16 port = ferry_free_tcp_port (data->listen_address, NULL);
  if (vm == NULL || vm->qmp == NULL || port == 0)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED,
                               "destination: cannot set up post-copy recovery");
      g_object_unref (task);
      return;
    }
  gboolean ipv6 = strchr (data->listen_address, ':') != NULL;
  data->uri = g_strdup_printf ("tcp:%s%s%s:%u", ipv6 ? "[" : "", data->listen_address, ipv6 ? "]" : "",
                               port);
  g_autoptr (JsonObject) arguments = ferry_qmp_args_migrate_recover (data->uri);
  ferry_qmp_execute_oob_async (vm->qmp, "migrate-recover", arguments, NULL, on_recover_listening, task);
}

static void
on_paused_for_recovery (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  /* Either way the MIGRATION event "postcopy-paused" continues (or the
   * recover request times out on the source, which retries). */
}

void
mig_dst_recover_async (FerryAgent *agent, const char *uuid, const char *listen_address,
                       GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (NULL, NULL, callback, user_data);
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION);
  FerryVm *vm = job ? g_hash_table_lookup (agent->vms, job->vm_name) : NULL;
  if (job == NULL || job->state != FERRY_JOB_POSTCOPY || vm == NULL || vm->qmp == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "destination: migration %s is not in post-copy here", uuid);
      g_object_unref (task);
      return;
    }
  RecoverData *data = g_new0 (RecoverData, 1);
  data->agent = agent;
  data->job_id = job->id;
  data->listen_address = g_strdup (listen_address);
  g_task_set_task_data (task, data, (GDestroyNotify) recover_data_free);
  if (g_strcmp0 (job->incoming_status, "postcopy-paused") == 0)
    {
      recover_listen (task);
      return;
    }
  /* Our end of the broken stream may not have noticed yet: pause it. A
   * newer request replaces an older one still waiting (its source gave up
   * on it), so a pause that never took effect cannot wedge recovery. */
  if (job->pending_recover != NULL)
    {
      g_task_return_new_error (job->pending_recover, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "destination: superseded by a newer recovery request");
      g_clear_object (&job->pending_recover);
    }
  job->pending_recover = task;
  ferry_qmp_execute_oob_async (vm->qmp, "migrate-pause", NULL, NULL, on_paused_for_recovery, NULL);
}

JsonObject *
mig_dst_recover_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

static void
on_postcopy_watch_paused (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
}

/* In post-copy the source's heartbeat stopping means a dead link; pause our
 * end so that recovery can begin as soon as the source is back. */
static gboolean
on_postcopy_watch (gpointer user_data)
{
  FerryJob *job = user_data;
  gint64 silent_ms = (g_get_monotonic_time () - job->lease_renewed_us) / 1000;
  if (silent_ms < job->agent->config.keepalive_timeout_ms
      || g_strcmp0 (job->incoming_status, "postcopy-active") != 0)
    return G_SOURCE_CONTINUE;
  FerryVm *vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
  if (vm != NULL && vm->qmp != NULL)
    {
      ferry_job_event (job, "warning", "source silent for %" G_GINT64_FORMAT
                       " ms during post-copy; pausing the stream for recovery", silent_ms);
      ferry_qmp_execute_oob_async (vm->qmp, "migrate-pause", NULL, NULL, on_postcopy_watch_paused, NULL);
    }
  job->lease_renewed_us = g_get_monotonic_time (); /* once per silence */
  return G_SOURCE_CONTINUE;
}

/* ---- abort and failures ------------------------------------------------------ */

gboolean
mig_dst_abort (FerryAgent *agent, const char *uuid, const char *reason, GError **error)
{
  FerryJob *job = ferry_job_lookup_uuid (agent, uuid, FERRY_JOB_ROLE_DESTINATION);
  if (job == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                   "destination: no active migration %s", uuid);
      return FALSE;
    }
  if (job->state == FERRY_JOB_FINISHING || job->state == FERRY_JOB_POSTCOPY)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "destination: migration %s runs the guest here; too late to abort", uuid);
      return FALSE;
    }
  if (job->cold != NULL)
    {
      mig_cold_dst_abort (job, reason);
      return TRUE;
    }
  mig_dst_teardown (job, FERRY_JOB_CANCELLED, reason ? reason : "aborted by the source");
  return TRUE;
}

void
mig_dst_on_vm_gone (FerryJob *job)
{
  FerryVm *vm = g_hash_table_lookup (job->agent->vms, job->vm_name);
  if (job->state == FERRY_JOB_POSTCOPY)
    {
      if (vm != NULL && vm->job == job)
        vm->job = NULL;
      g_autofree char *exited = ferry_vm_exit_reason (vm, "destination QEMU exited during post-copy");
      g_autofree char *reason = g_strdup_printf ("%s (the guest is lost unless the source still holds it)",
                                                 exited);
      ferry_job_finish (job, FERRY_JOB_FAILED, reason);
      if (vm != NULL && !vm->persistent)
        ferry_vm_forget (vm);
      return;
    }
  g_autofree char *reason = ferry_vm_exit_reason (vm, job->state == FERRY_JOB_FINISHING
                                                        ? "destination QEMU exited while resuming the guest"
                                                        : "destination QEMU exited before the migration completed");
  mig_dst_teardown (job, FERRY_JOB_FAILED, reason);
}

/* ---- offline ---------------------------------------------------------------- */

JsonObject *
mig_dst_define_offline (FerryAgent *agent, JsonObject *request, GError **error)
{
  g_autofree char *uuid = NULL;
  g_autofree char *source = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;
  FerryMigrateOptions options;
  ferry_migrate_options_init (&options);
  options.persistent = TRUE;

  if (!mig_dst_parse_incoming_request (request, &uuid, &spec, &options, &source, error))
    return NULL;
  if (options.live)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "live: this endpoint takes offline migrations only");
      return NULL;
    }
  if (!options.persistent)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "persistent: an offline migration moves the definition, so it must be persistent");
      return NULL;
    }
  FerryJob *job = ferry_job_new (agent, uuid, spec->name, FERRY_JOB_ROLE_DESTINATION, &options,
                                 source, FERRY_JOB_PREPARING, error);
  if (job == NULL)
    return NULL;
  FerryVm *vm = ferry_vm_define (agent, spec, TRUE, error);
  if (vm == NULL)
    {
      ferry_job_finish (job, FERRY_JOB_FAILED, (*error)->message);
      g_prefix_error (error, "destination: ");
      return NULL;
    }
  JsonObject *reply = job_status_json (job);
  json_object_set_boolean_member (reply, "defined", TRUE);
  json_object_set_string_member (reply, "state", "completed");
  ferry_job_finish (job, FERRY_JOB_COMPLETED, NULL);
  return reply;
}

/* ---- restart recovery ---------------------------------------------------------- */

void
mig_dst_recover (FerryAgent *agent, FerryStoreJob *stored)
{
  FerryJobState state = ferry_job_state_from_string (stored->state);
  FerryVm *vm = g_hash_table_lookup (agent->vms, stored->vm_name);
  const char *outcome;

  if ((state == FERRY_JOB_FINISHING || state == FERRY_JOB_POSTCOPY) && vm != NULL
      && vm->state == FERRY_VM_RUNNING)
    {
      /* We resumed the guest before going down: it is ours now. */
      outcome = "completed";
      ferry_store_job_update (agent->store, stored->id, outcome, NULL, NULL, NULL);
      ferry_store_job_add_event (agent->store, stored->id, "info",
                                 "agent restarted after resuming the guest; migration completed", NULL);
      return;
    }
  /* Anything before Finish: the source still owns the VM. Remove ours. */
  if (vm != NULL && vm->state != FERRY_VM_SHUTOFF && vm->state != FERRY_VM_RUNNING)
    {
      ferry_vm_kill (vm);
      ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
    }
  if (vm != NULL && !vm->persistent && vm->state == FERRY_VM_SHUTOFF)
    ferry_vm_forget (vm);
  /* Volumes made for a storage copy hold nothing the source lacks. */
  g_autoptr (JsonNode) stats = stored->stats_json ? json_from_string (stored->stats_json, NULL) : NULL;
  JsonObject *stats_object = stats && JSON_NODE_HOLDS_OBJECT (stats) ? json_node_get_object (stats) : NULL;
  JsonNode *made = stats_object ? json_object_get_member (stats_object, INCOMING_VOLUMES) : NULL;
  if (made != NULL && JSON_NODE_HOLDS_ARRAY (made))
    {
      g_autoptr (GStrvBuilder) paths = g_strv_builder_new ();
      JsonArray *list = json_node_get_array (made);
      for (guint i = 0; i < json_array_get_length (list); i++)
        if (JSON_NODE_HOLDS_VALUE (json_array_get_element (list, i))
            && json_node_get_value_type (json_array_get_element (list, i)) == G_TYPE_STRING)
          g_strv_builder_add (paths, json_array_get_string_element (list, i));
      g_auto (GStrv) volumes = g_strv_builder_end (paths);
      mig_storage_dst_remove_volumes ((const char *const *) volumes);
    }
  outcome = "failed";
  ferry_store_job_update (agent->store, stored->id, outcome,
                          "destination agent restarted before the migration finished", NULL, NULL);
  ferry_store_job_add_event (agent->store, stored->id, "error",
                             "agent restarted before the migration finished; incoming VM removed", NULL);
}
