/* ferry migrate — move a VM to another agent. */
#include "cli.h"

#include <stdio.h>
#include <unistd.h>

#include "jsonutil.h"

#define POLL_MS 300

/* Share of the memory sent so far; never decreases, because pre-copy
 * passes make "remaining" grow again. */
static double
progress_fraction (JsonObject *job, double previous)
{
  /* The agent's phase-aware progress when it has one. */
  JsonObject *progress = ferry_json_object_object (job, "progress");
  if (progress != NULL && json_object_has_member (progress, "percent"))
    return MAX (previous, json_object_get_double_member (progress, "percent") / 100.0);
  if (g_strcmp0 (ferry_json_object_string (job, "state"), "completed") == 0)
    return 1.0;
  JsonObject *ram = ferry_json_object_object (ferry_json_object_object (job, "stats"), "ram");
  if (ram == NULL)
    return previous;
  double transferred = ferry_json_object_int (ram, "transferred");
  double remaining = ferry_json_object_int (ram, "remaining");
  double fraction = transferred + remaining > 0 ? transferred / (transferred + remaining) : 0;
  if (g_strcmp0 (ferry_json_object_string (job, "state"), "completed") == 0)
    fraction = 1.0;
  return MAX (previous, MIN (fraction, 1.0));
}

static void
draw_progress (JsonObject *job, double fraction)
{
  const int width = 30;
  int filled = (int) (fraction * width);
  JsonObject *ram = ferry_json_object_object (ferry_json_object_object (job, "stats"), "ram");
  g_autofree char *sent = ferry_format_bytes (ram ? ferry_json_object_int (ram, "transferred") : 0);
  double mbps = ram && json_object_has_member (ram, "mbps") ? json_object_get_double_member (ram, "mbps") : 0;
  g_autoptr (GString) bar = g_string_new (NULL);
  for (int i = 0; i < width; i++)
    g_string_append (bar, i < filled ? "#" : "-");
  JsonObject *progress = ferry_json_object_object (job, "progress");
  g_autofree char *eta = progress && json_object_has_member (progress, "eta_s")
    ? g_strdup_printf ("ETA %3.0fs", json_object_get_double_member (progress, "eta_s"))
    : g_strdup ("ETA    ?");
  fprintf (stderr, "\r%-11s [%s] %3d%%  %10s  %7.1f MiB/s  pass %" G_GINT64_FORMAT "  %s   ",
           ferry_json_object_string (job, "state"), bar->str, (int) (fraction * 100), sent,
           mbps * 1e6 / 8 / (1024.0 * 1024.0),
           ram ? ferry_json_object_int (ram, "dirty-sync-count") : 0, eta);
  fflush (stderr);
}

