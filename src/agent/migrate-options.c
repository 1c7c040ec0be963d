/* ferry agent — migration options: defaults, validation, JSON.
 *
 * Defaults follow KubeVirt where it has one (completion timeout 150 s per
 * GiB, progress timeout 150 s) and libvirt elsewhere (300 ms downtime).
 */
#include "agent.h"

#include "jsonutil.h"

#define MAX_CHANNELS 16
#define MAX_TIMEOUT_S 86400

static const char *const compress_names[] = {
  [FERRY_COMPRESS_NONE] = "none",
  [FERRY_COMPRESS_ZLIB] = "zlib",
  [FERRY_COMPRESS_ZSTD] = "zstd",
};

const char *
ferry_compress_to_string (FerryCompress compress)
{
  return compress < G_N_ELEMENTS (compress_names) ? compress_names[compress] : "none";
}

void
ferry_migrate_options_init (FerryMigrateOptions *options)
{
  *options = (FerryMigrateOptions) {
    .tls = TRUE,
    .max_downtime_ms = 300,
    .strategy = FERRY_STRATEGY_AUTO,
    .completion_timeout_per_gib_s = 150,
    .progress_timeout_s = 150,
    .timeout_action = FERRY_TIMEOUT_ABORT,
    .parallel_disks = 2,
    .precopy_interval_s = FERRY_WARM_DEFAULT_INTERVAL_S,
  };
}

const char *
ferry_migrate_options_map_pool (const FerryMigrateOptions *options, const char *pool)
{
  for (guint i = 0; i < options->n_storage_map; i++)
    if (g_str_equal (options->storage_map_from[i], pool))
      return options->storage_map_to[i];
  return pool;
}

gboolean
ferry_migrate_options_multifd (const FerryMigrateOptions *options)
{
  return options->parallel_connections > 1;
}

void
ferry_migrate_options_postcopy (FerryMigrateOptions *options, gint64 switch_at_pass)
{
  options->parallel_connections = 0;
  options->compress = FERRY_COMPRESS_NONE;
  options->auto_converge = FALSE;
  options->postcopy = TRUE;
  options->timeout_action = FERRY_TIMEOUT_POSTCOPY;
  /* The switch point is a pass (QEMU's event), not a time: a timer fired
   * inside QEMU's TCG set-up (10-43 s for a busy guest) and switched
   * before the pass it was meant to wait for. */
  options->postcopy_after_s = 0;
  options->postcopy_at_pass = switch_at_pass;
  options->downtime_start_ms = 0;
}

static gboolean
refuse (GError **error, const char *message)
{
  g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, message);
  return FALSE;
}

char *
ferry_format_unix_time (gint64 unix_s)
{
  g_autoptr (GDateTime) when = g_date_time_new_from_unix_utc (unix_s);
  return when ? g_date_time_format_iso8601 (when) : g_strdup_printf ("%" G_GINT64_FORMAT, unix_s);
}

gboolean
ferry_check_future (const char *field, gint64 unix_s, GError **error)
{
  /* A second of slack: "now" given by a client is not in the past. */
  if (unix_s * G_USEC_PER_SEC >= g_get_real_time () - G_USEC_PER_SEC)
    return TRUE;
  g_autofree char *text = ferry_format_unix_time (unix_s);
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: %s is in the past", field, text);
  return FALSE;
}

