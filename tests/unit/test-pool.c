/* Storage pools and volumes (src/agent/pool.c) against real files and
 * the real qemu-img: formats are probed, names stay inside the pool,
 * errors name the field. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "agent.h"

typedef struct {
  char *root;          /* temporary directory, removed afterwards */
  char *fast_dir;
  FerryAgent *agent;
} Fixture;

/* Only what pool.c reads of a FerryAgent: config, pools and VMs. */
static void
free_fake_vm (gpointer data)
{
  FerryVm *vm = data;
  g_free (vm->name);
  ferry_vm_spec_free (vm->spec);
  g_free (vm);
}

static FerryAgent *
fake_agent (const char *state_dir, char **pools)
{
  FerryAgent *agent = g_new0 (FerryAgent, 1);
  agent->config.state_dir = g_strdup (state_dir);
  agent->config.host_name = g_strdup ("testhost");
  agent->config.pools = g_strdupv (pools);
  agent->pools = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify) ferry_pool_free);
  agent->vms = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, free_fake_vm);
  return agent;
}

static void
free_fake_agent (FerryAgent *agent)
{
  g_hash_table_unref (agent->pools);
  g_hash_table_unref (agent->vms);
  g_free (agent->config.state_dir);
  g_free (agent->config.host_name);
  g_strfreev (agent->config.pools);
  g_free (agent);
}

static void
remove_tree (const char *path)
{
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  const char *entry;
  while (dir != NULL && (entry = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, entry, NULL);
      if (g_file_test (child, G_FILE_TEST_IS_DIR) && !g_file_test (child, G_FILE_TEST_IS_SYMLINK))
        remove_tree (child);
      else
        g_unlink (child);
    }
  g_rmdir (path);
}

static void
fixture_set_up (Fixture *f, gconstpointer data)
{
  f->root = g_dir_make_tmp ("ferry-test-pool-XXXXXX", NULL);
  g_assert_nonnull (f->root);
  f->fast_dir = g_build_filename (f->root, "fast", NULL);
  g_assert_cmpint (g_mkdir (f->fast_dir, 0700), ==, 0);
  g_autofree char *state = g_build_filename (f->root, "state", NULL);
  g_autofree char *fast = g_strdup_printf ("fast=%s/", f->fast_dir);
  char *pools[] = { fast, NULL };
  g_autoptr (GError) error = NULL;
  f->agent = fake_agent (state, pools);
  g_assert_true (ferry_pools_init (f->agent, &error));
  g_assert_no_error (error);
}

static void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  free_fake_agent (f->agent);
  remove_tree (f->root);
  g_free (f->root);
  g_free (f->fast_dir);
}

static gboolean
have_qemu_img (void)
{
  g_autofree char *path = g_find_program_in_path ("qemu-img");
  if (path == NULL)
    g_test_skip ("qemu-img is not installed");
  return path != NULL;
}

static FerryPool *
pool (Fixture *f, const char *name)
{
  g_autoptr (GError) error = NULL;
  FerryPool *found = ferry_pool_lookup (f->agent, name, &error);
  g_assert_no_error (error);
  return found;
}

static void
write_file (const char *dir, const char *name, gsize size)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autofree char *zeros = g_malloc0 (size);
  g_autoptr (GError) error = NULL;
  g_file_set_contents (path, zeros, size, &error);
  g_assert_no_error (error);
}

static FerryVmSpec *
spec_from (const char *yaml)
{
  g_autoptr (GError) error = NULL;
  FerryVmSpec *spec = ferry_vm_spec_parse (yaml, strlen (yaml), &error);
  g_assert_no_error (error);
  return spec;
}

static void
assert_check_fails (Fixture *f, const char *yaml, FerryErrorCode code, const char *message)
{
  g_autoptr (FerryVmSpec) spec = spec_from (yaml);
  g_autoptr (GError) error = NULL;
  g_assert_false (ferry_spec_check_disks (f->agent, spec, &error));
  g_assert_error (error, FERRY_ERROR, (gint) code);
  g_assert_cmpstr (error->message, ==, message);
}

/* ---- configuration ------------------------------------------------------------ */

