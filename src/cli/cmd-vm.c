/* ferry vm — define, inspect, start and stop VMs on an agent. */
#include <stdio.h>

#include "cli.h"

#include "ferry-error.h"
#include "jsonutil.h"

#define WAIT_POLL_MS 250

static char *
vm_path (const char *name, const char *suffix)
{
  g_autofree char *escaped = ferry_client_escape (name);
  return g_strdup_printf ("/v1/vms/%s%s", escaped, suffix ? suffix : "");
}

static int
print_reply (JsonObject *reply, const char *human)
{
  if (ferry_global.json)
    ferry_cli_print_json (reply);
  else if (human != NULL)
    g_print ("%s\n", human);
  return 0;
}

static int
vm_list (FerryClient *client)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", "/v1/vms", NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    return print_reply (reply, NULL);
  JsonArray *vms = json_object_get_array_member (reply, "vms");
  g_print ("%-24s %-14s %5s %9s  %s\n", "NAME", "STATE", "VCPUS", "MEMORY", "JOB");
  for (guint i = 0; vms != NULL && i < json_array_get_length (vms); i++)
    {
      JsonObject *vm = json_array_get_object_element (vms, i);
      g_autofree char *memory = g_strdup_printf ("%" G_GINT64_FORMAT " MiB",
                                                 ferry_json_object_int (vm, "memory_mib"));
      const char *job = ferry_json_object_string (vm, "job");
      g_print ("%-24s %-14s %5" G_GINT64_FORMAT " %9s  %s\n", ferry_json_object_string (vm, "name"),
               ferry_json_object_string (vm, "state"), ferry_json_object_int (vm, "vcpus"), memory,
               job ? job : "-");
    }
  return 0;
}

static int
vm_info (FerryClient *client, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = vm_path (name, NULL);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", path, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    return print_reply (reply, NULL);
  g_print ("Name:        %s\n", ferry_json_object_string (reply, "name"));
  g_print ("UUID:        %s\n", ferry_json_object_string (reply, "uuid"));
  g_print ("State:       %s\n", ferry_json_object_string (reply, "state"));
  g_print ("Persistent:  %s\n", json_object_get_boolean_member_with_default (reply, "persistent", FALSE) ? "yes" : "no");
  g_print ("vCPUs:       %" G_GINT64_FORMAT "\n", ferry_json_object_int (reply, "vcpus"));
  g_print ("Memory:      %" G_GINT64_FORMAT " MiB\n", ferry_json_object_int (reply, "memory_mib"));
  if (json_object_has_member (reply, "pid"))
    g_print ("QEMU pid:    %" G_GINT64_FORMAT "\n", ferry_json_object_int (reply, "pid"));
  JsonNode *rate_node = json_object_get_member (reply, "dirty_rate");
  if (rate_node != NULL && JSON_NODE_HOLDS_OBJECT (rate_node))
    {
      JsonObject *rate = json_node_get_object (rate_node);
      g_autoptr (GDateTime) when = g_date_time_new_from_unix_local (ferry_json_object_int (rate, "measured_at_us") / G_USEC_PER_SEC);
      g_autofree char *stamp = when ? g_date_time_format (when, "%F %T") : g_strdup ("?");
      g_print ("Dirty rate:  %" G_GINT64_FORMAT " MiB/s (measured %s over %" G_GINT64_FORMAT " s)\n",
               ferry_json_object_int (rate, "dirty_rate_mib_s"), stamp,
               ferry_json_object_int (rate, "period_s"));
    }
  if (json_object_has_member (reply, "qemu_last_words"))
    g_print ("QEMU said:   %s\n", ferry_json_object_string (reply, "qemu_last_words"));
  if (json_object_has_member (reply, "job"))
    g_print ("Job:         %s (%s)\n", ferry_json_object_string (reply, "job"),
             ferry_json_object_string (reply, "job_role"));
  JsonObject *spec = json_object_has_member (reply, "spec") ? json_object_get_object_member (reply, "spec") : NULL;
  if (spec != NULL)
    {
      g_print ("Machine:     %s, CPU %s\n", ferry_json_object_string (spec, "machine"),
               ferry_json_object_string (spec, "cpu"));
      JsonArray *disks = json_object_has_member (spec, "disks") ? json_object_get_array_member (spec, "disks") : NULL;
      for (guint i = 0; disks != NULL && i < json_array_get_length (disks); i++)
        {
          JsonObject *disk = json_array_get_object_element (disks, i);
          const char *volume = ferry_json_object_string (disk, "volume");
          if (volume != NULL)
            g_print ("Disk %u:      volume %s/%s (%s)\n", i, ferry_json_object_string (disk, "pool"),
                     volume, ferry_json_object_string (disk, "format"));
          else
            g_print ("Disk %u:      %s (%s)\n", i, ferry_json_object_string (disk, "path"),
                     ferry_json_object_string (disk, "format"));
        }
    }
  return 0;
}

