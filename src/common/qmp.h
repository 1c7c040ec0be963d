/* ferry — asynchronous QMP client.
 *
 * One FerryQmp per QEMU monitor socket. Negotiates capabilities on connect,
 * runs commands with ids (several may be in flight), and emits every
 * asynchronous event as the "event" signal. "closed" fires once when the
 * socket closes, which is how the agent learns that QEMU exited.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

#define FERRY_TYPE_QMP (ferry_qmp_get_type ())
G_DECLARE_FINAL_TYPE (FerryQmp, ferry_qmp, FERRY, QMP, GObject)

/* Largest QMP message we accept from QEMU. */
#define FERRY_QMP_MAX_MESSAGE (16 * 1024 * 1024)

/* Connects to a unix socket, reads the greeting, sends qmp_capabilities
 * (no optional capabilities), and completes when QEMU accepted it. */
void ferry_qmp_connect_async (const char *socket_path,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
FerryQmp *ferry_qmp_connect_finish (GAsyncResult *result, GError **error);

/* For tests and for callers that already have a connected stream. */
void ferry_qmp_new_for_stream_async (GIOStream *stream,
                                     GCancellable *cancellable,
                                     GAsyncReadyCallback callback,
                                     gpointer user_data);
FerryQmp *ferry_qmp_new_for_stream_finish (GAsyncResult *result, GError **error);

/* Runs one command. arguments may be NULL; it is not consumed (the client
 * takes its own reference). The result is the "return" member (never
 * NULL on success: an empty object when QEMU returned {}). A QMP error
 * becomes FERRY_ERROR_QEMU with QEMU's class and desc in the message. */
void ferry_qmp_execute_async (FerryQmp *qmp,
                              const char *command,
                              JsonObject *arguments,
                              GCancellable *cancellable,
                              GAsyncReadyCallback callback,
                              gpointer user_data);
JsonNode *ferry_qmp_execute_finish (FerryQmp *qmp, GAsyncResult *result, GError **error);

/* As ferry_qmp_execute_async, sent with "exec-oob" when QEMU offered the
 * "oob" capability (negotiated on connect): runs even while the main loop
 * is blocked (post-copy waiting for a page). Only for commands QEMU marks
 * allow-oob (migrate-pause, migrate-recover). Finish with
 * ferry_qmp_execute_finish. */
void ferry_qmp_execute_oob_async (FerryQmp *qmp,
                                  const char *command,
                                  JsonObject *arguments,
                                  GCancellable *cancellable,
                                  GAsyncReadyCallback callback,
                                  gpointer user_data);

/* Blocking convenience for simple call sites and tests: iterates the
 * thread-default main context until the reply arrives or timeout_ms passes. */
JsonNode *ferry_qmp_execute_sync (FerryQmp *qmp,
                                  const char *command,
                                  JsonObject *arguments,
                                  guint timeout_ms,
                                  GError **error);

gboolean ferry_qmp_is_closed (FerryQmp *qmp);
/* Closes the monitor: pending commands fail with FERRY_ERROR_UNAVAILABLE and
 * "closed" is emitted (once, as for any other close). Idempotent. */
void ferry_qmp_close (FerryQmp *qmp);
/* Why the client closed (EOF and read errors: FERRY_ERROR_UNAVAILABLE;
 * oversized message: FERRY_ERROR_TOO_LARGE; malformed QMP: FERRY_ERROR_QEMU),
 * or NULL while open. Pending commands failed with this error. */
const GError *ferry_qmp_get_close_error (FerryQmp *qmp);

/* The exact wire form of a command, as sent: {"execute": ..., "arguments": ...,
 * "id": ...}. Exposed so unit tests can check every command ferry builds
 * against the schema captured from the real QEMU. */
char *ferry_qmp_build_command (const char *command, JsonObject *arguments, const char *id);

/* Signals:
 *   "event"  (const char *name, JsonObject *data (may be NULL), gint64 timestamp_us)
 *            data is borrowed for the emission: ref it to keep it.
 *   "closed" (void)
 *            Once per client, for every cause (EOF, read/write error,
 *            oversized or malformed message, ferry_qmp_close()), after the
 *            pending commands were failed. Not emitted from dispose.
 */

G_END_DECLS
