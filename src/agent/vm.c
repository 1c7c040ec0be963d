/* ferry agent — one VM: its definition, its QEMU process and monitor. */
#include "agent.h"

#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "jsonutil.h"
#include "qemu-argv.h"

static const char *const vm_state_names[] = {
  [FERRY_VM_SHUTOFF] = "shutoff",
  [FERRY_VM_STARTING] = "starting",
  [FERRY_VM_RUNNING] = "running",
  [FERRY_VM_PAUSED] = "paused",
  [FERRY_VM_INCOMING] = "incoming",
  [FERRY_VM_MIGRATED] = "migrated",
  [FERRY_VM_SHUTTING_DOWN] = "shutting-down",
};

const char *
ferry_vm_state_to_string (FerryVmState state)
{
  return state < G_N_ELEMENTS (vm_state_names) ? vm_state_names[state] : "unknown";
}

FerryVmState
ferry_vm_state_from_string (const char *name)
{
  for (guint i = 0; name != NULL && i < G_N_ELEMENTS (vm_state_names); i++)
    if (g_str_equal (vm_state_names[i], name))
      return i;
  return FERRY_VM_SHUTOFF;
}

gboolean
ferry_vm_is_active (FerryVm *vm)
{
  return vm->state != FERRY_VM_SHUTOFF;
}

static void
vm_free (FerryVm *vm)
{
  if (vm == NULL)
    return;
  g_clear_handle_id (&vm->shutdown_timer, g_source_remove);
  if (vm->qmp != NULL)
    {
      g_clear_signal_handler (&vm->event_handler, vm->qmp);
      g_clear_signal_handler (&vm->closed_handler, vm->qmp);
      g_clear_object (&vm->qmp);
    }
  g_free (vm->name);
  ferry_vm_spec_free (vm->spec);
  g_free (vm->qemu_status);
  g_clear_pointer (&vm->last_dirty_rate, json_object_unref);
  g_free (vm->dir);
  g_free (vm->qmp_socket);
  g_free (vm->pid_file);
  g_free (vm->console_log);
  g_free (vm->qemu_log);
  g_free (vm->qemu_last_words);
  g_free (vm);
}

static FerryVm *
vm_new (FerryAgent *agent, FerryVmSpec *spec, gboolean persistent)
{
  FerryVm *vm = g_new0 (FerryVm, 1);
  vm->agent = agent;
  vm->name = g_strdup (spec->name);
  vm->spec = spec;
  vm->persistent = persistent;
  vm->state = FERRY_VM_SHUTOFF;
  vm->dir = g_build_filename (agent->config.state_dir, "vms", spec->name, NULL);
  /* Unix socket paths are limited to 108 bytes; keep the name short. */
  vm->qmp_socket = g_build_filename (vm->dir, "qmp.sock", NULL);
  vm->pid_file = g_build_filename (vm->dir, "qemu.pid", NULL);
  vm->console_log = g_build_filename (vm->dir, "console.log", NULL);
  vm->qemu_log = g_build_filename (vm->dir, "qemu.log", NULL);
  return vm;
}

/* Called by the agent on startup for each stored VM. */
FerryVm *ferry_vm_load (FerryAgent *agent, FerryStoreVm *stored, GError **error);

FerryVm *
ferry_vm_load (FerryAgent *agent, FerryStoreVm *stored, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  if (!json_parser_load_from_data (parser, stored->spec_json, -1, error))
    return NULL;
  FerryVmSpec *spec = ferry_vm_spec_from_json (json_parser_get_root (parser), error);
  if (spec == NULL)
    return NULL;
  FerryVm *vm = vm_new (agent, spec, stored->persistent);
  vm->state = ferry_vm_state_from_string (stored->state);
  vm->pid = (GPid) stored->pid;
  g_hash_table_replace (agent->vms, g_strdup (vm->name), vm);
  return vm;
}

void ferry_vm_table_free (gpointer data);
void
ferry_vm_table_free (gpointer data)
{
  vm_free (data);
}

FerryVm *
ferry_vm_lookup (FerryAgent *agent, const char *name, GError **error)
{
  FerryVm *vm = name ? g_hash_table_lookup (agent->vms, name) : NULL;
  if (vm == NULL)
    g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no VM named '%s' on this host",
                 name ? name : "(null)");
  return vm;
}

