/* ferry job — what a migration is doing or did (as `virsh domjobinfo`),
 * and abort. */
#include "cli.h"

#include "jsonutil.h"

char *
ferry_format_bytes (gint64 bytes)
{
  return g_format_size_full (bytes < 0 ? 0 : (guint64) bytes, G_FORMAT_SIZE_IEC_UNITS);
}

char *
ferry_format_restart (JsonObject *restart)
{
  g_autofree char *sent = ferry_format_bytes (ferry_json_object_int (restart, "transferred"));
  return g_strdup_printf ("after %.1f s of multifd (%s sent, %" G_GINT64_FORMAT " passes)",
                          ferry_json_object_int (restart, "after_ms") / 1000.0, sent,
                          ferry_json_object_int (restart, "passes"));
}

static void
print_bytes_line (const char *label, gint64 value)
{
  g_autofree char *text = ferry_format_bytes (value);
  g_print ("%-20s %s\n", label, text);
}

static char *
format_wall_us (gint64 us)
{
  g_autoptr (GDateTime) time = us > 0 ? g_date_time_new_from_unix_local (us / G_USEC_PER_SEC) : NULL;
  return time ? g_date_time_format (time, "%Y-%m-%d %H:%M:%S") : g_strdup ("-");
}

/* A warm migration: its passes, the next one and the cutover. */
static void
print_warm (JsonObject *warm)
{
  if (warm == NULL)
    return;
  g_print ("%-20s %" G_GINT64_FORMAT " (every %" G_GINT64_FORMAT " s)%s\n", "Passes:",
           ferry_json_object_int (warm, "pass"), ferry_json_object_int (warm, "precopy_interval_s"),
           json_object_get_boolean_member_with_default (warm, "pass_running", FALSE) ? ", one running" : "");
  if (ferry_json_object_int (warm, "next_pass_at_us") > 0)
    {
      g_autofree char *next = format_wall_us (ferry_json_object_int (warm, "next_pass_at_us"));
      g_print ("%-20s %s\n", "Next pass:", next);
    }
  g_autofree char *cutover = ferry_json_object_int (warm, "cutover_at_us") > 0
                               ? format_wall_us (ferry_json_object_int (warm, "cutover_at_us"))
                               : g_strdup ("when asked (ferry migrate cutover NAME)");
  g_print ("%-20s %s\n", "Cutover:", cutover);
  JsonNode *node = json_object_get_member (warm, "iterations");
  JsonArray *iterations = node && JSON_NODE_HOLDS_ARRAY (node) ? json_node_get_array (node) : NULL;
  if (iterations == NULL || json_array_get_length (iterations) == 0)
    return;
  g_print ("Iterations:\n  %4s  %-19s  %12s  %12s  %9s\n", "pass", "started", "changed", "copied", "duration");
  if (ferry_json_object_int (warm, "iterations_dropped") > 0)
    g_print ("  (%" G_GINT64_FORMAT " earlier passes not kept)\n", ferry_json_object_int (warm, "iterations_dropped"));
  for (guint i = 0; i < json_array_get_length (iterations); i++)
    {
      JsonObject *entry = json_array_get_object_element (iterations, i);
      g_autofree char *started = format_wall_us (ferry_json_object_int (entry, "started_at") * G_USEC_PER_SEC);
      g_autofree char *changed = ferry_format_bytes (ferry_json_object_int (entry, "bytes_changed"));
      g_autofree char *copied = ferry_format_bytes (ferry_json_object_int (entry, "bytes_copied"));
      JsonNode *duration = json_object_get_member (entry, "duration_s");
      g_print ("  %4" G_GINT64_FORMAT "  %-19s  %12s  %12s  %8.1fs%s\n", ferry_json_object_int (entry, "pass"),
               started, changed, copied, duration ? json_node_get_double (duration) : 0.0,
               json_object_get_boolean_member_with_default (entry, "final", FALSE) ? "  (final)" : "");
    }
}

