/* Unit tests for the VM spec parser (src/common/vmspec.c). */
#include <string.h>

#include <glib.h>
#include <json-glib/json-glib.h>

#include "ferry-error.h"
#include "vmspec.h"

/* ---- helpers ------------------------------------------------------------ */

static char *
spec_file_path (const char *name)
{
  const char *dir = g_getenv ("FERRY_TEST_DATA");

  if (dir != NULL)
    return g_build_filename (dir, "specs", name, NULL);
  return g_test_build_filename (G_TEST_DIST, "data", "specs", name, NULL);
}

static FerryVmSpec *
parse_file (const char *name)
{
  g_autofree char *path = spec_file_path (name);
  g_autofree char *contents = NULL;
  g_autoptr (GError) error = NULL;
  gsize length = 0;
  FerryVmSpec *spec;

  g_file_get_contents (path, &contents, &length, &error);
  g_assert_no_error (error);
  spec = ferry_vm_spec_parse (contents, length, &error);
  g_assert_no_error (error);
  g_assert_nonnull (spec);
  return spec;
}

static FerryVmSpec *
parse_ok (const char *text)
{
  g_autoptr (GError) error = NULL;
  FerryVmSpec *spec = ferry_vm_spec_parse (text, strlen (text), &error);

  g_assert_no_error (error);
  g_assert_nonnull (spec);
  return spec;
}

/* Asserts that parsing fails with code and a message containing every
 * NULL-terminated fragment; returns nothing so each test stays one line. */
static void
assert_parse_error_len (const char *text, gsize length, FerryErrorCode code, ...)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_parse (text, length, &error);
  va_list args;
  const char *fragment;

  g_assert_null (spec);
  g_assert_error (error, FERRY_ERROR, (gint) code);
  va_start (args, code);
  while ((fragment = va_arg (args, const char *)) != NULL)
    {
      if (strstr (error->message, fragment) == NULL)
        g_error ("error message \"%s\" lacks \"%s\"", error->message, fragment);
    }
  va_end (args);
}

#define assert_parse_error(text, ...) \
  assert_parse_error_len ((text), strlen (text), FERRY_ERROR_INVALID_ARGUMENT, __VA_ARGS__, NULL)

static void
assert_error_message (const char *text, const char *expected)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_parse (text, strlen (text), &error);

  g_assert_null (spec);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_cmpstr (error->message, ==, expected);
}

static FerryDiskSpec *
disk_at (FerryVmSpec *spec, guint i)
{
  g_assert_cmpuint (i, <, spec->disks->len);
  return g_ptr_array_index (spec->disks, i);
}

static FerryNicSpec *
nic_at (FerryVmSpec *spec, guint i)
{
  g_assert_cmpuint (i, <, spec->nics->len);
  return g_ptr_array_index (spec->nics, i);
}

static JsonNode *
json_parse (const char *text)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  json_parser_load_from_data (parser, text, -1, &error);
  g_assert_no_error (error);
  return json_node_copy (json_parser_get_root (parser));
}

/* ---- valid input -------------------------------------------------------- */

static void
test_yaml_full (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("full.yaml");

  g_assert_cmpstr (spec->name, ==, "web1");
  g_assert_cmpstr (spec->uuid, ==, "0c3b5c1e-7f0a-4d2b-9e4f-1a2b3c4d5e6f");
  g_assert_cmpuint (spec->vcpus, ==, 4);
  g_assert_cmpuint (spec->memory_mib, ==, 2048);
  g_assert_cmpstr (spec->machine, ==, "pc-q35-7.2");
  g_assert_cmpstr (spec->cpu_model, ==, "qemu64,+ssse3");
  g_assert_cmpstr (spec->kernel, ==, "/var/lib/ferry/boot/vmlinuz");
  g_assert_cmpstr (spec->initrd, ==, "/var/lib/ferry/boot/initrd.img");
  g_assert_cmpstr (spec->cmdline, ==, "console=ttyS0 root=/dev/vda rw");
  g_assert_cmpstr (spec->firmware, ==, "bios");
  g_assert_cmpint (spec->serial, ==, FERRY_SERIAL_NONE);

  g_assert_cmpuint (spec->disks->len, ==, 2);
  g_assert_cmpstr (disk_at (spec, 0)->path, ==, "/var/lib/ferry/images/web1.qcow2");
  g_assert_cmpint (disk_at (spec, 0)->format, ==, FERRY_DISK_FORMAT_QCOW2);
  g_assert_cmpint (disk_at (spec, 0)->bus, ==, FERRY_DISK_BUS_VIRTIO);
  g_assert_false (disk_at (spec, 0)->readonly);
  g_assert_cmpstr (disk_at (spec, 0)->cache, ==, "writeback");
  g_assert_cmpint (disk_at (spec, 1)->format, ==, FERRY_DISK_FORMAT_RAW);
  g_assert_cmpint (disk_at (spec, 1)->bus, ==, FERRY_DISK_BUS_IDE);
  g_assert_true (disk_at (spec, 1)->readonly);
  g_assert_cmpstr (disk_at (spec, 1)->cache, ==, "none");

  g_assert_cmpuint (spec->nics->len, ==, 2);
  g_assert_cmpstr (nic_at (spec, 0)->model, ==, "virtio-net-pci");
  g_assert_cmpstr (nic_at (spec, 0)->mac, ==, "52:54:00:ab:cd:ef");
  g_assert_cmpint (nic_at (spec, 0)->network, ==, FERRY_NIC_NETWORK_TAP);
  g_assert_cmpstr (nic_at (spec, 0)->ifname, ==, "tap-web1");
  g_assert_cmpstr (nic_at (spec, 1)->model, ==, "e1000");
  g_assert_cmpint (nic_at (spec, 1)->network, ==, FERRY_NIC_NETWORK_USER);
  g_assert_null (nic_at (spec, 1)->ifname);
}