FerryVm *
ferry_vm_define (FerryAgent *agent, const FerryVmSpec *spec, gboolean persistent, GError **error)
{
  if (g_hash_table_contains (agent->vms, spec->name))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "a VM named '%s' is already defined on this host", spec->name);
      return NULL;
    }
  g_autofree char *spec_json = ferry_vm_spec_to_json_string (spec);
  FerryStoreVm stored = {
    .name = spec->name,
    .spec_json = spec_json,
    .state = (char *) ferry_vm_state_to_string (FERRY_VM_SHUTOFF),
    .pid = 0,
    .persistent = persistent,
  };
  if (!ferry_store_vm_insert (agent->store, &stored, error))
    return NULL;
  FerryVm *vm = vm_new (agent, ferry_vm_spec_copy (spec), persistent);
  if (g_mkdir_with_parents (vm->dir, 0700) < 0)
    {
      int saved = errno;
      ferry_store_vm_delete (agent->store, spec->name, NULL);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot create %s: %s", vm->dir,
                   g_strerror (saved));
      vm_free (vm);
      return NULL;
    }
  g_hash_table_replace (agent->vms, g_strdup (vm->name), vm);
  g_info ("vm %s: defined (%s)", vm->name, persistent ? "persistent" : "transient");
  return vm;
}

static void
remove_runtime_files (FerryVm *vm)
{
  g_unlink (vm->qmp_socket);
  g_unlink (vm->pid_file);
}

void
ferry_vm_forget (FerryVm *vm)
{
  FerryAgent *agent = vm->agent;
  g_autoptr (GError) error = NULL;
  if (!ferry_store_vm_delete (agent->store, vm->name, &error)
      && !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    g_warning ("vm %s: %s", vm->name, error->message);
  remove_runtime_files (vm);
  g_unlink (vm->console_log);
  g_unlink (vm->qemu_log);
  g_autofree char *previous_log = g_strconcat (vm->qemu_log, ".1", NULL);
  g_unlink (previous_log);
  g_rmdir (vm->dir);
  g_info ("vm %s: undefined", vm->name);
  g_hash_table_remove (agent->vms, vm->name);
}

gboolean
ferry_vm_undefine (FerryVm *vm, GError **error)
{
  if (ferry_vm_is_active (vm) || vm->job != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is %s; shut it off before undefining it", vm->name,
                   vm->job ? "migrating" : ferry_vm_state_to_string (vm->state));
      return FALSE;
    }
  ferry_vm_forget (vm);
  return TRUE;
}

void
ferry_vm_set_state (FerryVm *vm, FerryVmState state)
{
  g_autoptr (GError) error = NULL;
  if (vm->state == state)
    return;
  g_info ("vm %s: %s → %s", vm->name, ferry_vm_state_to_string (vm->state),
          ferry_vm_state_to_string (state));
  vm->state = state;
  if (state == FERRY_VM_SHUTOFF)
    vm->pid = 0;
  if (!ferry_store_vm_set_runtime (vm->agent->store, vm->name, ferry_vm_state_to_string (state),
                                   vm->pid, &error))
    g_warning ("vm %s: cannot persist state: %s", vm->name, error->message);
  /* A cold migration waits for its guest to stop. */
  if (vm->job != NULL && vm->job->cold != NULL && vm->job->role == FERRY_JOB_ROLE_SOURCE)
    mig_cold_src_on_vm_state (vm->job, state);
}

/* Does pid still belong to this VM's QEMU? Guards against pid reuse after
 * a host reboot or a long agent outage. */
static gboolean
pid_is_our_qemu (FerryVm *vm, GPid pid)
{
  if (pid <= 0)
    return FALSE;
  g_autofree char *path = g_strdup_printf ("/proc/%d/cmdline", pid);
  g_autofree char *cmdline = NULL;
  gsize length = 0;
  if (!g_file_get_contents (path, &cmdline, &length, NULL))
    return FALSE;
  for (gsize i = 0; i < length; i++)
    if (cmdline[i] == '\0')
      cmdline[i] = ' ';
  return strstr (cmdline, vm->qmp_socket) != NULL;
}

void
ferry_vm_kill (FerryVm *vm)
{
  if (pid_is_our_qemu (vm, vm->pid))
    kill (vm->pid, SIGKILL);
}

#define LAST_WORDS_LINES 3
#define LAST_WORDS_BYTES 4096

