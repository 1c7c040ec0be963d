/* ferry agent — the HTTPS API (/v1), mutual TLS, JSON.
 *
 * Every request body is bounded (FERRY_API_MAX_BODY, checked from the
 * headers before the body is read) and validated field by field; errors
 * come back as {"error": {"code": ..., "message": ...}} with the HTTP
 * status of the error code. The API reference is docs/api.md.
 */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "jsonutil.h"

#define CONSOLE_DEFAULT_BYTES (64 * 1024)
#define CONSOLE_MAX_BYTES (1024 * 1024)

static void
reply_json (SoupServerMessage *msg, guint status, JsonObject *object)
{
  g_autofree char *text = ferry_json_object_to_string (object, FALSE);
  soup_server_message_set_status (msg, status, NULL);
  soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_COPY, text, strlen (text));
}

static void
reply_error (SoupServerMessage *msg, const GError *error)
{
  g_autoptr (JsonObject) body = json_object_new ();
  JsonObject *inner = json_object_new ();
  FerryErrorCode code = error->domain == FERRY_ERROR ? (FerryErrorCode) error->code : FERRY_ERROR_FAILED;
  json_object_set_string_member (inner, "code", ferry_error_code_to_string (code));
  json_object_set_string_member (inner, "message", error->message);
  json_object_set_object_member (body, "error", inner);
  reply_json (msg, ferry_error_http_status (error), body);
}

static void
reply_error_literal (SoupServerMessage *msg, FerryErrorCode code, const char *message)
{
  g_autoptr (GError) error = g_error_new_literal (FERRY_ERROR, code, message);
  reply_error (msg, error);
}

static void
reply_ok (SoupServerMessage *msg)
{
  g_autoptr (JsonObject) body = json_object_new ();
  json_object_set_boolean_member (body, "ok", TRUE);
  reply_json (msg, 200, body);
}

/* Parses the body as a JSON object (NULL + reply sent on error). */
static JsonObject *
request_object (SoupServerMessage *msg)
{
  SoupMessageBody *body = soup_server_message_get_request_body (msg);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) bytes = soup_message_body_flatten (body);
  gsize length = 0;
  const char *data = g_bytes_get_data (bytes, &length);
  JsonObject *object = ferry_json_parse_object (data ? data : "", length, FERRY_API_MAX_BODY, &error);
  if (object == NULL)
    reply_error (msg, error);
  return object;
}

/* Async replies: the message stays paused until the operation ends. */
static void
finish_paused (SoupServerMessage *msg, JsonObject *reply, guint status, const GError *error)
{
  if (reply != NULL)
    reply_json (msg, status, reply);
  else
    reply_error (msg, error);
  soup_server_message_unpause (msg);
  g_object_unref (msg);
}

/* ---- VMs -------------------------------------------------------------------- */

static void
handle_vm_list (FerryAgent *agent, SoupServerMessage *msg)
{
  g_autoptr (JsonObject) reply = json_object_new ();
  JsonArray *array = json_array_new ();
  g_autoptr (GList) names = g_hash_table_get_keys (agent->vms);
  names = g_list_sort (names, (GCompareFunc) g_strcmp0);
  for (GList *l = names; l != NULL; l = l->next)
    json_array_add_object_element (array, ferry_vm_to_json (g_hash_table_lookup (agent->vms, l->data), FALSE));
  json_object_set_array_member (reply, "vms", array);
  reply_json (msg, 200, reply);
}

static void
handle_vm_define (FerryAgent *agent, SoupServerMessage *msg)
{
  SoupMessageBody *body = soup_server_message_get_request_body (msg);
  g_autoptr (GBytes) bytes = soup_message_body_flatten (body);
  gsize length = 0;
  const char *data = g_bytes_get_data (bytes, &length);
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_parse (data ? data : "", length, &error);
  if (spec == NULL)
    {
      reply_error (msg, error);
      return;
    }
  /* Refuse now what the start would refuse later: a missing pool or
   * volume, or a volume whose content is not the format the spec says. */
  if (!ferry_spec_check_disks (agent, spec, &error))
    {
      reply_error (msg, error);
      return;
    }
  FerryVm *vm = ferry_vm_define (agent, spec, TRUE, &error);
  if (vm == NULL)
    {
      reply_error (msg, error);
      return;
    }
  g_autoptr (JsonObject) reply = ferry_vm_to_json (vm, TRUE);
  reply_json (msg, 201, reply);
}

static void
on_vm_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  SoupServerMessage *msg = user_data;
  FerryVm *vm = g_object_get_data (G_OBJECT (msg), "vm");
  g_autoptr (GError) error = NULL;
  if (!ferry_vm_start_finish (vm, result, &error))
    {
      finish_paused (msg, NULL, 0, error);
      return;
    }
  g_autoptr (JsonObject) reply = ferry_vm_to_json (vm, FALSE);
  finish_paused (msg, reply, 200, NULL);
}

static const char *const shutdown_fields[] = { "timeout_s", "force", NULL };
static const char *const dirtyrate_fields[] = { "period_s", NULL };

static void
on_dirtyrate_measured (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_dirtyrate_measure_finish (result, &error);
  finish_paused (user_data, reply, 200, error);
}

