/* ferry agent — the QMP commands ferry builds. Kept in one place so the
 * schema test (tests/unit/test-qmp-schema.c) checks each against the QMP
 * schema captured from the real QEMU binary. */
#include "agent.h"

static void
add_capability (JsonArray *array, const char *name, gboolean state)
{
  JsonObject *capability = json_object_new ();
  json_object_set_string_member (capability, "capability", name);
  json_object_set_boolean_member (capability, "state", state);
  json_array_add_object_element (array, capability);
}

JsonObject *
ferry_qmp_args_migrate_capabilities (const FerryQmpCapabilities *capabilities)
{
  JsonObject *args = json_object_new ();
  JsonArray *array = json_array_new ();
  add_capability (array, "events", capabilities->events);
  add_capability (array, "multifd", capabilities->multifd);
  add_capability (array, "xbzrle", capabilities->xbzrle);
  add_capability (array, "auto-converge", capabilities->auto_converge);
  add_capability (array, "postcopy-ram", capabilities->postcopy);
  json_object_set_array_member (args, "capabilities", array);
  return args;
}

JsonObject *
ferry_qmp_args_migrate_parameters (const FerryQmpParameters *parameters)
{
  JsonObject *args = json_object_new ();
  /* Always explicit: QEMU 7.2 otherwise caps the stream at 128 MiB/s. */
  json_object_set_int_member (args, "max-bandwidth", parameters->max_bandwidth_bytes);
  if (parameters->downtime_ms > 0)
    json_object_set_int_member (args, "downtime-limit", parameters->downtime_ms);
  /* An empty string switches TLS off; set it either way so settings from a
   * previous migration of the same QEMU never leak into this one. */
  json_object_set_string_member (args, "tls-creds", parameters->tls_creds ? parameters->tls_creds : "");
  json_object_set_string_member (args, "tls-hostname",
                                 parameters->tls_hostname ? parameters->tls_hostname : "");
  if (parameters->multifd_channels > 0)
    json_object_set_int_member (args, "multifd-channels", parameters->multifd_channels);
  if (parameters->multifd_compression != NULL)
    json_object_set_string_member (args, "multifd-compression", parameters->multifd_compression);
  /* Post-copy has its own limit; keep it equal to the pre-copy one. */
  json_object_set_int_member (args, "max-postcopy-bandwidth", parameters->max_postcopy_bandwidth_bytes);
  return args;
}

JsonObject *
ferry_qmp_args_migrate_parameter (const char *name, gint64 value)
{
  JsonObject *args = json_object_new ();
  json_object_set_int_member (args, name, value);
  return args;
}

JsonObject *
ferry_qmp_args_tls_creds (const char *id, const char *dir, gboolean server)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "qom-type", "tls-creds-x509");
  json_object_set_string_member (args, "id", id);
  json_object_set_string_member (args, "dir", dir);
  json_object_set_string_member (args, "endpoint", server ? "server" : "client");
  /* Both ends present certificates from the ferry CA and check the peer's. */
  json_object_set_boolean_member (args, "verify-peer", TRUE);
  return args;
}

/* migrate, migrate-incoming and migrate-recover all take just a URI. */
static JsonObject *
uri_args (const char *uri)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "uri", uri);
  return args;
}

JsonObject *
ferry_qmp_args_migrate_incoming (const char *uri)
{
  return uri_args (uri);
}

JsonObject *
ferry_qmp_args_migrate (const char *uri)
{
  return uri_args (uri);
}

JsonObject *
ferry_qmp_args_migrate_resume (const char *uri)
{
  JsonObject *args = uri_args (uri);
  json_object_set_boolean_member (args, "resume", TRUE);
  return args;
}

JsonObject *
ferry_qmp_args_migrate_recover (const char *uri)
{
  return uri_args (uri);
}

JsonObject *
ferry_qmp_args_yank_migration (void)
{
  JsonObject *args = json_object_new ();
  JsonArray *instances = json_array_new ();
  JsonObject *migration = json_object_new ();
  json_object_set_string_member (migration, "type", "migration");
  json_array_add_object_element (instances, migration);
  json_object_set_array_member (args, "instances", instances);
  return args;
}

JsonObject *
ferry_qmp_args_calc_dirty_rate (gint64 period_s, gint64 sample_pages)
{
  JsonObject *args = json_object_new ();
  json_object_set_int_member (args, "calc-time", period_s);
  json_object_set_int_member (args, "sample-pages", sample_pages);
  /* dirty-bitmap mode crashes QEMU 7.2 under TCG; dirty-ring needs KVM. */
  json_object_set_string_member (args, "mode", "page-sampling");
  return args;
}

typedef struct {
  FerryQmp *qmp;
  GPtrArray *steps;   /* of FerryQmpStep* */
  guint next;
} StepRun;

