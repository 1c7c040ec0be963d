/* ferry agent — storage pools (directories) and their volumes (image files).
 *
 * A pool is a directory the administrator names with --pool NAME=DIR;
 * "default" lives in the state directory unless overridden. A volume is a
 * regular file in a pool whose name is a valid volume name (so files the
 * agent did not make, such as ".part" copies or symlinks, are never
 * volumes). Formats are always probed from the content with qemu-img: a
 * name or a spec that says "qcow2" proves nothing (CVE-2008-2004).
 */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gio/gunixinputstream.h>
#include <glib/gstdio.h>

#include "jsonutil.h"

#define QEMU_IMG "qemu-img"
/* qemu-img info prints a few hundred bytes; anything near this is not
 * qemu-img talking to us. */
#define QEMU_IMG_MAX_OUTPUT 65536
/* An image on a hung network file system must not hang the agent. */
#define QEMU_IMG_TIMEOUT_S 60

void
ferry_pool_free (FerryPool *pool)
{
  if (pool == NULL)
    return;
  g_free (pool->name);
  g_free (pool->path);
  g_free (pool);
}

void
ferry_volume_info_free (FerryVolumeInfo *info)
{
  if (info == NULL)
    return;
  g_free (info->name);
  g_free (info->format);
  g_free (info);
}

/* A name from a request inside an error message: cut short and with
 * control characters escaped, so it cannot flood or forge log lines. */
static char *
shown (const char *text)
{
  g_autofree char *cut = g_strndup (text ? text : "", FERRY_SPEC_MAX_VOLUME_NAME);
  return g_strescape (cut, NULL);
}

/* ---- configuration ----------------------------------------------------------- */

static gboolean
add_pool (FerryAgent *agent, const char *name, const char *dir, gboolean create, GError **error)
{
  if (!ferry_vm_name_is_valid (name))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--pool: '%s' is not a pool name (1 to %d characters from A-Z, a-z, 0-9, "
                   "'_', '.', '-', starting with a letter or digit)", name, FERRY_SPEC_MAX_NAME);
      return FALSE;
    }
  if (!g_path_is_absolute (dir))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--pool %s: '%s' is not an absolute path", name, dir);
      return FALSE;
    }
  if (g_hash_table_contains (agent->pools, name))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--pool %s: given more than once", name);
      return FALSE;
    }
  g_autofree char *path = g_canonicalize_filename (dir, NULL);
  if (create && g_mkdir_with_parents (path, 0700) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "pool %s: cannot create %s: %s", name,
                   path, g_strerror (errno));
      return FALSE;
    }
  GStatBuf st;
  if (g_stat (path, &st) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "--pool %s: %s: %s", name,
                   path, g_strerror (errno));
      return FALSE;
    }
  if (!S_ISDIR (st.st_mode))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--pool %s: %s is not a directory", name, path);
      return FALSE;
    }
  /* One directory in two pools would make each pool's in-use check blind
   * to the other's VMs. */
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init (&iter, agent->pools);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    if (g_str_equal (((FerryPool *) value)->path, path))
      {
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "--pool %s: %s is already pool '%s'", name, path, ((FerryPool *) value)->name);
        return FALSE;
      }
  FerryPool *pool = g_new0 (FerryPool, 1);
  pool->name = g_strdup (name);
  pool->path = g_steal_pointer (&path);
  g_hash_table_replace (agent->pools, pool->name, pool);
  return TRUE;
}

gboolean
ferry_pools_init (FerryAgent *agent, GError **error)
{
  gboolean have_default = FALSE;
  for (guint i = 0; agent->config.pools != NULL && agent->config.pools[i] != NULL; i++)
    {
      const char *entry = agent->config.pools[i];
      const char *equals = strchr (entry, '=');
      if (equals == NULL || equals == entry || equals[1] == '\0')
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "--pool: '%s' is not NAME=DIR", entry);
          return FALSE;
        }
      g_autofree char *name = g_strndup (entry, equals - entry);
      have_default = have_default || g_str_equal (name, FERRY_DEFAULT_POOL);
      if (!add_pool (agent, name, equals + 1, FALSE, error))
        return FALSE;
    }
  if (have_default)
    return TRUE;
  g_autofree char *dir = g_build_filename (agent->config.state_dir, "pools", FERRY_DEFAULT_POOL, NULL);
  return add_pool (agent, FERRY_DEFAULT_POOL, dir, TRUE, error);
}

