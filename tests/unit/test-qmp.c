/* Tests the QMP client against transcripts of real QEMU 7.2 sessions.
 *
 * The transcripts in tests/unit/data/qmp/ were recorded by scripts/record-qmp-transcripts.py
 * (see its header for the format). A fake server thread plays QEMU's side of
 * a transcript over a socketpair: it sends the "<" lines, reads one client
 * line for each ">" line (checking command and arguments, and mapping the
 * recorded id onto the client's), and closes at "!eof". Scenarios QEMU does
 * not produce on its own (replies out of order, garbage, a huge message) are
 * small inline transcripts built from recorded lines.
 *
 * Extra directives used by inline transcripts:
 *   !sync      the server stops until the test releases it
 *   !oversize  the server sends a message one byte over FERRY_QMP_MAX_MESSAGE
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "ferry-error.h"
#include "qmp.h"

#define GREETING "< {\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, " \
  "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\n"
#define NEGOTIATION GREETING \
  "> {\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}, \"id\": \"r0\"}\n" \
  "< {\"return\": {}, \"id\": \"r0\"}\n"
#define QUERY_STATUS_REPLY_R1 \
  "< {\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}, \"id\": \"r1\"}\n"

/* ---- transcripts -------------------------------------------------------- */

typedef enum {
  STEP_SEND,      /* "<" */
  STEP_EXPECT,    /* ">" */
  STEP_EOF,
  STEP_SYNC,
  STEP_OVERSIZE,
} StepKind;

typedef struct {
  StepKind kind;
  char *text;
} Step;

static void
step_free (Step *step)
{
  g_free (step->text);
  g_free (step);
}

static GPtrArray *
transcript_parse (const char *text)
{
  g_autoptr(GPtrArray) steps = g_ptr_array_new_with_free_func ((GDestroyNotify) step_free);
  g_auto(GStrv) lines = g_strsplit (text, "\n", -1);

  for (guint i = 0; lines[i] != NULL; i++)
    {
      const char *line = lines[i];
      Step *step;

      if (line[0] == '\0' || line[0] == '#')
        continue;
      step = g_new0 (Step, 1);
      if (g_str_has_prefix (line, "< "))
        step->kind = STEP_SEND, step->text = g_strdup (line + 2);
      else if (g_str_has_prefix (line, "> "))
        step->kind = STEP_EXPECT, step->text = g_strdup (line + 2);
      else if (g_str_equal (line, "!eof"))
        step->kind = STEP_EOF;
      else if (g_str_equal (line, "!sync"))
        step->kind = STEP_SYNC;
      else if (g_str_equal (line, "!oversize"))
        step->kind = STEP_OVERSIZE;
      else
        g_error ("bad transcript line: %s", line);
      g_ptr_array_add (steps, step);
    }
  return g_steal_pointer (&steps);
}

static char *
data_path (const char *name)
{
  const char *dir = g_getenv ("FERRY_TEST_DATA");

  if (dir != NULL)
    return g_build_filename (dir, "qmp", name, NULL);
  return g_test_build_filename (G_TEST_DIST, "data", "qmp", name, NULL);
}

static GPtrArray *
transcript_load (const char *name)
{
  g_autofree char *file = g_strconcat (name, ".txt", NULL);
  g_autofree char *path = data_path (file);
  g_autofree char *text = NULL;
  g_autoptr(GError) error = NULL;

  g_file_get_contents (path, &text, NULL, &error);
  g_assert_no_error (error);
  return transcript_parse (text);
}

static JsonObject *
parse_object (const char *text)
{
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autoptr(GError) error = NULL;

  json_parser_load_from_data (parser, text, -1, &error);
  g_assert_no_error (error);
  g_assert_true (JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)));
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

/* The recorded message QEMU sent with this id. */
static JsonObject *
transcript_reply (GPtrArray *steps, const char *id)
{
  for (guint i = 0; i < steps->len; i++)
    {
      Step *step = steps->pdata[i];
      g_autoptr(JsonObject) message = NULL;

      if (step->kind != STEP_SEND)
        continue;
      message = parse_object (step->text);
      if (g_strcmp0 (json_object_get_string_member_with_default (message, "id", NULL), id) == 0)
        return g_steal_pointer (&message);
    }
  g_error ("no recorded reply with id %s", id);
}

/* ---- the fake QEMU ------------------------------------------------------ */

typedef struct {
  GPtrArray *steps;
  int fd;
  int listen_fd;              /* >= 0: accept the client first */
  GThread *thread;
  GHashTable *ids;            /* recorded id -> client id */
  GString *inbuf;
  gint received;              /* client lines read, atomic */
  gint at_sync;               /* atomic */
  GMutex lock;
  GCond cond;
  gboolean released;
  char *failure;
} FakeServer;