void
ferry_print_job (JsonObject *job)
{
  const char *state = ferry_json_object_string (job, "state");
  const char *role = ferry_json_object_string (job, "role");
  const char *kind = ferry_json_object_string (job, "kind");
  gboolean active = json_object_get_boolean_member_with_default (job, "active", FALSE);
  JsonObject *stats = ferry_json_object_object (job, "stats");
  JsonObject *ram = ferry_json_object_object (stats, "ram");
  const char *type = active ? "Unbounded"
                     : g_strcmp0 (state, "completed") == 0 ? "Completed"
                     : g_strcmp0 (state, "cancelled") == 0 ? "Cancelled" : "Failed";

  g_print ("%-20s %s\n", "Job type:", type);
  g_print ("%-20s %s %s\n", "Operation:", g_strcmp0 (role, "source") == 0 ? "Outgoing" : "Incoming",
           g_strcmp0 (kind, "migrate-live") == 0 ? "live migration"
           : ferry_json_object_object (stats, "ferry-warm") ? "warm migration" : "offline migration");
  g_print ("%-20s %s\n", "State:", state);
  if (ferry_json_object_string (job, "peer"))
    g_print ("%-20s %s\n", "Peer:", ferry_json_object_string (job, "peer"));
  g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Time elapsed:", ferry_json_object_int (job, "elapsed_ms"));
  JsonObject *progress = ferry_json_object_object (job, "progress");
  if (progress != NULL)
    {
      g_print ("%-20s %.0f%% (%s)", "Progress:", json_object_get_double_member (progress, "percent"),
               ferry_json_object_string (progress, "phase"));
      if (json_object_has_member (progress, "eta_s"))
        g_print (", about %.0f s left", json_object_get_double_member (progress, "eta_s"));
      g_print ("\n");
    }
  JsonObject *plan = ferry_json_object_object (stats, "ferry-plan");
  if (plan != NULL)
    {
      JsonObject *prediction = ferry_json_object_object (plan, "prediction");
      g_print ("%-20s %s — %s\n", "Strategy:", ferry_json_object_string (plan, "strategy"),
               ferry_json_object_string (plan, "reason"));
      if (prediction != NULL && json_object_has_member (prediction, "total_s"))
        g_print ("%-20s %.1f s total, %.0f ms downtime\n", "Predicted:",
                 json_object_get_double_member (prediction, "total_s"),
                 json_object_get_double_member (prediction, "downtime_ms"));
    }
  JsonObject *restart = ferry_json_object_object (stats, "ferry-restart");
  if (restart != NULL)
    {
      g_autofree char *when = ferry_format_restart (restart);
      g_print ("%-20s %s: %s\n", "Restarted:", when, ferry_json_object_string (restart, "reason"));
    }
  JsonObject *revised = ferry_json_object_object (stats, "ferry-revised");
  JsonObject *revised_prediction = revised ? ferry_json_object_object (revised, "prediction") : NULL;
  if (revised_prediction != NULL)
    {
      g_print ("%-20s ", "Revised:");
      if (json_object_has_member (revised_prediction, "total_s"))
        g_print ("%.1f s total, %.0f ms downtime", json_object_get_double_member (revised_prediction, "total_s"),
                 json_object_get_double_member (revised_prediction, "downtime_ms"));
      else
        g_print ("pre-copy does not converge");
      g_print (" (after QEMU's set-up: %.0f µs a page)\n",
               json_object_get_double_member_with_default (revised, "sync_us_per_page", 0));
    }
  if (ram != NULL)
    {
      gint64 transferred = ferry_json_object_int (ram, "transferred");
      gint64 remaining = ferry_json_object_int (ram, "remaining");
      gint64 total = ferry_json_object_int (ram, "total");
      print_bytes_line ("Data processed:", transferred);
      print_bytes_line ("Data remaining:", remaining);
      print_bytes_line ("Data total:", total);
      print_bytes_line ("Memory processed:", ferry_json_object_int (ram, "normal-bytes"));
      g_print ("%-20s %.1f MiB/s\n", "Memory bandwidth:",
               json_object_has_member (ram, "mbps")
               ? json_object_get_double_member (ram, "mbps") / 8.0 * 1e6 / (1024.0 * 1024.0) : 0.0);
      g_print ("%-20s %" G_GINT64_FORMAT " pages/s\n", "Dirty rate:",
               ferry_json_object_int (ram, "dirty-pages-rate"));
      g_print ("%-20s %" G_GINT64_FORMAT "\n", "Iteration:", ferry_json_object_int (ram, "dirty-sync-count"));
      g_print ("%-20s %" G_GINT64_FORMAT "\n", "Page size:", ferry_json_object_int (ram, "page-size"));
    }
  /* The downtime limit QEMU works to, when strategy auto started it below
   * the allowed one (and where it got raised to). */
  gint64 limit_now = stats ? ferry_json_object_int (stats, "ferry-downtime-limit-now-ms") : 0;
  gint64 limit_allowed = stats ? ferry_json_object_int (stats, "downtime-limit-ms") : 0;
  if (limit_now > 0 && limit_now < limit_allowed)
    g_print ("%-20s %" G_GINT64_FORMAT " ms (%" G_GINT64_FORMAT " allowed)\n", "Downtime limit:", limit_now,
             limit_allowed);
  else if (limit_allowed > 0)
    g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Downtime limit:", limit_allowed);
  if (stats != NULL && json_object_has_member (stats, "expected-downtime"))
    g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Expected downtime:",
             ferry_json_object_int (stats, "expected-downtime"));
  if (stats != NULL && json_object_has_member (stats, "downtime"))
    g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Downtime:", ferry_json_object_int (stats, "downtime"));
  if (stats != NULL && json_object_has_member (stats, "ferry-guest-downtime-ms"))
    g_print ("%-20s %" G_GINT64_FORMAT " ms (source stop to destination resume)\n", "Guest paused:",
             ferry_json_object_int (stats, "ferry-guest-downtime-ms"));
  if (stats != NULL && json_object_has_member (stats, "setup-time"))
    g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Setup time:", ferry_json_object_int (stats, "setup-time"));
  if (stats != NULL && json_object_has_member (stats, "total-time"))
    g_print ("%-20s %" G_GINT64_FORMAT " ms\n", "Total time:", ferry_json_object_int (stats, "total-time"));
  print_warm (ferry_json_object_object (stats, "ferry-warm"));
  if (ferry_json_object_string (job, "error"))
    g_print ("%-20s %s\n", "Error:", ferry_json_object_string (job, "error"));
}