FerryPool *
ferry_pool_lookup (FerryAgent *agent, const char *name, GError **error)
{
  FerryPool *pool = name != NULL ? g_hash_table_lookup (agent->pools, name) : NULL;
  if (pool == NULL)
    {
      g_autofree char *text = shown (name);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "pool '%s' does not exist on host %s",
                   text, agent->config.host_name);
    }
  return pool;
}

char *
ferry_pool_volume_path (FerryPool *pool, const char *volume, GError **error)
{
  if (!ferry_volume_name_is_valid (volume))
    {
      g_autofree char *text = shown (volume);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "volume: '%s' is not a volume name (1 to %d characters from A-Z, a-z, 0-9, "
                   "'_', '.', '-', starting with a letter or digit)", text, FERRY_SPEC_MAX_VOLUME_NAME);
      return NULL;
    }
  return g_build_filename (pool->path, volume, NULL);
}

gboolean
ferry_pool_space (FerryPool *pool, guint64 *capacity, guint64 *available, GError **error)
{
  struct statvfs st;
  if (statvfs (pool->path, &st) < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "pool %s: cannot stat %s: %s", pool->name,
                   pool->path, g_strerror (errno));
      return FALSE;
    }
  *capacity = (guint64) st.f_blocks * st.f_frsize;
  /* f_bavail, not f_bfree: what an unprivileged QEMU could still write. */
  *available = (guint64) st.f_bavail * st.f_frsize;
  return TRUE;
}

/* ---- qemu-img ------------------------------------------------------------------ */

/* Runs qemu-img to completion, reading at most QEMU_IMG_MAX_OUTPUT bytes
 * from each of stdout and stderr, within QEMU_IMG_TIMEOUT_S. Both pipes are
 * drained together so neither can fill up and stall the child. A failure
 * carries qemu-img's own message. */
static gboolean
run_qemu_img (const char *const *argv, char **stdout_text, GError **error)
{
  g_autoptr (GSubprocess) process = g_subprocess_newv (argv, G_SUBPROCESS_FLAGS_STDOUT_PIPE
                                                       | G_SUBPROCESS_FLAGS_STDERR_PIPE, error);
  if (process == NULL)
    {
      g_prefix_error (error, "cannot run %s: ", QEMU_IMG);
      return FALSE;
    }
  int fds[2] = {
    g_unix_input_stream_get_fd (G_UNIX_INPUT_STREAM (g_subprocess_get_stdout_pipe (process))),
    g_unix_input_stream_get_fd (G_UNIX_INPUT_STREAM (g_subprocess_get_stderr_pipe (process))),
  };
  g_autoptr (GString) out = g_string_new (NULL);
  g_autoptr (GString) err = g_string_new (NULL);
  GString *texts[2] = { out, err };
  gboolean reading[2] = { TRUE, TRUE };
  gint64 deadline = g_get_monotonic_time () + QEMU_IMG_TIMEOUT_S * G_USEC_PER_SEC;
  const char *failure = NULL;
  FerryErrorCode failure_code = FERRY_ERROR_FAILED;

  while ((reading[0] || reading[1]) && failure == NULL)
    {
      struct pollfd pfds[2];
      int map[2];
      nfds_t n = 0;
      for (int i = 0; i < 2; i++)
        if (reading[i])
          {
            pfds[n] = (struct pollfd) { .fd = fds[i], .events = POLLIN };
            map[n++] = i;
          }
      gint64 left_ms = (deadline - g_get_monotonic_time ()) / 1000;
      if (left_ms <= 0)
        {
          failure = "did not finish within " G_STRINGIFY (QEMU_IMG_TIMEOUT_S) " s";
          failure_code = FERRY_ERROR_TIMEOUT;
          break;
        }
      int ready = poll (pfds, n, (int) MIN (left_ms, G_MAXINT));
      if (ready < 0 && errno == EINTR)
        continue;
      if (ready < 0)
        {
          failure = g_strerror (errno);
          break;
        }
      for (nfds_t k = 0; k < n; k++)
        {
          if (pfds[k].revents == 0)
            continue;
          char buffer[4096];
          ssize_t got = read (pfds[k].fd, buffer, sizeof buffer);
          if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
          if (got <= 0)
            {
              reading[map[k]] = FALSE;
              continue;
            }
          if (texts[map[k]]->len + (gsize) got > QEMU_IMG_MAX_OUTPUT)
            {
              failure = "printed more than " G_STRINGIFY (QEMU_IMG_MAX_OUTPUT) " bytes";
              break;
            }
          g_string_append_len (texts[map[k]], buffer, got);
        }
    }
  if (failure != NULL)
    {
      g_subprocess_force_exit (process);
      g_subprocess_wait (process, NULL, NULL);
      g_set_error (error, FERRY_ERROR, failure_code, "%s %s %s", QEMU_IMG, argv[1], failure);
      return FALSE;
    }
  if (!g_subprocess_wait (process, NULL, error))
    return FALSE;
  if (!g_subprocess_get_successful (process))
    {
      g_strstrip (err->str);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "%s", err->len > 0 && err->str[0] != '\0'
                   ? err->str : "qemu-img failed without a message");
      return FALSE;
    }
  if (stdout_text != NULL)
    *stdout_text = g_string_free (g_steal_pointer (&out), FALSE);
  return TRUE;
}

