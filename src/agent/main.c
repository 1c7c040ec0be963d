/* ferryd — the per-host ferry agent. */
#include <glib-unix.h>
#include <locale.h>

#include "agent.h"
#include "pki.h"

static gboolean
on_terminate (gpointer user_data)
{
  GMainLoop *loop = user_data;
  g_info ("terminating; VMs keep running and are reattached on the next start");
  g_main_loop_quit (loop);
  return G_SOURCE_REMOVE;
}

static char *
default_dir (const char *root_path, const char *user_base, const char *leaf)
{
  if (geteuid () == 0)
    return g_strdup (root_path);
  return g_build_filename (user_base, "ferry", leaf, NULL);
}

int
main (int argc, char **argv)
{
  g_autofree char *state_dir = NULL;
  g_autofree char *tls_dir = NULL;
  g_autofree char *listen = NULL;
  g_autofree char *host_name = NULL;
  g_autofree char *qemu = NULL;
  g_autofree char *accel = NULL;
  g_auto (GStrv) pools = NULL;
  int keepalive_interval_ms = 1000;
  int keepalive_timeout_ms = 10000;
  int shutdown_timeout_s = 60;
  gboolean verbose = FALSE;
  gboolean version = FALSE;
  GOptionEntry entries[] = {
    { "state-dir", 0, 0, G_OPTION_ARG_FILENAME, &state_dir,
      "State directory (default /var/lib/ferry as root, else ~/.local/state/ferry)", "DIR" },
    { "listen", 0, 0, G_OPTION_ARG_STRING, &listen, "HTTPS address (default 0.0.0.0:7711)", "ADDR:PORT" },
    { "tls-dir", 0, 0, G_OPTION_ARG_FILENAME, &tls_dir,
      "Directory with ca-cert.pem, cert.pem, key.pem (default /etc/ferry/tls as root, else ~/.config/ferry/tls)",
      "DIR" },
    { "name", 0, 0, G_OPTION_ARG_STRING, &host_name, "Host name (default: the certificate's CN)", "NAME" },
    { "qemu", 0, 0, G_OPTION_ARG_FILENAME, &qemu, "QEMU binary (default qemu-system-x86_64)", "PATH" },
    { "accel", 0, 0, G_OPTION_ARG_STRING, &accel, "auto (default), kvm or tcg", "ACCEL" },
    { "pool", 0, 0, G_OPTION_ARG_STRING_ARRAY, &pools,
      "Storage pool: a directory of disk images (repeatable; \"default\" is STATE-DIR/pools/default unless given)",
      "NAME=DIR" },
    { "keepalive-interval-ms", 0, 0, G_OPTION_ARG_INT, &keepalive_interval_ms,
      "Heartbeat to a migration peer (default 1000)", "MS" },
    { "keepalive-timeout-ms", 0, 0, G_OPTION_ARG_INT, &keepalive_timeout_ms,
      "Peer silent this long fails the migration (default 10000)", "MS" },
    { "shutdown-timeout", 0, 0, G_OPTION_ARG_INT, &shutdown_timeout_s,
      "ACPI shutdown wait before forcing (default 60)", "S" },
    { "verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Log debug messages", NULL },
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) context = g_option_context_new ("- ferry host agent");
  g_autoptr (GError) error = NULL;

  setlocale (LC_ALL, "");
  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      g_printerr ("ferryd: %s\n", error->message);
      return 2;
    }
  if (version)
    {
      g_print ("ferryd %s\n", FERRY_VERSION_STRING);
      return 0;
    }
  if (keepalive_interval_ms < 100 || keepalive_interval_ms > 60000
      || keepalive_timeout_ms < 1000 || keepalive_timeout_ms > 600000
      || keepalive_timeout_ms < keepalive_interval_ms)
    {
      g_printerr ("ferryd: --keepalive-interval-ms must be 100..60000 and --keepalive-timeout-ms "
                  "1000..600000 and not below the interval\n");
      return 2;
    }
  if (shutdown_timeout_s < 1 || shutdown_timeout_s > 3600)
    {
      g_printerr ("ferryd: --shutdown-timeout must be between 1 and 3600 seconds\n");
      return 2;
    }
  /* Messages at info level and above go to stderr (journald captures it). */
  if (verbose)
    g_setenv ("G_MESSAGES_DEBUG", "all", TRUE);
  else if (g_getenv ("G_MESSAGES_DEBUG") == NULL)
    g_setenv ("G_MESSAGES_DEBUG", G_LOG_DOMAIN, TRUE);

  FerryAgentConfig config = {
    .state_dir = state_dir ? state_dir
                           : (state_dir = default_dir ("/var/lib/ferry", g_get_user_state_dir (), "")),
    .tls_dir = tls_dir ? tls_dir
                       : (tls_dir = default_dir ("/etc/ferry/tls", g_get_user_config_dir (), "tls")),
    .listen = listen ? listen : "0.0.0.0:7711",
    .host_name = host_name,
    .qemu_binary = qemu,
    .accel = accel ? accel : (char *) (g_getenv ("FERRY_ACCEL") ? g_getenv ("FERRY_ACCEL") : "auto"),
    .keepalive_interval_ms = keepalive_interval_ms,
    .keepalive_timeout_ms = keepalive_timeout_ms,
    .shutdown_timeout_s = shutdown_timeout_s,
    .pools = pools,
  };

  g_autoptr (FerryAgent) agent = ferry_agent_new (&config, &error);
  if (agent == NULL)
    {
      g_printerr ("ferryd: %s\n", error->message);
      return 1;
    }
  if (!ferry_agent_recover (agent, &error) || !ferry_agent_listen (agent, &error))
    {
      g_printerr ("ferryd: %s\n", error->message);
      return 1;
    }
  g_info ("ferryd %s on %s: state %s, accelerator %s", FERRY_VERSION_STRING,
          agent->config.host_name, agent->config.state_dir, agent->accel);

  g_autoptr (GMainLoop) loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGTERM, on_terminate, loop);
  g_unix_signal_add (SIGINT, on_terminate, loop);
  g_main_loop_run (loop);
  return 0;
}
