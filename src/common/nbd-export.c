/* ferry — qemu-nbd exports (see nbd-export.h). */
#include "nbd-export.h"

#include <gio/gunixsocketaddress.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "ferry-error.h"

#define TLS_CREDS_ID "ferry-tls"
#define DEFAULT_MAX_CONNECTIONS 16

struct _FerryNbdExport {
  GSubprocess *process;
  GPid pid;
  guint16 port;
  char *unix_socket;
  char *export_name;
};

static GSocket *
listen_tcp (const char *host, guint16 port, guint16 *bound_port, GError **error)
{
  g_autoptr (GInetAddress) address = g_inet_address_new_from_string (host);
  if (address == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "'%s' is not an IP address to export a disk on", host);
      return NULL;
    }
  g_autoptr (GSocketAddress) socket_address = g_inet_socket_address_new (address, port);
  g_autoptr (GSocket) socket = g_socket_new (g_inet_address_get_family (address), G_SOCKET_TYPE_STREAM,
                                             G_SOCKET_PROTOCOL_TCP, error);
  if (socket == NULL)
    return NULL;
  /* A port asked for again after a restart still has the old
   * connections on it (closing, or in TIME_WAIT): SO_REUSEADDR, which
   * g_socket_bind sets from its allow_reuse argument. */
  if (!g_socket_bind (socket, socket_address, TRUE, error) || !g_socket_listen (socket, error))
    {
      g_prefix_error (error, "cannot listen on %s:%u for a disk export: ", host, port);
      return NULL;
    }
  g_autoptr (GSocketAddress) local = g_socket_get_local_address (socket, error);
  if (local == NULL)
    return NULL;
  *bound_port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (local));
  return g_steal_pointer (&socket);
}

static GSocket *
listen_unix (const char *path, GError **error)
{
  g_autoptr (GSocketAddress) socket_address = g_unix_socket_address_new (path);
  g_autoptr (GSocket) socket = g_socket_new (G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_STREAM,
                                             G_SOCKET_PROTOCOL_DEFAULT, error);
  if (socket == NULL)
    return NULL;
  unlink (path);
  if (!g_socket_bind (socket, socket_address, FALSE, error) || !g_socket_listen (socket, error))
    {
      g_prefix_error (error, "cannot listen on %s for a disk export: ", path);
      return NULL;
    }
  return g_steal_pointer (&socket);
}

/* Whether the file system holding path accepts O_DIRECT: open(2) says
 * EINVAL where it does not. */
static gboolean
supports_direct_io (const char *path)
{
  int fd = open (path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0)
    return errno != EINVAL;
  close (fd);
  return TRUE;
}

/* An export never outlives the agent that started it: a restarted agent
 * starts it again (on the same port, so the peer's URI stays valid). */
static void
die_with_parent (gpointer user_data)
{
  prctl (PR_SET_PDEATHSIG, SIGTERM);
}

FerryNbdExport *
ferry_nbd_export_start (const FerryNbdExportOptions *options, GError **error)
{
  g_autoptr (GSocket) socket = NULL;
  guint16 port = 0;

  if ((options->tcp_host == NULL) == (options->unix_socket == NULL))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "a disk export listens on TCP or on a unix socket (exactly one)");
      return NULL;
    }
  if (options->tcp_host != NULL && options->tls_creds_dir == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "a disk export on TCP needs TLS credentials");
      return NULL;
    }
  socket = options->tcp_host ? listen_tcp (options->tcp_host, options->tcp_port, &port, error)
                             : listen_unix (options->unix_socket, error);
  if (socket == NULL)
    return NULL;

  g_autoptr (GStrvBuilder) argv = g_strv_builder_new ();
  /* Socket activation wants LISTEN_PID to be the server's own pid, which
   * only the exec'ing shell knows. */
  g_strv_builder_add_many (argv, "/bin/sh", "-c", "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$@\"",
                           "ferry-nbd-export", options->qemu_nbd ? options->qemu_nbd : "qemu-nbd",
                           "--format", options->format, "--export-name", options->export_name,
                           "--persistent", NULL);
  g_autofree char *shared = g_strdup_printf ("--shared=%u", options->max_connections
                                                             ? options->max_connections
                                                             : DEFAULT_MAX_CONNECTIONS);
  g_strv_builder_add (argv, shared);
  if (!options->writable)
    g_strv_builder_add (argv, "--read-only");
  else if (options->bypass_page_cache && supports_direct_io (options->image))
    g_strv_builder_add (argv, "--cache=none");
  g_autofree char *tls_object = NULL;
  if (options->tls_creds_dir)
    {
      tls_object = g_strdup_printf ("tls-creds-x509,id=" TLS_CREDS_ID ",endpoint=server,dir=%s,verify-peer=on",
                                    options->tls_creds_dir);
      g_strv_builder_add_many (argv, "--object", tls_object, "--tls-creds", TLS_CREDS_ID, NULL);
    }
  if (options->bitmap != NULL)
    g_strv_builder_add_many (argv, "--bitmap", options->bitmap, NULL);
  g_strv_builder_add_many (argv, "--", options->image, NULL);
  g_auto (GStrv) args = g_strv_builder_end (argv);

  g_autoptr (GSubprocessLauncher) launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDIN_INHERIT);
  int fd = dup (g_socket_get_fd (socket));
  if (fd < 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "cannot pass the export's socket: %s",
                   g_strerror (errno));
      return NULL;
    }
  g_subprocess_launcher_take_fd (launcher, fd, 3);
  g_subprocess_launcher_set_child_setup (launcher, die_with_parent, NULL, NULL);
  g_autoptr (GSubprocess) process = g_subprocess_launcher_spawnv (launcher, (const char *const *) args, error);
  if (process == NULL)
    {
      g_prefix_error (error, "cannot start qemu-nbd: ");
      return NULL;
    }

  FerryNbdExport *export = g_new0 (FerryNbdExport, 1);
  export->pid = atoi (g_subprocess_get_identifier (process));
  export->process = g_steal_pointer (&process);
  export->port = port;
  export->unix_socket = g_strdup (options->unix_socket);
  export->export_name = g_strdup (options->export_name);
  return export;
}

