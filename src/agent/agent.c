/* ferry agent — process-wide state: store, TLS, VM table, recovery. */
#include "agent.h"

#include <errno.h>

#include "pki.h"
#include "qemu-argv.h"

FerryVm *ferry_vm_load (FerryAgent *agent, FerryStoreVm *stored, GError **error);
void ferry_vm_table_free (gpointer data);
void ferry_job_table_free (gpointer data);

/* --listen ADDRESS:PORT, checked at start-up; the API and the disk exports
 * listen on that address. */
static gboolean
parse_listen (FerryAgent *agent, GError **error)
{
  const char *listen = agent->config.listen;
  const char *colon = listen ? strrchr (listen, ':') : NULL;
  guint64 port = 0;
  if (colon == NULL || !g_ascii_string_to_unsigned (colon + 1, 10, 1, 65535, &port, NULL))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--listen: '%s' is not ADDRESS:PORT", listen ? listen : "");
      return FALSE;
    }
  g_autofree char *host = g_strndup (listen, colon - listen);
  if (host[0] == '[' && host[strlen (host) - 1] == ']')
    {
      char *inner = g_strndup (host + 1, strlen (host) - 2);
      g_free (host);
      host = inner;
    }
  g_autoptr (GInetAddress) inet = g_inet_address_new_from_string (host);
  if (inet == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--listen: '%s' is not an IP address", host);
      return FALSE;
    }
  agent->listen_host = g_steal_pointer (&host);
  agent->listen_port = (guint16) port;
  return TRUE;
}

FerryAgent *
ferry_agent_new (const FerryAgentConfig *config, GError **error)
{
  g_autoptr (FerryAgent) agent = g_new0 (FerryAgent, 1);

  agent->config = *config;
  agent->config.state_dir = g_strdup (config->state_dir);
  agent->config.tls_dir = g_strdup (config->tls_dir);
  agent->config.listen = g_strdup (config->listen);
  agent->config.host_name = g_strdup (config->host_name);
  agent->config.qemu_binary = g_strdup (config->qemu_binary ? config->qemu_binary : FERRY_QEMU_BINARY);
  agent->config.accel = g_strdup (config->accel ? config->accel : "auto");
  agent->config.pools = g_strdupv (config->pools);
  agent->pools = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                        (GDestroyNotify) ferry_pool_free);
  agent->vms = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, ferry_vm_table_free);
  agent->jobs = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, ferry_job_table_free);

  if (!parse_listen (agent, error))
    return NULL;
  if (g_str_equal (agent->config.accel, "auto"))
    agent->accel = ferry_qemu_detect_accel ();
  else if (g_str_equal (agent->config.accel, "kvm") || g_str_equal (agent->config.accel, "tcg"))
    agent->accel = g_str_equal (agent->config.accel, "kvm") ? "kvm" : "tcg";
  else
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--accel: must be auto, kvm or tcg (got '%s')", agent->config.accel);
      return NULL;
    }

  agent->pad_ram_for_tcg = g_str_equal (agent->accel, "tcg")
                           && ferry_qemu_has_tcg_dirty_sync_bug (agent->config.qemu_binary);
  if (agent->pad_ram_for_tcg)
    g_info ("TCG with QEMU < 9: guest RAM padded by 8 KiB to avoid QEMU's lost-dirty-page bug");

  if (g_mkdir_with_parents (agent->config.state_dir, 0700) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot create state directory %s: %s",
                   agent->config.state_dir, g_strerror (errno));
      return NULL;
    }
  if (!ferry_pools_init (agent, error))
    return NULL;
  agent->tls = ferry_tls_load (agent->config.tls_dir, error);
  if (agent->tls == NULL)
    return NULL;
  if (agent->config.host_name == NULL)
    agent->config.host_name = g_strdup (agent->tls->common_name ? agent->tls->common_name
                                                                : g_get_host_name ());
  /* QEMU's migration TLS uses the host certificate, in QEMU's layout. */
  g_autofree char *qemu_tls = g_build_filename (agent->config.state_dir, "qemu-tls", NULL);
  if (!ferry_pki_write_qemu_creds_dir (agent->config.tls_dir, qemu_tls, error))
    return NULL;

  g_autofree char *db = g_build_filename (agent->config.state_dir, "ferryd.db", NULL);
  agent->store = ferry_store_open (db, error);
  if (agent->store == NULL)
    return NULL;

  agent->peer_session = soup_session_new_with_options ("tls-database", agent->tls->ca_database,
                                                       "user-agent", "ferryd/" FERRY_VERSION_STRING,
                                                       "max-conns-per-host", 8,
                                                       NULL);

  g_autoptr (GPtrArray) stored = ferry_store_vm_list (agent->store, error);
  if (stored == NULL)
    return NULL;
  for (guint i = 0; i < stored->len; i++)
    {
      g_autoptr (GError) local_error = NULL;
      FerryStoreVm *row = g_ptr_array_index (stored, i);
      if (ferry_vm_load (agent, row, &local_error) == NULL)
        g_warning ("vm %s: stored definition unreadable, skipped: %s", row->name, local_error->message);
    }
  return g_steal_pointer (&agent);
}