static void
print_summary (JsonObject *job)
{
  JsonObject *stats = ferry_json_object_object (job, "stats");
  JsonObject *ram = ferry_json_object_object (stats, "ram");
  const char *state = ferry_json_object_string (job, "state");
  if (g_strcmp0 (state, "completed") != 0)
    {
      g_printerr ("ferry: error: migration %s: %s\n", state,
                  ferry_json_object_string (job, "error") ? ferry_json_object_string (job, "error")
                                                          : "no reason given");
      return;
    }
  JsonObject *warm = ferry_json_object_object (stats, "ferry-warm");
  if (warm != NULL)
    {
      g_print ("warm migration completed in %.1f s: %" G_GINT64_FORMAT " passes, cutover downtime %.1f s "
               "(guest shut down on the source → running on the destination)\n",
               ferry_json_object_int (job, "elapsed_ms") / 1000.0, ferry_json_object_int (warm, "pass"),
               ferry_json_object_int (stats, "ferry-guest-downtime-ms") / 1000.0);
      return;
    }
  JsonObject *copy = ferry_json_object_object (stats, "ferry-copy");
  if (copy != NULL)
    {
      g_autofree char *total = ferry_format_bytes (ferry_json_object_int (copy, "bytes_total"));
      g_autofree char *read = ferry_format_bytes (ferry_json_object_int (copy, "bytes_read"));
      JsonNode *disks = json_object_get_member (copy, "disks");
      g_print ("migration completed in %.1f s: %u disks (%s) copied and verified, %s read from the source\n",
               ferry_json_object_int (job, "elapsed_ms") / 1000.0,
               disks && JSON_NODE_HOLDS_ARRAY (disks) ? json_array_get_length (json_node_get_array (disks)) : 0,
               total, read);
      return;
    }
  if (g_strcmp0 (ferry_json_object_string (job, "kind"), "migrate-live") != 0)
    {
      g_print ("migration completed: definition moved (%" G_GINT64_FORMAT " ms)\n",
               ferry_json_object_int (job, "elapsed_ms"));
      return;
    }
  gint64 total_ms = ferry_json_object_int (stats, "total-time");
  gint64 bytes = ferry_json_object_int (ram, "transferred");
  g_autofree char *bytes_text = ferry_format_bytes (bytes);
  double throughput = total_ms > 0 ? bytes / (total_ms / 1000.0) / (1024.0 * 1024.0) : 0;
  g_autofree char *paused = json_object_has_member (stats, "ferry-guest-downtime-ms")
    ? g_strdup_printf (" (guest paused %" G_GINT64_FORMAT " ms)",
                       ferry_json_object_int (stats, "ferry-guest-downtime-ms"))
    : g_strdup ("");
  g_print ("migration completed: total %" G_GINT64_FORMAT " ms, downtime %" G_GINT64_FORMAT
           " ms%s, sent %s, %.1f MiB/s, %" G_GINT64_FORMAT " passes\n",
           total_ms, ferry_json_object_int (stats, "downtime"), paused, bytes_text, throughput,
           ferry_json_object_int (ram, "dirty-sync-count"));
  /* QEMU's downtime leaves it out; the guest's users did not. */
  if (json_object_has_member (stats, "ferry-setup-stall-ms"))
    g_print ("the guest also stood still %.1f s through QEMU's set-up (TCG's dirty-bitmap sync; QEMU does not "
             "count it as downtime)\n", ferry_json_object_int (stats, "ferry-setup-stall-ms") / 1000.0);
  JsonObject *restart = ferry_json_object_object (stats, "ferry-restart");
  if (restart != NULL)
    {
      /* The numbers above are the second stream's. */
      g_autofree char *when = ferry_format_restart (restart);
      g_print ("started again as one stream with post-copy %s: the guest sped up; %.1f s in all\n", when,
               ferry_json_object_int (job, "elapsed_ms") / 1000.0);
    }
  JsonObject *mirror = ferry_json_object_object (stats, "ferry-mirror");
  if (mirror != NULL)
    {
      g_autofree char *disks = ferry_format_bytes (ferry_json_object_int (mirror, "len"));
      g_print ("disks mirrored first: %s in %.1f s (%s copy mode)\n", disks,
               ferry_json_object_int (mirror, "ready_after_ms") / 1000.0,
               ferry_json_object_string (mirror, "copy_mode"));
    }
}

static double
member_double (JsonObject *object, const char *member)
{
  JsonNode *node = object ? json_object_get_member (object, member) : NULL;
  return node && JSON_NODE_HOLDS_VALUE (node) ? json_node_get_double (node) : 0.0;
}