static int
vm_define (FerryClient *client, const char *file)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *contents = NULL;
  gsize length = 0;
  if (!g_file_get_contents (file, &contents, &length, &error))
    return ferry_cli_fail (error);
  g_autoptr (GBytes) body = g_bytes_new_take (g_steal_pointer (&contents), length);
  const char *type = g_str_has_suffix (file, ".json") ? "application/json" : "application/yaml";
  g_autoptr (GBytes) reply = ferry_client_call_raw (client, "POST", "/v1/vms", type, body, &error);
  if (reply == NULL)
    {
      g_prefix_error (&error, "%s: ", file);
      return ferry_cli_fail (error);
    }
  gsize reply_length = 0;
  const char *data = g_bytes_get_data (reply, &reply_length);
  g_autoptr (JsonObject) object = ferry_json_parse_object (data, reply_length, 16 << 20, &error);
  if (object == NULL)
    return ferry_cli_fail (error);
  g_autofree char *human = g_strdup_printf ("VM '%s' defined", ferry_json_object_string (object, "name"));
  return print_reply (object, human);
}

/* Waits until the VM reaches state (or is gone when state is NULL). */
static gboolean
wait_for_state (FerryClient *client, const char *name, const char *state, guint timeout_s,
                GError **error)
{
  g_autofree char *path = vm_path (name, NULL);
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_s * G_USEC_PER_SEC;
  while (g_get_monotonic_time () < deadline)
    {
      g_autoptr (GError) local_error = NULL;
      g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", path, NULL, &local_error);
      if (reply == NULL && g_error_matches (local_error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
        return TRUE;  /* a transient VM disappears when it stops */
      if (reply == NULL)
        {
          g_propagate_error (error, g_steal_pointer (&local_error));
          return FALSE;
        }
      if (g_strcmp0 (ferry_json_object_string (reply, "state"), state) == 0)
        return TRUE;
      g_usleep (WAIT_POLL_MS * 1000);
    }
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT, "VM '%s' did not reach state %s in %u s",
               name, state, timeout_s);
  return FALSE;
}

static int
vm_action (FerryClient *client, const char *name, const char *action, JsonObject *body,
           const char *done_message, const char *wait_state, guint wait_s)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *suffix = g_strconcat ("/", action, NULL);
  g_autofree char *path = vm_path (name, suffix);
  g_autoptr (JsonObject) empty = json_object_new ();
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body ? body : empty, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (wait_state != NULL && !wait_for_state (client, name, wait_state, wait_s, &error))
    return ferry_cli_fail (error);
  g_autofree char *human = g_strdup_printf (done_message, name);
  return print_reply (reply, human);
}

/* The running QEMU's block nodes and the dirty bitmaps on them (a warm
 * migration's changed-block tracking shows here). */
static int
vm_block (FerryClient *client, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = vm_path (name, "/block");
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", path, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (reply);
      return 0;
    }
  JsonArray *nodes = json_object_get_array_member (reply, "nodes");
  g_print ("%-28s %-10s %s\n", "NODE", "DRIVER", "FILE / DIRTY BITMAPS");
  for (guint i = 0; nodes != NULL && i < json_array_get_length (nodes); i++)
    {
      JsonObject *node = json_array_get_object_element (nodes, i);
      g_print ("%-28s %-10s %s\n", ferry_json_object_string (node, "node"),
               ferry_json_object_string (node, "driver"), ferry_json_object_string (node, "file"));
      JsonArray *bitmaps = json_object_get_array_member (node, "dirty_bitmaps");
      for (guint j = 0; bitmaps != NULL && j < json_array_get_length (bitmaps); j++)
        {
          JsonObject *bitmap = json_array_get_object_element (bitmaps, j);
          g_autofree char *dirty = ferry_format_bytes (ferry_json_object_int (bitmap, "count"));
          const char *bitmap_name = ferry_json_object_string (bitmap, "name");
          /* A block job's own bitmaps have no name. */
          g_print ("%-28s %-10s bitmap %s: %s dirty%s%s\n", "", "", bitmap_name ? bitmap_name : "(a job's, unnamed)",
                   dirty,
                   json_object_get_boolean_member_with_default (bitmap, "recording", FALSE) ? ", recording" : "",
                   json_object_get_boolean_member_with_default (bitmap, "persistent", FALSE) ? ", persistent" : "");
        }
    }
  return 0;
}