/* The last few lines of QEMU's log, joined with "; " (NULL when empty). */
static char *
read_last_words (FerryVm *vm)
{
  g_autofree char *text = NULL;
  gsize length = 0;
  if (!g_file_get_contents (vm->qemu_log, &text, &length, NULL) || length <= vm->qemu_log_mark)
    return NULL;
  const char *tail = text + MAX (vm->qemu_log_mark, length > LAST_WORDS_BYTES ? length - LAST_WORDS_BYTES : 0);
  g_auto (GStrv) lines = g_strsplit (tail, "\n", -1);
  g_autoptr (GPtrArray) kept = g_ptr_array_new ();
  for (guint i = g_strv_length (lines); i-- > 0 && kept->len < LAST_WORDS_LINES;)
    {
      g_strstrip (lines[i]);
      if (*lines[i] != '\0')
        g_ptr_array_insert (kept, 0, lines[i]);
    }
  if (kept->len == 0)
    return NULL;
  g_ptr_array_add (kept, NULL);
  return g_strjoinv ("; ", (char **) kept->pdata);
}

void
ferry_vm_mark_log (FerryVm *vm)
{
  GStatBuf st;
  vm->qemu_log_mark = vm->qemu_log != NULL && g_stat (vm->qemu_log, &st) == 0 ? (gsize) st.st_size : 0;
}

char *
ferry_vm_exit_reason (FerryVm *vm, const char *verb)
{
  if (vm == NULL || vm->qemu_last_words == NULL)
    return g_strdup (verb);
  return g_strdup_printf ("%s: %s", verb, vm->qemu_last_words);
}

static void
on_qmp_closed (FerryQmp *qmp, gpointer user_data)
{
  FerryVm *vm = user_data;
  g_free (vm->qemu_last_words);
  vm->qemu_last_words = read_last_words (vm);
  vm->qemu_log_mark = 0; /* the next QEMU starts a new log */
  if (vm->qemu_last_words != NULL)
    g_info ("vm %s: QEMU exited (monitor closed); its last words: %s", vm->name, vm->qemu_last_words);
  else
    g_info ("vm %s: QEMU exited (monitor closed)", vm->name);
  g_clear_handle_id (&vm->shutdown_timer, g_source_remove);
  g_clear_signal_handler (&vm->event_handler, vm->qmp);
  g_clear_signal_handler (&vm->closed_handler, vm->qmp);
  g_clear_object (&vm->qmp);
  remove_runtime_files (vm);
  vm->exited_while_running = vm->state == FERRY_VM_RUNNING;
  ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);

  FerryJob *job = vm->job;
  /* A cold migration stopped this guest itself (ferry_vm_set_state told it). */
  if (job != NULL && job->cold == NULL)
    {
      if (job->role == FERRY_JOB_ROLE_DESTINATION)
        mig_dst_on_vm_gone (job);
      else
        mig_src_on_qmp_event (job, "FERRY_QEMU_EXITED", NULL);
      return;
    }
  if (!vm->persistent)
    ferry_vm_forget (vm);
}

static void
on_qmp_event (FerryQmp *qmp, const char *name, JsonObject *data, gint64 timestamp_us,
              gpointer user_data)
{
  FerryVm *vm = user_data;

  g_debug ("vm %s: event %s", vm->name, name);
  if (g_str_equal (name, "STOP"))
    {
      if (vm->state == FERRY_VM_RUNNING && vm->job == NULL)
        ferry_vm_set_state (vm, FERRY_VM_PAUSED);
    }
  else if (g_str_equal (name, "RESUME"))
    {
      if (vm->state == FERRY_VM_PAUSED || vm->state == FERRY_VM_MIGRATED
          || vm->state == FERRY_VM_STARTING)
        ferry_vm_set_state (vm, FERRY_VM_RUNNING);
    }
  else if (g_str_equal (name, "SHUTDOWN"))
    {
      if (vm->state != FERRY_VM_MIGRATED)
        ferry_vm_set_state (vm, FERRY_VM_SHUTTING_DOWN);
    }
  mig_storage_src_reap (vm, name, data);
  if (vm->job != NULL && vm->job->cold != NULL && vm->job->role == FERRY_JOB_ROLE_SOURCE)
    mig_warm_src_on_qmp_event (vm->job, name, data, timestamp_us);
  if (vm->job == NULL || vm->job->cold != NULL)
    return;
  if (vm->job->role == FERRY_JOB_ROLE_SOURCE)
    mig_src_on_qmp_event (vm->job, name, data);
  else
    mig_dst_on_qmp_event (vm->job, name, data);
}

