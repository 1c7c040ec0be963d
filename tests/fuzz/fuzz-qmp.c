/* libFuzzer harness: the fuzz input is what "QEMU" sends on the monitor.
 *
 * The harness plays the server over a socketpair, so the client's reads and
 * writes interleave as they do with a real QEMU. The first input byte picks
 * the scenario:
 *   bit 0 clear: a real greeting and capabilities reply first, then two
 *                commands are pending (ids "2" and "3") while the rest of the
 *                input arrives — replies, errors, events, garbage;
 *   bit 0 set:   the input is the very first thing the client reads
 *                (greeting parsing);
 *   bit 1 set:   command "3" is cancelled before the input arrives.
 * The server then hangs up and the context is iterated until the client has
 * closed and every callback has run.
 *
 * Build so the library is instrumented too, not only the harness:
 *   CC=clang meson setup B -Dfuzzing=true -Db_sanitize=address,undefined \
 *     -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
 * Run (new finds go to the first, scratch, directory):
 *   B/tests/fuzz/fuzz-qmp -dict=tests/fuzz/qmp.dict -max_len=70000 \
 *     /tmp/qmp-corpus tests/fuzz/corpus/qmp
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gio/gio.h>

#include "qmp.h"

static const char greeting[] =
  "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
  "\"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";
static const char capabilities_reply[] = "{\"return\": {}, \"id\": \"1\"}\r\n";

typedef struct {
  FerryQmp *qmp;
  gboolean connect_done;
  guint replies_pending;
  guint closed;
} State;

static void
on_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  State *state = user_data;

  state->qmp = ferry_qmp_new_for_stream_finish (result, NULL);
  state->connect_done = TRUE;
}

static void
on_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  State *state = user_data;
  JsonNode *node = ferry_qmp_execute_finish (FERRY_QMP (source), result, NULL);

  if (node != NULL)
    json_node_unref (node);
  state->replies_pending--;
}

static void
on_event (FerryQmp *qmp, const char *name, JsonObject *data, gint64 timestamp, gpointer user_data)
{
  /* Touch what a handler would touch. */
  g_assert (name != NULL);
  if (data != NULL)
    (void) json_object_get_size (data);
}

static void
on_closed (FerryQmp *qmp, gpointer user_data)
{
  State *state = user_data;

  state->closed++;
}

/* Writes everything, letting the client run whenever the socket is full. */
static void
server_write (int fd, const guint8 *data, size_t size)
{
  while (size > 0)
    {
      ssize_t n = send (fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);

      if (n > 0)
        {
          data += n;
          size -= n;
        }
      else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        g_main_context_iteration (NULL, TRUE);
      else if (n < 0 && errno == EINTR)
        continue;
      else
        return; /* the client closed: the rest would go nowhere */
    }
}

/* Drains what the client wrote, so it never blocks on a full socket. */
static void
server_drain (int fd)
{
  char buf[4096];

  while (recv (fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
    ;
}

static void
iterate_pending (void)
{
  while (g_main_context_iteration (NULL, FALSE))
    ;
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GSocket) socket = NULL;
  g_autoptr(GIOStream) stream = NULL;
  State state = { 0 };
  guint8 mode;
  int fds[2];

  if (size < 1)
    return 0;
  mode = data[0];
  data++;
  size--;

  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
    abort ();
  socket = g_socket_new_from_fd (fds[1], NULL);
  g_assert (socket != NULL);
  stream = G_IO_STREAM (g_socket_connection_factory_create_connection (socket));

  ferry_qmp_new_for_stream_async (stream, NULL, on_connected, &state);

  if ((mode & 1) == 0)
    {
      server_write (fds[0], (const guint8 *) greeting, strlen (greeting));
      /* Until qmp_capabilities has been sent. */
      while (!state.connect_done && recv (fds[0], (char[1]){ 0 }, 1, MSG_PEEK | MSG_DONTWAIT) <= 0)
        g_main_context_iteration (NULL, TRUE);
      server_drain (fds[0]);
      server_write (fds[0], (const guint8 *) capabilities_reply, strlen (capabilities_reply));
      while (!state.connect_done)
        g_main_context_iteration (NULL, TRUE);
      g_assert (state.qmp != NULL);

      g_signal_connect (state.qmp, "event", G_CALLBACK (on_event), &state);
      g_signal_connect (state.qmp, "closed", G_CALLBACK (on_closed), &state);
      state.replies_pending = 2;
      ferry_qmp_execute_async (state.qmp, "query-status", NULL, NULL, on_reply, &state);
      ferry_qmp_execute_async (state.qmp, "query-migrate", NULL, cancellable, on_reply, &state);
      iterate_pending ();
      if (mode & 2)
        {
          g_cancellable_cancel (cancellable);
          iterate_pending ();
        }
    }

  server_write (fds[0], data, size);
  server_drain (fds[0]);
  close (fds[0]);

  while (!state.connect_done || state.replies_pending > 0 ||
         (state.qmp != NULL && !ferry_qmp_is_closed (state.qmp)))
    g_main_context_iteration (NULL, TRUE);
  iterate_pending ();

  g_assert (state.closed <= 1);
  g_clear_object (&state.qmp);
  iterate_pending ();
  return 0;
}