gboolean
ferry_migrate_options_validate (const FerryMigrateOptions *options, GError **error)
{
  gboolean tuned = options->parallel_connections > 1 || options->compress != FERRY_COMPRESS_NONE
                   || options->xbzrle || options->auto_converge || options->postcopy;
  if (!options->live && (tuned || options->postcopy_after_s > 0))
    return refuse (error, "mode: multifd, compression, xbzrle, auto-converge and "
                          "post-copy apply to live migration only");
  if (!options->live && !options->copy_storage && options->bandwidth_mib > 0)
    return refuse (error, "bandwidth_mib: an offline migration without copy_storage sends no data");
  if (options->warm && (options->live || !options->copy_storage || !options->start))
    return refuse (error, "mode: a warm migration copies the disks and starts the VM on the destination");
  if (!options->warm && (options->cutover_at != 0
                         || options->precopy_interval_s != FERRY_WARM_DEFAULT_INTERVAL_S))
    return refuse (error, "precopy_interval_s: precopy_interval_s and cutover_at apply to warm migration");
  if (options->live && options->copy_storage && options->postcopy)
    return refuse (error, "copy_storage: post-copy cannot be used with a storage copy (the disk mirrors "
                          "end while the guest is paused on the source)");
  if (options->live && (options->start || options->force_stop))
    return refuse (error, "start: force_stop and start apply to offline migration");
  if (options->live && options->delete_source_disks)
    return refuse (error, "delete_source_disks: applies to offline migration");
  if (!options->copy_storage && (options->delete_source_disks || options->n_storage_map > 0))
    return refuse (error, "copy_storage: delete_source_disks and storage_map need copy_storage");
  if (options->delete_source_disks && !options->undefine_source)
    return refuse (error, "delete_source_disks: needs undefine_source (a definition without its "
                          "disks would be left behind)");
  if (ferry_migrate_options_multifd (options) && options->postcopy)
    return refuse (error, "postcopy: QEMU does not support multifd (parallel_connections) "
                          "together with post-copy; choose one");
  if (options->compress != FERRY_COMPRESS_NONE && !ferry_migrate_options_multifd (options))
    return refuse (error, "compress: compression is done by multifd channels; "
                          "set parallel_connections to 2 or more");
  if (options->postcopy_after_s > 0 && !options->postcopy)
    return refuse (error, "postcopy_after_s: needs postcopy");
  if (options->timeout_action == FERRY_TIMEOUT_POSTCOPY && !options->postcopy)
    return refuse (error, "timeout_action: 'postcopy' needs postcopy");
  if (options->strategy == FERRY_STRATEGY_AUTO && options->live && tuned)
    return refuse (error, "strategy: 'auto' chooses multifd, compression, xbzrle, auto-converge "
                          "and post-copy itself; drop those options or use strategy 'manual'");
  return TRUE;
}

static const char *const migrate_fields[] = {
  "dest", "mode", "persistent", "undefine_source", "bandwidth_mib", "max_downtime_ms", "tls",
  "strategy", "parallel_connections", "compress", "xbzrle", "auto_converge", "postcopy",
  "postcopy_after_s", "completion_timeout_per_gib_s", "progress_timeout_s", "timeout_action",
  "copy_storage", "start", "delete_source_disks", "force_stop", "parallel_disks", "storage_map",
  "precopy_interval_s", "cutover_at", NULL
};