static gboolean
server_read_line (FakeServer *s, char **line)
{
  for (;;)
    {
      char *nl = memchr (s->inbuf->str, '\n', s->inbuf->len);
      char buf[4096];
      ssize_t n;

      if (nl != NULL)
        {
          *line = g_strndup (s->inbuf->str, nl - s->inbuf->str);
          g_string_erase (s->inbuf, 0, nl - s->inbuf->str + 1);
          return TRUE;
        }
      n = read (s->fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE;
      g_string_append_len (s->inbuf, buf, n);
    }
}

/* The client may have closed already (that is what some tests check), so
 * write errors are not failures. MSG_NOSIGNAL: no SIGPIPE. */
static void
server_write (FakeServer *s, const char *data, gsize size)
{
  while (size > 0)
    {
      ssize_t n = send (s->fd, data, size, MSG_NOSIGNAL);

      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return;
      data += n;
      size -= n;
    }
}

static char *
server_substitute_id (FakeServer *s, const char *line)
{
  static const char key[] = "\"id\": \"";
  const char *at = strstr (line, key);
  const char *start, *end;
  g_autofree char *recorded = NULL;
  const char *client;

  if (at == NULL)
    return g_strdup (line);
  start = at + strlen (key);
  end = strchr (start, '"');
  g_assert_nonnull (end);
  recorded = g_strndup (start, end - start);
  client = g_hash_table_lookup (s->ids, recorded);
  if (client == NULL)
    return g_strdup (line); /* deliberately unknown ids stay as they are */
  return g_strdup_printf ("%.*s%s%s", (int) (start - line), line, client, end);
}

static gboolean
server_expect (FakeServer *s, const char *expected_text)
{
  g_autofree char *line = NULL;
  g_autoptr(JsonObject) expected = parse_object (expected_text);
  g_autoptr(JsonObject) got = NULL;
  JsonNode *ea, *ga;

  if (!server_read_line (s, &line))
    {
      s->failure = g_strdup_printf ("client closed; expected %s", expected_text);
      return FALSE;
    }
  g_atomic_int_inc (&s->received);
  g_main_context_wakeup (NULL);

  got = parse_object (line);
  ea = json_object_get_member (expected, "arguments");
  ga = json_object_get_member (got, "arguments");
  if (g_strcmp0 (json_object_get_string_member_with_default (expected, "execute", NULL),
                 json_object_get_string_member_with_default (got, "execute", NULL)) != 0 ||
      g_strcmp0 (json_object_get_string_member_with_default (expected, "exec-oob", NULL),
                 json_object_get_string_member_with_default (got, "exec-oob", NULL)) != 0 ||
      (ea == NULL) != (ga == NULL) || (ea != NULL && !json_node_equal (ea, ga)) ||
      !json_object_has_member (got, "id"))
    {
      s->failure = g_strdup_printf ("client sent %s; expected %s", line, expected_text);
      return FALSE;
    }
  g_hash_table_insert (s->ids, g_strdup (json_object_get_string_member (expected, "id")),
                       g_strdup (json_object_get_string_member (got, "id")));
  return TRUE;
}

static gpointer
server_thread (gpointer data)
{
  FakeServer *s = data;
  gboolean closed = FALSE;

  if (s->listen_fd >= 0)
    {
      s->fd = accept4 (s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
      g_assert_cmpint (s->fd, >=, 0);
    }

  for (guint i = 0; i < s->steps->len && !closed; i++)
    {
      Step *step = s->steps->pdata[i];

      switch (step->kind)
        {
        case STEP_SEND:
          {
            g_autofree char *line = server_substitute_id (s, step->text);
            g_autofree char *wire = g_strconcat (line, "\r\n", NULL);

            server_write (s, wire, strlen (wire));
          }
          break;
        case STEP_EXPECT:
          closed = !server_expect (s, step->text);
          break;
        case STEP_EOF:
          closed = TRUE;
          break;
        case STEP_SYNC:
          g_mutex_lock (&s->lock);
          g_atomic_int_set (&s->at_sync, 1);
          g_main_context_wakeup (NULL);
          while (!s->released)
            g_cond_wait (&s->cond, &s->lock);
          s->released = FALSE;
          g_atomic_int_set (&s->at_sync, 0);
          g_mutex_unlock (&s->lock);
          break;
        case STEP_OVERSIZE:
          {
            gsize size = FERRY_QMP_MAX_MESSAGE + 1;
            g_autofree char *big = g_malloc (size);

            memset (big, 'x', size);
            memcpy (big, "{\"return\": \"", 12);
            server_write (s, big, size);
          }
          break;
        }
    }

  if (!closed)
    {
      /* Transcript done: play dead until the client hangs up. */
      g_autofree char *line = NULL;

      while (server_read_line (s, &line))
        {
          if (s->failure == NULL)
            s->failure = g_strdup_printf ("client sent %s after the transcript ended", line);
          g_clear_pointer (&line, g_free);
        }
    }
  close (s->fd);
  s->fd = -1;
  return NULL;
}

static FakeServer *
server_new (GPtrArray *steps)
{
  FakeServer *s = g_new0 (FakeServer, 1);

  s->steps = steps;
  s->fd = -1;
  s->listen_fd = -1;
  s->ids = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  s->inbuf = g_string_new (NULL);
  g_mutex_init (&s->lock);
  g_cond_init (&s->cond);
  return s;
}

/* Returns the client's end of a socketpair, as a GIOStream. */
static GIOStream *
server_start_socketpair (FakeServer *s)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocket) socket = NULL;
  int fds[2];

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  s->fd = fds[0];
  socket = g_socket_new_from_fd (fds[1], &error);
  g_assert_no_error (error);
  s->thread = g_thread_new ("fake-qemu", server_thread, s);
  return G_IO_STREAM (g_socket_connection_factory_create_connection (socket));
}

static void
server_release (FakeServer *s)
{
  g_mutex_lock (&s->lock);
  s->released = TRUE;
  g_cond_signal (&s->cond);
  g_mutex_unlock (&s->lock);
}

/* Joins the thread (the client must have closed or be closing) and checks
 * that the client sent exactly what the transcript expects. */
static void
server_finish (FakeServer *s)
{
  if (s == NULL)
    return;
  if (s->thread != NULL)
    g_thread_join (s->thread);
  if (s->listen_fd >= 0)
    close (s->listen_fd);
  if (s->failure != NULL)
    g_error ("fake QEMU: %s", s->failure);
  g_ptr_array_unref (s->steps);
  g_hash_table_unref (s->ids);
  g_string_free (s->inbuf, TRUE);
  g_mutex_clear (&s->lock);
  g_cond_clear (&s->cond);
  g_free (s);
}

/* ---- fixture ------------------------------------------------------------ */

typedef struct {
  char *name;
  JsonObject *data;
  gint64 timestamp_us;
  gboolean before_reply;  /* arrived before the reply being awaited */
} EventRecord;

