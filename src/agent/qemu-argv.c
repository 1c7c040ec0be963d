#include "qemu-argv.h"

#include <fcntl.h>
#include <unistd.h>

#include "ferry-error.h"

static void
add (GStrvBuilder *builder, const char *arg)
{
  g_strv_builder_add (builder, arg);
}

G_GNUC_PRINTF (2, 3) static void
addf (GStrvBuilder *builder, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *arg = g_strdup_vprintf (format, args);
  va_end (args);
  g_strv_builder_add (builder, arg);
}

/* QEMU's option parser treats ',' as a separator; a literal comma in a
 * value is written as ",,". */
static char *
escape_commas (const char *value)
{
  g_autoptr (GString) out = g_string_new (NULL);
  for (const char *p = value; *p; p++)
    {
      g_string_append_c (out, *p);
      if (*p == ',')
        g_string_append_c (out, ',');
    }
  return g_string_free (g_steal_pointer (&out), FALSE);
}

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

GStrv
ferry_qemu_environ (const char *const *agent_environ)
{
  const char *path = g_environ_getenv ((char **) agent_environ, "PATH");
  g_autoptr (GStrvBuilder) builder = g_strv_builder_new ();
  g_autofree char *path_entry = g_strconcat ("PATH=", path != NULL && *path != '\0' ? path : DEFAULT_PATH, NULL);
  g_strv_builder_add (builder, path_entry);
  g_strv_builder_add (builder, "LC_ALL=C");
  return g_strv_builder_end (builder);
}

GStrv
ferry_qemu_argv_build (const FerryVmSpec *spec, const FerryQemuLaunch *launch)
{
  g_autoptr (GStrvBuilder) b = g_strv_builder_new ();
  g_autofree char *qmp = escape_commas (launch->qmp_socket);
  g_autofree char *pid = escape_commas (launch->pid_file);
  g_autofree char *console = escape_commas (launch->console_log);

  add (b, launch->qemu_binary);
  add (b, "-name");
  addf (b, "guest=%s,debug-threads=on", spec->name);
  add (b, "-uuid");
  add (b, spec->uuid);
  add (b, "-machine");
  addf (b, "%s,accel=%s", spec->machine, launch->accel);
  add (b, "-cpu");
  add (b, spec->cpu_model);
  add (b, "-smp");
  addf (b, "%u", spec->vcpus);
  add (b, "-m");
  if (launch->pad_ram_for_tcg_dirty_sync)
    addf (b, "%" G_GUINT64_FORMAT "K", spec->memory_mib * 1024 + 8);
  else
    addf (b, "%" G_GUINT64_FORMAT "M", spec->memory_mib);
  add (b, "-nodefaults");
  add (b, "-no-user-config");
  add (b, "-display");
  add (b, "none");
  add (b, "-daemonize");
  add (b, "-pidfile");
  add (b, pid);
  if (launch->qemu_log != NULL)
    {
      /* A daemonized QEMU sends stderr to /dev/null unless -D names a
       * log: with it, its error reports (a failed incoming migration, a
       * crash's last message) land there. A plain file name: no commas
       * to escape. */
      add (b, "-D");
      add (b, launch->qemu_log);
    }
  add (b, "-chardev");
  addf (b, "socket,id=monitor,path=%s,server=on,wait=off", qmp);
  add (b, "-mon");
  add (b, "chardev=monitor,id=monitor,mode=control");

  if (spec->serial == FERRY_SERIAL_LOG)
    {
      add (b, "-chardev");
      addf (b, "file,id=serial0,path=%s,append=on", console);
      add (b, "-serial");
      add (b, "chardev:serial0");
    }

  if (spec->kernel != NULL)
    {
      g_autofree char *kernel = escape_commas (spec->kernel);
      add (b, "-kernel");
      add (b, kernel);
      if (spec->initrd != NULL)
        {
          g_autofree char *initrd = escape_commas (spec->initrd);
          add (b, "-initrd");
          add (b, initrd);
        }
      if (spec->cmdline != NULL)
        {
          add (b, "-append");
          add (b, spec->cmdline);
        }
    }

  for (guint i = 0; spec->disks != NULL && i < spec->disks->len; i++)
    {
      const FerryDiskSpec *disk = g_ptr_array_index (spec->disks, i);
      g_return_val_if_fail (disk->path != NULL, NULL);
      g_autofree char *path = escape_commas (disk->path);
      gboolean direct = disk->cache == NULL || g_str_equal (disk->cache, "none");
      /* Node names are stable (disk0, disk0-file…) so later block jobs
       * (mirror, bitmaps) can address them on both ends. */
      add (b, "-blockdev");
      addf (b, "driver=file,filename=%s,node-name=disk%u-file,cache.direct=%s,read-only=%s",
            path, i, direct ? "on" : "off", disk->readonly ? "on" : "off");
      add (b, "-blockdev");
      addf (b, "driver=%s,file=disk%u-file,node-name=disk%u,read-only=%s",
            ferry_disk_format_to_string (disk->format), i, i, disk->readonly ? "on" : "off");
      add (b, "-device");
      if (disk->bus == FERRY_DISK_BUS_IDE)
        addf (b, "ide-hd,drive=disk%u,id=disk%u-dev", i, i);
      else
        addf (b, "virtio-blk-pci,drive=disk%u,id=disk%u-dev", i, i);
    }

  for (guint i = 0; spec->nics != NULL && i < spec->nics->len; i++)
    {
      const FerryNicSpec *nic = g_ptr_array_index (spec->nics, i);
      add (b, "-netdev");
      switch (nic->network)
        {
        case FERRY_NIC_NETWORK_TAP:
          addf (b, "tap,id=net%u,ifname=%s,script=no,downscript=no", i, nic->ifname);
          break;
        case FERRY_NIC_NETWORK_USER:
          addf (b, "user,id=net%u", i);
          break;
        case FERRY_NIC_NETWORK_NONE:
        default:
          /* A hub port with nothing else on it: the device exists, no traffic. */
          addf (b, "hubport,id=net%u,hubid=%u", i, 100 + i);
          break;
        }
      add (b, "-device");
      addf (b, "%s,netdev=net%u,mac=%s,id=nic%u", nic->model, i, nic->mac, i);
    }

  if (spec->firmware != NULL && g_str_equal (spec->firmware, "uefi") && spec->kernel == NULL)
    {
      add (b, "-bios");
      add (b, "/usr/share/ovmf/OVMF.fd");
    }

  if (launch->incoming)
    {
      add (b, "-incoming");
      add (b, "defer");
    }
  if (launch->start_paused)
    add (b, "-S");

  return g_strv_builder_end (b);
}