static gboolean
parse_choice (JsonObject *request, const char *member, const char *const *choices, guint n,
              guint *out, GError **error)
{
  g_autofree char *value = NULL;
  if (!ferry_json_get_string (request, member, FALSE, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  for (guint i = 0; i < n; i++)
    if (g_str_equal (value, choices[i]))
      {
        *out = i;
        return TRUE;
      }
  g_autofree char *list = g_strjoinv (", ", (char **) choices);
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: must be one of %s", member, list);
  return FALSE;
}

/* "storage_map": ["SRCPOOL=DSTPOOL", ...] */
static gboolean
parse_storage_map (JsonObject *request, FerryMigrateOptions *options, GError **error)
{
  JsonNode *node = json_object_get_member (request, "storage_map");
  if (node == NULL || JSON_NODE_HOLDS_NULL (node))
    return TRUE;
  if (!JSON_NODE_HOLDS_ARRAY (node))
    return refuse (error, "storage_map: must be a list of \"SRCPOOL=DSTPOOL\" strings");
  JsonArray *array = json_node_get_array (node);
  if (json_array_get_length (array) > FERRY_MAX_STORAGE_MAP)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "storage_map: at most %d entries", FERRY_MAX_STORAGE_MAP);
      return FALSE;
    }
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      const char *text = JSON_NODE_HOLDS_VALUE (element) && json_node_get_value_type (element) == G_TYPE_STRING
                           ? json_node_get_string (element) : NULL;
      g_auto (GStrv) pair = text ? g_strsplit (text, "=", 2) : NULL;
      if (pair == NULL || g_strv_length (pair) != 2 || !ferry_vm_name_is_valid (pair[0])
          || !ferry_vm_name_is_valid (pair[1]))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "storage_map[%u]: must be SRCPOOL=DSTPOOL with two pool names", i);
          return FALSE;
        }
      for (guint j = 0; j < options->n_storage_map; j++)
        if (g_str_equal (options->storage_map_from[j], pair[0]))
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                         "storage_map[%u]: pool '%s' is mapped twice", i, pair[0]);
            return FALSE;
          }
      g_strlcpy (options->storage_map_from[options->n_storage_map], pair[0], FERRY_SPEC_MAX_NAME + 1);
      g_strlcpy (options->storage_map_to[options->n_storage_map], pair[1], FERRY_SPEC_MAX_NAME + 1);
      options->n_storage_map++;
    }
  return TRUE;
}

gboolean
ferry_migrate_options_parse (JsonObject *request, char **dest, FerryMigrateOptions *options,
                             GError **error)
{
  static const char *const modes[] = { "live", "offline", "warm", NULL };
  static const char *const strategies[] = { "auto", "manual", NULL };
  static const char *const compressions[] = { "none", "zlib", "zstd", NULL };
  static const char *const actions[] = { "abort", "postcopy", NULL };
  guint mode = G_MAXUINT, strategy = FERRY_STRATEGY_AUTO, compress = FERRY_COMPRESS_NONE;
  guint action = FERRY_TIMEOUT_ABORT;

  ferry_migrate_options_init (options);
  if (!ferry_json_reject_unknown (request, migrate_fields, error)
      || !ferry_json_get_string (request, "dest", TRUE, dest, error)
      || !parse_choice (request, "mode", modes, 3, &mode, error)
      || !ferry_json_get_bool (request, "persistent", FALSE, &options->persistent, error)
      || !ferry_json_get_bool (request, "undefine_source", FALSE, &options->undefine_source, error)
      || !ferry_json_get_bool (request, "tls", FALSE, &options->tls, error)
      || !ferry_json_get_int (request, "bandwidth_mib", FALSE, 0, 1024 * 1024,
                              &options->bandwidth_mib, error)
      || !ferry_json_get_int (request, "max_downtime_ms", FALSE, 1, 2000000,
                              &options->max_downtime_ms, error)
      || !parse_choice (request, "strategy", strategies, 2, &strategy, error)
      || !ferry_json_get_int (request, "parallel_connections", FALSE, 0, MAX_CHANNELS,
                              &options->parallel_connections, error)
      || !parse_choice (request, "compress", compressions, 3, &compress, error)
      || !ferry_json_get_bool (request, "xbzrle", FALSE, &options->xbzrle, error)
      || !ferry_json_get_bool (request, "auto_converge", FALSE, &options->auto_converge, error)
      || !ferry_json_get_bool (request, "postcopy", FALSE, &options->postcopy, error)
      || !ferry_json_get_int (request, "postcopy_after_s", FALSE, 0, MAX_TIMEOUT_S,
                              &options->postcopy_after_s, error)
      || !ferry_json_get_int (request, "completion_timeout_per_gib_s", FALSE, 1, MAX_TIMEOUT_S,
                              &options->completion_timeout_per_gib_s, error)
      || !ferry_json_get_int (request, "progress_timeout_s", FALSE, 1, MAX_TIMEOUT_S,
                              &options->progress_timeout_s, error)
      || !parse_choice (request, "timeout_action", actions, 2, &action, error))
    return FALSE;
  if (!ferry_json_get_bool (request, "copy_storage", FALSE, &options->copy_storage, error)
      || !ferry_json_get_bool (request, "start", FALSE, &options->start, error)
      || !ferry_json_get_bool (request, "delete_source_disks", FALSE, &options->delete_source_disks, error)
      || !ferry_json_get_bool (request, "force_stop", FALSE, &options->force_stop, error)
      || !ferry_json_get_int (request, "parallel_disks", FALSE, 1, FERRY_MAX_PARALLEL_DISKS,
                              &options->parallel_disks, error)
      || !parse_storage_map (request, options, error)
      || !ferry_json_get_int (request, "precopy_interval_s", FALSE, FERRY_WARM_MIN_INTERVAL_S, 7 * 86400,
                              &options->precopy_interval_s, error)
      || !ferry_json_get_int (request, "cutover_at", FALSE, 0, G_MAXINT64, &options->cutover_at, error))
    return FALSE;
  if (mode == G_MAXUINT)
    return refuse (error, "mode: required ('live', 'offline' or 'warm')");
  options->live = mode == 0;
  if (mode == 2)
    {
      /* Warm: the disks go over while the guest runs; it starts on the
       * destination after the cutover. */
      options->warm = options->copy_storage = options->start = TRUE;
    }
  if (options->cutover_at != 0 && !ferry_check_future ("cutover_at", options->cutover_at, error))
    return FALSE;
  options->strategy = strategy;
  options->compress = compress;
  options->timeout_action = action;
  return ferry_migrate_options_validate (options, error);
}