static void
test_json_full_equals_yaml (void)
{
  g_autoptr (FerryVmSpec) yaml = parse_file ("full.yaml");
  g_autoptr (FerryVmSpec) json = parse_file ("full.json");

  g_assert_true (ferry_vm_spec_equal (yaml, json));
}

static void
test_json_with_tabs (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("tabs.json");

  g_assert_cmpstr (spec->name, ==, "tabbed");
  g_assert_cmpuint (spec->memory_mib, ==, 512);
  g_assert_cmpuint (spec->disks->len, ==, 1);
}

static void
test_json_tab_margins (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("tab-margins.json");

  g_assert_cmpstr (spec->name, ==, "tabbed-margins");
  g_assert_cmpstr (nic_at (spec, 0)->ifname, ==, "tap0");
}

static void
test_json_compact (void)
{
  g_autoptr (FerryVmSpec) spec =
    parse_ok ("{\"name\":\"c1\",\"vcpus\":3,\"disks\":[{\"path\":\"/a\",\"format\":\"raw\"}]}");

  g_assert_cmpstr (spec->name, ==, "c1");
  g_assert_cmpuint (spec->vcpus, ==, 3);
  g_assert_cmpstr (disk_at (spec, 0)->path, ==, "/a");
}

static void
test_defaults (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("minimal.yaml");

  g_assert_cmpstr (spec->name, ==, "tiny");
  g_assert_true (g_uuid_string_is_valid (spec->uuid));
  g_assert_cmpuint (spec->vcpus, ==, 1);
  g_assert_cmpuint (spec->memory_mib, ==, 512);
  g_assert_cmpstr (spec->machine, ==, "q35");
  g_assert_cmpstr (spec->cpu_model, ==, "qemu64");
  g_assert_null (spec->kernel);
  g_assert_null (spec->initrd);
  g_assert_null (spec->cmdline);
  g_assert_cmpstr (spec->firmware, ==, "bios");
  g_assert_cmpuint (spec->disks->len, ==, 0);
  g_assert_cmpuint (spec->nics->len, ==, 0);
  g_assert_cmpint (spec->serial, ==, FERRY_SERIAL_LOG);
}

static void
test_device_defaults (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("firmware-boot.yaml");
  FerryDiskSpec *disk = disk_at (spec, 0);
  FerryNicSpec *nic = nic_at (spec, 0);

  g_assert_cmpstr (spec->firmware, ==, "uefi");
  g_assert_cmpint (disk->bus, ==, FERRY_DISK_BUS_VIRTIO);
  g_assert_false (disk->readonly);
  g_assert_cmpstr (disk->cache, ==, "none");
  g_assert_cmpstr (nic->model, ==, "virtio-net-pci");
  g_assert_cmpint (nic->network, ==, FERRY_NIC_NETWORK_USER);
  g_assert_null (nic->ifname);
}

static void
test_generated_mac (void)
{
  g_autoptr (FerryVmSpec) spec = parse_ok ("name: m\nnics: [{}, {}, {}]\n");

  for (guint i = 0; i < 3; i++)
    {
      const char *mac = nic_at (spec, i)->mac;

      g_assert_true (g_str_has_prefix (mac, "52:54:00:"));
      g_assert_cmpuint (strlen (mac), ==, 17);
      for (guint j = 0; j < i; j++)
        g_assert_cmpstr (mac, !=, nic_at (spec, j)->mac);
    }
}

static void
test_generated_uuid_differs (void)
{
  g_autoptr (FerryVmSpec) a = parse_ok ("name: u\n");
  g_autoptr (FerryVmSpec) b = parse_ok ("name: u\n");

  g_assert_true (g_uuid_string_is_valid (a->uuid));
  g_assert_cmpstr (a->uuid, !=, b->uuid);
}

static void
test_null_means_default (void)
{
  g_autoptr (FerryVmSpec) spec = parse_ok ("name: n\nvcpus: ~\nmemory: null\nboot:\ndisks:\n");

  g_assert_cmpuint (spec->vcpus, ==, 1);
  g_assert_cmpuint (spec->memory_mib, ==, 512);
  g_assert_cmpuint (spec->disks->len, ==, 0);
}

static void
test_memory_units (void)
{
  static const struct {
    const char *value;
    guint64 mib;
  } cases[] = {
    { "1024", 1024 },
    { "\"1024\"", 1024 },
    { "1G", 1024 },
    { "512M", 512 },
    { "1GiB", 1024 },
    { "512MiB", 512 },
    { "\"2 GiB\"", 2048 },
    { "1T", 1024 * 1024 },
    { "1TiB", 1024 * 1024 },
    { "16", 16 },
    { "2048.0", 2048 },
    { "1e3", 1000 },
    { "0x400", 1024 },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *text = g_strdup_printf ("name: mem\nmemory: %s\n", cases[i].value);
      g_autoptr (FerryVmSpec) spec = parse_ok (text);

      g_assert_cmpuint (spec->memory_mib, ==, cases[i].mib);
    }
}