static void
test_default_pool_is_created (Fixture *f, gconstpointer data)
{
  g_autofree char *expected = g_build_filename (f->root, "state", "pools", "default", NULL);
  g_assert_cmpstr (pool (f, "default")->path, ==, expected);
  g_assert_true (g_file_test (expected, G_FILE_TEST_IS_DIR));
  /* The trailing slash of --pool fast=DIR/ is gone. */
  g_assert_cmpstr (pool (f, "fast")->path, ==, f->fast_dir);
  g_assert_cmpuint (g_hash_table_size (f->agent->pools), ==, 2);
}

static void
test_default_pool_override (Fixture *f, gconstpointer data)
{
  g_autofree char *entry = g_strdup_printf ("default=%s", f->fast_dir);
  char *pools[] = { entry, NULL };
  g_autofree char *state = g_build_filename (f->root, "state2", NULL);
  FerryAgent *agent = fake_agent (state, pools);
  g_autoptr (GError) error = NULL;
  g_assert_true (ferry_pools_init (agent, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (g_hash_table_size (agent->pools), ==, 1);
  g_assert_cmpstr (((FerryPool *) g_hash_table_lookup (agent->pools, "default"))->path, ==, f->fast_dir);
  g_autofree char *unused = g_build_filename (state, "pools", NULL);
  g_assert_false (g_file_test (unused, G_FILE_TEST_EXISTS));
  free_fake_agent (agent);
}

static void
assert_config_error (Fixture *f, const char *entry, const char *fragment)
{
  g_autofree char *state = g_build_filename (f->root, "state3", NULL);
  g_autofree char *again = g_strdup_printf ("other=%s", f->fast_dir);
  char *pools[] = { (char *) entry, NULL };
  FerryAgent *agent = fake_agent (state, pools);
  g_autoptr (GError) error = NULL;
  g_assert_false (ferry_pools_init (agent, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  if (strstr (error->message, fragment) == NULL)
    g_error ("error \"%s\" lacks \"%s\"", error->message, fragment);
  free_fake_agent (agent);
}

static void
test_config_errors (Fixture *f, gconstpointer data)
{
  g_autofree char *missing = g_build_filename (f->root, "missing", NULL);
  g_autofree char *missing_entry = g_strdup_printf ("x=%s", missing);
  g_autofree char *file_entry = NULL;
  write_file (f->root, "plain", 1);
  file_entry = g_strdup_printf ("x=%s/plain", f->root);

  assert_config_error (f, "nodir", "--pool: 'nodir' is not NAME=DIR");
  assert_config_error (f, "=/tmp", "is not NAME=DIR");
  assert_config_error (f, "bad/name=/tmp", "--pool: 'bad/name' is not a pool name");
  assert_config_error (f, "x=relative/dir", "--pool x: 'relative/dir' is not an absolute path");
  assert_config_error (f, missing_entry, "No such file or directory");
  assert_config_error (f, file_entry, "is not a directory");

  /* Twice the same name, and one directory under two names. */
  g_autofree char *state = g_build_filename (f->root, "state4", NULL);
  g_autofree char *a = g_strdup_printf ("a=%s", f->fast_dir);
  g_autofree char *b = g_strdup_printf ("b=%s", f->fast_dir);
  char *twice[] = { a, a, NULL };
  char *same_dir[] = { a, b, NULL };
  for (guint i = 0; i < 2; i++)
    {
      FerryAgent *agent = fake_agent (state, i == 0 ? twice : same_dir);
      g_autoptr (GError) error = NULL;
      g_assert_false (ferry_pools_init (agent, &error));
      g_assert_nonnull (strstr (error->message, i == 0 ? "--pool a: given more than once"
                                                       : "is already pool 'a'"));
      free_fake_agent (agent);
    }
}

static void
test_lookup_unknown (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_assert_null (ferry_pool_lookup (f->agent, "nope", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_cmpstr (error->message, ==, "pool 'nope' does not exist on host testhost");
}

static void
test_volume_path (Fixture *f, gconstpointer data)
{
  FerryPool *fast = pool (f, "fast");
  g_autofree char *expected = g_build_filename (f->fast_dir, "web1-root.qcow2", NULL);
  g_autofree char *path = ferry_pool_volume_path (fast, "web1-root.qcow2", NULL);
  g_assert_cmpstr (path, ==, expected);

  const char *bad[] = { "../escape", ".hidden", "a/b", "", "x y", NULL };
  for (guint i = 0; bad[i] != NULL; i++)
    {
      g_autoptr (GError) error = NULL;
      g_assert_null (ferry_pool_volume_path (fast, bad[i], &error));
      g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
      g_assert_true (g_str_has_prefix (error->message, "volume: "));
    }
}

static void
test_space (Fixture *f, gconstpointer data)
{
  guint64 capacity = 0, available = 0;
  g_autoptr (GError) error = NULL;
  g_assert_true (ferry_pool_space (pool (f, "fast"), &capacity, &available, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (capacity, >, 0);
  g_assert_cmpuint (available, <=, capacity);
}

/* ---- volumes ------------------------------------------------------------------ */

static void
test_create_list_delete (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  FerryPool *fast = pool (f, "fast");
  g_autoptr (GError) error = NULL;

  g_assert_true (ferry_volume_create (fast, "b.qcow2", "qcow2", 4 << 20, &error));
  g_assert_no_error (error);
  g_assert_true (ferry_volume_create (fast, "a.raw", "raw", 1 << 20, &error));
  g_assert_no_error (error);
  /* Not volumes: a hidden file, a directory, a symlink. */
  write_file (f->fast_dir, ".partial", 10);
  g_autofree char *subdir = g_build_filename (f->fast_dir, "sub", NULL);
  g_assert_cmpint (g_mkdir (subdir, 0700), ==, 0);
  g_autofree char *link = g_build_filename (f->fast_dir, "link.raw", NULL);
  g_assert_cmpint (symlink ("/etc/passwd", link), ==, 0);

  g_autoptr (GPtrArray) volumes = ferry_pool_list_volumes (fast, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (volumes->len, ==, 2);
  FerryVolumeInfo *a = g_ptr_array_index (volumes, 0);
  FerryVolumeInfo *b = g_ptr_array_index (volumes, 1);
  g_assert_cmpstr (a->name, ==, "a.raw");
  g_assert_cmpstr (a->format, ==, "raw");
  g_assert_cmpuint (a->virtual_size, ==, 1 << 20);
  g_assert_cmpstr (b->name, ==, "b.qcow2");
  g_assert_cmpstr (b->format, ==, "qcow2");
  g_assert_cmpuint (b->virtual_size, ==, 4 << 20);
  /* Sparse: a fresh qcow2 holds metadata only. */
  g_assert_cmpuint (b->allocated_bytes, >, 0);
  g_assert_cmpuint (b->allocated_bytes, <, 4 << 20);

  g_autoptr (JsonObject) json = ferry_pool_to_json (fast, TRUE, &error);
  g_assert_no_error (error);
  g_assert_cmpint (json_object_get_int_member (json, "volumes"), ==, 2);
  g_assert_cmpuint (json_array_get_length (json_object_get_array_member (json, "volume_list")), ==, 2);

  g_assert_true (ferry_volume_delete (f->agent, fast, "a.raw", &error));
  g_assert_no_error (error);
  g_autofree char *gone = g_build_filename (f->fast_dir, "a.raw", NULL);
  g_assert_false (g_file_test (gone, G_FILE_TEST_EXISTS));
  g_assert_false (ferry_volume_delete (f->agent, fast, "a.raw", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error (&error);
  /* A symlink is left alone, even when asked by name. */
  g_assert_false (ferry_volume_delete (f->agent, fast, "link.raw", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);
  g_assert_true (g_file_test (link, G_FILE_TEST_IS_SYMLINK));
}

static void
test_create_refuses (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  FerryPool *fast = pool (f, "fast");
  g_autoptr (GError) error = NULL;

  g_assert_true (ferry_volume_create (fast, "x.qcow2", "qcow2", 1 << 20, &error));
  g_assert_no_error (error);
  g_assert_false (ferry_volume_create (fast, "x.qcow2", "raw", 1 << 20, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);
  g_assert_cmpstr (error->message, ==, "volume 'fast/x.qcow2' already exists");
  g_clear_error (&error);
  /* The refused create did not touch the existing image. */
  g_autofree char *path = g_build_filename (f->fast_dir, "x.qcow2", NULL);
  g_autoptr (FerryVolumeInfo) info = ferry_volume_inspect (path, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (info->format, ==, "qcow2");

  g_assert_false (ferry_volume_create (fast, "y", "vmdk", 1 << 20, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_true (g_str_has_prefix (error->message, "format: "));
  g_clear_error (&error);
  g_assert_false (ferry_volume_create (fast, "y", "raw", 1000, &error));
  g_assert_true (g_str_has_prefix (error->message, "size_bytes: must be between"));
  g_clear_error (&error);
  g_assert_false (ferry_volume_create (fast, "y", "raw", (1 << 20) + 1, &error));
  g_assert_true (g_str_has_prefix (error->message, "size_bytes: must be a multiple of 512"));
  g_clear_error (&error);
  g_assert_false (ferry_volume_create (fast, "../y", "raw", 1 << 20, &error));
  g_assert_true (g_str_has_prefix (error->message, "volume: "));
  g_clear_error (&error);
  g_autofree char *y = g_build_filename (f->fast_dir, "y", NULL);
  g_assert_false (g_file_test (y, G_FILE_TEST_EXISTS));
}

static void
test_inspect_probes_content (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  write_file (f->fast_dir, "liar.qcow2", 1 << 20);
  g_autofree char *path = g_build_filename (f->fast_dir, "liar.qcow2", NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVolumeInfo) info = ferry_volume_inspect (path, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (info->name, ==, "liar.qcow2");
  g_assert_cmpstr (info->format, ==, "raw");
  g_assert_cmpuint (info->virtual_size, ==, 1 << 20);

  g_autofree char *missing = g_build_filename (f->fast_dir, "missing", NULL);
  g_assert_null (ferry_volume_inspect (missing, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

/* ---- specs -------------------------------------------------------------------- */

static void
test_check_disks (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  g_autoptr (GError) error = NULL;
  g_assert_true (ferry_volume_create (pool (f, "default"), "root.qcow2", "qcow2", 8 << 20, &error));
  g_assert_true (ferry_volume_create (pool (f, "fast"), "data", "raw", 1 << 20, &error));
  g_assert_no_error (error);
  write_file (pool (f, "default")->path, "x.qcow2", 1 << 20);

  g_autoptr (FerryVmSpec) good =
    spec_from ("name: v\ndisks:\n  - {volume: root.qcow2, format: qcow2}\n"
               "  - {pool: fast, volume: data, format: raw}\n  - {path: /no/such/file, format: raw}\n");
  g_assert_true (ferry_spec_check_disks (f->agent, good, &error));
  g_assert_no_error (error);

  g_autofree char *resolved = ferry_disk_resolve_path (f->agent, g_ptr_array_index (good->disks, 1), &error);
  g_autofree char *expected = g_build_filename (f->fast_dir, "data", NULL);
  g_assert_cmpstr (resolved, ==, expected);
  g_autofree char *as_given = ferry_disk_resolve_path (f->agent, g_ptr_array_index (good->disks, 2), &error);
  g_assert_cmpstr (as_given, ==, "/no/such/file");

  assert_check_fails (f, "name: v\ndisks:\n  - {volume: root.qcow2, format: qcow2}\n"
                         "  - {volume: x.qcow2, format: qcow2}\n",
                      FERRY_ERROR_INVALID_ARGUMENT,
                      "disks[1].format: volume 'default/x.qcow2' claims qcow2 but its content is raw");
  assert_check_fails (f, "name: v\ndisks: [{volume: root.qcow2, format: raw}]\n",
                      FERRY_ERROR_INVALID_ARGUMENT,
                      "disks[0].format: volume 'default/root.qcow2' claims raw but its content is qcow2");
  assert_check_fails (f, "name: v\ndisks: [{pool: nope, volume: a, format: raw}]\n",
                      FERRY_ERROR_NOT_FOUND,
                      "disks[0].pool: pool 'nope' does not exist on host testhost");
  assert_check_fails (f, "name: v\ndisks: [{volume: missing, format: raw}]\n",
                      FERRY_ERROR_NOT_FOUND,
                      "disks[0].volume: volume 'default/missing' does not exist");

  g_autofree char *same = g_strdup_printf ("name: v\ndisks:\n  - {pool: fast, volume: data, format: raw}\n"
                                           "  - {path: %s/data, format: raw}\n", f->fast_dir);
  g_autofree char *same_message = g_strdup_printf ("disks[1]: same image as disks[0] (%s/data)", f->fast_dir);
  assert_check_fails (f, same, FERRY_ERROR_INVALID_ARGUMENT, same_message);
}

/* A qcow2 header is content too: one that names a host file as its
 * backing file must not get that file opened for the guest. */
static void
test_check_disks_refuses_backing_file (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  g_autofree char *path = g_build_filename (pool (f, "default")->path, "overlay.qcow2", NULL);
  const char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
                         path, "1M", NULL };
  g_autoptr (GError) error = NULL;
  int status = 0;
  g_assert_true (g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                               NULL, &status, &error));
  g_assert_no_error (error);
  g_assert_true (g_spawn_check_wait_status (status, &error));
  assert_check_fails (f, "name: v\ndisks: [{volume: overlay.qcow2, format: qcow2}]\n",
                      FERRY_ERROR_INVALID_ARGUMENT,
                      "disks[0].volume: volume 'default/overlay.qcow2' refers to another file "
                      "(/etc/hostname); ferry does not use backing or data files");
}

static void
test_delete_refuses_volume_in_use (Fixture *f, gconstpointer data)
{
  if (!have_qemu_img ())
    return;
  g_autoptr (GError) error = NULL;
  FerryPool *fast = pool (f, "fast");
  g_assert_true (ferry_volume_create (fast, "used", "raw", 1 << 20, &error));
  g_assert_true (ferry_volume_create (fast, "by-path", "raw", 1 << 20, &error));
  g_assert_no_error (error);

  g_autofree char *yaml = g_strdup_printf ("name: web1\ndisks:\n  - {path: /other, format: raw}\n"
                                           "  - {pool: fast, volume: used, format: raw}\n"
                                           "  - {path: %s/by-path, format: raw}\n", f->fast_dir);
  FerryVm *vm = g_new0 (FerryVm, 1);
  vm->name = g_strdup ("web1");
  vm->spec = spec_from (yaml);
  g_hash_table_replace (f->agent->vms, g_strdup (vm->name), vm);

  g_assert_false (ferry_volume_delete (f->agent, fast, "used", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);
  g_assert_cmpstr (error->message, ==, "volume 'fast/used' is disks[1] of VM 'web1'; undefine the VM first");
  g_clear_error (&error);
  g_assert_false (ferry_volume_delete (f->agent, fast, "by-path", &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT);
  g_assert_nonnull (strstr (error->message, "disks[2] of VM 'web1'"));
  g_clear_error (&error);
  /* The same name in another pool is another volume. */
  g_assert_true (ferry_volume_create (pool (f, "default"), "used", "raw", 1 << 20, &error));
  g_assert_true (ferry_volume_delete (f->agent, pool (f, "default"), "used", &error));
  g_assert_no_error (error);

  g_hash_table_remove (f->agent->vms, "web1");
  g_assert_true (ferry_volume_delete (f->agent, fast, "used", &error));
  g_assert_no_error (error);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, fn) g_test_add (path, Fixture, NULL, fixture_set_up, fn, fixture_tear_down)
  ADD ("/pool/config/default-created", test_default_pool_is_created);
  ADD ("/pool/config/default-override", test_default_pool_override);
  ADD ("/pool/config/errors", test_config_errors);
  ADD ("/pool/lookup-unknown", test_lookup_unknown);
  ADD ("/pool/volume-path", test_volume_path);
  ADD ("/pool/space", test_space);
  ADD ("/pool/volume/create-list-delete", test_create_list_delete);
  ADD ("/pool/volume/create-refuses", test_create_refuses);
  ADD ("/pool/volume/inspect-probes-content", test_inspect_probes_content);
  ADD ("/pool/spec/check-disks", test_check_disks);
  ADD ("/pool/spec/refuses-backing-file", test_check_disks_refuses_backing_file);
  ADD ("/pool/volume/delete-refuses-in-use", test_delete_refuses_volume_in_use);
#undef ADD
  return g_test_run ();
}