static void
handle_vm_action (FerryAgent *agent, SoupServerMessage *msg, FerryVm *vm, const char *action)
{
  g_autoptr (GError) error = NULL;

  if (g_str_equal (action, "start"))
    {
      FerryVmStartOptions options = { 0 };
      g_object_set_data (G_OBJECT (msg), "vm", vm);
      soup_server_message_pause (msg);
      ferry_vm_start_async (vm, &options, NULL, on_vm_started, g_object_ref (msg));
      return;
    }
  if (g_str_equal (action, "shutdown"))
    {
      g_autoptr (JsonObject) request = request_object (msg);
      gint64 timeout_s = agent->config.shutdown_timeout_s;
      gboolean force = TRUE;
      if (request == NULL)
        return;
      if (!ferry_json_reject_unknown (request, shutdown_fields, &error)
          || !ferry_json_get_int (request, "timeout_s", FALSE, 1, 3600, &timeout_s, &error)
          || !ferry_json_get_bool (request, "force", FALSE, &force, &error)
          || !ferry_vm_shutdown (vm, force ? (guint) timeout_s : 0, &error))
        {
          reply_error (msg, error);
          return;
        }
      g_autoptr (JsonObject) reply = ferry_vm_to_json (vm, FALSE);
      reply_json (msg, 202, reply);
      return;
    }
  if (g_str_equal (action, "dirtyrate"))
    {
      g_autoptr (JsonObject) request = request_object (msg);
      gint64 period_s = 1;
      if (request == NULL)
        return;
      if (!ferry_json_reject_unknown (request, dirtyrate_fields, &error)
          || !ferry_json_get_int (request, "period_s", FALSE, FERRY_DIRTYRATE_MIN_PERIOD_S,
                                  FERRY_DIRTYRATE_MAX_PERIOD_S, &period_s, &error))
        {
          reply_error (msg, error);
          return;
        }
      soup_server_message_pause (msg);
      ferry_dirtyrate_measure_async (vm, period_s, on_dirtyrate_measured, g_object_ref (msg));
      return;
    }
  if (g_str_equal (action, "destroy"))
    {
      if (vm->job != NULL)
        {
          reply_error_literal (msg, FERRY_ERROR_CONFLICT,
                               "the VM is migrating; abort the job first (ferry job abort NAME)");
          return;
        }
      if (!ferry_vm_destroy (vm, &error))
        {
          reply_error (msg, error);
          return;
        }
      g_autoptr (JsonObject) reply = ferry_vm_to_json (vm, FALSE);
      reply_json (msg, 202, reply);
      return;
    }
  reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "unknown VM action");
}

static void
handle_console (FerryVm *vm, SoupServerMessage *msg)
{
  const char *query_text = g_uri_get_query (soup_server_message_get_uri (msg));
  gint64 bytes = CONSOLE_DEFAULT_BYTES;
  if (query_text != NULL)
    {
      g_autoptr (GHashTable) query = g_uri_parse_params (query_text, -1, "&", G_URI_PARAMS_NONE, NULL);
      const char *value = query ? g_hash_table_lookup (query, "bytes") : NULL;
      if (value != NULL && !g_ascii_string_to_signed (value, 10, 1, CONSOLE_MAX_BYTES, &bytes, NULL))
        {
          reply_error_literal (msg, FERRY_ERROR_INVALID_ARGUMENT,
                               "bytes: must be an integer between 1 and 1048576");
          return;
        }
    }
  int fd = open (vm->console_log, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    {
      soup_server_message_set_status (msg, 200, NULL);
      soup_server_message_set_response (msg, "text/plain", SOUP_MEMORY_STATIC, "", 0);
      return;
    }
  off_t size = lseek (fd, 0, SEEK_END);
  off_t start = size > bytes ? size - bytes : 0;
  g_autofree char *buffer = g_malloc (bytes);
  ssize_t n = pread (fd, buffer, size - start, start);
  close (fd);
  soup_server_message_set_status (msg, 200, NULL);
  soup_server_message_set_response (msg, "text/plain", SOUP_MEMORY_COPY, buffer, n > 0 ? n : 0);
}

static void on_estimated (GObject *source, GAsyncResult *result, gpointer user_data);

/* POST …/migrate starts a job; POST …/estimate (estimate_only) answers
 * with the plan the same body would get. */
static void
handle_migrate (FerryAgent *agent, SoupServerMessage *msg, FerryVm *vm, gboolean estimate_only)
{
  g_autoptr (JsonObject) request = request_object (msg);
  g_autoptr (GError) error = NULL;
  g_autofree char *dest = NULL;
  FerryMigrateOptions options;

  if (request == NULL)
    return;
  if (!ferry_migrate_options_parse (request, &dest, &options, &error))
    {
      reply_error (msg, error);
      return;
    }
  if (estimate_only)
    {
      soup_server_message_pause (msg);
      ferry_plan_async (vm, dest, &options, on_estimated, g_object_ref (msg));
      return;
    }
  FerryJob *job = mig_src_begin (vm, dest, &options, &error);
  if (job == NULL)
    {
      reply_error (msg, error);
      return;
    }
  g_autoptr (FerryStoreJob) stored = ferry_store_job_get (agent->store, job->id, NULL);
  g_autoptr (JsonObject) reply = ferry_job_info_json (agent, stored, FALSE);
  reply_json (msg, 202, reply);
}

static const char *const job_set_fields[] = { "max_downtime_ms", "bandwidth_mib", NULL };

static const char *const cutover_fields[] = { "at", NULL };

/* POST …/job/cutover {"at": unix seconds}: a warm migration's cutover,
 * now or at that time. */
static gboolean
handle_cutover (SoupServerMessage *msg, FerryVm *vm, GError **error)
{
  g_autoptr (JsonObject) request = request_object (msg);
  gint64 at = 0;
  if (request == NULL)
    return TRUE; /* already answered */
  if (!ferry_json_reject_unknown (request, cutover_fields, error)
      || !ferry_json_get_int (request, "at", FALSE, 0, G_MAXINT64, &at, error))
    return FALSE;
  if (vm->job == NULL || vm->job->role != FERRY_JOB_ROLE_SOURCE)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "VM '%s' has no outgoing migration", vm->name);
      return FALSE;
    }
  return mig_warm_src_cutover (vm->job, at, error);
}