JsonObject *
ferry_migrate_options_to_json (const FerryMigrateOptions *options)
{
  JsonObject *json = json_object_new ();
  json_object_set_string_member (json, "mode", options->live ? "live" : options->warm ? "warm" : "offline");
  if (options->warm)
    {
      json_object_set_int_member (json, "precopy_interval_s", options->precopy_interval_s);
      json_object_set_int_member (json, "cutover_at", options->cutover_at);
    }
  json_object_set_boolean_member (json, "persistent", options->persistent);
  json_object_set_boolean_member (json, "undefine_source", options->undefine_source);
  json_object_set_boolean_member (json, "tls", options->tls);
  json_object_set_int_member (json, "bandwidth_mib", options->bandwidth_mib);
  json_object_set_int_member (json, "max_downtime_ms", options->max_downtime_ms);
  json_object_set_string_member (json, "strategy",
                                 options->strategy == FERRY_STRATEGY_AUTO ? "auto" : "manual");
  json_object_set_int_member (json, "parallel_connections", options->parallel_connections);
  json_object_set_string_member (json, "compress", ferry_compress_to_string (options->compress));
  json_object_set_boolean_member (json, "xbzrle", options->xbzrle);
  json_object_set_boolean_member (json, "auto_converge", options->auto_converge);
  json_object_set_boolean_member (json, "postcopy", options->postcopy);
  json_object_set_int_member (json, "postcopy_after_s", options->postcopy_after_s);
  json_object_set_int_member (json, "postcopy_at_pass", options->postcopy_at_pass);
  json_object_set_int_member (json, "downtime_start_ms", options->downtime_start_ms);
  json_object_set_int_member (json, "completion_timeout_per_gib_s", options->completion_timeout_per_gib_s);
  json_object_set_int_member (json, "progress_timeout_s", options->progress_timeout_s);
  json_object_set_string_member (json, "timeout_action",
                                 options->timeout_action == FERRY_TIMEOUT_ABORT ? "abort" : "postcopy");
  json_object_set_boolean_member (json, "copy_storage", options->copy_storage);
  if (!options->live)
    {
      json_object_set_boolean_member (json, "start", options->start);
      json_object_set_boolean_member (json, "delete_source_disks", options->delete_source_disks);
      json_object_set_boolean_member (json, "force_stop", options->force_stop);
      json_object_set_int_member (json, "parallel_disks", options->parallel_disks);
      JsonArray *map = json_array_new ();
      for (guint i = 0; i < options->n_storage_map; i++)
        {
          g_autofree char *pair = g_strdup_printf ("%s=%s", options->storage_map_from[i],
                                                   options->storage_map_to[i]);
          json_array_add_string_element (map, pair);
        }
      json_object_set_array_member (json, "storage_map", map);
    }
  return json;
}