static void
test_memory_bad_unit (void)
{
  assert_parse_error ("name: m\nmemory: 1GB\n", "memory: ", "(got \"1GB\")");
  assert_parse_error ("name: m\nmemory: 1.5G\n", "memory: ", "(got \"1.5G\")");
  assert_parse_error ("name: m\nmemory: -1G\n", "memory: ");
  assert_parse_error ("name: m\nmemory: G\n", "memory: ");
}

static void
test_memory_non_integral (void)
{
  assert_error_message ("name: m\nmemory: 1024.5\n", "memory: must be an integer (got 1024.5)");
}

static void
test_round_trip (void)
{
  const char *files[] = {
    "full.yaml", "full.json", "minimal.yaml", "firmware-boot.yaml", "tabs.json", "tab-margins.json",
  };

  for (gsize i = 0; i < G_N_ELEMENTS (files); i++)
    {
      g_autoptr (FerryVmSpec) spec = parse_file (files[i]);
      g_autoptr (JsonNode) node = ferry_vm_spec_to_json (spec);
      g_autoptr (GError) error = NULL;
      g_autoptr (FerryVmSpec) again = ferry_vm_spec_from_json (node, &error);

      g_assert_no_error (error);
      g_assert_true (ferry_vm_spec_equal (spec, again));
    }
}

static void
test_round_trip_through_text (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("full.yaml");
  g_autofree char *text = ferry_vm_spec_to_json_string (spec);
  g_autoptr (FerryVmSpec) again = parse_ok (text);

  g_assert_true (ferry_vm_spec_equal (spec, again));
}

static void
test_canonical_json (void)
{
  g_autoptr (FerryVmSpec) spec = parse_ok ("name: c\nmemory: 1G\nnics: [{}]\n"
                                           "disks: [{path: /d.img, format: raw}]\n");
  g_autoptr (JsonNode) node = ferry_vm_spec_to_json (spec);
  JsonObject *obj = json_node_get_object (node);
  JsonObject *disk, *nic;

  g_assert_cmpint (json_node_get_value_type (json_object_get_member (obj, "memory")), ==, G_TYPE_INT64);
  g_assert_cmpint (json_object_get_int_member (obj, "memory"), ==, 1024);
  g_assert_cmpint (json_object_get_int_member (obj, "vcpus"), ==, 1);
  g_assert_cmpstr (json_object_get_string_member (obj, "uuid"), ==, spec->uuid);
  g_assert_cmpstr (json_object_get_string_member (obj, "machine"), ==, "q35");
  g_assert_cmpstr (json_object_get_string_member (obj, "cpu"), ==, "qemu64");
  g_assert_cmpstr (json_object_get_string_member (obj, "serial"), ==, "log");
  g_assert_cmpstr (json_object_get_string_member (json_object_get_object_member (obj, "boot"),
                                                  "firmware"), ==, "bios");
  disk = json_array_get_object_element (json_object_get_array_member (obj, "disks"), 0);
  g_assert_cmpstr (json_object_get_string_member (disk, "bus"), ==, "virtio");
  g_assert_cmpstr (json_object_get_string_member (disk, "cache"), ==, "none");
  g_assert_false (json_object_get_boolean_member (disk, "readonly"));
  nic = json_array_get_object_element (json_object_get_array_member (obj, "nics"), 0);
  g_assert_cmpstr (json_object_get_string_member (nic, "mac"), ==, nic_at (spec, 0)->mac);
  g_assert_cmpstr (json_object_get_string_member (nic, "network"), ==, "user");
  g_assert_false (json_object_has_member (nic, "ifname"));
}

static void
test_from_json_integral_double (void)
{
  g_autoptr (JsonNode) node = json_parse ("{\"name\": \"d\", \"vcpus\": 2.0, \"memory\": 1024.0}");
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_from_json (node, &error);

  g_assert_no_error (error);
  g_assert_cmpuint (spec->vcpus, ==, 2);
  g_assert_cmpuint (spec->memory_mib, ==, 1024);
}

static void
test_from_json_bad_numbers (void)
{
  static const struct {
    const char *json;
    const char *message;
  } cases[] = {
    { "{\"name\": \"d\", \"vcpus\": 2.5}", "vcpus: must be an integer (got 2.5)" },
    { "{\"name\": \"d\", \"vcpus\": -1}", "vcpus: must be between 1 and 64 (got -1)" },
    { "{\"name\": \"d\", \"vcpus\": -1.0}", "vcpus: must be between 1 and 64 (got -1)" },
    { "{\"name\": \"d\", \"vcpus\": 1e300}", "vcpus: must be between 1 and 64 (got 1.0000000000000001e+300)" },
    { "{\"name\": \"d\", \"memory\": 9223372036854775807}",
      "memory: must be between 16 MiB and 1048576 MiB (got 9223372036854775807)" },
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (JsonNode) node = json_parse (cases[i].json);
      g_autoptr (GError) error = NULL;
      g_autoptr (FerryVmSpec) spec = ferry_vm_spec_from_json (node, &error);

      g_assert_null (spec);
      g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
      g_assert_cmpstr (error->message, ==, cases[i].message);
    }
}

static void
test_copy_equal (void)
{
  g_autoptr (FerryVmSpec) spec = parse_file ("full.yaml");
  g_autoptr (FerryVmSpec) copy = ferry_vm_spec_copy (spec);
  FerryNicSpec *nic;

  g_assert_true (ferry_vm_spec_equal (spec, copy));
  nic = nic_at (copy, 1);
  g_free (nic->mac);
  nic->mac = g_strdup ("52:54:00:00:00:01");
  g_assert_false (ferry_vm_spec_equal (spec, copy));
}