static int
migrate_estimate (FerryClient *client, const char *name, JsonObject *body)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *escaped = ferry_client_escape (name);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/estimate", escaped);
  g_autoptr (JsonObject) plan = ferry_client_call (client, "POST", path, body, &error);
  if (plan == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (plan);
      return 0;
    }
  JsonObject *measured = ferry_json_object_object (plan, "measured");
  JsonObject *precopy = ferry_json_object_object (plan, "precopy");
  JsonObject *prediction = ferry_json_object_object (plan, "prediction");
  g_autofree char *ram = ferry_format_bytes (ferry_json_object_int (measured, "ram_bytes"));
  g_autofree char *resident = ferry_format_bytes (ferry_json_object_int (measured, "resident_bytes"));
  g_autofree char *bytes = ferry_format_bytes (ferry_json_object_int (prediction, "bytes"));
  g_print ("Measured:   RAM %s (%s touched), dirty rate %.0f MiB/s over 2 s (%.0f over 1 s), link %.0f MiB/s\n",
           ram, resident, member_double (measured, "dirty_mib_s"), member_double (measured, "dirty_1s_mib_s"),
           member_double (measured, "link_mib_s"));
  if (json_object_has_member (measured, "cpus"))
    {
      g_print ("            %.1f of %" G_GINT64_FORMAT " cores idle, the guest's memory compresses %.1f:1",
               member_double (measured, "free_cores"), ferry_json_object_int (measured, "cpus"),
               member_double (measured, "compress_ratio"));
      if (member_double (measured, "compress_mib_s") > 0)
        g_print (" at %.0f MiB/s a core", member_double (measured, "compress_mib_s"));
      g_print ("\n");
    }
  if (json_object_get_boolean_member_with_default (precopy, "converges", FALSE))
    g_print ("Pre-copy:   converges in %" G_GINT64_FORMAT " passes, %.1f s, downtime %.0f ms\n",
             ferry_json_object_int (precopy, "passes"), member_double (precopy, "total_s"),
             member_double (precopy, "downtime_ms"));
  else
    g_print ("Pre-copy:   does not converge (the guest dirties memory as fast as the link carries it)\n");
  g_print ("Strategy:   %s — %s\n", ferry_json_object_string (plan, "strategy"),
           ferry_json_object_string (plan, "reason"));
  g_print ("Prediction: total %.1f s, downtime %.0f ms, %s on the wire\n",
           member_double (prediction, "total_s"), member_double (prediction, "downtime_ms"), bytes);
  return 0;
}

/* Follows a job to its end with a progress bar on a terminal, then prints
 * the summary. Exit status 0 only when it completed. */
static int
wait_for_job (FerryClient *client, const char *escaped, gint64 job_id, gboolean verbose)
{
  g_autoptr (GError) error = NULL;
  gboolean tty = isatty (STDERR_FILENO) && !ferry_global.json;
  /* The agent holds each request until the job ends or POLL_MS pass, so
   * the end is seen at once and the progress bar still moves. */
  g_autofree char *job_path = g_strdup_printf ("/v1/vms/%s/job?wait_ms=%d", escaped, POLL_MS);
  g_autoptr (JsonObject) job = NULL;
  double fraction = 0;
  for (;;)
    {
      gint64 asked_us = g_get_monotonic_time ();
      g_clear_pointer (&job, json_object_unref);
      job = ferry_client_call (client, "GET", job_path, NULL, &error);
      if (job == NULL)
        return ferry_cli_fail (error);
      if (ferry_json_object_int (job, "id") != job_id)
        {
          g_printerr ("ferry migrate: job %" G_GINT64_FORMAT " vanished\n", job_id);
          return 1;
        }
      fraction = progress_fraction (job, fraction);
      if (tty)
        draw_progress (job, fraction);
      if (!json_object_get_boolean_member_with_default (job, "active", FALSE))
        break;
      ferry_cli_pace (asked_us, POLL_MS);
    }
  if (tty)
    fprintf (stderr, "\n");
  gboolean ok = g_strcmp0 (ferry_json_object_string (job, "state"), "completed") == 0;
  if (ferry_global.json)
    ferry_cli_print_json (job);
  else
    {
      print_summary (job);
      if (verbose)
        {
          g_print ("\n");
          ferry_print_job (job);
        }
    }
  return ok ? 0 : 1;
}

