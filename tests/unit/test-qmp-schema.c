/* Tests the QMP schema checker against the schema captured from QEMU 7.2
 * (tests/unit/data/qmp-schema-7.2.json, scripts/capture-qmp-schema.sh). */
#include <string.h>

#include <glib.h>

#include "ferry-error.h"
#include "agent.h"
#include "qmp-schema.h"

static FerryQmpSchema *schema;

static char *
data_path (const char *name)
{
  const char *dir = g_getenv ("FERRY_TEST_DATA");

  if (dir != NULL)
    return g_build_filename (dir, name, NULL);
  return g_test_build_filename (G_TEST_DIST, "data", name, NULL);
}

static void
assert_accepted (const char *command_json)
{
  g_autoptr(GError) error = NULL;

  if (!ferry_qmp_schema_check_command (schema, command_json, &error))
    g_error ("rejected %s: %s", command_json, error->message);
}

/* Rejected with FERRY_ERROR_INVALID_ARGUMENT and exactly this message. */
static void
assert_rejected (const char *command_json, const char *message)
{
  g_autoptr(GError) error = NULL;

  g_assert_false (ferry_qmp_schema_check_command (schema, command_json, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_cmpstr (error->message, ==, message);
}

static void
test_load (void)
{
  g_assert_nonnull (schema);
  g_assert_true (ferry_qmp_schema_has_command (schema, "migrate"));
  g_assert_true (ferry_qmp_schema_has_command (schema, "migrate_cancel"));
  g_assert_false (ferry_qmp_schema_has_command (schema, "migrate-cancel"));
  /* Events share the file but are not commands. */
  g_assert_false (ferry_qmp_schema_has_command (schema, "MIGRATION"));
}

static void
test_load_missing_file (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryQmpSchema) s = ferry_qmp_schema_load ("/nonexistent/schema.json", &error);

  g_assert_null (s);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

static void
test_load_not_array (void)
{
  static const char data[] = "{\"return\": []}";
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryQmpSchema) s = ferry_qmp_schema_new_from_data (data, sizeof data - 1, &error);

  g_assert_null (s);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void
test_valid_set_capabilities (void)
{
  assert_accepted ("{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": ["
                   "{\"capability\": \"events\", \"state\": true},"
                   "{\"capability\": \"pause-before-switchover\", \"state\": false}]}, \"id\": \"1\"}");
}

static void
test_valid_set_parameters (void)
{
  assert_accepted ("{\"execute\": \"migrate-set-parameters\", \"arguments\": "
                   "{\"max-bandwidth\": 125000000, \"tls-creds\": \"tls0\"}}");
}

/* In the set-command tls-creds is StrOrNull (an alternate): null resets it. */
static void
test_valid_alternate_null (void)
{
  assert_accepted ("{\"execute\": \"migrate-set-parameters\", \"arguments\": "
                   "{\"tls-creds\": null, \"tls-hostname\": \"\"}}");
}

static void
test_valid_migrate (void)
{
  assert_accepted ("{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:/run/mig.sock\"}}");
}

/* object-add is a flat union on qom-type in 7.2: the tls-creds-x509 members
 * sit beside qom-type and id. */
static void
test_valid_object_add_variant (void)
{
  assert_accepted ("{\"execute\": \"object-add\", \"arguments\": {\"qom-type\": \"tls-creds-x509\","
                   " \"id\": \"tls0\", \"dir\": \"/etc/ferry/tls\", \"endpoint\": \"server\","
                   " \"verify-peer\": true}}");
}

static void
test_valid_no_arguments (void)
{
  assert_accepted ("{\"execute\": \"query-migrate\"}");
  assert_accepted ("{\"execute\": \"query-migrate\", \"arguments\": {}}");
}

static void
test_invalid_unknown_command (void)
{
  assert_rejected ("{\"execute\": \"migrate-cancel\"}",
                   "migrate-cancel: no such command in the QMP schema");
}

static void
test_invalid_unknown_argument (void)
{
  assert_rejected ("{\"execute\": \"migrate-set-parameters\", \"arguments\": {\"max-bandwith\": 1}}",
                   "migrate-set-parameters.max-bandwith: unknown member");
}

static void
test_invalid_wrong_type (void)
{
  assert_rejected ("{\"execute\": \"migrate-set-parameters\", \"arguments\": {\"max-bandwidth\": \"fast\"}}",
                   "migrate-set-parameters.max-bandwidth: expected int, got string");
}

static void
test_invalid_enum_value (void)
{
  assert_rejected ("{\"execute\": \"calc-dirty-rate\", \"arguments\": {\"calc-time\": 1, \"mode\": \"sampling\"}}",
                   "calc-dirty-rate.mode: 'sampling' is not one of page-sampling, dirty-ring, dirty-bitmap");
}

static void
test_invalid_missing_required (void)
{
  assert_rejected ("{\"execute\": \"migrate\", \"arguments\": {\"detach\": true}}",
                   "migrate.uri: missing required member");
}

static void
test_invalid_array_element (void)
{
  assert_rejected ("{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": ["
                   "{\"capability\": \"events\", \"state\": true},"
                   "{\"capability\": \"multifd\", \"state\": \"on\"}]}}",
                   "migrate-set-capabilities.capabilities[1].state: expected bool, got string");
}

static void
test_invalid_alternate (void)
{
  assert_rejected ("{\"execute\": \"migrate-set-parameters\", \"arguments\": {\"tls-creds\": 5}}",
                   "migrate-set-parameters.tls-creds: expected str or null, got int");
}

/* A member of another qom-type's variant is not accepted. */
static void
test_invalid_other_variant_member (void)
{
  assert_rejected ("{\"execute\": \"object-add\", \"arguments\": {\"qom-type\": \"tls-creds-x509\","
                   " \"id\": \"tls0\", \"size\": 1048576}}",
                   "object-add.size: unknown member");
}

static void
test_invalid_union_tag (void)
{
  g_autoptr(GError) error = NULL;

  g_assert_false (ferry_qmp_schema_check_command (
    schema, "{\"execute\": \"object-add\", \"arguments\": {\"qom-type\": \"no-such-type\", \"id\": \"x\"}}",
    &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  /* The full list of qom-types follows; it changes with every QEMU. */
  g_assert_true (g_str_has_prefix (error->message,
                                   "object-add.qom-type: 'no-such-type' is not one of authz-list, "));
  g_assert_nonnull (strstr (error->message, ", tls-creds-x509, "));
}

static void
test_invalid_top_level (void)
{
  assert_rejected ("{\"execute\": \"query-migrate\", \"argument\": {}}",
                   "query-migrate: unknown top-level member 'argument'");
  assert_rejected ("[1]", "command is not a JSON object");
  assert_rejected ("{\"arguments\": {}}", "execute: missing or not a string");
}

/* ------------------------------------------------------------------------
 * FERRY COMMANDS — every QMP command the agent sends, built by the agent's
 * own builders (src/agent/qemu-cmds.c) and serialised exactly as the QMP
 * client puts it on the wire.
 * ------------------------------------------------------------------------ */
static void
assert_built (const char *command, JsonObject *arguments)
{
  g_autofree char *wire = ferry_qmp_build_command (command, arguments, "7");
  assert_accepted (wire);
  if (arguments != NULL)
    json_object_unref (arguments);
}

static void
check_ferry_commands (void)
{
  /* Commands without arguments the agent runs. */
  const char *const plain[] = {
    "qmp_capabilities", "query-status", "cont", "system_powerdown", "quit",
    "query-migrate", "migrate_cancel",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (plain); i++)
    assert_built (plain[i], NULL);

  FerryQmpCapabilities none = { 0 };
  FerryQmpCapabilities all = { TRUE, TRUE, TRUE, TRUE, TRUE };
  assert_built ("migrate-set-capabilities", ferry_qmp_args_migrate_capabilities (&none));
  assert_built ("migrate-set-capabilities", ferry_qmp_args_migrate_capabilities (&all));
  /* With TLS, a limit and multifd; and without TLS ("" switches it off), unlimited. */
  FerryQmpParameters tuned = {
    .max_bandwidth_bytes = 100 * 1024 * 1024, .downtime_ms = 300,
    .tls_creds = "ferry-migration-tls", .tls_hostname = "hostb",
    .multifd_channels = 4, .multifd_compression = "zstd",
  };
  FerryQmpParameters unlimited = { .max_bandwidth_bytes = G_GINT64_CONSTANT (1) << 40 };
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameters (&tuned));
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameters (&unlimited));
  tuned.multifd_compression = "zlib";
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameters (&tuned));
  tuned.multifd_compression = "none";
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameters (&tuned));
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameter ("downtime-limit", 500));
  assert_built ("migrate-set-parameters", ferry_qmp_args_migrate_parameter ("max-bandwidth", 1 << 20));
  assert_built ("migrate-start-postcopy", NULL);
  assert_built ("query-migrate-capabilities", NULL);
  assert_built ("migrate", ferry_qmp_args_migrate_resume ("tcp:10.0.0.2:49153"));
  assert_built ("migrate-recover", ferry_qmp_args_migrate_recover ("tcp:10.0.0.2:49153"));
  assert_built ("migrate-pause", NULL);
  assert_built ("object-add", ferry_qmp_args_tls_creds ("ferry-migration-tls", "/var/lib/ferry/qemu-tls", TRUE));
  assert_built ("object-add", ferry_qmp_args_tls_creds ("ferry-migration-tls", "/var/lib/ferry/qemu-tls", FALSE));
  JsonObject *del = json_object_new ();
  json_object_set_string_member (del, "id", "ferry-migration-tls");
  assert_built ("object-del", del);
  assert_built ("migrate-incoming", ferry_qmp_args_migrate_incoming ("tcp:10.0.0.2:0"));
  assert_built ("migrate", ferry_qmp_args_migrate ("tcp:10.0.0.2:49152"));
  assert_built ("yank", ferry_qmp_args_yank_migration ());
  assert_built ("calc-dirty-rate", ferry_qmp_args_calc_dirty_rate (2, 512));
  assert_built ("query-dirty-rate", NULL);
  assert_built ("query-migrate-parameters", NULL);
  /* Storage migration. */
  assert_built ("nbd-server-start", ferry_qmp_args_nbd_server_start ("10.0.0.2", 49200, "ferry-migration-tls"));
  assert_built ("block-export-add", ferry_qmp_args_block_export_add ("ferry-export-disk0", "disk0", "disk0"));
  assert_built ("blockdev-add", ferry_qmp_args_blockdev_add_nbd ("ferry-mirror-disk0", "10.0.0.2", 49200, "disk0",
                                                                 "ferry-migration-tls", "10.0.0.2"));
  assert_built ("blockdev-mirror", ferry_qmp_args_blockdev_mirror ("ferry-mirror-0", "disk0", "ferry-mirror-disk0",
                                                                   FALSE, 0));
  assert_built ("blockdev-mirror", ferry_qmp_args_blockdev_mirror ("ferry-mirror-0", "disk0", "ferry-mirror-disk0",
                                                                   TRUE, 100 << 20));
  assert_built ("block-job-cancel", ferry_qmp_args_block_job_cancel ("ferry-mirror-0", FALSE));
  assert_built ("job-dismiss", ferry_qmp_args_id ("id", "ferry-mirror-0"));
  assert_built ("blockdev-del", ferry_qmp_args_id ("node-name", "ferry-mirror-disk0"));
  assert_built ("block-export-del", ferry_qmp_args_id ("id", "ferry-export-disk0"));
  assert_built ("nbd-server-stop", NULL);
  /* Warm migration. */
  assert_built ("blockdev-add", ferry_qmp_args_blockdev_add_snapshot ("ferry-snap-3-disk0", "/var/lib/ferry/run/s.qcow2",
                                                                      "disk0"));
  FerryQmpSnapshotDisk snapshot[2] = {
    { "disk0", "ferry-3-2", TRUE, "ferry-3-1", "ferry-snap-3-disk0", "ferry-snap-3-disk0" },
    { "disk1", NULL, FALSE, "ferry-3-1", "ferry-snap-3-disk1", "ferry-snap-3-disk1" },
  };
  assert_built ("transaction", ferry_qmp_args_snapshot_transaction (snapshot, 2));
  assert_built ("block-export-add", ferry_qmp_args_block_export_add_snapshot ("ferry-warm-disk0", "ferry-snap-3-disk0",
                                                                             "disk0", "disk0", "ferry-3-1"));
  assert_built ("block-export-add", ferry_qmp_args_block_export_add_snapshot ("ferry-warm-disk0", "ferry-snap-3-disk0",
                                                                             "disk0", NULL, NULL));
  assert_built ("block-export-del", ferry_qmp_args_block_export_del ("ferry-warm-disk0"));
  assert_built ("block-dirty-bitmap-remove", ferry_qmp_args_bitmap_remove ("disk0", "ferry-3-1"));
  assert_built ("set-action", ferry_qmp_args_set_shutdown_action (TRUE));
  assert_built ("set-action", ferry_qmp_args_set_shutdown_action (FALSE));
  assert_built ("system_powerdown", NULL);
  assert_built ("system_reset", NULL);
  assert_built ("stop", NULL);
  assert_built ("cont", NULL);
  assert_built ("query-named-block-nodes", NULL);
  JsonObject *flat = json_object_new ();
  json_object_set_boolean_member (flat, "flat", TRUE);
  assert_built ("query-named-block-nodes", flat);
  assert_built ("query-block-jobs", NULL);
  assert_built ("query-jobs", NULL);
  assert_built ("query-blockstats", NULL);
}

static void
test_builder_output_is_checked (void)
{
  /* The check above would catch a builder that drifts from the schema. */
  FerryQmpParameters parameters = { .max_bandwidth_bytes = 1, .downtime_ms = 300 };
  JsonObject *bad = ferry_qmp_args_migrate_parameters (&parameters);
  json_object_set_string_member (bad, "max-bandwidth", "lots");
  g_autofree char *wire = ferry_qmp_build_command ("migrate-set-parameters", bad, "7");
  json_object_unref (bad);
  g_autoptr (GError) error = NULL;
  g_assert_false (ferry_qmp_schema_check_command (schema, wire, &error));
  g_assert_nonnull (strstr (error->message, "max-bandwidth"));
}

int
main (int argc, char **argv)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  int ret;

  g_test_init (&argc, &argv, NULL);

  path = data_path ("qmp-schema-7.2.json");
  schema = ferry_qmp_schema_load (path, &error);
  g_assert_no_error (error);

  g_test_add_func ("/qmp-schema/load", test_load);
  g_test_add_func ("/qmp-schema/load/missing-file", test_load_missing_file);
  g_test_add_func ("/qmp-schema/load/not-array", test_load_not_array);
  g_test_add_func ("/qmp-schema/valid/migrate-set-capabilities", test_valid_set_capabilities);
  g_test_add_func ("/qmp-schema/valid/migrate-set-parameters", test_valid_set_parameters);
  g_test_add_func ("/qmp-schema/valid/alternate-null", test_valid_alternate_null);
  g_test_add_func ("/qmp-schema/valid/migrate", test_valid_migrate);
  g_test_add_func ("/qmp-schema/valid/object-add-variant", test_valid_object_add_variant);
  g_test_add_func ("/qmp-schema/valid/no-arguments", test_valid_no_arguments);
  g_test_add_func ("/qmp-schema/invalid/unknown-command", test_invalid_unknown_command);
  g_test_add_func ("/qmp-schema/invalid/unknown-argument", test_invalid_unknown_argument);
  g_test_add_func ("/qmp-schema/invalid/wrong-type", test_invalid_wrong_type);
  g_test_add_func ("/qmp-schema/invalid/enum-value", test_invalid_enum_value);
  g_test_add_func ("/qmp-schema/invalid/missing-required", test_invalid_missing_required);
  g_test_add_func ("/qmp-schema/invalid/array-element", test_invalid_array_element);
  g_test_add_func ("/qmp-schema/invalid/alternate", test_invalid_alternate);
  g_test_add_func ("/qmp-schema/invalid/other-variant-member", test_invalid_other_variant_member);
  g_test_add_func ("/qmp-schema/invalid/union-tag", test_invalid_union_tag);
  g_test_add_func ("/qmp-schema/invalid/top-level", test_invalid_top_level);
  g_test_add_func ("/qmp-schema/ferry-commands", check_ferry_commands);
  g_test_add_func ("/qmp-schema/builder-output-is-checked", test_builder_output_is_checked);

  ret = g_test_run ();
  ferry_qmp_schema_free (schema);
  return ret;
}