static void
test_built_in_code (void)
{
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_new ();
  g_autoptr (FerryDiskSpec) disk = ferry_disk_spec_new ();
  g_autoptr (JsonNode) node = NULL;
  g_autoptr (FerryVmSpec) parsed = NULL;
  g_autoptr (GError) error = NULL;

  spec->name = g_strdup ("coded");
  spec->uuid = g_uuid_string_random ();
  disk->path = g_strdup ("/img/coded.raw");
  g_ptr_array_add (spec->disks, g_steal_pointer (&disk));

  node = ferry_vm_spec_to_json (spec);
  parsed = ferry_vm_spec_from_json (node, &error);
  g_assert_no_error (error);
  g_assert_true (ferry_vm_spec_equal (spec, parsed));
}

static void
test_name_valid (void)
{
  g_autofree char *max = g_strnfill (FERRY_SPEC_MAX_NAME, 'a');
  g_autofree char *over = g_strnfill (FERRY_SPEC_MAX_NAME + 1, 'a');

  g_assert_true (ferry_vm_name_is_valid ("web1"));
  g_assert_true (ferry_vm_name_is_valid ("0db_2.prod-x"));
  g_assert_true (ferry_vm_name_is_valid (max));
  g_assert_false (ferry_vm_name_is_valid (over));
  g_assert_false (ferry_vm_name_is_valid (""));
  g_assert_false (ferry_vm_name_is_valid (NULL));
  g_assert_false (ferry_vm_name_is_valid ("-web"));
  g_assert_false (ferry_vm_name_is_valid (".web"));
  g_assert_false (ferry_vm_name_is_valid ("web/1"));
  g_assert_false (ferry_vm_name_is_valid ("web 1"));
  g_assert_false (ferry_vm_name_is_valid ("wéb"));
}

static void
test_yaml_core_schema (void)
{
  g_autoptr (FerryVmSpec) spec =
    parse_ok ("name: \"123\"\ndisks:\n  - {path: /a, format: raw, readonly: True}\n"
              "  - {path: /b, format: raw, readonly: FALSE}\n");

  g_assert_cmpstr (spec->name, ==, "123");
  g_assert_true (disk_at (spec, 0)->readonly);
  g_assert_false (disk_at (spec, 1)->readonly);
}

static void
test_quoted_scalar_is_string (void)
{
  assert_error_message ("name: q\ndisks: [{path: /a, format: raw, readonly: \"true\"}]\n",
                        "disks[0].readonly: must be a boolean (got string)");
}

static void
test_yaml11_yes_is_string (void)
{
  assert_error_message ("name: q\ndisks: [{path: /a, format: raw, readonly: yes}]\n",
                        "disks[0].readonly: must be a boolean (got string)");
}

/* ---- one bad-input class per test ---------------------------------------- */

static void
test_error_unknown_field (void)
{
  assert_error_message ("name: x\nmemroy: 1024\n", "memroy: unknown field (did you mean 'memory'?)");
}

static void
test_error_unknown_nested_field (void)
{
  assert_error_message ("name: x\ndisks:\n  - path: /a\n    formt: raw\n",
                        "disks[0].formt: unknown field (did you mean 'format'?)");
}

static void
test_error_unknown_field_no_suggestion (void)
{
  assert_error_message ("name: x\nboot: {colour: blue}\n", "boot.colour: unknown field");
}

static void
test_error_wrong_type (void)
{
  assert_error_message ("name: x\nvcpus: two\n", "vcpus: must be an integer (got string)");
  assert_error_message ("name: [a]\n", "name: must be a string (got array)");
  assert_error_message ("name: x\ndisks: {path: /a}\n", "disks: must be an array (got object)");
  assert_error_message ("name: x\nnics: [3]\n", "nics[0]: must be an object (got integer)");
  assert_error_message ("name: x\nboot: uefi\n", "boot: must be an object (got string)");
}

static void
test_error_out_of_range (void)
{
  assert_error_message ("name: x\nmemory: 8\n",
                        "memory: must be between 16 MiB and 1048576 MiB (got 8)");
  assert_error_message ("name: x\nmemory: 2T\n",
                        "memory: must be between 16 MiB and 1048576 MiB (got 2097152)");
  assert_error_message ("name: x\nvcpus: 65\n", "vcpus: must be between 1 and 64 (got 65)");
  assert_error_message ("name: x\nvcpus: 0\n", "vcpus: must be between 1 and 64 (got 0)");
}

static void
test_error_integer_overflow (void)
{
  assert_parse_error ("name: x\nvcpus: 99999999999999999999999\n", "vcpus: ", "out of range");
  assert_parse_error ("name: x\nmemory: \"99999999999999999999999G\"\n", "memory: must be between");
}

static void
test_error_bad_enum (void)
{
  assert_error_message ("name: x\ndisks:\n  - {path: /a, format: raw}\n  - {path: /b, format: vmdk}\n",
                        "disks[1].format: must be one of raw, qcow2 (got \"vmdk\")");
  assert_parse_error ("name: x\nserial: pty\n", "serial: must be one of log, none");
  assert_parse_error ("name: x\nboot: {firmware: coreboot}\n", "boot.firmware: must be one of bios, uefi");
  assert_parse_error ("name: x\nnics: [{model: rtl8139}]\n", "nics[0].model: must be one of");
}

