/* ferry agent — measuring a guest's dirty-page rate.
 *
 * QEMU's calc-dirty-rate in page-sampling mode (dirty-bitmap mode crashes
 * QEMU 7.2 under TCG): QEMU hashes a sample of pages, waits calc-time
 * seconds, hashes again and extrapolates. It reports MiB/s. There is no
 * completion event, so after the period we poll query-dirty-rate until it
 * says "measured" (bounded). The last result is kept on the VM.
 */
#include "agent.h"

#include "jsonutil.h"

#define DIRTYRATE_POLL_MS 100
#define DIRTYRATE_MAX_WAIT_EXTRA_S 30
/* Pages sampled per GiB of RAM, QEMU's maximum (its default is 512): the
 * rate is the share of sampled pages that changed, so more samples mean
 * less noise. A guest dirtying 50 MiB/s measured 39-72 MiB/s at 512
 * across bench/live's runs; hashing 16 MiB per GiB twice costs QEMU a few
 * milliseconds. */
#define DIRTYRATE_SAMPLE_PAGES 4096

typedef struct {
  FerryAgent *agent;
  char *vm_name;
  gint64 period_s;
  gint64 deadline_us;
} MeasureData;

static void
measure_data_free (MeasureData *data)
{
  g_free (data->vm_name);
  g_free (data);
}

static FerryVm *
measure_vm (GTask *task, GError **error)
{
  MeasureData *data = g_task_get_task_data (task);
  FerryVm *vm = ferry_vm_lookup (data->agent, data->vm_name, error);
  if (vm != NULL && vm->qmp == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' stopped while its dirty rate was measured", data->vm_name);
      return NULL;
    }
  return vm;
}

static void poll_result (GTask *task);

static gboolean
on_poll_timer (gpointer user_data)
{
  poll_result (user_data);
  return G_SOURCE_REMOVE;
}

static void
on_result (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  MeasureData *data = g_task_get_task_data (task);
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  FerryVm *vm = reply ? measure_vm (task, &error) : NULL;
  if (vm == NULL)
    {
      g_task_return_error (task, error);
      g_object_unref (task);
      return;
    }
  JsonObject *object = json_node_get_object (reply);
  const char *status = ferry_json_object_string (object, "status");
  if (g_strcmp0 (status, "measured") != 0)
    {
      if (g_get_monotonic_time () > data->deadline_us)
        {
          g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_TIMEOUT,
                                   "VM '%s': QEMU did not finish measuring its dirty rate", vm->name);
          g_object_unref (task);
          return;
        }
      g_timeout_add (DIRTYRATE_POLL_MS, on_poll_timer, task);
      return;
    }
  JsonObject *measurement = json_object_new ();
  json_object_set_int_member (measurement, "dirty_rate_mib_s", ferry_json_object_int (object, "dirty-rate"));
  json_object_set_int_member (measurement, "period_s", ferry_json_object_int (object, "calc-time"));
  json_object_set_int_member (measurement, "sample_pages", ferry_json_object_int (object, "sample-pages"));
  json_object_set_string_member (measurement, "mode", "page-sampling");
  json_object_set_int_member (measurement, "measured_at_us", g_get_real_time ());
  g_clear_pointer (&vm->last_dirty_rate, json_object_unref);
  vm->last_dirty_rate = json_object_ref (measurement);
  g_task_return_pointer (task, measurement, (GDestroyNotify) json_object_unref);
  g_object_unref (task);
}

static void
poll_result (GTask *task)
{
  GError *error = NULL;
  FerryVm *vm = measure_vm (task, &error);
  if (vm == NULL)
    {
      g_task_return_error (task, error);
      g_object_unref (task);
      return;
    }
  ferry_qmp_execute_async (vm->qmp, "query-dirty-rate", NULL, NULL, on_result, task);
}

static void
on_started (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  MeasureData *data = g_task_get_task_data (task);
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (reply == NULL)
    {
      g_prefix_error (&error, "VM '%s': cannot measure the dirty rate: ", data->vm_name);
      g_task_return_error (task, error);
      g_object_unref (task);
      return;
    }
  /* The result cannot exist before the period has passed. */
  g_timeout_add (data->period_s * 1000 + DIRTYRATE_POLL_MS, on_poll_timer, task);
}

void
ferry_dirtyrate_measure_async (FerryVm *vm, gint64 period_s, GAsyncReadyCallback callback,
                               gpointer user_data)
{
  GTask *task = g_task_new (NULL, NULL, callback, user_data);
  MeasureData *data = g_new0 (MeasureData, 1);
  data->agent = vm->agent;
  data->vm_name = g_strdup (vm->name);
  data->period_s = period_s;
  data->deadline_us = g_get_monotonic_time ()
                      + (period_s + DIRTYRATE_MAX_WAIT_EXTRA_S) * G_USEC_PER_SEC;
  g_task_set_task_data (task, data, (GDestroyNotify) measure_data_free);

  if (vm->qmp == NULL || (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED))
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "VM '%s' is %s; the dirty rate of a guest is measured while it runs",
                               vm->name, ferry_vm_state_to_string (vm->state));
      g_object_unref (task);
      return;
    }
  g_autoptr (JsonObject) arguments = ferry_qmp_args_calc_dirty_rate (period_s, DIRTYRATE_SAMPLE_PAGES);
  ferry_qmp_execute_async (vm->qmp, "calc-dirty-rate", arguments, NULL, on_started, task);
}

JsonObject *
ferry_dirtyrate_measure_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}