static gboolean
handle_job_control (SoupServerMessage *msg, FerryVm *vm, const char *action, GError **error)
{
  if (g_str_equal (action, "cutover"))
    return handle_cutover (msg, vm, error);
  if (g_str_equal (action, "postcopy"))
    return mig_src_start_postcopy (vm, "asked by the user", error);
  if (g_str_equal (action, "recover"))
    return mig_src_recover_postcopy (vm, error);
  if (!g_str_equal (action, "set"))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "unknown job action '%s'", action);
      return FALSE;
    }
  g_autoptr (JsonObject) request = request_object (msg);
  if (request == NULL)
    return TRUE; /* already answered */
  gint64 downtime = 0, bandwidth = 0;
  if (!ferry_json_reject_unknown (request, job_set_fields, error)
      || !ferry_json_get_int (request, "max_downtime_ms", FALSE, 1, 2000000, &downtime, error)
      || !ferry_json_get_int (request, "bandwidth_mib", FALSE, 1, 1024 * 1024, &bandwidth, error))
    return FALSE;
  if ((downtime > 0) == (bandwidth > 0))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "body: give exactly one of max_downtime_ms or bandwidth_mib");
      return FALSE;
    }
  if (downtime > 0)
    return mig_src_set_parameter (vm, "downtime-limit", downtime, error);
  return mig_src_set_parameter (vm, "max-bandwidth", bandwidth * 1024 * 1024, error);
}

static void
on_estimated (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) plan = ferry_plan_finish (result, NULL, &error);
  finish_paused (user_data, plan, 200, error);
}


static void
on_block_nodes (GObject *source, GAsyncResult *result, gpointer user_data)
{
  SoupServerMessage *msg = user_data; /* finish_paused drops it */
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) nodes = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  g_autoptr (JsonObject) reply = NULL;
  if (nodes != NULL && JSON_NODE_HOLDS_ARRAY (nodes))
    {
      /* What an admin asks: which nodes, on which files, tracking what. */
      reply = json_object_new ();
      JsonArray *list = json_array_new ();
      JsonArray *array = json_node_get_array (nodes);
      for (guint i = 0; i < json_array_get_length (array); i++)
        {
          JsonObject *node = json_array_get_object_element (array, i);
          JsonObject *entry = json_object_new ();
          json_object_set_string_member (entry, "node", ferry_json_object_string (node, "node-name"));
          json_object_set_string_member (entry, "driver", ferry_json_object_string (node, "drv"));
          json_object_set_string_member (entry, "file", ferry_json_object_string (node, "file"));
          JsonNode *bitmaps = json_object_get_member (node, "dirty-bitmaps");
          json_object_set_member (entry, "dirty_bitmaps", bitmaps ? json_node_copy (bitmaps)
                                                                  : json_node_init_array (json_node_alloc (),
                                                                                          json_array_new ()));
          json_array_add_object_element (list, entry);
        }
      json_object_set_array_member (reply, "nodes", list);
    }
  else if (error == NULL)
    error = g_error_new_literal (FERRY_ERROR, FERRY_ERROR_QEMU, "query-named-block-nodes: unexpected reply");
  finish_paused (msg, reply, 200, error);
}

/* GET /v1/vms/NAME/block: the running QEMU's block nodes and dirty bitmaps. */
static void
handle_block (FerryVm *vm, SoupServerMessage *msg)
{
  if (vm->qmp == NULL)
    {
      reply_error_literal (msg, FERRY_ERROR_CONFLICT, "the VM is not running");
      return;
    }
  g_autoptr (JsonObject) args = json_object_new ();
  json_object_set_boolean_member (args, "flat", TRUE);
  soup_server_message_pause (msg);
  ferry_qmp_execute_async (vm->qmp, "query-named-block-nodes", args, NULL, on_block_nodes, g_object_ref (msg));
}

/* ---- waiting for a job's end ------------------------------------------------ */

/* GET …/job?wait_ms=N on a VM with a running job is answered when the
 * job ends or after N ms, whichever comes first: a client following a
 * job learns of its end at once instead of at its next poll. With
 * events_after=K it is also answered once the job has more than K events
 * (`ferry job events --follow` prints each as it comes). */
#define JOB_WAIT_MAX_MS 10000

typedef struct {
  FerryAgent *agent;
  SoupServerMessage *msg;      /* paused, referenced */
  char *vm_name;
  gboolean until_event;        /* also answered at the job's next event */
  guint timer;
  gulong disconnected;
} JobWaiter;