static void
test_error_missing_required (void)
{
  assert_error_message ("vcpus: 2\n", "name: required");
  assert_error_message ("name: x\ndisks: [{path: /a}]\n", "disks[0].format: required");
  assert_error_message ("name: x\ndisks: [{format: raw}]\n", "disks[0]: path or volume is required");
}

/* ---- volume disks --------------------------------------------------------- */

static void
test_volume_disk_default_pool (void)
{
  g_autoptr (FerryVmSpec) spec = parse_ok ("name: v\ndisks:\n  - volume: v-root.qcow2\n    format: qcow2\n");
  FerryDiskSpec *disk = disk_at (spec, 0);

  g_assert_null (disk->path);
  g_assert_cmpstr (disk->volume, ==, "v-root.qcow2");
  g_assert_cmpstr (disk->pool, ==, FERRY_DEFAULT_POOL);
  g_assert_cmpint (disk->format, ==, FERRY_DISK_FORMAT_QCOW2);
}

static void
test_volume_disk_named_pool (void)
{
  g_autoptr (FerryVmSpec) spec =
    parse_ok ("name: v\ndisks:\n  - {pool: fast, volume: data, format: raw}\n"
              "  - {path: /images/extra.raw, format: raw}\n");

  g_assert_cmpstr (disk_at (spec, 0)->pool, ==, "fast");
  g_assert_cmpstr (disk_at (spec, 0)->volume, ==, "data");
  g_assert_null (disk_at (spec, 0)->path);
  g_assert_cmpstr (disk_at (spec, 1)->path, ==, "/images/extra.raw");
  g_assert_null (disk_at (spec, 1)->pool);
  g_assert_null (disk_at (spec, 1)->volume);
}

/* Canonical JSON names the pool even when the user left it to default,
 * so the stored spec does not depend on what "default" means later; a
 * path disk gets neither member. */
static void
test_volume_disk_round_trip (void)
{
  g_autoptr (FerryVmSpec) spec =
    parse_ok ("name: v\ndisks:\n  - {volume: a, format: raw}\n  - {path: /b, format: raw}\n");
  g_autoptr (JsonNode) node = ferry_vm_spec_to_json (spec);
  JsonArray *disks = json_object_get_array_member (json_node_get_object (node), "disks");
  JsonObject *volume = json_array_get_object_element (disks, 0);
  JsonObject *path = json_array_get_object_element (disks, 1);
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) back = NULL;
  g_autoptr (FerryVmSpec) copy = NULL;

  g_assert_cmpstr (json_object_get_string_member (volume, "pool"), ==, "default");
  g_assert_cmpstr (json_object_get_string_member (volume, "volume"), ==, "a");
  g_assert_false (json_object_has_member (volume, "path"));
  g_assert_false (json_object_has_member (path, "pool"));
  g_assert_false (json_object_has_member (path, "volume"));

  back = ferry_vm_spec_from_json (node, &error);
  g_assert_no_error (error);
  g_assert_true (ferry_vm_spec_equal (spec, back));
  copy = ferry_vm_spec_copy (spec);
  g_assert_true (ferry_vm_spec_equal (spec, copy));
  g_assert_cmpstr (disk_at (copy, 0)->pool, ==, "default");
  g_assert_cmpstr (disk_at (copy, 0)->volume, ==, "a");

  /* Another pool is another disk. */
  g_free (disk_at (copy, 0)->pool);
  disk_at (copy, 0)->pool = g_strdup ("fast");
  g_assert_false (ferry_vm_spec_equal (spec, copy));
}

static void
test_volume_name_rule (void)
{
  g_autofree char *longest = g_strnfill (FERRY_SPEC_MAX_VOLUME_NAME, 'v');
  g_autofree char *too_long = g_strnfill (FERRY_SPEC_MAX_VOLUME_NAME + 1, 'v');

  g_assert_true (ferry_volume_name_is_valid ("web1-root.qcow2"));
  g_assert_true (ferry_volume_name_is_valid (longest));
  g_assert_false (ferry_volume_name_is_valid (too_long));
  g_assert_false (ferry_volume_name_is_valid (".hidden"));
  g_assert_false (ferry_volume_name_is_valid (".."));
  g_assert_false (ferry_volume_name_is_valid ("a/b"));
  g_assert_false (ferry_volume_name_is_valid (""));
  g_assert_false (ferry_volume_name_is_valid (NULL));
}

static void
test_error_volume_disk (void)
{
  assert_error_message ("name: x\ndisks: [{path: /a, volume: a, format: raw}]\n",
                        "disks[0]: give either path or volume, not both");
  assert_error_message ("name: x\ndisks: [{path: /a, format: raw}, {bus: ide, format: raw}]\n",
                        "disks[1]: path or volume is required");
  assert_error_message ("name: x\ndisks: [{pool: fast, format: raw}]\n",
                        "disks[0].pool: only allowed together with volume");
  assert_error_message ("name: x\ndisks: [{volume: a}]\n", "disks[0].format: required");
  assert_parse_error ("name: x\ndisks: [{volume: ../etc/passwd, format: raw}]\n",
                      "disks[0].volume: must be 1 to 128 characters", "(got \"../etc/passwd\")");
  assert_parse_error ("name: x\ndisks: [{volume: .a, format: raw}]\n", "disks[0].volume: must be");
  assert_parse_error ("name: x\ndisks: [{volume: a, pool: \"bad/pool\", format: raw}]\n",
                      "disks[0].pool: must be 1 to 64 characters");
  assert_parse_error ("name: x\ndisks: [{volume: 7, format: raw}]\n",
                      "disks[0].volume: must be a string (got integer)");
  assert_error_message ("name: x\ndisks: [{volume: a, format: raw}, {volume: a, pool: default, format: qcow2}]\n",
                        "disks[1].volume: same volume as disks[0]");
  /* The same volume name in two pools is two images. */
  g_autoptr (FerryVmSpec) spec =
    parse_ok ("name: x\ndisks: [{volume: a, format: raw}, {volume: a, pool: fast, format: raw}]\n");
  g_assert_cmpuint (spec->disks->len, ==, 2);
}