/* QEMU takes "file:" as the protocol and everything after it as the file
 * name, so a path holding ':' or looking like "json:{...}" stays a file. */
static char *
file_protocol (const char *path)
{
  return g_strconcat ("file:", path, NULL);
}

/* qemu-img info as JSON, format probed (no -f), also while a running QEMU
 * holds the image (--force-share). Never follows a backing file. */
static JsonObject *
qemu_img_info (const char *path, GError **error)
{
  g_autofree char *file = file_protocol (path);
  const char *argv[] = { QEMU_IMG, "info", "--output=json", "--force-share", file, NULL };
  g_autofree char *out = NULL;
  if (!run_qemu_img (argv, &out, error))
    return NULL;
  return ferry_json_parse_object (out, strlen (out), QEMU_IMG_MAX_OUTPUT, error);
}

static FerryVolumeInfo *
info_from_json (const char *path, JsonObject *object, const GStatBuf *st, GError **error)
{
  const char *format = ferry_json_object_string (object, "format");
  if (format == NULL || !json_object_has_member (object, "virtual-size"))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "%s: qemu-img info gave no format or virtual size", path);
      return NULL;
    }
  FerryVolumeInfo *info = g_new0 (FerryVolumeInfo, 1);
  info->name = g_path_get_basename (path);
  info->format = g_strdup (format);
  info->virtual_size = (guint64) MAX (ferry_json_object_int (object, "virtual-size"), 0);
  info->allocated_bytes = (guint64) st->st_blocks * 512;
  return info;
}

static gboolean
stat_regular (const char *path, GStatBuf *st, GError **error)
{
  if (g_stat (path, st) < 0)
    {
      int saved = errno;
      g_set_error (error, FERRY_ERROR, saved == ENOENT ? FERRY_ERROR_NOT_FOUND : FERRY_ERROR_FAILED,
                   "%s: %s", path, g_strerror (saved));
      return FALSE;
    }
  if (!S_ISREG (st->st_mode))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: not a regular file", path);
      return FALSE;
    }
  return TRUE;
}

FerryVolumeInfo *
ferry_volume_inspect (const char *path, GError **error)
{
  GStatBuf st;
  if (!stat_regular (path, &st, error))
    return NULL;
  g_autoptr (JsonObject) object = qemu_img_info (path, error);
  if (object == NULL)
    return NULL;
  return info_from_json (path, object, &st, error);
}

/* ---- volumes ------------------------------------------------------------------- */

/* The volume at path in the pool: a regular file itself, not a link to
 * one (a link could lead anywhere on the host). */
static gboolean
lstat_volume (FerryPool *pool, const char *name, const char *path, GStatBuf *st, GError **error)
{
  if (g_lstat (path, st) < 0)
    {
      int saved = errno;
      if (saved == ENOENT)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                     "volume '%s/%s' does not exist", pool->name, name);
      else
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "volume '%s/%s': %s: %s", pool->name,
                     name, path, g_strerror (saved));
      return FALSE;
    }
  if (!S_ISREG (st->st_mode))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "volume '%s/%s': %s is not a regular file; ferry leaves it alone", pool->name,
                   name, path);
      return FALSE;
    }
  return TRUE;
}

