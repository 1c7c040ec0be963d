/* ferry pool / ferry volume — an agent's storage pools and their volumes. */
#include "cli.h"

#include "jsonutil.h"

static JsonArray *
member_array (JsonObject *object, const char *member)
{
  JsonNode *node = json_object_get_member (object, member);
  return node != NULL && JSON_NODE_HOLDS_ARRAY (node) ? json_node_get_array (node) : NULL;
}

static char *
pool_path (const char *pool, const char *suffix)
{
  g_autofree char *escaped = ferry_client_escape (pool);
  return g_strdup_printf ("/v1/pools/%s%s", escaped, suffix ? suffix : "");
}

/* "512M", "4G", "1T", "1TiB", "1048576": bytes. Binary units (as qemu-img
 * reads them), so 4G is 4 GiB. */
static gboolean
parse_size (const char *text, guint64 *bytes)
{
  static const struct {
    const char *suffix;
    guint shift;
  } units[] = {
    { "", 0 }, { "B", 0 }, { "K", 10 }, { "KiB", 10 }, { "M", 20 }, { "MiB", 20 },
    { "G", 30 }, { "GiB", 30 }, { "T", 40 }, { "TiB", 40 },
  };
  guint64 value = 0;
  const char *p = text;
  if (!g_ascii_isdigit (*p))
    return FALSE;
  for (; g_ascii_isdigit (*p); p++)
    {
      guint digit = (guint) (*p - '0');
      if (value > (G_MAXUINT64 - digit) / 10)
        return FALSE;
      value = value * 10 + digit;
    }
  for (gsize i = 0; i < G_N_ELEMENTS (units); i++)
    if (g_ascii_strcasecmp (p, units[i].suffix) == 0)
      {
        if (value > (G_MAXUINT64 >> units[i].shift))
          return FALSE;
        *bytes = value << units[i].shift;
        return TRUE;
      }
  return FALSE;
}

static void
print_volume_table (JsonArray *volumes)
{
  g_print ("%-32s %-8s %12s %12s\n", "NAME", "FORMAT", "SIZE", "ALLOCATED");
  for (guint i = 0; volumes != NULL && i < json_array_get_length (volumes); i++)
    {
      JsonObject *volume = json_array_get_object_element (volumes, i);
      g_autofree char *size = ferry_format_bytes (ferry_json_object_int (volume, "virtual_size"));
      g_autofree char *allocated = ferry_format_bytes (ferry_json_object_int (volume, "allocated_bytes"));
      g_print ("%-32s %-8s %12s %12s\n", ferry_json_object_string (volume, "name"),
               ferry_json_object_string (volume, "format"), size, allocated);
    }
}

static int
pool_list (FerryClient *client)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", "/v1/pools", NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (reply);
      return 0;
    }
  JsonArray *pools = member_array (reply, "pools");
  g_print ("%-16s %12s %12s %7s  %s\n", "NAME", "CAPACITY", "AVAILABLE", "VOLUMES", "PATH");
  for (guint i = 0; pools != NULL && i < json_array_get_length (pools); i++)
    {
      JsonObject *pool = json_array_get_object_element (pools, i);
      g_autofree char *capacity = ferry_format_bytes (ferry_json_object_int (pool, "capacity_bytes"));
      g_autofree char *available = ferry_format_bytes (ferry_json_object_int (pool, "available_bytes"));
      g_print ("%-16s %12s %12s %7" G_GINT64_FORMAT "  %s\n", ferry_json_object_string (pool, "name"),
               capacity, available, ferry_json_object_int (pool, "volumes"),
               ferry_json_object_string (pool, "path"));
    }
  return 0;
}

static int
pool_info (FerryClient *client, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = pool_path (name, NULL);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", path, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (reply);
      return 0;
    }
  g_autofree char *capacity = ferry_format_bytes (ferry_json_object_int (reply, "capacity_bytes"));
  g_autofree char *available = ferry_format_bytes (ferry_json_object_int (reply, "available_bytes"));
  g_print ("Name:        %s\n", ferry_json_object_string (reply, "name"));
  g_print ("Path:        %s\n", ferry_json_object_string (reply, "path"));
  g_print ("Capacity:    %s\n", capacity);
  g_print ("Available:   %s\n", available);
  g_print ("Volumes:     %" G_GINT64_FORMAT "\n", ferry_json_object_int (reply, "volumes"));
  JsonArray *volumes = member_array (reply, "volume_list");
  if (volumes != NULL && json_array_get_length (volumes) > 0)
    {
      g_print ("\n");
      print_volume_table (volumes);
    }
  return 0;
}