static void
step_free (FerryQmpStep *step)
{
  if (step->arguments)
    json_object_unref (step->arguments);
  g_free (step);
}

static void
step_run_free (StepRun *run)
{
  g_object_unref (run->qmp);
  g_ptr_array_unref (run->steps);
  g_free (run);
}

static void run_next_step (GTask *task);

static void
on_step_done (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  StepRun *run = g_task_get_task_data (task);
  FerryQmpStep *step = g_ptr_array_index (run->steps, run->next - 1);
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (run->qmp, result, &error);

  if (reply == NULL && !(step->ignore_error && g_error_matches (error, FERRY_ERROR, FERRY_ERROR_QEMU)))
    {
      g_task_return_error (task, error);
      return;
    }
  g_clear_error (&error);
  if (run->next == run->steps->len)
    {
      g_task_return_pointer (task, reply ? g_steal_pointer (&reply)
                                         : json_node_init_object (json_node_alloc (), json_object_new ()),
                             (GDestroyNotify) json_node_unref);
      return;
    }
  run_next_step (g_steal_pointer (&task));
}

static void
run_next_step (GTask *task)
{
  StepRun *run = g_task_get_task_data (task);
  FerryQmpStep *step = g_ptr_array_index (run->steps, run->next++);
  ferry_qmp_execute_async (run->qmp, step->command, step->arguments, g_task_get_cancellable (task),
                           on_step_done, task);
}

void
ferry_qmp_run_steps_async (FerryQmp *qmp, FerryQmpStep *steps, guint n_steps,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data)
{
  GTask *task = g_task_new (NULL, cancellable, callback, user_data);
  StepRun *run = g_new0 (StepRun, 1);
  run->qmp = g_object_ref (qmp);
  run->steps = g_ptr_array_new_with_free_func ((GDestroyNotify) step_free);
  for (guint i = 0; i < n_steps; i++)
    g_ptr_array_add (run->steps, g_memdup2 (&steps[i], sizeof steps[i]));
  g_task_set_task_data (task, run, (GDestroyNotify) step_run_free);
  if (n_steps == 0)
    {
      g_task_return_pointer (task, json_node_init_object (json_node_alloc (), json_object_new ()),
                             (GDestroyNotify) json_node_unref);
      g_object_unref (task);
      return;
    }
  run_next_step (task);
}

JsonNode *
ferry_qmp_run_steps_finish (GAsyncResult *result, GError **error)
{
  return g_task_propagate_pointer (G_TASK (result), error);
}

/* ---- storage migration (NBD) ------------------------------------------------- */

JsonObject *
ferry_qmp_args_nbd_server_start (const char *host, guint16 port, const char *tls_creds)
{
  JsonObject *args = json_object_new ();
  /* nbd-server-start still takes the legacy (flat union) address. */
  JsonObject *addr = json_object_new ();
  JsonObject *data = json_object_new ();
  g_autofree char *port_text = g_strdup_printf ("%u", port);
  json_object_set_string_member (data, "host", host);
  json_object_set_string_member (data, "port", port_text);
  json_object_set_string_member (addr, "type", "inet");
  json_object_set_object_member (addr, "data", data);
  json_object_set_object_member (args, "addr", addr);
  if (tls_creds)
    json_object_set_string_member (args, "tls-creds", tls_creds);
  return args;
}

JsonObject *
ferry_qmp_args_block_export_add (const char *id, const char *node_name, const char *export_name)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "type", "nbd");
  json_object_set_string_member (args, "id", id);
  json_object_set_string_member (args, "node-name", node_name);
  json_object_set_string_member (args, "name", export_name);
  json_object_set_boolean_member (args, "writable", TRUE);
  return args;
}

JsonObject *
ferry_qmp_args_block_export_add_snapshot (const char *id, const char *node_name, const char *export_name,
                                          const char *bitmap_node, const char *bitmap)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "type", "nbd");
  json_object_set_string_member (args, "id", id);
  json_object_set_string_member (args, "node-name", node_name);
  json_object_set_string_member (args, "name", export_name);
  json_object_set_boolean_member (args, "writable", FALSE);
  if (bitmap != NULL)
    {
      /* The bitmap lives on the disk, below the snapshot node exported. */
      JsonArray *bitmaps = json_array_new ();
      JsonObject *entry = json_object_new ();
      json_object_set_string_member (entry, "node", bitmap_node);
      json_object_set_string_member (entry, "name", bitmap);
      json_array_add_object_element (bitmaps, entry);
      json_object_set_array_member (args, "bitmaps", bitmaps);
    }
  return args;
}

JsonObject *
ferry_qmp_args_block_export_del (const char *id)
{
  JsonObject *args = ferry_qmp_args_id ("id", id);
  /* Connected clients are cut: the export goes now, not when they leave. */
  json_object_set_string_member (args, "mode", "hard");
  return args;
}