static int
migrate_recover (const char *name, gboolean verbose)
{
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  g_autoptr (GError) error = NULL;
  g_autofree char *escaped = ferry_client_escape (name);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/job/recover", escaped);
  g_autoptr (JsonObject) body = json_object_new ();
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  g_autofree char *job_path = g_strdup_printf ("/v1/vms/%s/job", escaped);
  g_autoptr (JsonObject) job = ferry_client_call (client, "GET", job_path, NULL, &error);
  if (job == NULL)
    return ferry_cli_fail (error);
  if (!ferry_global.json)
    g_printerr ("recovering the post-copy migration of %s\n", name);
  return wait_for_job (client, escaped, ferry_json_object_int (job, "id"), verbose);
}

/* "90", "90s", "10m", "2h", "1d": seconds, or -1. */
static gint64
parse_duration (const char *text)
{
  char *end = NULL;
  if (text == NULL || !g_ascii_isdigit (*text))
    return -1;
  guint64 value = g_ascii_strtoull (text, &end, 10);
  guint64 unit = 1;
  if (g_str_equal (end, "m"))
    unit = 60;
  else if (g_str_equal (end, "h"))
    unit = 3600;
  else if (g_str_equal (end, "d"))
    unit = 86400;
  else if (*end != '\0' && !g_str_equal (end, "s"))
    return -1;
  if (value > G_MAXINT64 / unit / 2)
    return -1;
  return (gint64) (value * unit);
}

/* An ISO 8601 time (local time unless it names a zone), or "+DURATION"
 * from now: unix seconds, or -1. */
static gint64
parse_time (const char *text)
{
  if (text != NULL && text[0] == '+')
    {
      gint64 delta = parse_duration (text + 1);
      return delta < 0 ? -1 : g_get_real_time () / G_USEC_PER_SEC + delta;
    }
  g_autoptr (GTimeZone) local = g_time_zone_new_local ();
  g_autoptr (GDateTime) time = text ? g_date_time_new_from_iso8601 (text, local) : NULL;
  return time ? g_date_time_to_unix (time) : -1;
}

