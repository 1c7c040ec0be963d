/* The QEMU command line for a spec: both ends of a migration build the
 * same device model, and paths cannot inject options. */
#include <glib.h>

#include "qemu-argv.h"
#include "vmspec.h"

static FerryVmSpec *
sample_spec (void)
{
  const char *yaml =
    "name: web1\n"
    "uuid: 0c3b6a3e-8f4d-4d7e-9a55-2f1f0b9f7a11\n"
    "vcpus: 2\n"
    "memory: 1G\n"
    "boot:\n"
    "  kernel: /images/vmlinuz\n"
    "  initrd: /images/init,rd.img\n"
    "  cmdline: console=ttyS0\n"
    "disks:\n"
    "  - path: /images/web1.qcow2\n"
    "    format: qcow2\n"
    "nics:\n"
    "  - mac: '52:54:00:12:34:56'\n";
  g_autoptr (GError) error = NULL;
  FerryVmSpec *spec = ferry_vm_spec_parse (yaml, strlen (yaml), &error);
  g_assert_no_error (error);
  return spec;
}

static const FerryQemuLaunch launch = {
  .qemu_binary = "qemu-system-x86_64",
  .accel = "tcg",
  .qmp_socket = "/state/vms/web1/qmp.sock",
  .pid_file = "/state/vms/web1/qemu.pid",
  .console_log = "/state/vms/web1/console.log",
  .qemu_log = "/state/vms/web1/qemu.log",
};

static char *
joined (GStrv argv)
{
  return g_strjoinv (" ", argv);
}

static void
test_basic_machine (void)
{
  g_autoptr (FerryVmSpec) spec = sample_spec ();
  g_auto (GStrv) argv = ferry_qemu_argv_build (spec, &launch);
  g_autofree char *line = joined (argv);
  g_assert_nonnull (strstr (line, "-machine q35,accel=tcg"));
  g_assert_nonnull (strstr (line, "-smp 2"));
  g_assert_nonnull (strstr (line, "-m 1024M"));
  g_assert_nonnull (strstr (line, "-cpu qemu64"));
  g_assert_nonnull (strstr (line, "-daemonize"));
  g_assert_nonnull (strstr (line, "-D /state/vms/web1/qemu.log"));
  g_assert_nonnull (strstr (line, "path=/state/vms/web1/qmp.sock,server=on,wait=off"));
  g_assert_nonnull (strstr (line, "driver=qcow2,file=disk0-file,node-name=disk0"));
  g_assert_nonnull (strstr (line, "virtio-blk-pci,drive=disk0"));
  g_assert_nonnull (strstr (line, "mac=52:54:00:12:34:56"));
  g_assert_null (strstr (line, "-incoming"));
  g_assert_null (strstr (line, " -S"));
}

static void
test_incoming_is_paused_and_deferred (void)
{
  g_autoptr (FerryVmSpec) spec = sample_spec ();
  FerryQemuLaunch incoming = launch;
  incoming.incoming = TRUE;
  incoming.start_paused = TRUE;
  g_auto (GStrv) argv = ferry_qemu_argv_build (spec, &incoming);
  g_autofree char *line = joined (argv);
  g_assert_nonnull (strstr (line, "-incoming defer"));
  g_assert_nonnull (strstr (line, " -S"));
}

static void
test_commas_in_paths_are_escaped (void)
{
  g_autoptr (FerryVmSpec) spec = sample_spec ();
  g_auto (GStrv) argv = ferry_qemu_argv_build (spec, &launch);
  gboolean found = FALSE;
  for (guint i = 0; argv[i] != NULL; i++)
    if (g_str_equal (argv[i], "/images/init,,rd.img"))
      found = TRUE;
  g_assert_true (found);
}

static void
test_same_spec_same_command_line (void)
{
  g_autoptr (FerryVmSpec) spec = sample_spec ();
  g_autoptr (FerryVmSpec) copy = ferry_vm_spec_copy (spec);
  g_auto (GStrv) first = ferry_qemu_argv_build (spec, &launch);
  g_auto (GStrv) second = ferry_qemu_argv_build (copy, &launch);
  g_assert_true (g_strv_equal ((const char *const *) first, (const char *const *) second));
}

static void
test_tcg_padding_moves_ram_off_the_fast_path (void)
{
  g_autoptr (FerryVmSpec) spec = sample_spec ();
  FerryQemuLaunch padded = launch;
  padded.pad_ram_for_tcg_dirty_sync = TRUE;
  g_auto (GStrv) argv = ferry_qemu_argv_build (spec, &padded);
  g_autofree char *line = joined (argv);
  /* 1 GiB + 8 KiB: not a multiple of 256 KiB (64 pages, one bitmap word). */
  g_assert_nonnull (strstr (line, "-m 1048584K"));
  g_assert_cmpint ((1048584 * 1024) % (256 * 1024), !=, 0);
}

static void
test_resolve_machine_alias (void)
{
  g_autofree char *qemu = g_find_program_in_path ("qemu-system-x86_64");
  if (qemu == NULL)
    {
      g_test_skip ("qemu-system-x86_64 is not installed");
      return;
    }
  g_autoptr (GError) error = NULL;
  g_autofree char *machine = ferry_qemu_resolve_machine ("qemu-system-x86_64", "q35", &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_prefix (machine, "pc-q35-"));
  g_autofree char *bogus = ferry_qemu_resolve_machine ("qemu-system-x86_64", "nonsense", &error);
  g_assert_null (bogus);
  g_assert_nonnull (strstr (error->message, "nonsense"));
}

/* QEMU gets the agent's PATH and the C locale, and nothing else: not
 * the malloc debugging meson sets for tests, not a preload. */
static void
test_clean_environment (void)
{
  const char *agent[] = { "PATH=/opt/qemu/bin:/usr/bin", "MALLOC_PERTURB_=29", "LD_PRELOAD=/tmp/evil.so",
                          "LANG=de_DE.UTF-8", "ASAN_OPTIONS=detect_leaks=0", NULL };
  g_auto (GStrv) env = ferry_qemu_environ (agent);
  g_assert_cmpuint (g_strv_length (env), ==, 2);
  g_assert_cmpstr (g_environ_getenv (env, "PATH"), ==, "/opt/qemu/bin:/usr/bin");
  g_assert_cmpstr (g_environ_getenv (env, "LC_ALL"), ==, "C");
  g_assert_null (g_environ_getenv (env, "MALLOC_PERTURB_"));
  g_assert_null (g_environ_getenv (env, "LD_PRELOAD"));

  /* No PATH in the agent's environment: the system's. */
  const char *bare[] = { "HOME=/root", NULL };
  g_auto (GStrv) fallback = ferry_qemu_environ (bare);
  g_assert_true (g_str_has_suffix (g_environ_getenv (fallback, "PATH"), "/usr/bin:/sbin:/bin"));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/qemu-argv/clean-environment", test_clean_environment);
  g_test_add_func ("/qemu-argv/basic-machine", test_basic_machine);
  g_test_add_func ("/qemu-argv/incoming-is-paused-and-deferred", test_incoming_is_paused_and_deferred);
  g_test_add_func ("/qemu-argv/commas-in-paths-are-escaped", test_commas_in_paths_are_escaped);
  g_test_add_func ("/qemu-argv/same-spec-same-command-line", test_same_spec_same_command_line);
  g_test_add_func ("/qemu-argv/tcg-padding", test_tcg_padding_moves_ram_off_the_fast_path);
  g_test_add_func ("/qemu-argv/resolve-machine-alias", test_resolve_machine_alias);
  return g_test_run ();
}
