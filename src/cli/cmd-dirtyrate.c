/* ferry dirtyrate — how fast a running guest dirties its memory. */
#include "cli.h"

#include "jsonutil.h"

int
ferry_cmd_dirtyrate (int argc, char **argv)
{
  int period_s = 1;
  GOptionEntry entries[] = {
    { "period", 0, 0, G_OPTION_ARG_INT, &period_s, "Seconds to sample (1..60, default 1)", "S" },
    { NULL }
  };
  g_autoptr (GError) error = NULL;

  if (!ferry_cli_parse ("NAME", "Measure a running guest's dirty-page rate (QEMU page sampling).",
                        entries, &argc, &argv))
    return 2;
  if (argc != 2)
    {
      g_printerr ("ferry dirtyrate: usage: dirtyrate NAME [--period S]\n");
      return 2;
    }
  if (period_s < 1 || period_s > 60)
    {
      g_printerr ("ferry dirtyrate: --period must be between 1 and 60 seconds\n");
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  g_autofree char *escaped = ferry_client_escape (argv[1]);
  g_autofree char *path = g_strdup_printf ("/v1/vms/%s/dirtyrate", escaped);
  g_autoptr (JsonObject) body = json_object_new ();
  json_object_set_int_member (body, "period_s", period_s);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    ferry_cli_print_json (reply);
  else
    g_print ("%s: dirty rate %" G_GINT64_FORMAT " MiB/s (sampled %" G_GINT64_FORMAT " pages over %"
             G_GINT64_FORMAT " s)\n", argv[1], ferry_json_object_int (reply, "dirty_rate_mib_s"),
             ferry_json_object_int (reply, "sample_pages"), ferry_json_object_int (reply, "period_s"));
  return 0;
}