static void
attach_monitor (FerryVm *vm, FerryQmp *qmp)
{
  vm->qmp = qmp;
  vm->event_handler = g_signal_connect (qmp, "event", G_CALLBACK (on_qmp_event), vm);
  vm->closed_handler = g_signal_connect (qmp, "closed", G_CALLBACK (on_qmp_closed), vm);
}

static FerryVmState
state_for_run_status (const char *status)
{
  if (g_str_equal (status, "running"))
    return FERRY_VM_RUNNING;
  if (g_str_equal (status, "inmigrate"))
    return FERRY_VM_INCOMING;
  if (g_str_equal (status, "postmigrate"))
    return FERRY_VM_MIGRATED;
  if (g_str_equal (status, "shutdown"))
    return FERRY_VM_SHUTTING_DOWN;
  return FERRY_VM_PAUSED;
}

/* QEMU answers its monitor within milliseconds; one that does not is
 * hung, and must not hang the agent with it. */
#define MONITOR_CONNECT_TIMEOUT_S 30

static gboolean
on_connect_deadline (gpointer user_data)
{
  g_cancellable_cancel (G_CANCELLABLE (user_data));
  return G_SOURCE_REMOVE;
}

static void
destroy_deadline (gpointer source)
{
  g_source_destroy (source);
  g_source_unref (source);
}

/* A cancellable that cancels itself after timeout_s. */
static GCancellable *
cancellable_with_deadline (guint timeout_s)
{
  GCancellable *cancellable = g_cancellable_new ();
  GSource *source = g_timeout_source_new_seconds (timeout_s);
  g_source_set_callback (source, on_connect_deadline, g_object_ref (cancellable), g_object_unref);
  g_source_attach (source, NULL);
  g_object_set_data_full (G_OBJECT (cancellable), "deadline", source, destroy_deadline);
  return cancellable;
}

/* The connect finished: the deadline must not fire into a later use. */
static void
disarm_deadline (GTask *task)
{
  GCancellable *deadline = g_object_get_data (G_OBJECT (task), "deadline");
  if (deadline != NULL)
    g_object_set_data (G_OBJECT (deadline), "deadline", NULL);
  g_object_set_data (G_OBJECT (task), "deadline", NULL);
}

/* Takes QEMU's query-status reply as the VM's state. */
static void
apply_run_status (FerryVm *vm, JsonNode *reply)
{
  const char *status = JSON_NODE_HOLDS_OBJECT (reply)
                       ? ferry_json_object_string (json_node_get_object (reply), "status") : NULL;
  g_free (vm->qemu_status);
  vm->qemu_status = g_strdup (status ? status : "unknown");
  ferry_vm_set_state (vm, state_for_run_status (vm->qemu_status));
}

/* ---- start ------------------------------------------------------------------ */

/* The spec QEMU gets: volume disks become paths on this host. The stored
 * spec keeps the volume, so a migration destination resolves it in its
 * own pool. */
static FerryVmSpec *
spec_with_resolved_disks (FerryVm *vm, GError **error)
{
  if (!ferry_spec_check_disks (vm->agent, vm->spec, error))
    {
      g_prefix_error (error, "VM '%s': ", vm->name);
      return NULL;
    }
  g_autoptr (FerryVmSpec) resolved = ferry_vm_spec_copy (vm->spec);
  for (guint i = 0; i < resolved->disks->len; i++)
    {
      FerryDiskSpec *disk = g_ptr_array_index (resolved->disks, i);
      if (disk->volume == NULL)
        continue;
      g_autofree char *path = ferry_disk_resolve_path (vm->agent, disk, error);
      if (path == NULL)
        {
          g_prefix_error (error, "VM '%s': disks[%u]: ", vm->name, i);
          return NULL;
        }
      g_free (disk->path);
      disk->path = g_steal_pointer (&path);
      g_clear_pointer (&disk->pool, g_free);
      g_clear_pointer (&disk->volume, g_free);
    }
  return g_steal_pointer (&resolved);
}

/* A GTask's source object must be a GObject; the VM rides in its data. */
static FerryVm *
task_vm (GTask *task)
{
  return g_object_get_data (G_OBJECT (task), "vm");
}