static void
event_record_free (EventRecord *e)
{
  g_free (e->name);
  g_clear_pointer (&e->data, json_object_unref);
  g_free (e);
}

typedef struct {
  FakeServer *server;
  FerryQmp *qmp;
  GPtrArray *events;
  guint closed_count;
  gboolean guard_expired;
} Fixture;

typedef struct {
  gboolean done;
  JsonNode *result;
  GError *error;
  guint events_seen;      /* events already delivered when the reply came */
  Fixture *f;
} Reply;

static void
reply_clear (Reply *r)
{
  g_clear_pointer (&r->result, json_node_unref);
  g_clear_error (&r->error);
}

static gboolean
guard_fired (gpointer data)
{
  Fixture *f = data;

  f->guard_expired = TRUE;
  return G_SOURCE_REMOVE;
}

/* No sleeps: iterate until the condition holds; 10 s means a hang. */
#define WAIT_UNTIL(f, cond)                                               \
  G_STMT_START {                                                          \
    g_autoptr(GSource) guard_ = g_timeout_source_new_seconds (10);        \
    (f)->guard_expired = FALSE;                                           \
    g_source_set_callback (guard_, guard_fired, (f), NULL);               \
    g_source_attach (guard_, NULL);                                       \
    while (!(cond) && !(f)->guard_expired)                                \
      g_main_context_iteration (NULL, TRUE);                              \
    g_source_destroy (guard_);                                            \
    if (!(cond))                                                          \
      g_error ("timed out waiting for %s", #cond);                        \
  } G_STMT_END

static void
on_event (FerryQmp *qmp, const char *name, JsonObject *data, gint64 timestamp_us, gpointer user_data)
{
  Fixture *f = user_data;
  EventRecord *e = g_new0 (EventRecord, 1);

  e->name = g_strdup (name);
  e->data = data != NULL ? json_object_ref (data) : NULL;
  e->timestamp_us = timestamp_us;
  g_ptr_array_add (f->events, e);
}

static void
on_closed (FerryQmp *qmp, gpointer user_data)
{
  Fixture *f = user_data;

  f->closed_count++;
}

static void
on_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Reply *r = user_data;
  g_autoptr(FerryQmp) qmp = ferry_qmp_new_for_stream_finish (result, &r->error);

  if (qmp != NULL)
    r->f->qmp = g_steal_pointer (&qmp);
  r->done = TRUE;
}

static void
fixture_init (Fixture *f)
{
  memset (f, 0, sizeof *f);
  f->events = g_ptr_array_new_with_free_func ((GDestroyNotify) event_record_free);
}

static void
fixture_watch (Fixture *f)
{
  g_signal_connect (f->qmp, "event", G_CALLBACK (on_event), f);
  g_signal_connect (f->qmp, "closed", G_CALLBACK (on_closed), f);
}

/* Starts the fake server and connects; returns the connect outcome. */
static void
fixture_connect (Fixture *f, GPtrArray *steps, GCancellable *cancellable, Reply *r)
{
  g_autoptr(GIOStream) stream = NULL;

  f->server = server_new (steps);
  stream = server_start_socketpair (f->server);
  r->f = f;
  ferry_qmp_new_for_stream_async (stream, cancellable, on_connected, r);
}

static void
fixture_start (Fixture *f, GPtrArray *steps)
{
  Reply r = { 0 };

  fixture_connect (f, steps, NULL, &r);
  WAIT_UNTIL (f, r.done);
  g_assert_no_error (r.error);
  g_assert_nonnull (f->qmp);
  fixture_watch (f);
}

static void
fixture_start_inline (Fixture *f, const char *text)
{
  fixture_start (f, transcript_parse (text));
}

static void
fixture_finish (Fixture *f)
{
  /* Dropping the client closes the socket, which ends the server. */
  g_clear_object (&f->qmp);
  server_finish (f->server);
  f->server = NULL;
  g_ptr_array_unref (f->events);
}

static void
on_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Reply *r = user_data;

  r->result = ferry_qmp_execute_finish (FERRY_QMP (source), result, &r->error);
  r->events_seen = r->f->events->len;
  r->done = TRUE;
}

static void
execute_start (Fixture *f, const char *command, JsonObject *arguments,
               GCancellable *cancellable, Reply *r)
{
  memset (r, 0, sizeof *r);
  r->f = f;
  ferry_qmp_execute_async (f->qmp, command, arguments, cancellable, on_reply, r);
}

static void
execute_wait (Fixture *f, const char *command, JsonObject *arguments, Reply *r)
{
  execute_start (f, command, arguments, NULL, r);
  WAIT_UNTIL (f, r->done);
}

static void
assert_return_equals_recorded (Reply *r, GPtrArray *steps, const char *recorded_id)
{
  g_autoptr(JsonObject) recorded = transcript_reply (steps, recorded_id);

  g_assert_no_error (r->error);
  g_assert_nonnull (r->result);
  g_assert_true (json_node_equal (r->result, json_object_get_member (recorded, "return")));
}

/* ---- connecting --------------------------------------------------------- */

static void
test_connect_negotiates (void)
{
  Fixture f;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("connect"));
  /* Completed only after qmp_capabilities went out and was accepted. */
  g_assert_cmpint (g_atomic_int_get (&f.server->received), ==, 1);
  g_assert_false (ferry_qmp_is_closed (f.qmp));
  g_assert_null (ferry_qmp_get_close_error (f.qmp));
  fixture_finish (&f);
}

static void
on_path_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  Reply *r = user_data;
  g_autoptr(FerryQmp) qmp = ferry_qmp_connect_finish (result, &r->error);

  if (qmp != NULL)
    r->f->qmp = g_steal_pointer (&qmp);
  r->done = TRUE;
}