static gint
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

/* Names of the pool's volumes, sorted; bounded by FERRY_POOL_MAX_VOLUMES. */
static GPtrArray *
pool_volume_names (FerryPool *pool, GError **error)
{
  g_autoptr (GDir) dir = g_dir_open (pool->path, 0, error);
  if (dir == NULL)
    {
      g_prefix_error (error, "pool %s: ", pool->name);
      return NULL;
    }
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  const char *entry;
  while ((entry = g_dir_read_name (dir)) != NULL)
    {
      if (!ferry_volume_name_is_valid (entry))
        continue;
      g_autofree char *path = g_build_filename (pool->path, entry, NULL);
      GStatBuf st;
      if (g_lstat (path, &st) < 0 || !S_ISREG (st.st_mode))
        continue;
      if (names->len == FERRY_POOL_MAX_VOLUMES)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                       "pool %s: more than %d volumes in %s", pool->name, FERRY_POOL_MAX_VOLUMES,
                       pool->path);
          return NULL;
        }
      g_ptr_array_add (names, g_strdup (entry));
    }
  g_ptr_array_sort (names, compare_names);
  return g_steal_pointer (&names);
}

GPtrArray *
ferry_pool_list_volumes (FerryPool *pool, GError **error)
{
  g_autoptr (GPtrArray) names = pool_volume_names (pool, error);
  if (names == NULL)
    return NULL;
  g_autoptr (GPtrArray) volumes = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_volume_info_free);
  for (guint i = 0; i < names->len; i++)
    {
      const char *name = g_ptr_array_index (names, i);
      g_autofree char *path = g_build_filename (pool->path, name, NULL);
      g_autoptr (GError) local_error = NULL;
      FerryVolumeInfo *info = ferry_volume_inspect (path, &local_error);
      if (info == NULL && g_error_matches (local_error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
        continue; /* deleted while we listed */
      if (info == NULL)
        {
          /* One unreadable image must not hide the others. */
          GStatBuf st;
          info = g_new0 (FerryVolumeInfo, 1);
          info->name = g_strdup (name);
          info->format = g_strdup ("unknown");
          if (g_lstat (path, &st) == 0)
            {
              info->virtual_size = st.st_size;
              info->allocated_bytes = (guint64) st.st_blocks * 512;
            }
        }
      g_ptr_array_add (volumes, info);
    }
  return g_steal_pointer (&volumes);
}

gboolean
ferry_volume_create (FerryPool *pool, const char *name, const char *format, guint64 size_bytes,
                     GError **error)
{
  if (format == NULL || (!g_str_equal (format, "qcow2") && !g_str_equal (format, "raw")))
    {
      g_autofree char *text = shown (format);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "format: must be qcow2 or raw (got '%s')", text);
      return FALSE;
    }
  if (size_bytes < FERRY_VOLUME_MIN_BYTES || size_bytes > FERRY_VOLUME_MAX_BYTES)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "size_bytes: must be between %" G_GUINT64_FORMAT " (1 MiB) and %" G_GUINT64_FORMAT
                   " (64 TiB) (got %" G_GUINT64_FORMAT ")", (guint64) FERRY_VOLUME_MIN_BYTES,
                   (guint64) FERRY_VOLUME_MAX_BYTES, size_bytes);
      return FALSE;
    }
  /* qemu-img would round up silently; the size asked for is the size. */
  if (size_bytes % 512 != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "size_bytes: must be a multiple of 512 (got %" G_GUINT64_FORMAT ")", size_bytes);
      return FALSE;
    }
  g_autofree char *path = ferry_pool_volume_path (pool, name, error);
  if (path == NULL)
    return FALSE;
  /* qemu-img create overwrites whatever is there: claim the name first,
   * atomically, so two creators (or a migration) cannot both win. */
  int fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    {
      int saved = errno;
      if (saved == EEXIST)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                     "volume '%s/%s' already exists", pool->name, name);
      else
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "volume '%s/%s': cannot create %s: %s",
                     pool->name, name, path, g_strerror (saved));
      return FALSE;
    }
  close (fd);
  g_autofree char *file = file_protocol (path);
  g_autofree char *size = g_strdup_printf ("%" G_GUINT64_FORMAT, size_bytes);
  const char *argv[] = { QEMU_IMG, "create", "-q", "-f", format, file, size, NULL };
  if (!run_qemu_img (argv, NULL, error))
    {
      g_unlink (path);
      g_prefix_error (error, "volume '%s/%s': ", pool->name, name);
      return FALSE;
    }
  return TRUE;
}