static void
start_fail (GTask *task, GError *error)
{
  FerryVm *vm = task_vm (task);
  ferry_vm_kill (vm);
  remove_runtime_files (vm);
  ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
  g_task_return_error (task, error);
}

static void
on_start_status (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  FerryVm *vm = task_vm (task);
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (reply == NULL)
    {
      g_prefix_error (&error, "VM '%s': ", vm->name);
      start_fail (task, error);
      return;
    }
  apply_run_status (vm, reply);
  g_task_return_boolean (task, TRUE);
}

static void
on_start_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  FerryVm *vm = task_vm (task);
  GError *error = NULL;
  FerryQmp *qmp = ferry_qmp_connect_finish (result, &error);
  disarm_deadline (task);
  if (qmp == NULL)
    {
      g_prefix_error (&error, "VM '%s': cannot connect to QEMU's monitor: ", vm->name);
      start_fail (task, error);
      return;
    }
  attach_monitor (vm, qmp);
  GCancellable *cancellable = g_task_get_cancellable (task);
  ferry_qmp_execute_async (qmp, "query-status", NULL, cancellable, on_start_status,
                           g_steal_pointer (&task));
}

static void
on_start_daemonized (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  FerryVm *vm = task_vm (task);
  GSubprocess *process = G_SUBPROCESS (source);
  g_autofree char *stderr_text = NULL;
  GError *error = NULL;

  if (!g_subprocess_communicate_utf8_finish (process, result, NULL, &stderr_text, &error))
    {
      start_fail (task, error);
      return;
    }
  if (!g_subprocess_get_if_exited (process) || g_subprocess_get_exit_status (process) != 0)
    {
      /* Once it parsed -D, QEMU reports errors in its log, not on stderr. */
      g_free (vm->qemu_last_words);
      vm->qemu_last_words = read_last_words (vm);
      g_strstrip (stderr_text);
      const char *message = stderr_text && *stderr_text ? stderr_text
                            : vm->qemu_last_words ? vm->qemu_last_words : "no message";
      start_fail (task, g_error_new (FERRY_ERROR, FERRY_ERROR_QEMU,
                                     "VM '%s': QEMU failed to start: %s", vm->name, message));
      return;
    }
  g_autofree char *pid_text = NULL;
  if (!g_file_get_contents (vm->pid_file, &pid_text, NULL, &error))
    {
      g_prefix_error (&error, "VM '%s': QEMU started but left no pid file: ", vm->name);
      start_fail (task, error);
      return;
    }
  vm->pid = (GPid) g_ascii_strtoll (pid_text, NULL, 10);
  vm->last_dirty_sync_us = 0;
  /* Persist the pid before anything else, so a restarted agent finds it. */
  g_autoptr (GError) store_error = NULL;
  if (!ferry_store_vm_set_runtime (vm->agent->store, vm->name, ferry_vm_state_to_string (vm->state),
                                   vm->pid, &store_error))
    g_warning ("vm %s: %s", vm->name, store_error->message);
  GCancellable *deadline = cancellable_with_deadline (MONITOR_CONNECT_TIMEOUT_S);
  g_object_set_data_full (G_OBJECT (task), "deadline", deadline, g_object_unref);
  ferry_qmp_connect_async (vm->qmp_socket, deadline, on_start_connected, g_steal_pointer (&task));
}