static void reply_latest_job (FerryAgent *agent, SoupServerMessage *msg, const char *vm_name);

static void
job_waiter_free (JobWaiter *waiter)
{
  g_clear_handle_id (&waiter->timer, g_source_remove);
  g_clear_signal_handler (&waiter->disconnected, waiter->msg);
  g_object_unref (waiter->msg);
  g_free (waiter->vm_name);
  g_free (waiter);
}

static void
job_waiter_answer (JobWaiter *waiter)
{
  g_ptr_array_remove_fast (waiter->agent->job_waiters, waiter);
  g_clear_handle_id (&waiter->timer, g_source_remove);
  /* Before the reply: unpausing may end the connection at once. */
  g_clear_signal_handler (&waiter->disconnected, waiter->msg);
  reply_latest_job (waiter->agent, waiter->msg, waiter->vm_name);
  soup_server_message_unpause (waiter->msg);
  job_waiter_free (waiter);
}

static gboolean
on_job_wait_elapsed (gpointer user_data)
{
  JobWaiter *waiter = user_data;
  waiter->timer = 0;
  job_waiter_answer (waiter);
  return G_SOURCE_REMOVE;
}

static void
on_job_waiter_disconnected (SoupServerMessage *msg, gpointer user_data)
{
  JobWaiter *waiter = user_data;
  g_ptr_array_remove_fast (waiter->agent->job_waiters, waiter);
  job_waiter_free (waiter);
}

/* Answers the requests waiting on the VM's job: all of them, or only
 * those also waiting for its next event. */
static void
answer_waiters (FerryAgent *agent, const char *vm_name, gboolean only_event_followers)
{
  if (agent->job_waiters == NULL)
    return;
  for (guint i = agent->job_waiters->len; i-- > 0;)
    {
      JobWaiter *waiter = g_ptr_array_index (agent->job_waiters, i);
      if (g_str_equal (waiter->vm_name, vm_name) && (waiter->until_event || !only_event_followers))
        job_waiter_answer (waiter);
    }
}

void
ferry_api_job_ended (FerryAgent *agent, const char *vm_name)
{
  answer_waiters (agent, vm_name, FALSE);
}

void
ferry_api_job_event_added (FerryAgent *agent, const char *vm_name)
{
  answer_waiters (agent, vm_name, TRUE);
}

void
ferry_api_drop_waiters (FerryAgent *agent)
{
  if (agent->job_waiters == NULL)
    return;
  while (agent->job_waiters->len > 0)
    job_waiter_free (g_ptr_array_steal_index_fast (agent->job_waiters, agent->job_waiters->len - 1));
}

/* TRUE when the request was held (answered later). */
static gboolean
hold_until_job_ends (FerryAgent *agent, SoupServerMessage *msg, const char *vm_name, GHashTable *query)
{
  const char *value = query ? g_hash_table_lookup (query, "wait_ms") : NULL;
  const char *events_value = query ? g_hash_table_lookup (query, "events_after") : NULL;
  gint64 wait_ms = 0, events_after = -1;
  if (value == NULL)
    return FALSE;
  if (!g_ascii_string_to_signed (value, 10, 0, JOB_WAIT_MAX_MS, &wait_ms, NULL))
    {
      reply_error_literal (msg, FERRY_ERROR_INVALID_ARGUMENT, "wait_ms: must be an integer between 0 and 10000");
      return TRUE;
    }
  if (events_value != NULL && !g_ascii_string_to_signed (events_value, 10, 0, G_MAXINT32, &events_after, NULL))
    {
      reply_error_literal (msg, FERRY_ERROR_INVALID_ARGUMENT, "events_after: must be an integer, 0 or more");
      return TRUE;
    }
  /* The VM's latest job, if it still runs (a destination's cold copy
   * runs before its VM is defined). */
  g_autoptr (FerryStoreJob) latest = wait_ms > 0 ? ferry_store_job_latest_for_vm (agent->store, vm_name, NULL)
                                                 : NULL;
  if (latest == NULL || g_hash_table_lookup (agent->jobs, &latest->id) == NULL)
    return FALSE;
  if (events_after >= 0)
    {
      /* Events the client has not seen yet are its answer now. */
      g_autoptr (GPtrArray) events = ferry_store_job_events (agent->store, latest->id, NULL);
      if (events == NULL || events->len > (guint) events_after)
        return FALSE;
    }
  JobWaiter *waiter = g_new0 (JobWaiter, 1);
  waiter->agent = agent;
  waiter->msg = g_object_ref (msg);
  waiter->vm_name = g_strdup (vm_name);
  waiter->until_event = events_after >= 0;
  waiter->timer = g_timeout_add ((guint) wait_ms, on_job_wait_elapsed, waiter);
  waiter->disconnected = g_signal_connect (msg, "disconnected", G_CALLBACK (on_job_waiter_disconnected), waiter);
  if (agent->job_waiters == NULL)
    agent->job_waiters = g_ptr_array_new ();
  g_ptr_array_add (agent->job_waiters, waiter);
  soup_server_message_pause (msg);
  return TRUE;
}

/* The VM's latest job (running or ended), with its events. */
static void
reply_latest_job (FerryAgent *agent, SoupServerMessage *msg, const char *vm_name)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryStoreJob) stored = ferry_store_job_latest_for_vm (agent->store, vm_name, &error);
  if (stored == NULL)
    {
      reply_error (msg, error);
      return;
    }
  g_autoptr (JsonObject) reply = ferry_job_info_json (agent, stored, TRUE);
  reply_json (msg, 200, reply);
}