/* Prints the job's events from index `from` on, one a line (as JSON
 * lines with --json); returns how many it has. */
static guint
print_events_from (JsonObject *job, guint from)
{
  JsonNode *node = json_object_get_member (job, "events");
  JsonArray *events = node && JSON_NODE_HOLDS_ARRAY (node) ? json_node_get_array (node) : NULL;
  guint count = events ? json_array_get_length (events) : 0;
  for (guint i = from; i < count; i++)
    {
      JsonObject *event = json_array_get_object_element (events, i);
      if (ferry_global.json)
        {
          g_autofree char *line = ferry_json_object_to_string (event, FALSE);
          g_print ("%s\n", line);
          continue;
        }
      gint64 time_us = ferry_json_object_int (event, "time_us");
      g_autoptr (GDateTime) time = g_date_time_new_from_unix_local (time_us / G_USEC_PER_SEC);
      g_autofree char *seconds = time ? g_date_time_format (time, "%H:%M:%S") : g_strdup ("?");
      g_print ("  %s.%03d %-7s %s\n", seconds, (int) (time_us % G_USEC_PER_SEC / 1000),
               ferry_json_object_string (event, "level"), ferry_json_object_string (event, "message"));
    }
  return MAX (count, from);
}

/* Agent request for the job's latest state: at once, or (following)
 * held until it has more than `seen` events or ends, at most 10 s. */