void
ferry_vm_start_async (FerryVm *vm, const FerryVmStartOptions *options, GCancellable *cancellable,
                      GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  g_task_set_source_tag (task, ferry_vm_start_async);
  g_object_set_data (G_OBJECT (task), "vm", vm);
  GError *error = NULL;

  if (vm->state != FERRY_VM_SHUTOFF)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT, "VM '%s' is already %s",
                               vm->name, ferry_vm_state_to_string (vm->state));
      return;
    }
  if (vm->job != NULL && vm->job->role == FERRY_JOB_ROLE_SOURCE)
    {
      /* Its disks are being copied: a guest writing to them now would
       * make the copy a different VM. */
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "VM '%s' is being migrated (job %" G_GINT64_FORMAT "); abort the "
                               "migration first", vm->name, vm->job->id);
      return;
    }
  if (g_mkdir_with_parents (vm->dir, 0700) < 0)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot create %s: %s",
                               vm->dir, g_strerror (errno));
      return;
    }
  remove_runtime_files (vm);
  /* QEMU truncates its log: keep the previous run's last words. */
  g_autofree char *previous_log = g_strconcat (vm->qemu_log, ".1", NULL);
  if (g_file_test (vm->qemu_log, G_FILE_TEST_EXISTS) && rename (vm->qemu_log, previous_log) < 0)
    g_warning ("vm %s: cannot keep %s: %s", vm->name, vm->qemu_log, g_strerror (errno));

  g_autofree char *machine = ferry_qemu_resolve_machine (vm->agent->config.qemu_binary,
                                                         vm->spec->machine, &error);
  if (machine == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  /* The resolved type is what a migration destination must use. */
  g_free (vm->spec->machine);
  vm->spec->machine = g_steal_pointer (&machine);

  g_autoptr (FerryVmSpec) launch_spec = spec_with_resolved_disks (vm, &error);
  if (launch_spec == NULL)
    {
      g_task_return_error (task, error);
      return;
    }

  FerryQemuLaunch launch = {
    .qemu_binary = vm->agent->config.qemu_binary,
    .accel = vm->agent->accel,
    .qmp_socket = vm->qmp_socket,
    .pid_file = vm->pid_file,
    .console_log = vm->console_log,
    .qemu_log = vm->qemu_log,
    .incoming = options->incoming,
    .start_paused = options->paused || options->incoming,
    .pad_ram_for_tcg_dirty_sync = vm->agent->pad_ram_for_tcg,
  };
  g_auto (GStrv) argv = ferry_qemu_argv_build (launch_spec, &launch);
  g_autofree char *command_line = g_strjoinv (" ", argv);
  g_debug ("vm %s: %s", vm->name, command_line);

  g_autoptr (GSubprocessLauncher) launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDIN_INHERIT
                                                                        | G_SUBPROCESS_FLAGS_STDERR_PIPE
                                                                        | G_SUBPROCESS_FLAGS_STDOUT_SILENCE);
  g_auto (GStrv) agent_environ = g_get_environ ();
  g_auto (GStrv) qemu_environ = ferry_qemu_environ ((const char *const *) agent_environ);
  g_subprocess_launcher_set_environ (launcher, qemu_environ);
  g_autoptr (GSubprocess) process = g_subprocess_launcher_spawnv (launcher, (const char *const *) argv, &error);
  if (process == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  ferry_vm_set_state (vm, FERRY_VM_STARTING);
  /* With -daemonize the launcher exits once QEMU is initialised and its
   * monitor socket listens, so its exit is the readiness event. */
  g_subprocess_communicate_utf8_async (process, NULL, cancellable, on_start_daemonized,
                                       g_steal_pointer (&task));
}

gboolean
ferry_vm_start_finish (FerryVm *vm, GAsyncResult *result, GError **error)
{
  return g_task_propagate_boolean (G_TASK (result), error);
}


/* ---- reattach --------------------------------------------------------------- */

static void
on_reattach_status (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  FerryVm *vm = g_object_get_data (G_OBJECT (task), "vm");
  GError *error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (reply == NULL)
    {
      g_task_return_error (task, error);
      return;
    }
  apply_run_status (vm, reply);
  g_task_return_boolean (task, TRUE);
}

static void
on_reattach_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  FerryVm *vm = g_object_get_data (G_OBJECT (task), "vm");
  GError *error = NULL;
  FerryQmp *qmp = ferry_qmp_connect_finish (result, &error);
  disarm_deadline (task);
  if (qmp == NULL)
    {
      ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
      g_task_return_error (task, error);
      return;
    }
  attach_monitor (vm, qmp);
  ferry_qmp_execute_async (qmp, "query-status", NULL, NULL, on_reattach_status,
                           g_steal_pointer (&task));
}

void
ferry_vm_reattach_async (FerryVm *vm, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, NULL, callback, user_data);
  g_object_set_data (G_OBJECT (task), "vm", vm);
  if (!pid_is_our_qemu (vm, vm->pid))
    {
      remove_runtime_files (vm);
      ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                               "VM '%s': QEMU (pid %d) is gone", vm->name, vm->pid);
      return;
    }
  GCancellable *deadline = cancellable_with_deadline (MONITOR_CONNECT_TIMEOUT_S);
  g_object_set_data_full (G_OBJECT (task), "deadline", deadline, g_object_unref);
  ferry_qmp_connect_async (vm->qmp_socket, deadline, on_reattach_connected, g_steal_pointer (&task));
}