static void
handle_job (FerryAgent *agent, SoupServerMessage *msg, const char *vm_name, const char *action)
{
  g_autoptr (GError) error = NULL;
  if (action != NULL && !g_str_equal (action, "abort"))
    {
      FerryVm *vm = ferry_vm_lookup (agent, vm_name, &error);
      if (vm == NULL || !handle_job_control (msg, vm, action, &error))
        {
          reply_error (msg, error);
          return;
        }
      if (soup_server_message_get_status (msg) == 0)
        reply_ok (msg);
      return;
    }
  if (action != NULL)
    {
      FerryVm *vm = ferry_vm_lookup (agent, vm_name, &error);
      if (vm == NULL || !g_str_equal (action, "abort") || !mig_src_abort (vm, &error))
        {
          if (error == NULL)
            error = g_error_new (FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "unknown job action '%s'", action);
          reply_error (msg, error);
          return;
        }
      reply_ok (msg);
      return;
    }
  const char *query_text = g_uri_get_query (soup_server_message_get_uri (msg));
  g_autoptr (GHashTable) query = query_text ? g_uri_parse_params (query_text, -1, "&", G_URI_PARAMS_NONE, NULL)
                                            : NULL;
  gboolean completed = query != NULL && g_strcmp0 (g_hash_table_lookup (query, "completed"), "1") == 0;
  if (!completed)
    {
      if (!hold_until_job_ends (agent, msg, vm_name, query))
        reply_latest_job (agent, msg, vm_name);
      return;
    }
  /* The last job that ended, as `virsh domjobinfo --completed`. */
  FerryVm *vm = g_hash_table_lookup (agent->vms, vm_name);
  g_autoptr (FerryStoreJob) stored = ferry_store_job_latest_for_vm (agent->store, vm_name, &error);
  if (stored != NULL && vm != NULL && vm->job != NULL && vm->job->id == stored->id)
    g_clear_pointer (&stored, ferry_store_job_free);
  if (stored == NULL && error == NULL)
    error = g_error_new (FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                         "no completed job for VM '%s' (one is still running)", vm_name);
  if (stored == NULL)
    {
      reply_error (msg, error);
      return;
    }
  g_autoptr (JsonObject) reply = ferry_job_info_json (agent, stored, TRUE);
  reply_json (msg, 200, reply);
}

static void
handle_vms (FerryAgent *agent, SoupServerMessage *msg, const char *method, char **parts)
{
  /* parts: ["vms", NAME?, ACTION?, SUBACTION?] */
  g_autoptr (GError) error = NULL;
  guint n = g_strv_length (parts);

  if (n == 1)
    {
      if (g_str_equal (method, "GET"))
        handle_vm_list (agent, msg);
      else if (g_str_equal (method, "POST"))
        handle_vm_define (agent, msg);
      else
        soup_server_message_set_status (msg, 405, NULL);
      return;
    }
  if (n == 4 && g_str_equal (parts[2], "job"))
    {
      if (!g_str_equal (method, "POST"))
        soup_server_message_set_status (msg, 405, NULL);
      else
        handle_job (agent, msg, parts[1], parts[3]);
      return;
    }
  if (n == 3 && g_str_equal (parts[2], "job"))
    {
      handle_job (agent, msg, parts[1], NULL);
      return;
    }
  FerryVm *vm = ferry_vm_lookup (agent, parts[1], &error);
  if (vm == NULL)
    {
      reply_error (msg, error);
      return;
    }
  if (n == 2)
    {
      if (g_str_equal (method, "GET"))
        {
          g_autoptr (JsonObject) reply = ferry_vm_to_json (vm, TRUE);
          reply_json (msg, 200, reply);
        }
      else if (g_str_equal (method, "DELETE"))
        {
          if (ferry_vm_undefine (vm, &error))
            reply_ok (msg);
          else
            reply_error (msg, error);
        }
      else
        soup_server_message_set_status (msg, 405, NULL);
      return;
    }
  if (n == 3 && g_str_equal (parts[2], "console") && g_str_equal (method, "GET"))
    {
      handle_console (vm, msg);
      return;
    }
  if (n == 3 && g_str_equal (parts[2], "block") && g_str_equal (method, "GET"))
    {
      handle_block (vm, msg);
      return;
    }
  if (n == 3 && g_str_equal (parts[2], "migrate") && g_str_equal (method, "POST"))
    {
      handle_migrate (agent, msg, vm, FALSE);
      return;
    }
  if (n == 3 && g_str_equal (parts[2], "estimate") && g_str_equal (method, "POST"))
    {
      handle_migrate (agent, msg, vm, TRUE);
      return;
    }
  if (n == 3 && g_str_equal (method, "POST"))
    {
      handle_vm_action (agent, msg, vm, parts[2]);
      return;
    }
  reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
}

/* ---- storage pools ---------------------------------------------------------------- */

static const char *const volume_create_fields[] = { "name", "format", "size_bytes", NULL };

