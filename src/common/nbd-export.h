/* ferry — a disk image served over NBD by qemu-nbd.
 *
 * ferry binds the listening socket itself (so a TCP port is known before
 * the server runs, and can be asked for again after an agent restart) and
 * hands it to qemu-nbd by systemd-style socket activation. TCP exports
 * require TLS with client certificates; unix-socket exports are local to
 * the host and serve the copy engine's own side.
 *
 * The server gets SIGTERM when the thread that started it exits (so that
 * no export outlives its agent): start exports from the main thread.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct {
  const char *image;
  const char *format;          /* "raw" | "qcow2" */
  const char *export_name;
  gboolean writable;
  /* A writable export that bypasses the host's page cache (qemu-nbd
   * --cache=none, O_DIRECT) where the file system allows it: a bulk copy
   * then costs no page-cache copy and no writeback burst at each flush.
   * On a file system without O_DIRECT (tmpfs on older kernels) the export
   * silently uses the page cache. */
  gboolean bypass_page_cache;
  /* Exactly one of: */
  const char *tcp_host;        /* with tcp_port (0 = any free port) and TLS */
  guint16 tcp_port;
  const char *unix_socket;
  /* QEMU's layout: ca-cert.pem, server-cert.pem, server-key.pem; the
   * client must present a certificate from the same CA. Required for TCP. */
  const char *tls_creds_dir;
  guint max_connections;       /* 0 = 16 */
  /* A persistent dirty bitmap of the image, exported as the meta context
   * "qemu:dirty-bitmap:NAME" (a delta copy reads it). NULL = none. */
  const char *bitmap;
  const char *qemu_nbd;        /* NULL = "qemu-nbd" from PATH */
} FerryNbdExportOptions;

typedef struct _FerryNbdExport FerryNbdExport;

FerryNbdExport *ferry_nbd_export_start (const FerryNbdExportOptions *options, GError **error);
guint16 ferry_nbd_export_get_port (FerryNbdExport *export);
GPid ferry_nbd_export_get_pid (FerryNbdExport *export);
/* The URI a client uses: nbds://HOST:PORT/NAME?tls-certificates=DIR for
 * TCP (host as given: the address the peer reaches), nbd+unix otherwise. */
char *ferry_nbd_export_uri (FerryNbdExport *export, const char *host, const char *client_tls_dir);
/* nbds://HOST:PORT/NAME?tls-certificates=DIR, IPv6 hosts bracketed. */
char *ferry_nbd_tls_uri (const char *host, guint16 port, const char *export_name, const char *client_tls_dir);
/* Stops the server (SIGTERM, and waits for it). */
void ferry_nbd_export_free (FerryNbdExport *export);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryNbdExport, ferry_nbd_export_free)

/* Kills (SIGKILL) a qemu-nbd left by an earlier agent process, after
 * checking that pid is a qemu-nbd serving `image` (pids get reused).
 * TRUE when there was one to kill. */
gboolean ferry_nbd_export_kill_stale (GPid pid, const char *image);

/* A TCP port the kernel says is free on host now, for a server that
 * cannot report the port it bound (QEMU 7.2's NBD server, migrate-recover).
 * Another process could take it before the server binds: callers retry.
 * 0 on failure. */
guint16 ferry_free_tcp_port (const char *host, GError **error);

G_END_DECLS