static void
test_error_bad_name (void)
{
  assert_parse_error ("name: -x\n", "name: must be", "(got \"-x\")");
}

static void
test_error_bad_uuid (void)
{
  assert_parse_error ("name: x\nuuid: not-a-uuid\n", "uuid: not a valid UUID");
}

static void
test_error_relative_path (void)
{
  assert_error_message ("name: x\ndisks: [{path: images/a.qcow2, format: qcow2}]\n",
                        "disks[0].path: must be an absolute path (got \"images/a.qcow2\")");
  assert_parse_error ("name: x\nboot: {kernel: vmlinuz}\n", "boot.kernel: must be an absolute path");
}

static void
test_error_path_too_long (void)
{
  g_autofree char *path = g_strnfill (FERRY_SPEC_MAX_PATH + 1, 'a');
  g_autofree char *text = NULL;

  path[0] = '/';
  text = g_strdup_printf ("name: x\ndisks: [{path: %s, format: raw}]\n", path);
  assert_parse_error (text, "disks[0].path: path is too long");
}

static void
test_error_control_chars_in_path (void)
{
  assert_parse_error ("name: x\ndisks: [{path: \"/a\\nb\", format: raw}]\n",
                      "disks[0].path: must not contain control characters", "\\x0a");
}

static void
test_error_yaml_line_break_in_path (void)
{
  /* U+2028 from a JSON body would read back from canonical text as a
   * line break, so it is refused on every path in. */
  g_autoptr (JsonNode) node =
    json_parse ("{\"name\": \"x\", \"boot\": {\"kernel\": \"/k\\u2028\"}}");
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_from_json (node, &error);

  g_assert_null (spec);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_true (g_str_has_prefix (error->message, "boot.kernel: must not contain control characters"));
}

static void
test_error_bad_mac (void)
{
  assert_error_message ("name: x\nnics: [{mac: \"53:54:00:12:34:56\"}]\n",
                        "nics[0].mac: not a unicast MAC address (got \"53:54:00:12:34:56\")");
  assert_parse_error ("name: x\nnics: [{}, {mac: \"52:54:00:12:34\"}]\n", "nics[1].mac: not a MAC address");
  assert_parse_error ("name: x\nnics: [{mac: \"52-54-00-12-34-56\"}]\n", "nics[0].mac: not a MAC address");
  assert_parse_error ("name: x\nnics: [{mac: \"00:00:00:00:00:00\"}]\n", "nics[0].mac: not a unicast");
}

static void
test_error_duplicate_mac (void)
{
  assert_error_message ("name: x\nnics: [{mac: \"52:54:00:12:34:56\"}, {mac: \"52:54:00:12:34:56\"}]\n",
                        "nics[1].mac: same address as nics[0]");
}

static void
test_error_duplicate_disk_path (void)
{
  assert_error_message ("name: x\ndisks: [{path: /a, format: raw}, {path: /a, format: qcow2}]\n",
                        "disks[1].path: same image as disks[0]");
}

static void
test_error_duplicate_key (void)
{
  assert_parse_error ("name: x\nvcpus: 1\nvcpus: 2\n", "vcpus: duplicate key", "line 3");
  assert_parse_error ("name: x\ndisks:\n  - path: /a\n    path: /b\n", "disks[0].path: duplicate key");
  assert_parse_error ("{\"name\": \"x\", \"name\": \"y\"}", "name: duplicate key");
}

static void
test_error_alias (void)
{
  assert_parse_error ("name: &n x\nmachine: *n\n", "name: anchors and aliases are not allowed");
}

static void
test_error_billion_laughs (void)
{
  const char *text =
    "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n";

  assert_parse_error (text, "a: anchors and aliases are not allowed");
}

static void
test_error_tag (void)
{
  assert_parse_error ("name: !!str x\n", "name: tags are not allowed");
}

static void
test_error_complex_key (void)
{
  assert_parse_error ("? [a, b]\n: c\n", "mapping keys must be scalars");
}

static void
test_error_too_deep (void)
{
  GString *text = g_string_new ("name: x\nboot: ");

  for (guint i = 0; i < 20; i++)
    g_string_append (text, "[");
  for (guint i = 0; i < 20; i++)
    g_string_append (text, "]");
  g_string_append_c (text, '\n');
  assert_parse_error (text->str, "boot[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nesting deeper than 16 levels");
  g_string_free (text, TRUE);
}

static void
test_depth_16_is_parsed (void)
{
  GString *text = g_string_new ("name: x\nboot: ");

  /* Root is level 1, so boot can hold 15 levels; the validator then
   * rejects the type, which proves the parser accepted the nesting. */
  for (guint i = 0; i < 15; i++)
    g_string_append (text, "[");
  for (guint i = 0; i < 15; i++)
    g_string_append (text, "]");
  g_string_append_c (text, '\n');
  assert_parse_error (text->str, "boot: must be an object (got array)");
  g_string_free (text, TRUE);
}