static JsonObject *
get_job (FerryClient *client, const char *escaped, gboolean completed, gint64 seen, GError **error)
{
  g_autofree char *path = NULL;
  if (completed)
    path = g_strdup_printf ("/v1/vms/%s/job?completed=1", escaped);
  else if (seen >= 0)
    path = g_strdup_printf ("/v1/vms/%s/job?wait_ms=10000&events_after=%" G_GINT64_FORMAT, escaped, seen);
  else
    path = g_strdup_printf ("/v1/vms/%s/job", escaped);
  return ferry_client_call (client, "GET", path, NULL, error);
}

#define FOLLOW_MIN_ASK_MS 300

/* ferry job events NAME [--completed] [--follow]: the event log; with
 * --follow each new event as it is recorded, until the job ends (exit
 * status 0 only when it completed). */
static int
job_events_command (FerryClient *client, const char *escaped, gboolean completed, gboolean follow)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) job = get_job (client, escaped, completed, -1, &error);
  if (job == NULL)
    return ferry_cli_fail (error);
  gint64 job_id = ferry_json_object_int (job, "id");
  guint seen = print_events_from (job, 0);
  if (!follow)
    return 0;
  while (json_object_get_boolean_member_with_default (job, "active", FALSE))
    {
      gint64 asked_us = g_get_monotonic_time ();
      guint seen_before = seen;
      g_clear_pointer (&job, json_object_unref);
      job = get_job (client, escaped, FALSE, seen, &error);
      if (job == NULL)
        return ferry_cli_fail (error);
      if (ferry_json_object_int (job, "id") != job_id)
        {
          g_printerr ("ferry job events: job %" G_GINT64_FORMAT " is gone; a newer one started\n", job_id);
          return 1;
        }
      seen = print_events_from (job, seen);
      /* New events are printed and asked after at once. */
      if (seen == seen_before)
        ferry_cli_pace (asked_us, FOLLOW_MIN_ASK_MS);
    }
  return g_strcmp0 (ferry_json_object_string (job, "state"), "completed") == 0 ? 0 : 1;
}

int
ferry_cmd_job (int argc, char **argv)
{
  gboolean completed = FALSE;
  gboolean events = FALSE;
  gboolean follow = FALSE;
  GOptionEntry entries[] = {
    { "completed", 0, 0, G_OPTION_ARG_NONE, &completed, "info, events: the last job that ended", NULL },
    { "events", 0, 0, G_OPTION_ARG_NONE, &events, "info: also print the job's event log", NULL },
    { "follow", 'f', 0, G_OPTION_ARG_NONE, &follow,
      "events: print new events as they come until the job ends (exit status 0 if it completed)", NULL },
    { NULL }
  };
  g_autoptr (GError) error = NULL;

  if (!ferry_cli_parse ("info | events | abort NAME", "Migration jobs.", entries, &argc, &argv))
    return 2;
  if (argc != 3 || (!g_str_equal (argv[1], "info") && !g_str_equal (argv[1], "events")
                    && !g_str_equal (argv[1], "abort")))
    {
      g_printerr ("ferry job: usage: job info NAME [--completed] [--events] | job events NAME [--completed] "
                  "[--follow] | job abort NAME\n");
      return 2;
    }
  if (follow && (!g_str_equal (argv[1], "events") || completed))
    {
      g_printerr ("ferry job: --follow: only with 'job events', and not with --completed (that job has ended)\n");
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  g_autofree char *escaped = ferry_client_escape (argv[2]);
  if (g_str_equal (argv[1], "events"))
    return job_events_command (client, escaped, completed, follow);
  if (g_str_equal (argv[1], "abort"))
    {
      g_autofree char *path = g_strdup_printf ("/v1/vms/%s/job/abort", escaped);
      g_autoptr (JsonObject) body = json_object_new ();
      g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
      if (reply == NULL)
        return ferry_cli_fail (error);
      if (ferry_global.json)
        ferry_cli_print_json (reply);
      else
        g_print ("abort requested; the VM stays on the source\n");
      return 0;
    }
  g_autoptr (JsonObject) reply = get_job (client, escaped, completed, -1, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (reply);
      return 0;
    }
  ferry_print_job (reply);
  if (events)
    {
      g_print ("\nEvents:\n");
      print_events_from (reply, 0);
    }
  return 0;
}