int
ferry_cmd_pool (int argc, char **argv)
{
  if (!ferry_cli_parse ("list | info NAME", "Storage pools (directories of disk images) on an agent.",
                        NULL, &argc, &argv))
    return 2;
  gboolean list = argc >= 2 && g_str_equal (argv[1], "list");
  gboolean info = argc >= 2 && g_str_equal (argv[1], "info");
  if (!(list && argc == 2) && !(info && argc == 3))
    {
      g_printerr ("ferry pool: usage: pool list | pool info NAME\n");
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  return list ? pool_list (client) : pool_info (client, argv[2]);
}

static int
volume_list (FerryClient *client, const char *pool)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = pool_path (pool, "/volumes");
  g_autoptr (JsonObject) reply = ferry_client_call (client, "GET", path, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    ferry_cli_print_json (reply);
  else
    print_volume_table (member_array (reply, "volumes"));
  return 0;
}

static int
volume_create (FerryClient *client, const char *pool, const char *name, guint64 size,
               const char *format)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = pool_path (pool, "/volumes");
  g_autoptr (JsonObject) body = json_object_new ();
  json_object_set_string_member (body, "name", name);
  json_object_set_string_member (body, "format", format);
  json_object_set_int_member (body, "size_bytes", (gint64) size);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "POST", path, body, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    {
      ferry_cli_print_json (reply);
      return 0;
    }
  g_autofree char *shown = ferry_format_bytes (ferry_json_object_int (reply, "virtual_size"));
  g_print ("Volume '%s/%s' created (%s, %s)\n", pool, name, ferry_json_object_string (reply, "format"),
           shown);
  return 0;
}

static int
volume_delete (FerryClient *client, const char *pool, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *escaped = ferry_client_escape (name);
  g_autofree char *suffix = g_strconcat ("/volumes/", escaped, NULL);
  g_autofree char *path = pool_path (pool, suffix);
  g_autoptr (JsonObject) reply = ferry_client_call (client, "DELETE", path, NULL, &error);
  if (reply == NULL)
    return ferry_cli_fail (error);
  if (ferry_global.json)
    ferry_cli_print_json (reply);
  else
    g_print ("Volume '%s/%s' deleted\n", pool, name);
  return 0;
}

int
ferry_cmd_volume (int argc, char **argv)
{
  g_autofree char *size_text = NULL;
  g_autofree char *format = NULL;
  GOptionEntry entries[] = {
    { "size", 0, 0, G_OPTION_ARG_STRING, &size_text,
      "create: virtual size in bytes or with K, M, G, T (binary: 4G = 4 GiB)", "SIZE" },
    { "format", 0, 0, G_OPTION_ARG_STRING, &format, "create: qcow2 (default) or raw", "FORMAT" },
    { NULL }
  };
  if (!ferry_cli_parse ("list POOL | create POOL NAME --size SIZE [--format qcow2|raw] | delete POOL NAME",
                        "Volumes (disk images) in an agent's storage pools.", entries, &argc, &argv))
    return 2;
  const char *verb = argc >= 2 ? argv[1] : "";
  gboolean list = g_str_equal (verb, "list");
  gboolean create = g_str_equal (verb, "create");
  gboolean delete = g_str_equal (verb, "delete");
  if (!(list && argc == 3) && !((create || delete) && argc == 4))
    {
      g_printerr ("ferry volume: usage: volume list POOL | volume create POOL NAME --size SIZE "
                  "[--format qcow2|raw] | volume delete POOL NAME\n");
      return 2;
    }
  guint64 size = 0;
  if (create && size_text == NULL)
    {
      g_printerr ("ferry volume create: --size is required (e.g. --size 4G)\n");
      return 2;
    }
  if (create && !parse_size (size_text, &size))
    {
      g_printerr ("ferry volume create: --size: '%s' is not a size; give bytes or a number with "
                  "K, M, G or T (e.g. 512M, 4G, 1T)\n", size_text);
      return 2;
    }
  if (!create && (size_text != NULL || format != NULL))
    {
      g_printerr ("ferry volume %s: --size and --format are for create\n", verb);
      return 2;
    }
  if (format != NULL && !g_str_equal (format, "qcow2") && !g_str_equal (format, "raw"))
    {
      g_printerr ("ferry volume create: --format must be qcow2 or raw (got '%s')\n", format);
      return 2;
    }
  g_autoptr (FerryClient) client = ferry_cli_client ();
  if (client == NULL)
    return 1;
  if (list)
    return volume_list (client, argv[2]);
  if (create)
    return volume_create (client, argv[2], argv[3], size, format ? format : "qcow2");
  return volume_delete (client, argv[2], argv[3]);
}