static void
test_error_too_large (void)
{
  gsize length = FERRY_SPEC_MAX_BYTES + 1;
  g_autofree char *text = g_malloc (length);

  memset (text, ' ', length);
  memcpy (text, "name: x\n", 8);
  assert_parse_error_len (text, length, FERRY_ERROR_TOO_LARGE, "more than the limit", NULL);
}

static void
test_max_size_accepted (void)
{
  gsize length = FERRY_SPEC_MAX_BYTES;
  g_autofree char *text = g_malloc (length);
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;

  memset (text, ' ', length);
  memcpy (text, "name: x\n#", 9);
  spec = ferry_vm_spec_parse (text, length, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (spec->name, ==, "x");
}

static void
test_error_empty (void)
{
  assert_parse_error_len ("", 0, FERRY_ERROR_INVALID_ARGUMENT, "spec is empty", NULL);
  assert_error_message ("  \n# only a comment\n", "spec is empty");
  assert_error_message ("---\n", "spec is empty");
}

static void
test_error_multiple_documents (void)
{
  assert_parse_error ("name: a\n---\nname: b\n", "multiple documents are not allowed", "line 2");
}

static void
test_error_not_utf8 (void)
{
  const char garbage[] = "name: \xff\xfe\x80web\n";

  assert_parse_error_len (garbage, sizeof garbage - 1, FERRY_ERROR_INVALID_ARGUMENT,
                          "not UTF-8", "offset 6", NULL);
}

static void
test_error_nul_byte (void)
{
  const char text[] = "name: x\0y\n";

  assert_parse_error_len (text, sizeof text - 1, FERRY_ERROR_INVALID_ARGUMENT, "not UTF-8", NULL);
}

static void
test_error_escaped_nul (void)
{
  assert_parse_error ("name: \"x\\0y\"\n", "name: NUL characters are not allowed");
}

static void
test_error_syntax (void)
{
  assert_parse_error ("name: x\ndisks: [\n", "line ");
}

static void
test_error_root_not_mapping (void)
{
  assert_error_message ("- name: x\n", "spec must be an object (got array)");
  assert_error_message ("web1\n", "spec must be an object (got string)");
}

static void
test_error_tap_without_ifname (void)
{
  assert_error_message ("name: x\nnics:\n  - network: user\n  - network: tap\n",
                        "nics[1].ifname: required when network is tap");
}

static void
test_error_ifname_without_tap (void)
{
  assert_error_message ("name: x\nnics: [{ifname: tap0}]\n",
                        "nics[0].ifname: only allowed when network is tap (network is user)");
}

static void
test_error_bad_ifname (void)
{
  assert_parse_error ("name: x\nnics: [{network: tap, ifname: a-very-long-interface-name}]\n",
                      "nics[0].ifname: must be 1 to 15 characters");
  assert_parse_error ("name: x\nnics: [{network: tap, ifname: \"tap/0\"}]\n", "nics[0].ifname: ");
}

static void
test_error_initrd_without_kernel (void)
{
  assert_error_message ("name: x\nboot: {initrd: /boot/initrd.img}\n", "boot.initrd: requires boot.kernel");
  assert_error_message ("name: x\nboot: {cmdline: quiet}\n", "boot.cmdline: requires boot.kernel");
}

static void
test_error_bad_machine (void)
{
  assert_parse_error ("name: x\nmachine: Q35\n", "machine: must be 1 to 64 characters", "(got \"Q35\")");
  assert_parse_error ("name: x\ncpu: \"host;rm\"\n", "cpu: must be 1 to 256 characters");
}

static void
test_error_too_many_disks (void)
{
  GString *text = g_string_new ("name: x\ndisks:\n");

  for (guint i = 0; i <= FERRY_SPEC_MAX_DISKS; i++)
    g_string_append_printf (text, "  - {path: /d%u, format: raw}\n", i);
  assert_error_message (text->str, "disks: at most 16 entries (got 17)");
  g_string_free (text, TRUE);
}

static void
test_error_message_escapes_input (void)
{
  g_autofree char *long_value = g_strnfill (1000, 'v');
  g_autofree char *text = g_strdup_printf ("name: x\nserial: \"\\e[31m%s\"\n", long_value);
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = ferry_vm_spec_parse (text, strlen (text), &error);

  g_assert_null (spec);
  g_assert_nonnull (strstr (error->message, "\\x1b[31m"));
  g_assert_null (strchr (error->message, '\x1b'));
  g_assert_cmpuint (strlen (error->message), <, 200);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/vmspec/parse/yaml-full", test_yaml_full);
  g_test_add_func ("/vmspec/parse/json-full-equals-yaml", test_json_full_equals_yaml);
  g_test_add_func ("/vmspec/parse/json-with-tabs", test_json_with_tabs);
  g_test_add_func ("/vmspec/parse/json-tab-margins", test_json_tab_margins);
  g_test_add_func ("/vmspec/parse/json-compact", test_json_compact);
  g_test_add_func ("/vmspec/parse/defaults", test_defaults);
  g_test_add_func ("/vmspec/parse/device-defaults", test_device_defaults);
  g_test_add_func ("/vmspec/parse/generated-mac", test_generated_mac);
  g_test_add_func ("/vmspec/parse/generated-uuid-differs", test_generated_uuid_differs);
  g_test_add_func ("/vmspec/parse/null-means-default", test_null_means_default);
  g_test_add_func ("/vmspec/parse/yaml-core-schema", test_yaml_core_schema);
  g_test_add_func ("/vmspec/parse/quoted-scalar-is-string", test_quoted_scalar_is_string);
  g_test_add_func ("/vmspec/parse/yaml11-yes-is-string", test_yaml11_yes_is_string);
  g_test_add_func ("/vmspec/parse/max-size-accepted", test_max_size_accepted);
  g_test_add_func ("/vmspec/parse/depth-16", test_depth_16_is_parsed);
  g_test_add_func ("/vmspec/memory/units", test_memory_units);
  g_test_add_func ("/vmspec/memory/bad-unit", test_memory_bad_unit);
  g_test_add_func ("/vmspec/memory/non-integral", test_memory_non_integral);
  g_test_add_func ("/vmspec/json/round-trip", test_round_trip);
  g_test_add_func ("/vmspec/json/round-trip-through-text", test_round_trip_through_text);
  g_test_add_func ("/vmspec/json/canonical", test_canonical_json);
  g_test_add_func ("/vmspec/json/integral-double", test_from_json_integral_double);
  g_test_add_func ("/vmspec/json/bad-numbers", test_from_json_bad_numbers);
  g_test_add_func ("/vmspec/copy-equal", test_copy_equal);
  g_test_add_func ("/vmspec/built-in-code", test_built_in_code);
  g_test_add_func ("/vmspec/name-valid", test_name_valid);
  g_test_add_func ("/vmspec/error/unknown-field", test_error_unknown_field);
  g_test_add_func ("/vmspec/error/unknown-nested-field", test_error_unknown_nested_field);
  g_test_add_func ("/vmspec/error/unknown-field-no-suggestion", test_error_unknown_field_no_suggestion);
  g_test_add_func ("/vmspec/error/wrong-type", test_error_wrong_type);
  g_test_add_func ("/vmspec/error/out-of-range", test_error_out_of_range);
  g_test_add_func ("/vmspec/error/integer-overflow", test_error_integer_overflow);
  g_test_add_func ("/vmspec/error/bad-enum", test_error_bad_enum);
  g_test_add_func ("/vmspec/error/missing-required", test_error_missing_required);
  g_test_add_func ("/vmspec/volume/default-pool", test_volume_disk_default_pool);
  g_test_add_func ("/vmspec/volume/named-pool", test_volume_disk_named_pool);
  g_test_add_func ("/vmspec/volume/round-trip", test_volume_disk_round_trip);
  g_test_add_func ("/vmspec/volume/name-rule", test_volume_name_rule);
  g_test_add_func ("/vmspec/error/volume-disk", test_error_volume_disk);
  g_test_add_func ("/vmspec/error/bad-name", test_error_bad_name);
  g_test_add_func ("/vmspec/error/bad-uuid", test_error_bad_uuid);
  g_test_add_func ("/vmspec/error/relative-path", test_error_relative_path);
  g_test_add_func ("/vmspec/error/path-too-long", test_error_path_too_long);
  g_test_add_func ("/vmspec/error/control-chars-in-path", test_error_control_chars_in_path);
  g_test_add_func ("/vmspec/error/yaml-line-break-in-path", test_error_yaml_line_break_in_path);
  g_test_add_func ("/vmspec/error/bad-mac", test_error_bad_mac);
  g_test_add_func ("/vmspec/error/duplicate-mac", test_error_duplicate_mac);
  g_test_add_func ("/vmspec/error/duplicate-disk-path", test_error_duplicate_disk_path);
  g_test_add_func ("/vmspec/error/duplicate-key", test_error_duplicate_key);
  g_test_add_func ("/vmspec/error/alias", test_error_alias);
  g_test_add_func ("/vmspec/error/billion-laughs", test_error_billion_laughs);
  g_test_add_func ("/vmspec/error/tag", test_error_tag);
  g_test_add_func ("/vmspec/error/complex-key", test_error_complex_key);
  g_test_add_func ("/vmspec/error/too-deep", test_error_too_deep);
  g_test_add_func ("/vmspec/error/too-large", test_error_too_large);
  g_test_add_func ("/vmspec/error/empty", test_error_empty);
  g_test_add_func ("/vmspec/error/multiple-documents", test_error_multiple_documents);
  g_test_add_func ("/vmspec/error/not-utf8", test_error_not_utf8);
  g_test_add_func ("/vmspec/error/nul-byte", test_error_nul_byte);
  g_test_add_func ("/vmspec/error/escaped-nul", test_error_escaped_nul);
  g_test_add_func ("/vmspec/error/syntax", test_error_syntax);
  g_test_add_func ("/vmspec/error/root-not-mapping", test_error_root_not_mapping);
  g_test_add_func ("/vmspec/error/tap-without-ifname", test_error_tap_without_ifname);
  g_test_add_func ("/vmspec/error/ifname-without-tap", test_error_ifname_without_tap);
  g_test_add_func ("/vmspec/error/bad-ifname", test_error_bad_ifname);
  g_test_add_func ("/vmspec/error/initrd-without-kernel", test_error_initrd_without_kernel);
  g_test_add_func ("/vmspec/error/bad-machine", test_error_bad_machine);
  g_test_add_func ("/vmspec/error/too-many-disks", test_error_too_many_disks);
  g_test_add_func ("/vmspec/error/message-escapes-input", test_error_message_escapes_input);

  return g_test_run ();
}