static void
handle_pool_list (FerryAgent *agent, SoupServerMessage *msg)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = json_object_new ();
  JsonArray *array = json_array_new ();
  json_object_set_array_member (reply, "pools", array);
  g_autoptr (GList) names = g_hash_table_get_keys (agent->pools);
  names = g_list_sort (names, (GCompareFunc) g_strcmp0);
  for (GList *l = names; l != NULL; l = l->next)
    {
      JsonObject *pool = ferry_pool_to_json (g_hash_table_lookup (agent->pools, l->data), FALSE, &error);
      if (pool == NULL)
        {
          reply_error (msg, error);
          return;
        }
      json_array_add_object_element (array, pool);
    }
  reply_json (msg, 200, reply);
}

static void
handle_volume_create (FerryPool *pool, SoupServerMessage *msg)
{
  g_autoptr (JsonObject) request = request_object (msg);
  g_autoptr (GError) error = NULL;
  g_autofree char *name = NULL;
  g_autofree char *format = g_strdup ("qcow2");
  gint64 size = 0;
  if (request == NULL)
    return;
  if (!ferry_json_reject_unknown (request, volume_create_fields, &error)
      || !ferry_json_get_string (request, "name", TRUE, &name, &error)
      || !ferry_json_get_string (request, "format", FALSE, &format, &error)
      || !ferry_json_get_int (request, "size_bytes", TRUE, FERRY_VOLUME_MIN_BYTES,
                              FERRY_VOLUME_MAX_BYTES, &size, &error))
    {
      reply_error (msg, error);
      return;
    }
  g_autofree char *path = ferry_pool_volume_path (pool, name, &error);
  if (path == NULL || !ferry_volume_create (pool, name, format, (guint64) size, &error))
    {
      reply_error (msg, error);
      return;
    }
  g_info ("pool %s: volume %s created (%s, %" G_GINT64_FORMAT " bytes)", pool->name, name, format, size);
  g_autoptr (FerryVolumeInfo) info = ferry_volume_inspect (path, &error);
  if (info == NULL)
    {
      reply_error (msg, error);
      return;
    }
  g_autoptr (JsonObject) reply = ferry_volume_info_to_json (info);
  reply_json (msg, 201, reply);
}

static void
handle_pools (FerryAgent *agent, SoupServerMessage *msg, const char *method, char **parts)
{
  /* parts: ["pools", NAME?, "volumes"?, VOLUME?] */
  g_autoptr (GError) error = NULL;
  guint n = g_strv_length (parts);

  if (n == 1)
    {
      if (g_str_equal (method, "GET"))
        handle_pool_list (agent, msg);
      else
        soup_server_message_set_status (msg, 405, NULL);
      return;
    }
  if (n > 4 || (n >= 3 && !g_str_equal (parts[2], "volumes")))
    {
      reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
      return;
    }
  FerryPool *pool = ferry_pool_lookup (agent, parts[1], &error);
  if (pool == NULL)
    {
      reply_error (msg, error);
      return;
    }
  if (n == 2 && g_str_equal (method, "GET"))
    {
      g_autoptr (JsonObject) reply = ferry_pool_to_json (pool, TRUE, &error);
      if (reply == NULL)
        reply_error (msg, error);
      else
        reply_json (msg, 200, reply);
      return;
    }
  if (n == 3 && g_str_equal (method, "GET"))
    {
      g_autoptr (GPtrArray) volumes = ferry_pool_list_volumes (pool, &error);
      if (volumes == NULL)
        {
          reply_error (msg, error);
          return;
        }
      g_autoptr (JsonObject) reply = json_object_new ();
      JsonArray *array = json_array_new ();
      for (guint i = 0; i < volumes->len; i++)
        json_array_add_object_element (array, ferry_volume_info_to_json (g_ptr_array_index (volumes, i)));
      json_object_set_array_member (reply, "volumes", array);
      reply_json (msg, 200, reply);
      return;
    }
  if (n == 3 && g_str_equal (method, "POST"))
    {
      handle_volume_create (pool, msg);
      return;
    }
  if (n == 4 && g_str_equal (method, "GET"))
    {
      g_autofree char *path = ferry_pool_volume_path (pool, parts[3], &error);
      g_autoptr (FerryVolumeInfo) info = NULL;
      if (path != NULL)
        {
          GStatBuf st;
          /* Only what the listing would show: no symlinks, no other files. */
          if (g_lstat (path, &st) < 0 || !S_ISREG (st.st_mode))
            g_set_error (&error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "volume '%s/%s' does not exist",
                         pool->name, parts[3]);
          else
            info = ferry_volume_inspect (path, &error);
        }
      if (info == NULL)
        {
          reply_error (msg, error);
          return;
        }
      g_autoptr (JsonObject) reply = ferry_volume_info_to_json (info);
      reply_json (msg, 200, reply);
      return;
    }
  if (n == 4 && g_str_equal (method, "DELETE"))
    {
      if (!ferry_volume_delete (agent, pool, parts[3], &error))
        {
          reply_error (msg, error);
          return;
        }
      g_info ("pool %s: volume %s deleted", pool->name, parts[3]);
      reply_ok (msg);
      return;
    }
  soup_server_message_set_status (msg, 405, NULL);
}

/* ---- migrations (agent to agent) ------------------------------------------------ */

static void
on_prepared (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = mig_dst_prepare_finish (result, &error);
  finish_paused (user_data, reply, 201, error);
}

static void
on_finished (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = mig_dst_finish_finish (result, &error);
  finish_paused (user_data, reply, 200, error);
}