static int
vm_console_log (FerryClient *client, const char *name, int bytes)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *suffix = g_strdup_printf ("/console?bytes=%d", bytes);
  g_autofree char *path = vm_path (name, suffix);
  g_autoptr (GBytes) reply = ferry_client_call_raw (client, "GET", path, NULL, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  gsize length = 0;
  const char *data = g_bytes_get_data (reply, &length);
  if (length > 0)
    fwrite (data, 1, length, stdout);
  return 0;
}

int
ferry_cmd_vm (int argc, char **argv)
{
  int timeout_s = 0;
  int bytes = 64 * 1024;
  gboolean no_force = FALSE;
  gboolean wait = FALSE;
  GOptionEntry entries[] = {
    { "timeout", 0, 0, G_OPTION_ARG_INT, &timeout_s, "shutdown: seconds before forcing (default: agent's)", "S" },
    { "no-force", 0, 0, G_OPTION_ARG_NONE, &no_force, "shutdown: never force", NULL },
    { "wait", 0, 0, G_OPTION_ARG_NONE, &wait, "shutdown/destroy: wait until shut off", NULL },
    { "bytes", 0, 0, G_OPTION_ARG_INT, &bytes, "console-log: bytes from the end (default 65536)", "N" },
    { NULL }
  };
  if (!ferry_cli_parse ("define FILE | list | info | start | shutdown | destroy | undefine | console-log | block NAME",
                        "Manage VMs on an agent.", entries, &argc, &argv))
    return 2;
  if (argc < 2)
    {
      g_printerr ("ferry vm: say define, list, info, start, shutdown, destroy, undefine, console-log or block\n");
      return 2;
    }
  const char *verb = argv[1];
  if (g_str_equal (verb, "list") ? argc != 2 : argc != 3)
    {
      g_printerr ("ferry vm %s: wrong number of arguments (see ferry vm --help)\n", verb);
      return 2;
    }
  if (timeout_s < 0 || timeout_s > 3600)
    {
      g_printerr ("ferry vm: --timeout must be between 1 and 3600\n");
      return 2;
    }
  if (bytes < 1 || bytes > 1024 * 1024)
    {
      g_printerr ("ferry vm: --bytes must be between 1 and 1048576\n");
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  const char *name = argc > 2 ? argv[2] : NULL;

  if (g_str_equal (verb, "list"))
    return vm_list (client);
  if (g_str_equal (verb, "define"))
    return vm_define (client, name);
  if (g_str_equal (verb, "info"))
    return vm_info (client, name);
  if (g_str_equal (verb, "start"))
    return vm_action (client, name, "start", NULL, "VM '%s' started", NULL, 0);
  if (g_str_equal (verb, "shutdown"))
    {
      g_autoptr (JsonObject) body = json_object_new ();
      if (timeout_s > 0)
        json_object_set_int_member (body, "timeout_s", timeout_s);
      json_object_set_boolean_member (body, "force", !no_force);
      return vm_action (client, name, "shutdown", body,
                        wait ? "VM '%s' shut off" : "VM '%s' is shutting down",
                        wait ? "shutoff" : NULL, timeout_s > 0 ? timeout_s + 30 : 3630);
    }
  if (g_str_equal (verb, "destroy"))
    return vm_action (client, name, "destroy", NULL, "VM '%s' destroyed", "shutoff", 60);
  if (g_str_equal (verb, "undefine"))
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *path = vm_path (name, NULL);
      g_autoptr (JsonObject) reply = ferry_client_call (client, "DELETE", path, NULL, &error);
      if (reply == NULL)
        return ferry_cli_fail (error);
      g_autofree char *human = g_strdup_printf ("VM '%s' undefined", name);
      return print_reply (reply, human);
    }
  if (g_str_equal (verb, "console-log"))
    return vm_console_log (client, name, bytes);
  if (g_str_equal (verb, "block"))
    return vm_block (client, name);
  g_printerr ("ferry vm: unknown verb '%s'\n", verb);
  return 2;
}