void
ferry_agent_free (FerryAgent *agent)
{
  if (agent == NULL)
    return;
  ferry_api_drop_waiters (agent);
  g_clear_pointer (&agent->job_waiters, g_ptr_array_unref);
  if (agent->server)
    soup_server_disconnect (agent->server);
  g_clear_object (&agent->server);
  g_clear_object (&agent->peer_session);
  g_clear_pointer (&agent->jobs, g_hash_table_unref);
  g_clear_pointer (&agent->vms, g_hash_table_unref);
  g_clear_pointer (&agent->pools, g_hash_table_unref);
  ferry_store_free (agent->store);
  ferry_tls_free (agent->tls);
  g_free (agent->config.state_dir);
  g_free (agent->config.tls_dir);
  g_free (agent->config.listen);
  g_free (agent->listen_host);
  g_free (agent->config.host_name);
  g_free (agent->config.qemu_binary);
  g_free (agent->config.accel);
  g_strfreev (agent->config.pools);
  g_free (agent);
}

static void
on_reattached (GObject *source, GAsyncResult *result, gpointer user_data)
{
  guint *pending = user_data;
  (*pending)--;
}

gboolean
ferry_agent_recover (FerryAgent *agent, GError **error)
{
  guint pending = 0;
  GHashTableIter iter;
  gpointer value;
  g_autoptr (GPtrArray) vms = g_ptr_array_new ();

  g_hash_table_iter_init (&iter, agent->vms);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    g_ptr_array_add (vms, value);

  for (guint i = 0; i < vms->len; i++)
    {
      FerryVm *vm = g_ptr_array_index (vms, i);
      if (vm->pid <= 0)
        {
          ferry_vm_set_state (vm, FERRY_VM_SHUTOFF);
          continue;
        }
      pending++;
      ferry_vm_reattach_async (vm, on_reattached, &pending);
    }
  /* Recovery needs every monitor back before judging jobs; the main loop
   * does not run yet, so drive the context here (bounded by QMP's own
   * connect behaviour: a dead socket fails at once). */
  gint64 deadline = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
  while (pending > 0 && g_get_monotonic_time () < deadline)
    g_main_context_iteration (NULL, TRUE);

  for (guint i = 0; i < vms->len; i++)
    {
      FerryVm *vm = g_ptr_array_index (vms, i);
      g_info ("vm %s: %s after restart%s", vm->name, ferry_vm_state_to_string (vm->state),
              vm->state != FERRY_VM_SHUTOFF ? " (reattached to its QEMU)" : "");
    }
  /* From here on VMs may be freed: forget the list. */
  g_ptr_array_set_size (vms, 0);

  g_autoptr (GPtrArray) jobs = ferry_store_job_list_unfinished (agent->store, ferry_job_terminal_states,
                                                                error);
  if (jobs == NULL)
    return FALSE;
  for (guint i = 0; i < jobs->len; i++)
    {
      FerryStoreJob *stored = g_ptr_array_index (jobs, i);
      g_info ("job %" G_GINT64_FORMAT " (%s, %s) was %s when the agent stopped; resolving",
              stored->id, stored->vm_name, stored->role, stored->state);
      gboolean cold = g_strcmp0 (stored->kind, "migrate-offline") == 0 && stored->options_json != NULL
                      && strstr (stored->options_json, "\"copy_storage\":true") != NULL;
      if (g_str_equal (stored->role, "source"))
        (cold ? mig_cold_src_recover : mig_src_recover) (agent, stored);
      else
        (cold ? mig_cold_dst_recover : mig_dst_recover) (agent, stored);
    }

  /* Transient VMs whose QEMU is gone have no reason to exist. (Job
   * recovery may have freed VMs, so walk the table, not the list above.) */
  g_autoptr (GPtrArray) stale = g_ptr_array_new ();
  g_hash_table_iter_init (&iter, agent->vms);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    {
      FerryVm *vm = value;
      if (!vm->persistent && vm->state == FERRY_VM_SHUTOFF && vm->job == NULL)
        g_ptr_array_add (stale, vm);
    }
  for (guint i = 0; i < stale->len; i++)
    ferry_vm_forget (g_ptr_array_index (stale, i));

  /* Mirrors whose removal was pending when the agent stopped. */
  g_hash_table_iter_init (&iter, agent->vms);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    mig_storage_src_sweep (value);
  return TRUE;
}
