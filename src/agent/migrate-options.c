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
  };
}

gboolean
ferry_migrate_options_multifd (const FerryMigrateOptions *options)
{
  return options->parallel_connections > 1;
}

static gboolean
refuse (GError **error, const char *message)
{
  g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, message);
  return FALSE;
}

gboolean
ferry_migrate_options_validate (const FerryMigrateOptions *options, GError **error)
{
  gboolean tuned = options->parallel_connections > 1 || options->compress != FERRY_COMPRESS_NONE
                   || options->xbzrle || options->auto_converge || options->postcopy;
  if (!options->live && (tuned || options->bandwidth_mib > 0 || options->postcopy_after_s > 0))
    return refuse (error, "mode: bandwidth, multifd, compression, xbzrle, auto-converge and "
                          "post-copy apply to live migration only");
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
  "postcopy_after_s", "completion_timeout_per_gib_s", "progress_timeout_s", "timeout_action", NULL
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

gboolean
ferry_migrate_options_parse (JsonObject *request, char **dest, FerryMigrateOptions *options,
                             GError **error)
{
  static const char *const modes[] = { "live", "offline", NULL };
  static const char *const strategies[] = { "auto", "manual", NULL };
  static const char *const compressions[] = { "none", "zlib", "zstd", NULL };
  static const char *const actions[] = { "abort", "postcopy", NULL };
  guint mode = G_MAXUINT, strategy = FERRY_STRATEGY_AUTO, compress = FERRY_COMPRESS_NONE;
  guint action = FERRY_TIMEOUT_ABORT;

  ferry_migrate_options_init (options);
  if (!ferry_json_reject_unknown (request, migrate_fields, error)
      || !ferry_json_get_string (request, "dest", TRUE, dest, error)
      || !parse_choice (request, "mode", modes, 2, &mode, error)
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
  if (mode == G_MAXUINT)
    return refuse (error, "mode: required ('live' or 'offline')");
  options->live = mode == 0;
  options->strategy = strategy;
  options->compress = compress;
  options->timeout_action = action;
  return ferry_migrate_options_validate (options, error);
}

JsonObject *
ferry_migrate_options_to_json (const FerryMigrateOptions *options)
{
  JsonObject *json = json_object_new ();
  json_object_set_string_member (json, "mode", options->live ? "live" : "offline");
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
  json_object_set_int_member (json, "completion_timeout_per_gib_s", options->completion_timeout_per_gib_s);
  json_object_set_int_member (json, "progress_timeout_s", options->progress_timeout_s);
  json_object_set_string_member (json, "timeout_action",
                                 options->timeout_action == FERRY_TIMEOUT_ABORT ? "abort" : "postcopy");
  return json;
}