G_LOCK_DEFINE_STATIC (machine_cache);
static GHashTable *machine_cache; /* "binary\nalias" -> resolved */

char *
ferry_qemu_resolve_machine (const char *qemu_binary, const char *machine, GError **error)
{
  g_autofree char *key = g_strdup_printf ("%s\n%s", qemu_binary, machine);

  G_LOCK (machine_cache);
  const char *cached = machine_cache ? g_hash_table_lookup (machine_cache, key) : NULL;
  char *result = g_strdup (cached);
  G_UNLOCK (machine_cache);
  if (result != NULL)
    return result;

  const char *argv[] = { qemu_binary, "-machine", "help", NULL };
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;
  int status = 0;
  g_autoptr (GError) local_error = NULL;
  if (!g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err,
                     &status, &local_error)
      || !g_spawn_check_wait_status (status, &local_error))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot run %s -machine help: %s",
                   qemu_binary, local_error->message);
      return NULL;
    }

  /* Lines look like: "q35   Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)". */
  g_auto (GStrv) lines = g_strsplit (out, "\n", -1);
  for (guint i = 0; lines[i] != NULL && result == NULL; i++)
    {
      g_auto (GStrv) words = g_strsplit_set (lines[i], " \t", 2);
      if (words[0] == NULL || !g_str_equal (words[0], machine))
        continue;
      const char *alias = strstr (lines[i], "(alias of ");
      if (alias != NULL)
        {
          alias += strlen ("(alias of ");
          const char *end = strchr (alias, ')');
          result = end ? g_strndup (alias, end - alias) : NULL;
        }
      else
        result = g_strdup (machine);
    }
  if (result == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "machine: '%s' is not a machine type of %s", machine, qemu_binary);
      return NULL;
    }

  G_LOCK (machine_cache);
  if (machine_cache == NULL)
    machine_cache = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_hash_table_replace (machine_cache, g_strdup (key), g_strdup (result));
  G_UNLOCK (machine_cache);
  return result;
}

const char *
ferry_qemu_detect_accel (void)
{
  const char *override = g_getenv ("FERRY_ACCEL");
  if (override != NULL && (g_str_equal (override, "kvm") || g_str_equal (override, "tcg")))
    return override;

  int fd = open ("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return "tcg";
  close (fd);

  g_autofree char *cpuinfo = NULL;
  if (g_file_get_contents ("/proc/cpuinfo", &cpuinfo, NULL, NULL)
      && strstr (cpuinfo, " hypervisor") != NULL)
    return "tcg";
  return "kvm";
}

gboolean
ferry_qemu_has_tcg_dirty_sync_bug (const char *qemu_binary)
{
  const char *argv[] = { qemu_binary, "-version", NULL };
  g_autofree char *out = NULL;
  int status = 0;
  if (!g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDERR_TO_DEV_NULL,
                     NULL, NULL, &out, NULL, &status, NULL)
      || !g_spawn_check_wait_status (status, NULL))
    return TRUE; /* unknown: the padding is harmless, the bug is not */
  /* "QEMU emulator version 7.2.22 (Debian …)" */
  const char *version = strstr (out, "version ");
  if (version == NULL)
    return TRUE;
  guint64 major = g_ascii_strtoull (version + strlen ("version "), NULL, 10);
  return major < 9;
}