void
ferry_migrate_options_from_stored (const char *options_json, FerryMigrateOptions *options)
{
  ferry_migrate_options_init (options);
  g_autoptr (JsonNode) node = options_json ? json_from_string (options_json, NULL) : NULL;
  JsonObject *saved = node && JSON_NODE_HOLDS_OBJECT (node) ? json_node_get_object (node) : NULL;
  if (saved == NULL)
    return;
  options->live = g_strcmp0 (ferry_json_object_string (saved, "mode"), "live") == 0;
  options->warm = g_strcmp0 (ferry_json_object_string (saved, "mode"), "warm") == 0;
  options->precopy_interval_s = json_object_get_int_member_with_default (saved, "precopy_interval_s",
                                                                         FERRY_WARM_DEFAULT_INTERVAL_S);
  options->cutover_at = json_object_get_int_member_with_default (saved, "cutover_at", 0);
  options->persistent = json_object_get_boolean_member_with_default (saved, "persistent", FALSE);
  options->undefine_source = json_object_get_boolean_member_with_default (saved, "undefine_source", FALSE);
  options->tls = json_object_get_boolean_member_with_default (saved, "tls", TRUE);
  options->bandwidth_mib = json_object_get_int_member_with_default (saved, "bandwidth_mib", 0);
  options->max_downtime_ms = json_object_get_int_member_with_default (saved, "max_downtime_ms", 300);
  options->strategy = g_strcmp0 (ferry_json_object_string (saved, "strategy"), "manual") == 0
                        ? FERRY_STRATEGY_MANUAL : FERRY_STRATEGY_AUTO;
  options->parallel_connections = json_object_get_int_member_with_default (saved, "parallel_connections", 0);
  for (guint i = FERRY_COMPRESS_NONE; i <= FERRY_COMPRESS_ZSTD; i++)
    if (g_strcmp0 (ferry_json_object_string (saved, "compress"), compress_names[i]) == 0)
      options->compress = i;
  options->xbzrle = json_object_get_boolean_member_with_default (saved, "xbzrle", FALSE);
  options->auto_converge = json_object_get_boolean_member_with_default (saved, "auto_converge", FALSE);
  options->postcopy = json_object_get_boolean_member_with_default (saved, "postcopy", FALSE);
  options->postcopy_after_s = json_object_get_int_member_with_default (saved, "postcopy_after_s", 0);
  options->postcopy_at_pass = json_object_get_int_member_with_default (saved, "postcopy_at_pass", 0);
  options->downtime_start_ms = json_object_get_int_member_with_default (saved, "downtime_start_ms", 0);
  options->completion_timeout_per_gib_s =
    json_object_get_int_member_with_default (saved, "completion_timeout_per_gib_s", 150);
  options->progress_timeout_s = json_object_get_int_member_with_default (saved, "progress_timeout_s", 150);
  options->timeout_action = g_strcmp0 (ferry_json_object_string (saved, "timeout_action"), "postcopy") == 0
                              ? FERRY_TIMEOUT_POSTCOPY : FERRY_TIMEOUT_ABORT;
  options->copy_storage = json_object_get_boolean_member_with_default (saved, "copy_storage", FALSE);
  options->start = json_object_get_boolean_member_with_default (saved, "start", FALSE);
  options->delete_source_disks = json_object_get_boolean_member_with_default (saved, "delete_source_disks", FALSE);
  options->force_stop = json_object_get_boolean_member_with_default (saved, "force_stop", FALSE);
  options->parallel_disks = json_object_get_int_member_with_default (saved, "parallel_disks", 2);
}