guint16
ferry_nbd_export_get_port (FerryNbdExport *export)
{
  return export->port;
}

GPid
ferry_nbd_export_get_pid (FerryNbdExport *export)
{
  return export->pid;
}

char *
ferry_nbd_export_uri (FerryNbdExport *export, const char *host, const char *client_tls_dir)
{
  if (export->unix_socket)
    {
      g_autofree char *name = g_uri_escape_string (export->export_name, NULL, FALSE);
      g_autofree char *socket = g_uri_escape_string (export->unix_socket, "/", FALSE);
      return g_strdup_printf ("nbd+unix:///%s?socket=%s", name, socket);
    }
  return ferry_nbd_tls_uri (host, export->port, export->export_name, client_tls_dir);
}

char *
ferry_nbd_tls_uri (const char *host, guint16 port, const char *export_name, const char *client_tls_dir)
{
  g_autofree char *name = g_uri_escape_string (export_name, NULL, FALSE);
  g_autofree char *dir = g_uri_escape_string (client_tls_dir, "/", FALSE);
  gboolean ipv6 = strchr (host, ':') != NULL;
  return g_strdup_printf ("nbds://%s%s%s:%u/%s?tls-certificates=%s", ipv6 ? "[" : "", host,
                          ipv6 ? "]" : "", port, name, dir);
}

void
ferry_nbd_export_free (FerryNbdExport *export)
{
  if (export == NULL)
    return;
  /* GSubprocess reaps the child from GLib's worker thread. */
  g_subprocess_send_signal (export->process, SIGTERM);
  g_object_unref (export->process);
  if (export->unix_socket)
    unlink (export->unix_socket);
  g_free (export->unix_socket);
  g_free (export->export_name);
  g_free (export);
}

gboolean
ferry_nbd_export_kill_stale (GPid pid, const char *image)
{
  g_autofree char *path = g_strdup_printf ("/proc/%d/cmdline", pid);
  g_autofree char *cmdline = NULL;
  gsize length = 0;

  if (pid <= 1 || image == NULL || !g_file_get_contents (path, &cmdline, &length, NULL))
    return FALSE;
  gboolean is_qemu_nbd = FALSE, serves_image = FALSE;
  for (gsize i = 0; i < length; i += strlen (cmdline + i) + 1)
    {
      g_autofree char *base = g_path_get_basename (cmdline + i);
      is_qemu_nbd |= g_str_equal (base, "qemu-nbd");
      serves_image |= g_str_equal (cmdline + i, image);
    }
  return is_qemu_nbd && serves_image && kill (pid, SIGKILL) == 0;
}

guint16
ferry_free_tcp_port (const char *host, GError **error)
{
  g_autoptr (GInetAddress) address = g_inet_address_new_from_string (host);
  if (address == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED, "'%s' is not an address", host);
      return 0;
    }
  g_autoptr (GSocketAddress) any_port = g_inet_socket_address_new (address, 0);
  g_autoptr (GSocket) socket = g_socket_new (g_inet_address_get_family (address), G_SOCKET_TYPE_STREAM,
                                             G_SOCKET_PROTOCOL_TCP, error);
  if (socket == NULL || !g_socket_bind (socket, any_port, TRUE, error))
    return 0;
  g_autoptr (GSocketAddress) bound = g_socket_get_local_address (socket, error);
  return bound ? g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound)) : 0;
}