JsonObject *
ferry_qmp_args_blockdev_add_snapshot (const char *node_name, const char *filename, const char *backing)
{
  JsonObject *args = json_object_new ();
  JsonObject *file = json_object_new ();
  json_object_set_string_member (file, "driver", "file");
  json_object_set_string_member (file, "filename", filename);
  json_object_set_string_member (args, "driver", "qcow2");
  json_object_set_string_member (args, "node-name", node_name);
  json_object_set_object_member (args, "file", file);
  /* Reads of blocks the guest has not overwritten since go to the disk. */
  json_object_set_string_member (args, "backing", backing);
  return args;
}

static void
add_action (JsonArray *actions, const char *type, JsonObject *data)
{
  JsonObject *action = json_object_new ();
  json_object_set_string_member (action, "type", type);
  json_object_set_object_member (action, "data", data);
  json_array_add_object_element (actions, action);
}

static JsonObject *
bitmap_args (const char *node, const char *name)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "node", node);
  json_object_set_string_member (args, "name", name);
  return args;
}

JsonObject *
ferry_qmp_args_snapshot_transaction (const FerryQmpSnapshotDisk *disks, guint n_disks)
{
  JsonObject *args = json_object_new ();
  JsonArray *actions = json_array_new ();
  for (guint i = 0; i < n_disks; i++)
    {
      const FerryQmpSnapshotDisk *disk = &disks[i];
      if (disk->new_bitmap != NULL)
        {
          JsonObject *add = bitmap_args (disk->node, disk->new_bitmap);
          json_object_set_boolean_member (add, "persistent", disk->persistent);
          add_action (actions, "block-dirty-bitmap-add", add);
        }
      if (disk->old_bitmap != NULL)
        add_action (actions, "block-dirty-bitmap-disable", bitmap_args (disk->node, disk->old_bitmap));
      JsonObject *backup = json_object_new ();
      json_object_set_string_member (backup, "job-id", disk->job_id);
      json_object_set_string_member (backup, "device", disk->node);
      json_object_set_string_member (backup, "target", disk->snapshot_node);
      /* Copy-before-write only: every block the guest overwrites from now
       * on keeps its old content in the snapshot node. */
      json_object_set_string_member (backup, "sync", "none");
      add_action (actions, "blockdev-backup", backup);
    }
  json_object_set_array_member (args, "actions", actions);
  return args;
}

JsonObject *
ferry_qmp_args_bitmap_remove (const char *node, const char *name)
{
  return bitmap_args (node, name);
}

JsonObject *
ferry_qmp_args_set_shutdown_action (gboolean pause)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "shutdown", pause ? "pause" : "poweroff");
  return args;
}

JsonObject *
ferry_qmp_args_blockdev_add_nbd (const char *node_name, const char *host, guint16 port,
                                 const char *export_name, const char *tls_creds, const char *tls_hostname)
{
  JsonObject *args = json_object_new ();
  JsonObject *server = json_object_new ();
  g_autofree char *port_text = g_strdup_printf ("%u", port);
  json_object_set_string_member (server, "type", "inet");
  json_object_set_string_member (server, "host", host);
  json_object_set_string_member (server, "port", port_text);
  json_object_set_string_member (args, "driver", "nbd");
  json_object_set_string_member (args, "node-name", node_name);
  json_object_set_object_member (args, "server", server);
  json_object_set_string_member (args, "export", export_name);
  if (tls_creds)
    json_object_set_string_member (args, "tls-creds", tls_creds);
  if (tls_hostname)
    json_object_set_string_member (args, "tls-hostname", tls_hostname);
  return args;
}

JsonObject *
ferry_qmp_args_blockdev_mirror (const char *job_id, const char *device, const char *target,
                                gboolean write_blocking, gint64 speed_bytes)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "job-id", job_id);
  json_object_set_string_member (args, "device", device);
  json_object_set_string_member (args, "target", target);
  json_object_set_string_member (args, "sync", "full");
  json_object_set_string_member (args, "copy-mode", write_blocking ? "write-blocking" : "background");
  if (speed_bytes > 0)
    json_object_set_int_member (args, "speed", speed_bytes);
  /* The job stays until ferry has read its end (and dismissed it). */
  json_object_set_boolean_member (args, "auto-dismiss", FALSE);
  return args;
}

JsonObject *
ferry_qmp_args_block_job_cancel (const char *job_id, gboolean force)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, "device", job_id);
  json_object_set_boolean_member (args, "force", force);
  return args;
}

JsonObject *
ferry_qmp_args_id (const char *member, const char *id)
{
  JsonObject *args = json_object_new ();
  json_object_set_string_member (args, member, id);
  return args;
}