/* ferry migrate cutover NAME [--at TIME]: a warm migration's cutover. */
static int
migrate_cutover (int argc, char **argv)
{
  g_autofree char *at = NULL;
  gboolean verbose = FALSE;
  GOptionEntry entries[] = {
    { "at", 0, 0, G_OPTION_ARG_STRING, &at, "When (ISO 8601, or +DURATION from now); default now", "TIME" },
    { "verbose", 0, 0, G_OPTION_ARG_NONE, &verbose, "Print the job's event log at the end", NULL },
    { NULL }
  };
  if (!ferry_cli_parse ("cutover NAME [--at TIME]", "Cut a warm migration over: shut the guest down, copy the "
                        "last changes, start it on the destination.", entries, &argc, &argv))
    return 2;
  if (argc != 3)
    {
      g_printerr ("ferry migrate: usage: migrate cutover NAME [--at TIME]\n");
      return 2;
    }
  gint64 when = at ? parse_time (at) : 0;
  if (when < 0)
    {
      g_printerr ("ferry migrate cutover: --at: '%s' is neither an ISO 8601 time (2026-11-22T15:00:00) nor "
                  "+DURATION (+30m)\n", at);
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  g_autoptr (GError) error = NULL;
  g_autofree char *escaped = ferry_client_escape (argv[2]);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/job/cutover", escaped);
  g_autoptr (JsonObject) body = json_object_new ();
  if (when > 0)
    json_object_set_int_member (body, "at", when);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (when > 0)
    {
      if (ferry_global.json)
        ferry_cli_print_json (reply);
      else
        g_print ("cutover of %s scheduled at %s\n", argv[2], at);
      return 0;
    }
  g_autofree char *job_path = g_strdup_printf ("/v1/vms/%s/job", escaped);
  g_autoptr (JsonObject) job = ferry_client_call (client, "GET", job_path, NULL, &error);
  if (job == NULL)
    return ferry_cli_fail (error);
  return wait_for_job (client, escaped, ferry_json_object_int (job, "id"), verbose);
}

static int
migrate_control (int argc, char **argv)
{
  /* argv: [prog, verb, NAME, VALUE?] */
  const char *verb = argv[1];
  gboolean needs_value = !g_str_equal (verb, "postcopy");
  if (argc != (needs_value ? 4 : 3))
    {
      g_printerr ("ferry migrate: usage: migrate set-max-downtime NAME MS | set-speed NAME MIBS | "
                  "postcopy NAME\n");
      return 2;
    }
  g_autoptr (JsonObject) body = json_object_new ();
  const char *action = "postcopy";
  if (needs_value)
    {
      gint64 value = 0;
      if (!g_ascii_string_to_signed (argv[3], 10, 1, g_str_equal (verb, "set-speed") ? 1024 * 1024 : 2000000,
                                     &value, NULL))
        {
          g_printerr ("ferry migrate %s: '%s' is not a number in range (%s)\n", verb, argv[3],
                      g_str_equal (verb, "set-speed") ? "1..1048576 MiB/s" : "1..2000000 ms");
          return 2;
        }
      action = "set";
      json_object_set_int_member (body, g_str_equal (verb, "set-speed") ? "bandwidth_mib" : "max_downtime_ms",
                                  value);
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  g_autoptr (GError) error = NULL;
  g_autofree char *escaped = ferry_client_escape (argv[2]);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/job/%s", escaped, action);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    ferry_cli_print_json (reply);
  else if (g_str_equal (verb, "postcopy"))
    g_print ("switching %s to post-copy at the end of the current pass\n", argv[2]);
  else
    g_print ("%s: %s set to %s\n", argv[2], g_str_equal (verb, "set-speed") ? "bandwidth (MiB/s)"
                                                                            : "downtime limit (ms)", argv[3]);
  return 0;
}

int
ferry_cmd_migrate (int argc, char **argv)
{
  gboolean live = FALSE;
  gboolean offline = FALSE;
  gboolean persistent = FALSE;
  gboolean undefine_source = FALSE;
  gboolean no_tls = FALSE;
  gboolean detach = FALSE;
  gboolean verbose = FALSE;
  gboolean estimate = FALSE;
  gboolean recover = FALSE;
  gboolean xbzrle = FALSE;
  gboolean auto_converge = FALSE;
  gboolean postcopy = FALSE;
  gboolean copy_storage = FALSE;
  gboolean start = FALSE;
  gboolean delete_source_disks = FALSE;
  gboolean force_stop = FALSE;
  gboolean warm = FALSE;
  g_autofree char *precopy_interval = NULL;
  g_autofree char *cutover = NULL;
  int parallel_disks = -1;
  g_auto (GStrv) storage_map = NULL;
  int bandwidth = -1;
  int max_downtime = -1;
  int parallel = -1;
  int postcopy_after = -1;
  int completion_timeout = -1;
  int progress_timeout = -1;
  g_autofree char *strategy = NULL;
  g_autofree char *compress = NULL;
  g_autofree char *timeout_action = NULL;
  GOptionEntry entries[] = {
    { "live", 0, 0, G_OPTION_ARG_NONE, &live, "Move the running VM (memory and device state)", NULL },
    { "offline", 0, 0, G_OPTION_ARG_NONE, &offline,
      "Move a shut-off VM's definition (with --copy-storage: shut it down and copy its disks)", NULL },
    { "warm", 0, 0, G_OPTION_ARG_NONE, &warm,
      "Copy the disks while the VM runs (passes of the changed blocks), then cut over", NULL },
    { "precopy-interval", 0, 0, G_OPTION_ARG_STRING, &precopy_interval,
      "Warm: time between passes (default 60m, at least 5s)", "DURATION" },
    { "cutover", 0, 0, G_OPTION_ARG_STRING, &cutover,
      "Warm: cut over at this time (ISO 8601, or +DURATION); default: ferry migrate cutover NAME", "TIME" },
    { "copy-storage", 0, 0, G_OPTION_ARG_NONE, &copy_storage,
      "Copy the VM's pool volumes to the destination (sparse, verified, resumable)", NULL },
    { "start", 0, 0, G_OPTION_ARG_NONE, &start, "Start the VM on the destination afterwards", NULL },
    { "delete-source-disks", 0, 0, G_OPTION_ARG_NONE, &delete_source_disks,
      "Delete the source volumes once the destination confirmed (needs --undefine-source)", NULL },
    { "force-stop", 0, 0, G_OPTION_ARG_NONE, &force_stop,
      "Power the VM off if it ignores the ACPI shutdown", NULL },
    { "parallel-disks", 0, 0, G_OPTION_ARG_INT, &parallel_disks, "Disks copied at once (default 2)", "N" },
    { "storage-map", 0, 0, G_OPTION_ARG_STRING_ARRAY, &storage_map,
      "Put volumes of pool SRCPOOL into DSTPOOL (repeatable)", "SRCPOOL=DSTPOOL" },
    { "persistent", 0, 0, G_OPTION_ARG_NONE, &persistent, "Keep the VM defined on the destination", NULL },
    { "undefine-source", 0, 0, G_OPTION_ARG_NONE, &undefine_source,
      "Remove the definition from the source once the destination confirmed", NULL },
    { "bandwidth", 0, 0, G_OPTION_ARG_INT, &bandwidth, "Limit in MiB/s (default: unlimited)", "MIBS" },
    { "max-downtime", 0, 0, G_OPTION_ARG_INT, &max_downtime, "Downtime limit in ms (default 300)", "MS" },
    { "no-tls", 0, 0, G_OPTION_ARG_NONE, &no_tls, "Send memory unencrypted (TLS is on by default)", NULL },
    { "detach", 0, 0, G_OPTION_ARG_NONE, &detach, "Return once the job started", NULL },
    { "verbose", 0, 0, G_OPTION_ARG_NONE, &verbose, "Print the job's event log at the end", NULL },
    { "strategy", 0, 0, G_OPTION_ARG_STRING, &strategy,
      "auto (default: measure, predict, choose) or manual", "auto|manual" },
    { "estimate", 0, 0, G_OPTION_ARG_NONE, &estimate, "Predict time, downtime and bytes; do not migrate", NULL },
    { "recover", 0, 0, G_OPTION_ARG_NONE, &recover,
      "Resume a post-copy migration whose link broke (ferry migrate NAME --recover)", NULL },
    { "parallel-connections", 0, 0, G_OPTION_ARG_INT, &parallel, "multifd channels (2..16)", "N" },
    { "compress", 0, 0, G_OPTION_ARG_STRING, &compress, "multifd compression", "zstd|zlib|none" },
    { "xbzrle", 0, 0, G_OPTION_ARG_NONE, &xbzrle, "XBZRLE delta compression of re-sent pages", NULL },
    { "auto-converge", 0, 0, G_OPTION_ARG_NONE, &auto_converge, "Throttle the guest's vCPUs until it converges", NULL },
    { "postcopy", 0, 0, G_OPTION_ARG_NONE, &postcopy, "Allow switching to post-copy", NULL },
    { "postcopy-after", 0, 0, G_OPTION_ARG_INT, &postcopy_after,
      "Switch to post-copy after S seconds of pre-copy", "S" },
    { "completion-timeout-per-gib", 0, 0, G_OPTION_ARG_INT, &completion_timeout,
      "Time allowed per GiB of guest RAM (default 150)", "S" },
    { "progress-timeout", 0, 0, G_OPTION_ARG_INT, &progress_timeout,
      "Time allowed without remaining data shrinking (default 150)", "S" },
    { "timeout-action", 0, 0, G_OPTION_ARG_STRING, &timeout_action,
      "At a timeout: abort (default; the source keeps running) or postcopy", "abort|postcopy" },
    { NULL }
  };
  g_autoptr (GError) error = NULL;

  /* The first word that is not an option (nor an option's value)
   * decides between "migrate NAME DEST" and the live controls. */
  const char *first = NULL;
  for (int i = 1; i < argc && first == NULL; i++)
    {
      if (g_str_equal (argv[i], "-c") || g_str_equal (argv[i], "--connect")
          || g_str_equal (argv[i], "--tls-dir"))
        i++;
      else if (argv[i][0] != '-')
        first = argv[i];
    }
  if (first != NULL && g_str_equal (first, "cutover"))
    return migrate_cutover (argc, argv);
  if (first != NULL && (g_str_equal (first, "set-max-downtime") || g_str_equal (first, "set-speed")
                        || g_str_equal (first, "postcopy")))
    {
      if (!ferry_cli_parse ("set-max-downtime NAME MS | set-speed NAME MIBS | postcopy NAME",
                            "Change a running migration.", NULL, &argc, &argv))
        return 2;
      return migrate_control (argc, argv);
    }
  if (!ferry_cli_parse ("NAME DEST-URL --live|--offline|--warm", "Migrate a VM to another host.", entries,
                        &argc, &argv))
    return 2;
  if (recover)
    {
      if (argc != 2)
        {
          g_printerr ("ferry migrate: usage: migrate NAME --recover\n");
          return 2;
        }
      return migrate_recover (argv[1], verbose);
    }
  if (argc != 3)
    {
      g_printerr ("ferry migrate: usage: migrate NAME DEST-URL --live|--offline|--warm [options]\n");
      return 2;
    }
  if (live + offline + warm != 1)
    {
      g_printerr ("ferry migrate: say exactly one of --live, --offline or --warm\n");
      return 2;
    }
  gint64 interval_s = precopy_interval ? parse_duration (precopy_interval) : 0;
  gint64 cutover_at = cutover ? parse_time (cutover) : 0;
  if (interval_s < 0)
    {
      g_printerr ("ferry migrate: --precopy-interval: '%s' is not a duration (90s, 10m, 2h)\n", precopy_interval);
      return 2;
    }
  if (cutover_at < 0)
    {
      g_printerr ("ferry migrate: --cutover: '%s' is neither an ISO 8601 time (2026-11-22T15:00:00) nor "
                  "+DURATION (+30m)\n", cutover);
      return 2;
    }
  if (bandwidth == 0 || bandwidth < -1 || bandwidth > 1024 * 1024)
    {
      g_printerr ("ferry migrate: --bandwidth must be between 1 and 1048576 MiB/s\n");
      return 2;
    }
  if (max_downtime == 0 || max_downtime < -1 || max_downtime > 2000000)
    {
      g_printerr ("ferry migrate: --max-downtime must be between 1 and 2000000 ms\n");
      return 2;
    }
  if (!live && (max_downtime > 0 || no_tls || (bandwidth > 0 && !copy_storage && !warm)))
    {
      g_printerr ("ferry migrate: --max-downtime and --no-tls apply to --live only, --bandwidth to --live "
                  "and --copy-storage\n");
      return 2;
    }
  if (parallel_disks != -1 && (parallel_disks < 1 || parallel_disks > 8))
    {
      g_printerr ("ferry migrate: --parallel-disks must be between 1 and 8\n");
      return 2;
    }
  if (parallel != -1 && (parallel < 1 || parallel > 16))
    {
      g_printerr ("ferry migrate: --parallel-connections must be between 1 and 16\n");
      return 2;
    }
  if ((postcopy_after != -1 && (postcopy_after < 1 || postcopy_after > 86400))
      || (completion_timeout != -1 && (completion_timeout < 1 || completion_timeout > 86400))
      || (progress_timeout != -1 && (progress_timeout < 1 || progress_timeout > 86400)))
    {
      g_printerr ("ferry migrate: --postcopy-after, --completion-timeout-per-gib and --progress-timeout "
                  "take 1..86400 seconds\n");
      return 2;
    }
  gboolean tuned = parallel > 1 || compress != NULL || xbzrle || auto_converge || postcopy;
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;

  g_autoptr (JsonObject) body = json_object_new ();
  json_object_set_string_member (body, "dest", argv[2]);
  json_object_set_string_member (body, "mode", live ? "live" : warm ? "warm" : "offline");
  if (precopy_interval != NULL)
    json_object_set_int_member (body, "precopy_interval_s", interval_s);
  if (cutover != NULL)
    json_object_set_int_member (body, "cutover_at", cutover_at);
  json_object_set_boolean_member (body, "persistent", persistent);
  json_object_set_boolean_member (body, "undefine_source", undefine_source);
  json_object_set_boolean_member (body, "tls", !no_tls);
  if (bandwidth > 0)
    json_object_set_int_member (body, "bandwidth_mib", bandwidth);
  if (max_downtime > 0)
    json_object_set_int_member (body, "max_downtime_ms", max_downtime);
  /* Tuning flags without --strategy mean the user chose: manual. The agent
   * refuses --strategy auto together with them (it would override them). */
  if (strategy != NULL)
    json_object_set_string_member (body, "strategy", strategy);
  else if (tuned && live)
    json_object_set_string_member (body, "strategy", "manual");
  if (parallel > 0)
    json_object_set_int_member (body, "parallel_connections", parallel);
  if (compress != NULL)
    json_object_set_string_member (body, "compress", compress);
  if (xbzrle)
    json_object_set_boolean_member (body, "xbzrle", TRUE);
  if (auto_converge)
    json_object_set_boolean_member (body, "auto_converge", TRUE);
  if (postcopy)
    json_object_set_boolean_member (body, "postcopy", TRUE);
  if (postcopy_after > 0)
    json_object_set_int_member (body, "postcopy_after_s", postcopy_after);
  if (completion_timeout > 0)
    json_object_set_int_member (body, "completion_timeout_per_gib_s", completion_timeout);
  if (progress_timeout > 0)
    json_object_set_int_member (body, "progress_timeout_s", progress_timeout);
  if (timeout_action != NULL)
    json_object_set_string_member (body, "timeout_action", timeout_action);
  if (copy_storage)
    json_object_set_boolean_member (body, "copy_storage", TRUE);
  if (start)
    json_object_set_boolean_member (body, "start", TRUE);
  if (delete_source_disks)
    json_object_set_boolean_member (body, "delete_source_disks", TRUE);
  if (force_stop)
    json_object_set_boolean_member (body, "force_stop", TRUE);
  if (parallel_disks > 0)
    json_object_set_int_member (body, "parallel_disks", parallel_disks);
  if (storage_map != NULL)
    {
      JsonArray *map = json_array_new ();
      for (guint i = 0; storage_map[i] != NULL; i++)
        json_array_add_string_element (map, storage_map[i]);
      json_object_set_array_member (body, "storage_map", map);
    }
  if (estimate)
    return migrate_estimate (client, argv[1], body);

  g_autofree char *escaped = ferry_client_escape (argv[1]);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/migrate", escaped);
  g_autoptr (JsonObject) started = ferry_client_call (client, "POST", path, body, &error);
  if (started == NULL)
    return ferry_cli_fail (error);
  gint64 job_id = ferry_json_object_int (started, "id");
  if (warm && !ferry_global.json)
    {
      /* Pre-copy runs until the cutover, which may be hours away. */
      g_print ("warm migration job %" G_GINT64_FORMAT " started: %s's disks go over while it runs; follow it "
               "with `ferry job info %s`, cut over with `ferry migrate cutover %s`%s\n", job_id, argv[1], argv[1],
               argv[1], cutover ? " (or at the time given)" : "");
      return 0;
    }
  if (detach || warm)
    {
      if (ferry_global.json)
        ferry_cli_print_json (started);
      else
        g_print ("migration job %" G_GINT64_FORMAT " started\n", job_id);
      return 0;
    }

  return wait_for_job (client, escaped, job_id, verbose);
}