static void
test_connect_unix_socket (void)
{
  g_autofree char *dir = g_dir_make_tmp ("ferry-qmp-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "qmp.sock", NULL);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  f.server = server_new (transcript_load ("query-status"));
  f.server->listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  g_strlcpy (addr.sun_path, path, sizeof addr.sun_path);
  g_assert_cmpint (bind (f.server->listen_fd, (struct sockaddr *) &addr, sizeof addr), ==, 0);
  g_assert_cmpint (listen (f.server->listen_fd, 1), ==, 0);
  f.server->thread = g_thread_new ("fake-qemu", server_thread, f.server);

  r.f = &f;
  ferry_qmp_connect_async (path, NULL, on_path_connected, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_no_error (r.error);

  execute_wait (&f, "query-status", NULL, &r);
  assert_return_equals_recorded (&r, f.server->steps, "r1");
  reply_clear (&r);

  fixture_finish (&f);
  g_unlink (path);
  g_rmdir (dir);
}

static void
test_connect_no_socket (void)
{
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  r.f = &f;
  ferry_qmp_connect_async ("/nonexistent/ferry/qmp.sock", NULL, on_path_connected, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull (strstr (r.error->message, "/nonexistent/ferry/qmp.sock"));
  g_assert_null (f.qmp);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_connect_eof_before_greeting (void)
{
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  fixture_connect (&f, transcript_parse ("!eof\n"), NULL, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_null (f.qmp);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_connect_not_a_greeting (void)
{
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  fixture_connect (&f, transcript_parse ("< {\"return\": {}}\n"), NULL, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_null (f.qmp);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_connect_capabilities_rejected (void)
{
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  fixture_connect (&f, transcript_parse (
    GREETING
    "> {\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}, \"id\": \"r0\"}\n"
    "< {\"id\": \"r0\", \"error\": {\"class\": \"CommandNotFound\", "
    "\"desc\": \"Capabilities negotiation is already complete, command ignored\"}}\n"),
    NULL, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_cmpstr (r.error->message, ==,
                   "qmp_capabilities: Capabilities negotiation is already complete, "
                   "command ignored (CommandNotFound)");
  g_assert_null (f.qmp);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_connect_cancelled (void)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Fixture f;
  Reply r = { 0 };

  fixture_init (&f);
  fixture_connect (&f, transcript_parse ("!sync\n" GREETING), cancellable, &r);
  WAIT_UNTIL (&f, g_atomic_int_get (&f.server->at_sync));
  g_cancellable_cancel (cancellable);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_null (f.qmp);
  server_release (f.server);
  reply_clear (&r);
  fixture_finish (&f);
}

/* ---- commands ----------------------------------------------------------- */

static void
test_execute_returns_recorded_value (void)
{
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("query-status"));
  execute_wait (&f, "query-status", NULL, &r);
  assert_return_equals_recorded (&r, f.server->steps, "r1");
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (r.result), "status"),
                   ==, "prelaunch");
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_execute_empty_return (void)
{
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("query-migrate"));
  execute_wait (&f, "query-migrate", NULL, &r);
  g_assert_no_error (r.error);
  g_assert_true (JSON_NODE_HOLDS_OBJECT (r.result));
  g_assert_cmpuint (json_object_get_size (json_node_get_object (r.result)), ==, 0);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_execute_sends_arguments (void)
{
  g_autoptr(JsonObject) args = parse_object (
    "{\"capabilities\": [{\"capability\": \"events\", \"state\": true}]}");
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("migrate-capabilities"));
  /* The server compares the arguments with the recorded ones. */
  execute_wait (&f, "migrate-set-capabilities", args, &r);
  g_assert_no_error (r.error);
  reply_clear (&r);
  execute_wait (&f, "query-migrate-parameters", NULL, &r);
  assert_return_equals_recorded (&r, f.server->steps, "r2");
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_execute_qmp_error (void)
{
  g_autoptr(JsonObject) args = parse_object ("{\"max-bandwidth\": \"fast\"}");
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("error-bad-argument"));
  execute_wait (&f, "migrate-set-parameters", args, &r);
  g_assert_null (r.result);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_cmpstr (r.error->message, ==,
                   "migrate-set-parameters: Parameter 'max-bandwidth' expects uint64 (GenericError)");
  reply_clear (&r);
  g_assert_false (ferry_qmp_is_closed (f.qmp));
  fixture_finish (&f);
}

static void
test_execute_unknown_command (void)
{
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("error-unknown-command"));
  execute_wait (&f, "no-such-command", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_cmpstr (r.error->message, ==,
                   "no-such-command: The command no-such-command has not been found (CommandNotFound)");
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_execute_out_of_order (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "> {\"execute\": \"query-migrate\", \"id\": \"r2\"}\n"
    "< {\"return\": {}, \"id\": \"r2\"}\n"
    QUERY_STATUS_REPLY_R1;
  Fixture f;
  Reply status, migrate;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_start (&f, "query-status", NULL, NULL, &status);
  execute_start (&f, "query-migrate", NULL, NULL, &migrate);
  WAIT_UNTIL (&f, status.done && migrate.done);
  assert_return_equals_recorded (&status, f.server->steps, "r1");
  assert_return_equals_recorded (&migrate, f.server->steps, "r2");
  reply_clear (&status);
  reply_clear (&migrate);
  fixture_finish (&f);
}

/* Replies without an id, or with an id nobody waits for, are dropped. */
static void
test_execute_stray_replies_ignored (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "< {\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword 'x'\"}}\n"
    "< {\"return\": {}, \"id\": \"stranger\"}\n"
    "< {\"something\": \"new\"}\n"
    QUERY_STATUS_REPLY_R1;
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_wait (&f, "query-status", NULL, &r);
  assert_return_equals_recorded (&r, f.server->steps, "r1");
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_execute_cancel_sent (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "> {\"execute\": \"query-migrate\", \"id\": \"r2\"}\n"
    "!sync\n"
    QUERY_STATUS_REPLY_R1
    "< {\"return\": {}, \"id\": \"r2\"}\n";
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Fixture f;
  Reply status, migrate;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_start (&f, "query-status", NULL, cancellable, &status);
  execute_start (&f, "query-migrate", NULL, NULL, &migrate);
  WAIT_UNTIL (&f, g_atomic_int_get (&f.server->at_sync));
  g_cancellable_cancel (cancellable);
  WAIT_UNTIL (&f, status.done);
  g_assert_error (status.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  /* Now the late reply to query-status arrives and must be dropped. */
  server_release (f.server);
  WAIT_UNTIL (&f, migrate.done);
  assert_return_equals_recorded (&migrate, f.server->steps, "r2");
  reply_clear (&status);
  reply_clear (&migrate);
  fixture_finish (&f);
}

/* Cancelled before it was written: QEMU never sees it. */
static void
test_execute_cancel_queued (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-migrate\", \"id\": \"r1\"}\n"
    "< {\"return\": {}, \"id\": \"r1\"}\n";
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  Fixture f;
  Reply status, migrate;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_start (&f, "stop", NULL, cancellable, &status);
  g_cancellable_cancel (cancellable);
  execute_start (&f, "query-migrate", NULL, NULL, &migrate);
  WAIT_UNTIL (&f, status.done && migrate.done);
  g_assert_error (status.error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_assert_no_error (migrate.error);
  reply_clear (&status);
  reply_clear (&migrate);
  fixture_finish (&f);
}

static void
test_execute_sync (void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonNode) result = NULL;
  Fixture f;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("query-status"));
  result = ferry_qmp_execute_sync (f.qmp, "query-status", NULL, 10000, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (result), "status"),
                   ==, "prelaunch");
  fixture_finish (&f);
}

static void
test_execute_sync_timeout (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n";
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonNode) result = NULL;
  Fixture f;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  result = ferry_qmp_execute_sync (f.qmp, "query-status", NULL, 50, &error);
  g_assert_null (result);
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT);
  g_assert_cmpstr (error->message, ==, "query-status: no reply from QEMU within 50 ms");
  fixture_finish (&f);
}

static void
test_build_command (void)
{
  g_autoptr(JsonObject) args = parse_object ("{\"uri\": \"tcp:10.0.0.2:49152\"}");
  g_autofree char *with_args = ferry_qmp_build_command ("migrate", args, "7");
  g_autofree char *bare = ferry_qmp_build_command ("query-status", NULL, NULL);

  g_assert_cmpstr (with_args, ==,
                   "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"tcp:10.0.0.2:49152\"},\"id\":\"7\"}");
  g_assert_cmpstr (bare, ==, "{\"execute\":\"query-status\"}");
}

/* ---- events ------------------------------------------------------------- */

static void
test_events_before_reply (void)
{
  Fixture f;
  Reply r;
  EventRecord *e;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("stop-cont"));
  execute_wait (&f, "cont", NULL, &r);
  g_assert_no_error (r.error);
  g_assert_cmpuint (r.events_seen, ==, 1);
  reply_clear (&r);
  execute_wait (&f, "stop", NULL, &r);
  g_assert_no_error (r.error);
  /* QEMU emits STOP while running the command, before its reply. */
  g_assert_cmpuint (r.events_seen, ==, 2);
  reply_clear (&r);

  g_assert_cmpuint (f.events->len, ==, 2);
  e = f.events->pdata[0];
  g_assert_cmpstr (e->name, ==, "RESUME");
  g_assert_null (e->data);
  g_assert_cmpint (e->timestamp_us, ==, G_GINT64_CONSTANT (1795330388932344));
  e = f.events->pdata[1];
  g_assert_cmpstr (e->name, ==, "STOP");
  g_assert_cmpint (e->timestamp_us, ==, G_GINT64_CONSTANT (1795330388932838));
  fixture_finish (&f);
}

/* MIGRATION events keep flowing after migrate's reply, in order. */
static void
test_events_migration_sequence (void)
{
  static const char *const expected[][2] = {
    { "MIGRATION", "setup" },
    { "MIGRATION_PASS", NULL },
    { "MIGRATION", "active" },
    { "STOP", NULL },
    { "MIGRATION_PASS", NULL },
    { "MIGRATION", "completed" },
  };
  g_autoptr(GPtrArray) steps = transcript_load ("migration-source");
  g_autoptr(JsonObject) caps = parse_object (
    "{\"capabilities\": [{\"capability\": \"events\", \"state\": true}]}");
  g_autoptr(JsonObject) params = parse_object ("{\"max-bandwidth\": 1073741824, \"downtime-limit\": 300}");
  g_autoptr(JsonObject) migrate_line = NULL;
  JsonObject *migrate_args;
  Fixture f;
  Reply r;

  /* The recorded uri names a temporary socket: send what was recorded. */
  for (guint i = 0; i < steps->len && migrate_line == NULL; i++)
    {
      Step *step = steps->pdata[i];
      if (step->kind == STEP_EXPECT && strstr (step->text, "\"migrate\"") != NULL)
        migrate_line = parse_object (step->text);
    }
  g_assert_nonnull (migrate_line);
  migrate_args = json_object_get_object_member (migrate_line, "arguments");

  fixture_init (&f);
  fixture_start (&f, g_ptr_array_ref (steps));
  execute_wait (&f, "migrate-set-capabilities", caps, &r);
  reply_clear (&r);
  execute_wait (&f, "migrate-set-parameters", params, &r);
  reply_clear (&r);
  execute_wait (&f, "migrate", migrate_args, &r);
  g_assert_no_error (r.error);
  g_assert_cmpuint (r.events_seen, ==, 1);
  reply_clear (&r);
  WAIT_UNTIL (&f, f.events->len == G_N_ELEMENTS (expected));
  for (guint i = 0; i < G_N_ELEMENTS (expected); i++)
    {
      EventRecord *e = f.events->pdata[i];

      g_assert_cmpstr (e->name, ==, expected[i][0]);
      if (expected[i][1] != NULL)
        g_assert_cmpstr (json_object_get_string_member (e->data, "status"), ==, expected[i][1]);
      if (i > 0)
        g_assert_cmpint (e->timestamp_us, >=, ((EventRecord *) f.events->pdata[i - 1])->timestamp_us);
    }
  execute_wait (&f, "query-migrate", NULL, &r);
  assert_return_equals_recorded (&r, steps, "r4");
  reply_clear (&r);
  fixture_finish (&f);
}

/* ---- closing ------------------------------------------------------------ */

static void
test_close_quit (void)
{
  Fixture f;
  Reply r;
  EventRecord *e;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("quit"));
  execute_wait (&f, "query-status", NULL, &r);
  reply_clear (&r);
  execute_wait (&f, "quit", NULL, &r);
  g_assert_no_error (r.error);
  reply_clear (&r);
  WAIT_UNTIL (&f, f.closed_count > 0);
  g_assert_cmpuint (f.closed_count, ==, 1);
  g_assert_true (ferry_qmp_is_closed (f.qmp));
  g_assert_error ((GError *) ferry_qmp_get_close_error (f.qmp), FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);

  g_assert_cmpuint (f.events->len, ==, 1);
  e = f.events->pdata[0];
  g_assert_cmpstr (e->name, ==, "SHUTDOWN");
  g_assert_false (json_object_get_boolean_member (e->data, "guest"));
  g_assert_cmpstr (json_object_get_string_member (e->data, "reason"), ==, "host-qmp-quit");
  g_assert_cmpint (e->timestamp_us, ==, G_GINT64_CONSTANT (1795330388978201));

  /* Commands after the close fail at once, with the close reason. */
  execute_wait (&f, "query-status", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  reply_clear (&r);
  g_assert_cmpuint (f.closed_count, ==, 1);
  fixture_finish (&f);
}

static void
test_close_eof_fails_pending (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "> {\"execute\": \"query-migrate\", \"id\": \"r2\"}\n"
    "!eof\n";
  Fixture f;
  Reply status, migrate;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_start (&f, "query-status", NULL, NULL, &status);
  execute_start (&f, "query-migrate", NULL, NULL, &migrate);
  WAIT_UNTIL (&f, status.done && migrate.done && f.closed_count > 0);
  g_assert_error (status.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpstr (status.error->message, ==, "QEMU monitor closed");
  g_assert_error (migrate.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  /* Let any stray second emission happen before counting. */
  while (g_main_context_iteration (NULL, FALSE))
    ;
  g_assert_cmpuint (f.closed_count, ==, 1);
  reply_clear (&status);
  reply_clear (&migrate);
  fixture_finish (&f);
}

static void
test_close_oversized_message (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "!oversize\n";
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_wait (&f, "query-status", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE);
  g_assert_cmpuint (f.closed_count, ==, 1);
  g_assert_true (ferry_qmp_is_closed (f.qmp));
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_close_malformed_json (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "< {\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": fal\n"
    QUERY_STATUS_REPLY_R1;
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_wait (&f, "query-status", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_true (g_str_has_prefix (r.error->message, "QEMU sent malformed QMP: "));
  g_assert_cmpuint (f.closed_count, ==, 1);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_close_not_an_object (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "< [\"return\", {}]\n";
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_wait (&f, "query-status", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_cmpuint (f.closed_count, ==, 1);
  reply_clear (&r);
  fixture_finish (&f);
}

/* json-glib recurses: depth is refused before it parses. */
static void
test_close_nested_too_deeply (void)
{
  g_autoptr(GString) transcript = g_string_new (NEGOTIATION
                                                "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n< ");
  Fixture f;
  Reply r;

  for (guint i = 0; i < 100000; i++)
    g_string_append_c (transcript, '[');
  g_string_append_c (transcript, '\n');

  fixture_init (&f);
  fixture_start_inline (&f, transcript->str);
  execute_wait (&f, "query-status", NULL, &r);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
  g_assert_cmpuint (f.closed_count, ==, 1);
  reply_clear (&r);
  fixture_finish (&f);
}

static void
test_close_explicit (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n";
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  execute_start (&f, "query-status", NULL, NULL, &r);
  WAIT_UNTIL (&f, g_atomic_int_get (&f.server->received) == 2);
  ferry_qmp_close (f.qmp);
  ferry_qmp_close (f.qmp);
  WAIT_UNTIL (&f, r.done);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpuint (f.closed_count, ==, 1);
  g_assert_true (ferry_qmp_is_closed (f.qmp));
  reply_clear (&r);
  fixture_finish (&f);
}

/* The last reference goes while the client waits for input. */
static void
test_close_unref_while_reading (void)
{
  Fixture f;

  fixture_init (&f);
  fixture_start (&f, transcript_load ("connect"));
  g_clear_object (&f.qmp);
  /* Anything still queued on the context must not touch the client. */
  while (g_main_context_iteration (NULL, FALSE))
    ;
  fixture_finish (&f);
}

static void
on_closed_unref (FerryQmp *qmp, gpointer user_data)
{
  Fixture *f = user_data;

  f->closed_count++;
  g_clear_object (&f->qmp);
}

/* A "closed" handler may drop the last reference. */
static void
test_close_unref_in_handler (void)
{
  static const char transcript[] =
    NEGOTIATION
    "> {\"execute\": \"query-status\", \"id\": \"r1\"}\n"
    "!eof\n";
  Fixture f;
  Reply r;

  fixture_init (&f);
  fixture_start_inline (&f, transcript);
  g_signal_handlers_disconnect_by_func (f.qmp, on_closed, &f);
  g_signal_connect (f.qmp, "closed", G_CALLBACK (on_closed_unref), &f);
  execute_start (&f, "query-status", NULL, NULL, &r);
  WAIT_UNTIL (&f, r.done && f.closed_count > 0);
  g_assert_null (f.qmp);
  g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  reply_clear (&r);
  fixture_finish (&f);
}

/* ---- every recorded transcript, replayed -------------------------------- */

/* Sends each recorded command with its recorded arguments and checks every
 * reply, every event (name, data, timestamp, order) and the close. */
static void
test_replay (gconstpointer data)
{
  const char *name = data;
  g_autoptr(GPtrArray) steps = transcript_load (name);
  g_autoptr(GPtrArray) expected_events = g_ptr_array_new_with_free_func ((GDestroyNotify) json_object_unref);
  gboolean ends_with_eof = FALSE;
  gboolean first = TRUE;
  Fixture f;

  for (guint i = 0; i < steps->len; i++)
    {
      Step *step = steps->pdata[i];
      if (step->kind == STEP_SEND && strstr (step->text, "\"event\"") != NULL)
        g_ptr_array_add (expected_events, parse_object (step->text));
      if (step->kind == STEP_EOF)
        ends_with_eof = TRUE;
    }

  fixture_init (&f);
  fixture_start (&f, g_ptr_array_ref (steps));
  for (guint i = 0; i < steps->len; i++)
    {
      Step *step = steps->pdata[i];
      g_autoptr(JsonObject) line = NULL;
      g_autoptr(JsonObject) recorded = NULL;
      JsonObject *args;
      Reply r;

      if (step->kind != STEP_EXPECT)
        continue;
      if (first)
        {
          first = FALSE; /* qmp_capabilities: the client's own */
          continue;
        }
      line = parse_object (step->text);
      args = json_object_has_member (line, "arguments") ?
        json_object_get_object_member (line, "arguments") : NULL;
      recorded = transcript_reply (steps, json_object_get_string_member (line, "id"));
      execute_wait (&f, json_object_get_string_member (line, "execute"), args, &r);
      if (json_object_has_member (recorded, "return"))
        {
          g_assert_no_error (r.error);
          g_assert_true (json_node_equal (r.result, json_object_get_member (recorded, "return")));
        }
      else
        {
          JsonObject *err = json_object_get_object_member (recorded, "error");
          g_autofree char *message = g_strdup_printf ("%s: %s (%s)",
                                                      json_object_get_string_member (line, "execute"),
                                                      json_object_get_string_member (err, "desc"),
                                                      json_object_get_string_member (err, "class"));
          g_assert_error (r.error, FERRY_ERROR, FERRY_ERROR_QEMU);
          g_assert_cmpstr (r.error->message, ==, message);
        }
      reply_clear (&r);
    }

  WAIT_UNTIL (&f, f.events->len >= expected_events->len);
  g_assert_cmpuint (f.events->len, ==, expected_events->len);
  for (guint i = 0; i < expected_events->len; i++)
    {
      JsonObject *want = expected_events->pdata[i];
      EventRecord *got = f.events->pdata[i];
      JsonObject *ts = json_object_get_object_member (want, "timestamp");

      g_assert_cmpstr (got->name, ==, json_object_get_string_member (want, "event"));
      g_assert_cmpint (got->timestamp_us, ==,
                       json_object_get_int_member (ts, "seconds") * G_USEC_PER_SEC +
                       json_object_get_int_member (ts, "microseconds"));
      if (json_object_has_member (want, "data"))
        {
          g_autoptr(JsonNode) got_node = json_node_init_object (json_node_alloc (), got->data);
          g_assert_nonnull (got->data);
          g_assert_true (json_node_equal (got_node, json_object_get_member (want, "data")));
        }
      else
        g_assert_null (got->data);
    }

  if (ends_with_eof)
    WAIT_UNTIL (&f, f.closed_count == 1);
  else
    g_assert_cmpuint (f.closed_count, ==, 0);
  fixture_finish (&f);
}

/* ---- the real QEMU ------------------------------------------------------ */

static void
test_real_qemu (void)
{
  g_autofree char *qemu = g_find_program_in_path ("qemu-system-x86_64");
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  g_autoptr(GSubprocess) process = NULL;
  g_autoptr(GSocket) socket = NULL;
  g_autoptr(GIOStream) stream = NULL;
  g_autoptr(GError) error = NULL;
  Fixture f;
  Reply r = { 0 };
  int fds[2];

  if (qemu == NULL)
    {
      g_test_skip ("qemu-system-x86_64 is not installed");
      return;
    }

  /* A pre-connected socketpair: no socket path to wait for. */
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDIN_INHERIT);
  g_subprocess_launcher_take_fd (launcher, fds[1], 3);
  process = g_subprocess_launcher_spawn (launcher, &error, qemu,
                                         "-M", "q35", "-accel", "tcg", "-m", "64",
                                         "-nodefaults", "-display", "none", "-S",
                                         "-chardev", "socket,id=qmp,fd=3",
                                         "-mon", "chardev=qmp,mode=control", NULL);
  g_assert_no_error (error);
  /* The launcher holds QEMU's end open; QEMU's exit must be our EOF. */
  g_clear_object (&launcher);
  socket = g_socket_new_from_fd (fds[0], &error);
  g_assert_no_error (error);
  stream = G_IO_STREAM (g_socket_connection_factory_create_connection (socket));

  fixture_init (&f);
  r.f = &f;
  ferry_qmp_new_for_stream_async (stream, NULL, on_connected, &r);
  WAIT_UNTIL (&f, r.done);
  g_assert_no_error (r.error);
  fixture_watch (&f);

  execute_wait (&f, "query-status", NULL, &r);
  g_assert_no_error (r.error);
  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (r.result), "status"),
                   ==, "prelaunch");
  reply_clear (&r);

  execute_wait (&f, "quit", NULL, &r);
  g_assert_no_error (r.error);
  reply_clear (&r);
  WAIT_UNTIL (&f, f.closed_count > 0);
  g_assert_cmpuint (f.closed_count, ==, 1);
  g_assert_cmpuint (f.events->len, >=, 1);
  g_assert_cmpstr (((EventRecord *) f.events->pdata[0])->name, ==, "SHUTDOWN");

  g_subprocess_wait_check (process, NULL, &error);
  g_assert_no_error (error);
  fixture_finish (&f);
}

#define GREETING_NO_OOB "< {\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 6}, " \
  "\"package\": \"\"}, \"capabilities\": []}}\n"

/* A QEMU that offers no "oob" gets a plain qmp_capabilities, and
 * out-of-band requests fall back to ordinary execution. */
static void
test_connect_without_oob (void)
{
  Fixture f;
  fixture_init (&f);
  fixture_start_inline (&f,
    GREETING_NO_OOB
    "> {\"execute\": \"qmp_capabilities\", \"id\": \"r0\"}\n"
    "< {\"return\": {}, \"id\": \"r0\"}\n"
    "> {\"execute\": \"migrate-pause\", \"id\": \"r1\"}\n"
    "< {\"return\": {}, \"id\": \"r1\"}\n");
  Reply pause = { .f = &f };
  ferry_qmp_execute_oob_async (f.qmp, "migrate-pause", NULL, NULL, on_reply, &pause);
  WAIT_UNTIL (&f, pause.done);
  g_assert_no_error (pause.error);
  g_clear_pointer (&pause.result, json_node_unref);
  fixture_finish (&f);
}

/* With "oob" negotiated, out-of-band requests go as exec-oob. */
static void
test_oob_command_uses_exec_oob (void)
{
  Fixture f;
  fixture_init (&f);
  fixture_start_inline (&f,
    NEGOTIATION
    "> {\"exec-oob\": \"migrate-pause\", \"id\": \"r1\"}\n"
    "< {\"return\": {}, \"id\": \"r1\"}\n");
  Reply pause = { .f = &f };
  ferry_qmp_execute_oob_async (f.qmp, "migrate-pause", NULL, NULL, on_reply, &pause);
  WAIT_UNTIL (&f, pause.done);
  g_assert_no_error (pause.error);
  g_clear_pointer (&pause.result, json_node_unref);
  fixture_finish (&f);
}

int
main (int argc, char **argv)
{
  static const char *const recorded[] = {
    "connect", "query-status", "query-migrate", "migrate-capabilities",
    "error-bad-argument", "error-unknown-command", "stop-cont", "quit",
    "migration-source", "migration-destination",
  };

  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/qmp/connect/negotiates", test_connect_negotiates);
  g_test_add_func ("/qmp/connect/without-oob", test_connect_without_oob);
  g_test_add_func ("/qmp/execute/oob-uses-exec-oob", test_oob_command_uses_exec_oob);
  g_test_add_func ("/qmp/connect/unix-socket", test_connect_unix_socket);
  g_test_add_func ("/qmp/connect/no-socket", test_connect_no_socket);
  g_test_add_func ("/qmp/connect/eof-before-greeting", test_connect_eof_before_greeting);
  g_test_add_func ("/qmp/connect/not-a-greeting", test_connect_not_a_greeting);
  g_test_add_func ("/qmp/connect/capabilities-rejected", test_connect_capabilities_rejected);
  g_test_add_func ("/qmp/connect/cancelled", test_connect_cancelled);

  g_test_add_func ("/qmp/execute/returns-recorded-value", test_execute_returns_recorded_value);
  g_test_add_func ("/qmp/execute/empty-return", test_execute_empty_return);
  g_test_add_func ("/qmp/execute/sends-arguments", test_execute_sends_arguments);
  g_test_add_func ("/qmp/execute/qmp-error", test_execute_qmp_error);
  g_test_add_func ("/qmp/execute/unknown-command", test_execute_unknown_command);
  g_test_add_func ("/qmp/execute/out-of-order", test_execute_out_of_order);
  g_test_add_func ("/qmp/execute/stray-replies-ignored", test_execute_stray_replies_ignored);
  g_test_add_func ("/qmp/execute/cancel-sent", test_execute_cancel_sent);
  g_test_add_func ("/qmp/execute/cancel-queued", test_execute_cancel_queued);
  g_test_add_func ("/qmp/execute/sync", test_execute_sync);
  g_test_add_func ("/qmp/execute/sync-timeout", test_execute_sync_timeout);
  g_test_add_func ("/qmp/execute/build-command", test_build_command);

  g_test_add_func ("/qmp/events/before-reply", test_events_before_reply);
  g_test_add_func ("/qmp/events/migration-sequence", test_events_migration_sequence);

  g_test_add_func ("/qmp/close/quit", test_close_quit);
  g_test_add_func ("/qmp/close/eof-fails-pending", test_close_eof_fails_pending);
  g_test_add_func ("/qmp/close/oversized-message", test_close_oversized_message);
  g_test_add_func ("/qmp/close/malformed-json", test_close_malformed_json);
  g_test_add_func ("/qmp/close/not-an-object", test_close_not_an_object);
  g_test_add_func ("/qmp/close/nested-too-deeply", test_close_nested_too_deeply);
  g_test_add_func ("/qmp/close/explicit", test_close_explicit);
  g_test_add_func ("/qmp/close/unref-while-reading", test_close_unref_while_reading);
  g_test_add_func ("/qmp/close/unref-in-closed-handler", test_close_unref_in_handler);

  for (gsize i = 0; i < G_N_ELEMENTS (recorded); i++)
    {
      g_autofree char *path = g_strconcat ("/qmp/replay/", recorded[i], NULL);
      g_test_add_data_func (path, recorded[i], test_replay);
    }

  g_test_add_func ("/qmp/real/query-status-quit", test_real_qemu);

  return g_test_run ();
}
