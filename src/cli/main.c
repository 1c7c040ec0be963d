/* ferry — the command line. */
#include <locale.h>
#include <stdio.h>

#include "cli.h"
#include "ferry-config.h"
#include "ferry-error.h"
#include "jsonutil.h"

FerryGlobalOptions ferry_global;

GOptionEntry ferry_global_entries[] = {
  { "connect", 'c', 0, G_OPTION_ARG_STRING, &ferry_global.connect,
    "Agent URL (default: $FERRY_URL, config file, https://127.0.0.1:7711)", "URL" },
  { "tls-dir", 0, 0, G_OPTION_ARG_FILENAME, &ferry_global.tls_dir,
    "Client TLS directory (default: $FERRY_TLS_DIR, config file, ~/.config/ferry/tls)", "DIR" },
  { "json", 0, 0, G_OPTION_ARG_NONE, &ferry_global.json, "Machine-readable JSON output", NULL },
  { NULL }
};

gboolean
ferry_cli_parse (const char *usage, const char *summary, GOptionEntry *entries, int *argc,
                 char ***argv)
{
  g_autoptr (GOptionContext) context = g_option_context_new (usage);
  g_autoptr (GError) error = NULL;
  g_option_context_set_summary (context, summary);
  g_option_context_add_main_entries (context, ferry_global_entries, NULL);
  if (entries != NULL)
    g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, argc, argv, &error))
    {
      g_printerr ("ferry: %s\n", error->message);
      return FALSE;
    }
  return TRUE;
}

FerryClient *
ferry_cli_client (void)
{
  g_autoptr (GError) error = NULL;
  FerryClient *client = ferry_client_new (ferry_global.connect, ferry_global.tls_dir,
                                          ferry_global.json, &error);
  if (client == NULL)
    ferry_cli_fail (error);
  return client;
}

int
ferry_cli_fail (const GError *error)
{
  if (ferry_global.json)
    {
      g_autoptr (JsonObject) object = json_object_new ();
      JsonObject *inner = json_object_new ();
      json_object_set_string_member (inner, "code",
                                     error->domain == FERRY_ERROR
                                     ? ferry_error_code_to_string (error->code) : "failed");
      json_object_set_string_member (inner, "message", error->message);
      json_object_set_object_member (object, "error", inner);
      g_autofree char *text = ferry_json_object_to_string (object, TRUE);
      g_printerr ("%s\n", text);
    }
  else
    g_printerr ("ferry: error: %s\n", error->message);
  return 1;
}

void
ferry_cli_print_json (JsonObject *object)
{
  g_autofree char *text = ferry_json_object_to_string (object, TRUE);
  g_print ("%s\n", text);
}

void
ferry_cli_pace (gint64 asked_us, gint64 interval_ms)
{
  gint64 waited_ms = (g_get_monotonic_time () - asked_us) / 1000;
  if (waited_ms < interval_ms / 2)
    g_usleep ((interval_ms - waited_ms) * 1000);
}

static void
usage (void)
{
  g_printerr (
    "Usage: ferry [-c URL] [--tls-dir DIR] [--json] COMMAND ...\n"
    "\n"
    "Certificates:\n"
    "  pki init [--force] [--ca-name NAME]       create the CA\n"
    "  pki issue-host HOST [--address ADDR]...   certificate for an agent and QEMU migration TLS\n"
    "  pki issue-client NAME                     certificate for the CLI or a controller\n"
    "VMs:\n"
    "  vm define FILE                            define a VM from a YAML or JSON spec\n"
    "  vm list | info NAME | start NAME | destroy NAME | undefine NAME\n"
    "  vm shutdown NAME [--timeout S] [--no-force] [--wait]\n"
    "  vm console-log NAME [--bytes N]\n"
    "Storage:\n"
    "  pool list | info NAME                     storage pools (directories of disk images)\n"
    "  volume list POOL                          the pool's volumes\n"
    "  volume create POOL NAME --size SIZE [--format qcow2|raw]\n"
    "  volume delete POOL NAME                   refused while a defined VM uses it\n"
    "Migration:\n"
    "  dirtyrate NAME [--period S]               the guest's dirty-page rate (MiB/s)\n"
    "  migrate NAME DEST-URL --live|--warm|--offline [--estimate] [--strategy auto|manual]\n"
    "          [--copy-storage] [--persistent] [--undefine-source] [--bandwidth MiB/s]\n"
    "          [--max-downtime MS] [--no-tls] [--detach] [--verbose] ...\n"
    "  migrate set-speed NAME MIBS | set-max-downtime NAME MS | postcopy NAME\n"
    "                                            change a running live migration\n"
    "  migrate NAME --recover                    resume a post-copy whose link broke\n"
    "  migrate cutover NAME [--at TIME]          cut a warm migration over\n"
    "  job info NAME [--completed] [--events]    what the migration is doing / did\n"
    "  job events NAME [--completed] [--follow]  its event log: every decision and its reason\n"
    "  job abort NAME                            cancel it; the VM stays on the source\n"
    "\n"
    "Run 'ferry COMMAND --help' for a command's options.\n");
}

int
main (int argc, char **argv)
{
  setlocale (LC_ALL, "");
  if (argc < 2 || g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")
      || g_str_equal (argv[1], "help"))
    {
      usage ();
      return argc < 2 ? 2 : 0;
    }
  if (g_str_equal (argv[1], "--version"))
    {
      g_print ("ferry %s\n", FERRY_VERSION_STRING);
      return 0;
    }
  /* Global options may come before the command: find the command word. */
  int command_index = 1;
  while (command_index < argc && argv[command_index][0] == '-')
    {
      const char *arg = argv[command_index];
      gboolean takes_value = (g_str_equal (arg, "-c") || g_str_equal (arg, "--connect")
                              || g_str_equal (arg, "--tls-dir"));
      command_index += takes_value ? 2 : 1;
    }
  if (command_index >= argc)
    {
      usage ();
      return 2;
    }
  const char *command = argv[command_index];
  /* Hand the verb an argv without the command word. */
  g_autoptr (GPtrArray) args = g_ptr_array_new ();
  g_ptr_array_add (args, argv[0]);
  for (int i = 1; i < argc; i++)
    if (i != command_index)
      g_ptr_array_add (args, argv[i]);
  g_ptr_array_add (args, NULL);
  int sub_argc = args->len - 1;
  char **sub_argv = (char **) args->pdata;

  if (g_str_equal (command, "pki"))
    return ferry_cmd_pki (sub_argc, sub_argv);
  if (g_str_equal (command, "vm"))
    return ferry_cmd_vm (sub_argc, sub_argv);
  if (g_str_equal (command, "migrate"))
    return ferry_cmd_migrate (sub_argc, sub_argv);
  if (g_str_equal (command, "job"))
    return ferry_cmd_job (sub_argc, sub_argv);
  if (g_str_equal (command, "dirtyrate"))
    return ferry_cmd_dirtyrate (sub_argc, sub_argv);
  if (g_str_equal (command, "pool"))
    return ferry_cmd_pool (sub_argc, sub_argv);
  if (g_str_equal (command, "volume"))
    return ferry_cmd_volume (sub_argc, sub_argv);
  g_printerr ("ferry: unknown command '%s'\n", command);
  usage ();
  return 2;
}