gboolean
ferry_vm_reattach_finish (FerryVm *vm, GAsyncResult *result, GError **error)
{
  return g_task_propagate_boolean (G_TASK (result), error);
}

/* ---- stop ------------------------------------------------------------------- */

static void
on_command_logged (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autofree char *what = user_data;
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonNode) reply = ferry_qmp_execute_finish (FERRY_QMP (source), result, &error);
  if (reply == NULL && !g_error_matches (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE))
    g_warning ("%s: %s", what, error->message);
}

static gboolean
on_shutdown_timeout (gpointer user_data)
{
  FerryVm *vm = user_data;
  vm->shutdown_timer = 0;
  g_info ("vm %s: guest did not power off in time; forcing", vm->name);
  ferry_vm_destroy (vm, NULL);
  return G_SOURCE_REMOVE;
}

static gboolean
require_running_qemu (FerryVm *vm, GError **error)
{
  if (vm->qmp == NULL || vm->state == FERRY_VM_SHUTOFF)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "VM '%s' is not running", vm->name);
      return FALSE;
    }
  return TRUE;
}

gboolean
ferry_vm_shutdown (FerryVm *vm, guint timeout_s, GError **error)
{
  if (!require_running_qemu (vm, error))
    return FALSE;
  /* A cold migration shuts its guest down itself. */
  if (vm->job != NULL && vm->job->cold == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "VM '%s' is migrating; abort the job first (ferry job abort %s)", vm->name,
                   vm->name);
      return FALSE;
    }
  ferry_qmp_execute_async (vm->qmp, "system_powerdown", NULL, NULL, on_command_logged,
                           g_strdup_printf ("vm %s: system_powerdown", vm->name));
  ferry_vm_set_state (vm, FERRY_VM_SHUTTING_DOWN);
  g_clear_handle_id (&vm->shutdown_timer, g_source_remove);
  if (timeout_s > 0)
    vm->shutdown_timer = g_timeout_add_seconds (timeout_s, on_shutdown_timeout, vm);
  return TRUE;
}

gboolean
ferry_vm_destroy (FerryVm *vm, GError **error)
{
  if (vm->qmp == NULL)
    {
      if (pid_is_our_qemu (vm, vm->pid))
        {
          kill (vm->pid, SIGKILL);
          ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
          return TRUE;
        }
      return require_running_qemu (vm, error);
    }
  ferry_vm_set_state (vm, FERRY_VM_SHUTTING_DOWN);
  /* quit makes QEMU exit at once; the monitor closing is the completion. */
  ferry_qmp_execute_async (vm->qmp, "quit", NULL, NULL, on_command_logged,
                           g_strdup_printf ("vm %s: quit", vm->name));
  return TRUE;
}

JsonObject *
ferry_vm_to_json (FerryVm *vm, gboolean with_spec)
{
  JsonObject *object = json_object_new ();
  json_object_set_string_member (object, "name", vm->name);
  json_object_set_string_member (object, "uuid", vm->spec->uuid);
  json_object_set_string_member (object, "state", ferry_vm_state_to_string (vm->state));
  json_object_set_boolean_member (object, "persistent", vm->persistent);
  json_object_set_int_member (object, "vcpus", vm->spec->vcpus);
  json_object_set_int_member (object, "memory_mib", (gint64) vm->spec->memory_mib);
  if (vm->pid > 0 && vm->state != FERRY_VM_SHUTOFF)
    json_object_set_int_member (object, "pid", vm->pid);
  if (vm->job != NULL)
    {
      json_object_set_string_member (object, "job", ferry_job_state_to_string (vm->job->state));
      json_object_set_string_member (object, "job_role",
                                     vm->job->role == FERRY_JOB_ROLE_SOURCE ? "source" : "destination");
    }
  if (vm->last_dirty_rate != NULL)
    json_object_set_object_member (object, "dirty_rate", json_object_ref (vm->last_dirty_rate));
  if (vm->state == FERRY_VM_SHUTOFF && vm->qemu_last_words != NULL)
    json_object_set_string_member (object, "qemu_last_words", vm->qemu_last_words);
  if (with_spec)
    json_object_set_member (object, "spec", ferry_vm_spec_to_json (vm->spec));
  return object;
}