/* The first disk of a defined VM that is this volume: named as a volume
 * of the pool, or as a path to its file. */
static gboolean
find_user (FerryAgent *agent, FerryPool *pool, const char *name, const char *path,
           const char **vm_name, guint *disk_index)
{
  g_autoptr (GList) names = g_hash_table_get_keys (agent->vms);
  names = g_list_sort (names, (GCompareFunc) g_strcmp0);
  for (GList *l = names; l != NULL; l = l->next)
    {
      FerryVm *vm = g_hash_table_lookup (agent->vms, l->data);
      for (guint i = 0; vm->spec->disks != NULL && i < vm->spec->disks->len; i++)
        {
          const FerryDiskSpec *disk = g_ptr_array_index (vm->spec->disks, i);
          gboolean same = disk->volume != NULL
                          ? g_str_equal (disk->volume, name) && g_strcmp0 (disk->pool, pool->name) == 0
                          : g_strcmp0 (disk->path, path) == 0;
          if (same)
            {
              *vm_name = vm->name;
              *disk_index = i;
              return TRUE;
            }
        }
    }
  return FALSE;
}

gboolean
ferry_volume_delete (FerryAgent *agent, FerryPool *pool, const char *name, GError **error)
{
  g_autofree char *path = ferry_pool_volume_path (pool, name, error);
  if (path == NULL)
    return FALSE;
  const char *vm_name = NULL;
  guint disk_index = 0;
  if (find_user (agent, pool, name, path, &vm_name, &disk_index))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                   "volume '%s/%s' is disks[%u] of VM '%s'; undefine the VM first", pool->name,
                   name, disk_index, vm_name);
      return FALSE;
    }
  GStatBuf st;
  if (!lstat_volume (pool, name, path, &st, error))
    return FALSE;
  if (g_unlink (path) < 0)
    {
      int saved = errno;
      g_set_error (error, FERRY_ERROR, saved == ENOENT ? FERRY_ERROR_NOT_FOUND : FERRY_ERROR_FAILED,
                   "volume '%s/%s': cannot delete %s: %s", pool->name, name, path, g_strerror (saved));
      return FALSE;
    }
  return TRUE;
}

/* ---- VM specs ------------------------------------------------------------------ */

char *
ferry_disk_resolve_path (FerryAgent *agent, const FerryDiskSpec *disk, GError **error)
{
  if (disk->volume == NULL)
    return g_strdup (disk->path);
  FerryPool *pool = ferry_pool_lookup (agent, disk->pool, error);
  if (pool == NULL)
    return NULL;
  return ferry_pool_volume_path (pool, disk->volume, error);
}

/* What QEMU would open besides the image itself: a backing file or an
 * external data file named inside a qcow2 header. Content is guest- or
 * user-controlled, so a header naming /etc/shadow must not reach QEMU. */
static const char *
external_file (JsonObject *info)
{
  const char *backing = ferry_json_object_string (info, "backing-filename");
  if (backing != NULL)
    return backing;
  JsonNode *specific = json_object_get_member (info, "format-specific");
  if (specific == NULL || !JSON_NODE_HOLDS_OBJECT (specific))
    return NULL;
  JsonNode *data = json_object_get_member (json_node_get_object (specific), "data");
  if (data == NULL || !JSON_NODE_HOLDS_OBJECT (data))
    return NULL;
  return ferry_json_object_string (json_node_get_object (data), "data-file");
}