static void
on_recover_ready (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = mig_dst_recover_finish (result, &error);
  finish_paused (user_data, reply, 200, error);
}

static char *
local_address_string (SoupServerMessage *msg)
{
  GSocketAddress *address = soup_server_message_get_local_address (msg);
  if (address == NULL || !G_IS_INET_SOCKET_ADDRESS (address))
    return NULL;
  GInetAddress *inet = g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (address));
  return g_inet_address_to_string (inet);
}

static void
on_digests (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = mig_cold_src_digests_finish (result, &error);
  finish_paused (user_data, reply, 200, error);
}

static void
handle_migrations (FerryAgent *agent, SoupServerMessage *msg, const char *method, char **parts)
{
  g_autoptr (GError) error = NULL;
  guint n = g_strv_length (parts);

  if (n == 2 && g_str_equal (parts[1], "offline") && g_str_equal (method, "POST"))
    {
      g_autoptr (JsonObject) request = request_object (msg);
      if (request == NULL)
        return;
      /* With disks the destination pulls them from where the request came
       * from: the source's exports listen on that address. */
      const char *peer = soup_server_message_get_remote_host (msg);
      g_autoptr (JsonObject) reply =
        json_object_get_boolean_member_with_default (request, "copy_storage", FALSE)
          ? mig_cold_dst_prepare (agent, request, peer ? peer : "127.0.0.1", &error)
          : mig_dst_define_offline (agent, request, &error);
      if (reply == NULL)
        reply_error (msg, error);
      else
        reply_json (msg, 201, reply);
      return;
    }
  if (n == 4 && g_str_equal (parts[1], "outgoing") && g_str_equal (parts[3], "digests")
      && g_str_equal (method, "POST"))
    {
      g_autoptr (JsonObject) request = request_object (msg);
      if (request == NULL)
        return;
      soup_server_message_pause (msg);
      mig_cold_src_digests_async (agent, parts[2], request, on_digests, g_object_ref (msg));
      return;
    }
  if (n == 4 && g_str_equal (parts[1], "outgoing") && g_str_equal (parts[3], "nudge")
      && g_str_equal (method, "POST"))
    {
      g_autoptr (JsonObject) empty = json_object_new ();
      if (!mig_cold_src_nudge (agent, parts[2], &error))
        reply_error (msg, error);
      else
        reply_json (msg, 200, empty);
      return;
    }
  if (n < 2 || !g_str_equal (parts[1], "incoming"))
    {
      reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
      return;
    }
  if (n == 2 && g_str_equal (method, "POST"))
    {
      g_autoptr (JsonObject) request = request_object (msg);
      g_autofree char *local = local_address_string (msg);
      if (request == NULL)
        return;
      soup_server_message_pause (msg);
      mig_dst_prepare_async (agent, request, local ? local : "0.0.0.0", NULL, on_prepared,
                             g_object_ref (msg));
      return;
    }
  if (n == 3 && g_str_equal (method, "GET"))
    {
      g_autoptr (JsonObject) reply = mig_dst_status (agent, parts[2], &error);
      if (reply == NULL)
        reply_error (msg, error);
      else
        reply_json (msg, 200, reply);
      return;
    }
  if (n == 3 && g_str_equal (method, "DELETE"))
    {
      if (mig_dst_abort (agent, parts[2], "aborted by the source", &error))
        reply_ok (msg);
      else
        reply_error (msg, error);
      return;
    }
  if (n == 4 && g_str_equal (parts[3], "recover") && g_str_equal (method, "POST"))
    {
      g_autofree char *local = local_address_string (msg);
      soup_server_message_pause (msg);
      mig_dst_recover_async (agent, parts[2], local ? local : "0.0.0.0", on_recover_ready,
                             g_object_ref (msg));
      return;
    }
  /* A warm pass, or its announcement (the same body). */
  if (n == 4 && (g_str_equal (parts[3], "pass") || g_str_equal (parts[3], "pass-coming"))
      && g_str_equal (method, "POST"))
    {
      gboolean coming = g_str_equal (parts[3], "pass-coming");
      g_autoptr (JsonObject) request = request_object (msg);
      if (request == NULL)
        return;
      g_autoptr (JsonObject) reply = (coming ? mig_cold_dst_pass_coming : mig_cold_dst_pass) (agent, parts[2],
                                                                                             request, &error);
      if (reply == NULL)
        reply_error (msg, error);
      else
        reply_json (msg, coming ? 200 : 202, reply);
      return;
    }
  if (n == 4 && g_str_equal (parts[3], "finish") && g_str_equal (method, "POST"))
    {
      static const char *const finish_fields[] = { "postcopy", NULL };
      g_autoptr (JsonObject) request = request_object (msg);
      gboolean postcopy = FALSE;
      if (request == NULL)
        return;
      if (!ferry_json_reject_unknown (request, finish_fields, &error)
          || !ferry_json_get_bool (request, "postcopy", FALSE, &postcopy, &error))
        {
          reply_error (msg, error);
          return;
        }
      soup_server_message_pause (msg);
      mig_dst_finish_async (agent, parts[2], postcopy, NULL, on_finished, g_object_ref (msg));
      return;
    }
  reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
}

/* ---- dispatch ------------------------------------------------------------------- */

static void
handle_host (FerryAgent *agent, SoupServerMessage *msg)
{
  g_autoptr (JsonObject) reply = json_object_new ();
  json_object_set_string_member (reply, "name", agent->config.host_name);
  json_object_set_string_member (reply, "version", FERRY_VERSION_STRING);
  json_object_set_string_member (reply, "accel", agent->accel);
  json_object_set_int_member (reply, "vms", g_hash_table_size (agent->vms));
  json_object_set_int_member (reply, "active_jobs", g_hash_table_size (agent->jobs));
  reply_json (msg, 200, reply);
}

static void
on_request (SoupServer *server, SoupServerMessage *msg, const char *path, GHashTable *query,
            gpointer user_data)
{
  FerryAgent *agent = user_data;
  const char *method = soup_server_message_get_method (msg);

  if (!g_str_has_prefix (path, "/v1/"))
    {
      reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "unknown API version (this agent serves /v1)");
      return;
    }
  g_auto (GStrv) raw = g_strsplit (path + strlen ("/v1/"), "/", 8);
  g_autoptr (GStrvBuilder) builder = g_strv_builder_new ();
  for (guint i = 0; raw[i] != NULL; i++)
    if (*raw[i] != '\0')
      g_strv_builder_add (builder, raw[i]);
  g_auto (GStrv) parts = g_strv_builder_end (builder);

  g_debug ("%s %s", method, path);
  if (parts[0] == NULL)
    reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
  else if (g_str_equal (parts[0], "host") && parts[1] == NULL)
    handle_host (agent, msg);
  else if (g_str_equal (parts[0], "probe") && parts[1] == NULL && g_str_equal (method, "POST"))
    {
      /* Link measurement by a peer: the body is discarded. */
      g_autoptr (JsonObject) reply = json_object_new ();
      json_object_set_int_member (reply, "bytes", soup_server_message_get_request_body (msg)->length);
      reply_json (msg, 200, reply);
    }
  else if (g_str_equal (parts[0], "vms"))
    handle_vms (agent, msg, method, parts);
  else if (g_str_equal (parts[0], "pools"))
    handle_pools (agent, msg, method, parts);
  else if (g_str_equal (parts[0], "migrations"))
    handle_migrations (agent, msg, method, parts);
  else
    reply_error_literal (msg, FERRY_ERROR_NOT_FOUND, "no such endpoint");
}

/* Runs after the headers, before the body: refuse oversized bodies
 * without reading them. */
static void
on_request_headers (SoupServer *server, SoupServerMessage *msg, const char *path,
                    GHashTable *query, gpointer user_data)
{
  SoupMessageHeaders *headers = soup_server_message_get_request_headers (msg);
  SoupEncoding encoding = soup_message_headers_get_encoding (headers);
  if (encoding == SOUP_ENCODING_CHUNKED || encoding == SOUP_ENCODING_EOF)
    {
      reply_error_literal (msg, FERRY_ERROR_INVALID_ARGUMENT,
                           "body: a Content-Length header is required");
      soup_server_message_set_status (msg, 411, NULL);
      return;
    }
  goffset limit = g_str_equal (path, "/v1/probe") ? FERRY_PROBE_MAX_BODY : FERRY_API_MAX_BODY;
  if (encoding == SOUP_ENCODING_CONTENT_LENGTH
      && soup_message_headers_get_content_length (headers) > limit)
    {
      g_autoptr (GError) error = g_error_new (FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                                              "body: %" G_GINT64_FORMAT " bytes is over the limit of %"
                                              G_GOFFSET_FORMAT,
                                              soup_message_headers_get_content_length (headers),
                                              limit);
      reply_error (msg, error);
    }
}

/* glib-networking hands every client certificate to this signal, even one
 * that verified; accept exactly those that chain to our CA. */
static gboolean
on_accept_client_certificate (SoupServerMessage *msg, GTlsCertificate *certificate,
                              GTlsCertificateFlags errors, gpointer user_data)
{
  if (errors != 0)
    g_info ("refused a client certificate (TLS verification flags 0x%x)", errors);
  return errors == 0;
}

static void
on_request_started (SoupServer *server, SoupServerMessage *msg, gpointer user_data)
{
  g_signal_connect (msg, "accept-certificate", G_CALLBACK (on_accept_client_certificate), NULL);
}

gboolean
ferry_agent_listen (FerryAgent *agent, GError **error)
{
  const char *listen = agent->config.listen;
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (agent->listen_host);
  agent->server = soup_server_new ("tls-certificate", agent->tls->certificate,
                                   "tls-database", agent->tls->ca_database,
                                   "tls-auth-mode", G_TLS_AUTHENTICATION_REQUIRED,
                                   "server-header", "ferryd/" FERRY_VERSION_STRING " ",
                                   NULL);
  g_signal_connect (agent->server, "request-started", G_CALLBACK (on_request_started), agent);
  soup_server_add_early_handler (agent->server, NULL, on_request_headers, agent, NULL);
  soup_server_add_handler (agent->server, NULL, on_request, agent, NULL);
  g_autoptr (GSocketAddress) address = g_inet_socket_address_new (inet, agent->listen_port);
  if (!soup_server_listen (agent->server, address, SOUP_SERVER_LISTEN_HTTPS, error))
    {
      g_prefix_error (error, "cannot listen on %s: ", listen);
      return FALSE;
    }
  g_info ("listening on https://%s (mutual TLS)", listen);
  return TRUE;
}