static gboolean
check_volume_disk (FerryAgent *agent, const FerryDiskSpec *disk, guint index, const char *path,
                   GError **error)
{
  FerryPool *pool = ferry_pool_lookup (agent, disk->pool, error);
  if (pool == NULL)
    {
      g_prefix_error (error, "disks[%u].pool: ", index);
      return FALSE;
    }
  GStatBuf st;
  if (!lstat_volume (pool, disk->volume, path, &st, error))
    {
      g_prefix_error (error, "disks[%u].volume: ", index);
      return FALSE;
    }
  g_autoptr (JsonObject) info = qemu_img_info (path, error);
  if (info == NULL)
    {
      g_prefix_error (error, "disks[%u].volume: cannot inspect '%s/%s': ", index, pool->name,
                      disk->volume);
      return FALSE;
    }
  const char *claimed = ferry_disk_format_to_string (disk->format);
  const char *probed = ferry_json_object_string (info, "format");
  if (g_strcmp0 (probed, claimed) != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "disks[%u].format: volume '%s/%s' claims %s but its content is %s", index,
                   pool->name, disk->volume, claimed, probed ? probed : "unknown");
      return FALSE;
    }
  const char *external = external_file (info);
  if (external != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "disks[%u].volume: volume '%s/%s' refers to another file (%.*s); "
                   "ferry does not use backing or data files", index, pool->name, disk->volume,
                   FERRY_SPEC_MAX_PATH, external);
      return FALSE;
    }
  return TRUE;
}

gboolean
ferry_spec_check_disks (FerryAgent *agent, const FerryVmSpec *spec, GError **error)
{
  guint n = spec->disks != NULL ? spec->disks->len : 0;
  g_autoptr (GPtrArray) paths = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; i < n; i++)
    {
      const FerryDiskSpec *disk = g_ptr_array_index (spec->disks, i);
      g_autofree char *path = ferry_disk_resolve_path (agent, disk, error);
      if (path == NULL)
        {
          g_prefix_error (error, "disks[%u].%s: ", i,
                          g_error_matches (*error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND) ? "pool" : "volume");
          return FALSE;
        }
      /* A path disk and a volume disk can be the same file; the spec
       * parser cannot know, the agent can. */
      for (guint j = 0; j < paths->len; j++)
        if (g_str_equal (g_ptr_array_index (paths, j), path))
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                         "disks[%u]: same image as disks[%u] (%s)", i, j, path);
            return FALSE;
          }
      /* Path disks are the administrator's files, used as given. */
      if (disk->volume != NULL && !check_volume_disk (agent, disk, i, path, error))
        return FALSE;
      g_ptr_array_add (paths, g_steal_pointer (&path));
    }
  return TRUE;
}

/* ---- JSON ---------------------------------------------------------------------- */

JsonObject *
ferry_volume_info_to_json (const FerryVolumeInfo *info)
{
  JsonObject *object = json_object_new ();
  json_object_set_string_member (object, "name", info->name);
  json_object_set_string_member (object, "format", info->format);
  json_object_set_int_member (object, "virtual_size", (gint64) info->virtual_size);
  json_object_set_int_member (object, "allocated_bytes", (gint64) info->allocated_bytes);
  return object;
}

JsonObject *
ferry_pool_to_json (FerryPool *pool, gboolean with_volumes, GError **error)
{
  guint64 capacity = 0, available = 0;
  if (!ferry_pool_space (pool, &capacity, &available, error))
    return NULL;
  g_autoptr (JsonObject) object = json_object_new ();
  json_object_set_string_member (object, "name", pool->name);
  json_object_set_string_member (object, "path", pool->path);
  json_object_set_int_member (object, "capacity_bytes", (gint64) capacity);
  json_object_set_int_member (object, "available_bytes", (gint64) available);
  if (!with_volumes)
    {
      g_autoptr (GPtrArray) names = pool_volume_names (pool, error);
      if (names == NULL)
        return NULL;
      json_object_set_int_member (object, "volumes", names->len);
      return g_steal_pointer (&object);
    }
  g_autoptr (GPtrArray) volumes = ferry_pool_list_volumes (pool, error);
  if (volumes == NULL)
    return NULL;
  JsonArray *array = json_array_new ();
  for (guint i = 0; i < volumes->len; i++)
    json_array_add_object_element (array, ferry_volume_info_to_json (g_ptr_array_index (volumes, i)));
  json_object_set_int_member (object, "volumes", volumes->len);
  json_object_set_array_member (object, "volume_list", array);
  return g_steal_pointer (&object);
}
