/* ferry — asynchronous QMP client.
 *
 * The monitor stream is driven by pollable sources on the thread-default
 * main context rather than by GIO async operations: nothing is ever in
 * flight inside GIO, so closing or dropping the last reference only has to
 * destroy our sources, and no callback can run on a freed object.
 *
 * Messages are split on '\n' ourselves (GDataInputStream would buffer an
 * unbounded line) so every message is bounded by FERRY_QMP_MAX_MESSAGE.
 */
#include "qmp.h"

#include "jsonutil.h"

#include <string.h>

#include <gio/gunixsocketaddress.h>

#include "ferry-error.h"

/* QEMU never nests deeply; json-glib's parser and node destructor recurse,
 * so a hostile depth could exhaust the stack. QEMU's own input limit. */
#define QMP_MAX_NESTING 1024

#define QMP_READ_CHUNK (64 * 1024)

typedef enum {
  QMP_STATE_GREETING,     /* waiting for {"QMP": ...} */
  QMP_STATE_NEGOTIATING,  /* qmp_capabilities sent */
  QMP_STATE_READY,
  QMP_STATE_CLOSED,
} QmpState;

typedef struct {
  FerryQmp *qmp;          /* borrowed: entries never outlive the client */
  char *id;
  char *command;
  GBytes *wire;           /* the line to send, newline included */
  gboolean sent;          /* handed to the socket (at least partly) */
  GTask *task;            /* NULL once the caller got its answer (cancelled) */
  GSource *cancel_source;
} QmpPending;

struct _FerryQmp {
  GObject parent_instance;

  GMainContext *context;
  GIOStream *stream;
  GPollableInputStream *input;
  GPollableOutputStream *output;

  QmpState state;
  GError *close_error;

  GSource *read_source;
  guint8 *read_buffer;
  GByteArray *partial;      /* bytes of the message being received */

  GSource *write_source;
  GQueue write_queue;       /* QmpPending * not yet started */
  GBytes *write_current;    /* being written, possibly partially */
  gsize write_offset;

  GHashTable *pending;      /* id -> QmpPending *, owned */
  guint64 next_id;
  gboolean oob;             /* out-of-band execution negotiated */

  GTask *connect_task;
  GSource *connect_cancel_source;
};

G_DEFINE_TYPE (FerryQmp, ferry_qmp, G_TYPE_OBJECT)

enum {
  SIGNAL_EVENT,
  SIGNAL_CLOSED,
  N_SIGNALS
};

static guint signals[N_SIGNALS];

static void qmp_close_with_error (FerryQmp *self, GError *error, gboolean emit);
static void qmp_schedule_write (FerryQmp *self);

static void
qmp_pending_free (QmpPending *p)
{
  if (p == NULL)
    return;
  if (p->cancel_source != NULL)
    {
      g_source_destroy (p->cancel_source);
      g_source_unref (p->cancel_source);
    }
  /* A pending entry is only freed after its task was answered; dropping an
   * unanswered task would leave a caller waiting forever. */
  g_warn_if_fail (p->task == NULL);
  g_clear_object (&p->task);
  g_bytes_unref (p->wire);
  g_free (p->command);
  g_free (p->id);
  g_free (p);
}

static void
ferry_qmp_dispose (GObject *object)
{
  FerryQmp *self = FERRY_QMP (object);

  /* Every task holds a reference on us, so nobody is waiting for an answer
   * here: only the sources and the stream need to go. */
  if (self->state != QMP_STATE_CLOSED)
    qmp_close_with_error (self,
                          g_error_new_literal (FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                               "QEMU monitor closed"),
                          FALSE);

  G_OBJECT_CLASS (ferry_qmp_parent_class)->dispose (object);
}

static void
ferry_qmp_finalize (GObject *object)
{
  FerryQmp *self = FERRY_QMP (object);

  g_hash_table_unref (self->pending);
  g_clear_pointer (&self->partial, g_byte_array_unref);
  g_free (self->read_buffer);
  g_clear_error (&self->close_error);
  g_clear_object (&self->stream);
  g_main_context_unref (self->context);

  G_OBJECT_CLASS (ferry_qmp_parent_class)->finalize (object);
}

static void
ferry_qmp_class_init (FerryQmpClass *klass)
{
  GObjectClass *object_class = G_OBJECT_CLASS (klass);

  object_class->dispose = ferry_qmp_dispose;
  object_class->finalize = ferry_qmp_finalize;

  signals[SIGNAL_EVENT] =
    g_signal_new ("event", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST,
                  0, NULL, NULL, NULL, G_TYPE_NONE, 3,
                  G_TYPE_STRING | G_SIGNAL_TYPE_STATIC_SCOPE,
                  JSON_TYPE_OBJECT | G_SIGNAL_TYPE_STATIC_SCOPE,
                  G_TYPE_INT64);
  signals[SIGNAL_CLOSED] =
    g_signal_new ("closed", G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST,
                  0, NULL, NULL, NULL, G_TYPE_NONE, 0);
}

static void
ferry_qmp_init (FerryQmp *self)
{
  self->context = g_main_context_ref_thread_default ();
  self->partial = g_byte_array_new ();
  self->pending = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                         (GDestroyNotify) qmp_pending_free);
  g_queue_init (&self->write_queue);
  self->next_id = 1;
}

/* ---- closing ------------------------------------------------------------ */

static void
qmp_task_return_copy (GTask *task, const GError *error)
{
  g_task_return_error (task, g_error_copy (error));
}

/* Takes ownership of error. Safe to call re-entrantly: the first caller wins.
 * emit is FALSE from dispose, where nobody can observe the signal. */
static void
qmp_close_with_error (FerryQmp *self, GError *error, gboolean emit)
{
  g_autoptr(GError) owned_error = error;
  g_autoptr(GHashTable) pending = NULL;
  GHashTableIter iter;
  QmpPending *p;

  if (self->state == QMP_STATE_CLOSED)
    return;

  /* Task callbacks and signal handlers may drop the caller's reference. */
  if (emit)
    g_object_ref (self);

  self->state = QMP_STATE_CLOSED;
  self->close_error = g_steal_pointer (&owned_error);

  if (self->read_source != NULL)
    {
      g_source_destroy (self->read_source);
      g_clear_pointer (&self->read_source, g_source_unref);
    }
  if (self->write_source != NULL)
    {
      g_source_destroy (self->write_source);
      g_clear_pointer (&self->write_source, g_source_unref);
    }
  g_queue_clear (&self->write_queue);
  g_clear_pointer (&self->write_current, g_bytes_unref);
  g_byte_array_set_size (self->partial, 0);
  g_clear_pointer (&self->read_buffer, g_free);

  /* No GIO operation is ever pending, so a synchronous close cannot fail
   * with G_IO_ERROR_PENDING nor block on a socket. */
  if (self->stream != NULL && !g_io_stream_is_closed (self->stream))
    g_io_stream_close (self->stream, NULL, NULL);

  pending = g_steal_pointer (&self->pending);
  self->pending = g_hash_table_new_full (g_str_hash, g_str_equal, NULL,
                                         (GDestroyNotify) qmp_pending_free);
  g_hash_table_iter_init (&iter, pending);
  while (g_hash_table_iter_next (&iter, NULL, (gpointer *) &p))
    {
      if (p->task != NULL)
        {
          g_autoptr(GTask) task = g_steal_pointer (&p->task);
          qmp_task_return_copy (task, self->close_error);
        }
    }

  if (self->connect_cancel_source != NULL)
    {
      g_source_destroy (self->connect_cancel_source);
      g_clear_pointer (&self->connect_cancel_source, g_source_unref);
    }
  if (self->connect_task != NULL)
    {
      g_autoptr(GTask) task = g_steal_pointer (&self->connect_task);
      qmp_task_return_copy (task, self->close_error);
    }

  if (emit)
    {
      g_signal_emit (self, signals[SIGNAL_CLOSED], 0);
      g_object_unref (self);
    }
}

static void
qmp_close_literal (FerryQmp *self, FerryErrorCode code, const char *message)
{
  qmp_close_with_error (self, g_error_new_literal (FERRY_ERROR, code, message), TRUE);
}

gboolean
ferry_qmp_is_closed (FerryQmp *qmp)
{
  g_return_val_if_fail (FERRY_IS_QMP (qmp), TRUE);
  return qmp->state == QMP_STATE_CLOSED;
}

void
ferry_qmp_close (FerryQmp *qmp)
{
  g_return_if_fail (FERRY_IS_QMP (qmp));
  qmp_close_literal (qmp, FERRY_ERROR_UNAVAILABLE, "QEMU monitor closed");
}

const GError *
ferry_qmp_get_close_error (FerryQmp *qmp)
{
  g_return_val_if_fail (FERRY_IS_QMP (qmp), NULL);
  return qmp->close_error;
}

/* ---- writing ------------------------------------------------------------ */

static gboolean
qmp_on_writable (GObject *stream, gpointer user_data)
{
  FerryQmp *self = user_data;

  for (;;)
    {
      g_autoptr(GError) error = NULL;
      const guint8 *data;
      gsize size;
      gssize written;

      if (self->write_current == NULL)
        {
          QmpPending *p = g_queue_pop_head (&self->write_queue);

          if (p == NULL)
            break;
          if (p->task != NULL && g_task_get_cancellable (p->task) != NULL &&
              g_cancellable_is_cancelled (g_task_get_cancellable (p->task)))
            continue; /* its cancel source answers the caller and drops it */
          p->sent = TRUE;
          self->write_current = g_bytes_ref (p->wire);
          self->write_offset = 0;
        }

      data = g_bytes_get_data (self->write_current, &size);
      written = g_pollable_output_stream_write_nonblocking (self->output,
                                                            data + self->write_offset,
                                                            size - self->write_offset,
                                                            NULL, &error);
      if (written < 0)
        {
          if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            return G_SOURCE_CONTINUE;
          /* Destroys this source; returning G_SOURCE_REMOVE afterwards is
           * harmless. */
          qmp_close_with_error (self,
                                g_error_new (FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                             "QEMU monitor closed: %s", error->message),
                                TRUE);
          return G_SOURCE_REMOVE;
        }

      self->write_offset += written;
      if (self->write_offset == size)
        g_clear_pointer (&self->write_current, g_bytes_unref);
    }

  g_clear_pointer (&self->write_source, g_source_unref);
  return G_SOURCE_REMOVE;
}

/* Writes always happen from a source, never inside ferry_qmp_execute_async:
 * a write error closes the client, and that must not call the caller's
 * callbacks before execute_async has even returned. */
static void
qmp_schedule_write (FerryQmp *self)
{
  if (self->write_source != NULL || self->state == QMP_STATE_CLOSED)
    return;
  self->write_source = g_pollable_output_stream_create_source (self->output, NULL);
  g_source_set_callback (self->write_source, G_SOURCE_FUNC (qmp_on_writable), self, NULL);
  g_source_set_static_name (self->write_source, "ferry-qmp-write");
  g_source_attach (self->write_source, self->context);
}

/* ---- commands ----------------------------------------------------------- */

static char *
qmp_build (const char *key, const char *command, JsonObject *arguments, const char *id)
{
  g_autoptr(JsonObject) object = json_object_new ();
  g_autoptr(JsonNode) root = json_node_new (JSON_NODE_OBJECT);
  g_autoptr(JsonGenerator) generator = json_generator_new ();

  g_return_val_if_fail (command != NULL, NULL);

  json_object_set_string_member (object, key, command);
  if (arguments != NULL)
    json_object_set_object_member (object, "arguments", json_object_ref (arguments));
  if (id != NULL)
    json_object_set_string_member (object, "id", id);

  json_node_set_object (root, object);
  json_generator_set_root (generator, root);
  return json_generator_to_data (generator, NULL);
}

char *
ferry_qmp_build_command (const char *command, JsonObject *arguments, const char *id)
{
  return qmp_build ("execute", command, arguments, id);
}

static gboolean
qmp_on_command_cancelled (GCancellable *cancellable, gpointer user_data)
{
  QmpPending *p = user_data;
  FerryQmp *self = p->qmp;
  g_autoptr(GTask) task = g_steal_pointer (&p->task);
  g_autofree char *command = g_strdup (p->command);

  g_clear_pointer (&p->cancel_source, g_source_unref);
  if (!p->sent)
    {
      /* Never reached QEMU: do not run it at all. */
      g_queue_remove (&self->write_queue, p);
      g_hash_table_remove (self->pending, p->id);
    }
  /* Otherwise the entry stays, so the reply is recognised and dropped. */

  if (task != NULL)
    g_task_return_new_error (task, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                             "%s: operation was cancelled", command);
  return G_SOURCE_REMOVE;
}

static void
qmp_execute_internal (FerryQmp *self,
                      const char *command,
                      JsonObject *arguments,
                      gboolean out_of_band,
                      GCancellable *cancellable,
                      GAsyncReadyCallback callback,
                      gpointer user_data)
{
  g_autoptr(GTask) task = g_task_new (self, cancellable, callback, user_data);
  g_autofree char *json = NULL;
  QmpPending *p;

  g_task_set_source_tag (task, ferry_qmp_execute_async);
  g_task_set_task_data (task, g_strdup (command), g_free);

  if (self->state == QMP_STATE_CLOSED)
    {
      qmp_task_return_copy (task, self->close_error);
      return;
    }
  if (g_task_return_error_if_cancelled (task))
    return;

  p = g_new0 (QmpPending, 1);
  p->qmp = self;
  p->id = g_strdup_printf ("%" G_GUINT64_FORMAT, self->next_id++);
  p->command = g_strdup (command);
  json = qmp_build (out_of_band && self->oob ? "exec-oob" : "execute", command, arguments, p->id);
  p->wire = g_bytes_new_take (g_strconcat (json, "\n", NULL), strlen (json) + 1);
  p->task = g_steal_pointer (&task);

  if (cancellable != NULL)
    {
      p->cancel_source = g_cancellable_source_new (cancellable);
      g_source_set_callback (p->cancel_source, G_SOURCE_FUNC (qmp_on_command_cancelled), p, NULL);
      g_source_set_static_name (p->cancel_source, "ferry-qmp-cancel");
      g_source_attach (p->cancel_source, self->context);
    }

  g_hash_table_insert (self->pending, p->id, p);
  g_queue_push_tail (&self->write_queue, p);
  qmp_schedule_write (self);
}

void
ferry_qmp_execute_async (FerryQmp *qmp,
                         const char *command,
                         JsonObject *arguments,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_return_if_fail (FERRY_IS_QMP (qmp));
  g_return_if_fail (command != NULL);
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  qmp_execute_internal (qmp, command, arguments, FALSE, cancellable, callback, user_data);
}

void
ferry_qmp_execute_oob_async (FerryQmp *qmp,
                             const char *command,
                             JsonObject *arguments,
                             GCancellable *cancellable,
                             GAsyncReadyCallback callback,
                             gpointer user_data)
{
  g_return_if_fail (FERRY_IS_QMP (qmp));
  g_return_if_fail (command != NULL);
  qmp_execute_internal (qmp, command, arguments, TRUE, cancellable, callback, user_data);
}

JsonNode *
ferry_qmp_execute_finish (FerryQmp *qmp, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, qmp), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

typedef struct {
  gboolean done;
  gboolean timed_out;
  JsonNode *result;
  GError *error;
} QmpSyncState;

static void
qmp_on_sync_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  QmpSyncState *state = user_data;

  state->result = ferry_qmp_execute_finish (FERRY_QMP (source), result, &state->error);
  state->done = TRUE;
}

static gboolean
qmp_on_sync_timeout (gpointer user_data)
{
  QmpSyncState *state = user_data;

  state->timed_out = TRUE;
  return G_SOURCE_REMOVE;
}

JsonNode *
ferry_qmp_execute_sync (FerryQmp *qmp,
                        const char *command,
                        JsonObject *arguments,
                        guint timeout_ms,
                        GError **error)
{
  g_autoptr(GCancellable) cancellable = g_cancellable_new ();
  g_autoptr(GSource) timeout = NULL;
  g_autoptr(GMainContext) context = NULL;
  QmpSyncState state = { 0 };

  g_return_val_if_fail (FERRY_IS_QMP (qmp), NULL);
  g_return_val_if_fail (command != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  /* The client may be closed and freed by a handler while we iterate. */
  context = g_main_context_ref (qmp->context);

  timeout = g_timeout_source_new (timeout_ms);
  g_source_set_callback (timeout, qmp_on_sync_timeout, &state, NULL);
  g_source_attach (timeout, context);

  ferry_qmp_execute_async (qmp, command, arguments, cancellable, qmp_on_sync_reply, &state);

  while (!state.done && !state.timed_out)
    g_main_context_iteration (context, TRUE);
  g_source_destroy (timeout);

  if (!state.done)
    {
      /* The callback points at our stack: wait for it to run. */
      g_cancellable_cancel (cancellable);
      while (!state.done)
        g_main_context_iteration (context, TRUE);
      g_clear_pointer (&state.result, json_node_unref);
      g_clear_error (&state.error);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT,
                   "%s: no reply from QEMU within %u ms", command, timeout_ms);
      return NULL;
    }

  if (state.error != NULL)
    {
      g_propagate_error (error, state.error);
      return NULL;
    }
  return state.result;
}

/* ---- reading ------------------------------------------------------------ */

static void
qmp_on_capabilities (GObject *source, GAsyncResult *result, gpointer user_data)
{
  FerryQmp *self = FERRY_QMP (source);
  g_autoptr(JsonNode) reply = NULL;
  g_autoptr(GError) error = NULL;
  g_autoptr(GTask) task = NULL;

  reply = ferry_qmp_execute_finish (self, result, &error);
  if (reply == NULL)
    {
      /* Closing answers the connect task with this error. */
      if (self->state != QMP_STATE_CLOSED)
        qmp_close_with_error (self, g_steal_pointer (&error), TRUE);
      return;
    }

  if (self->state != QMP_STATE_NEGOTIATING || self->connect_task == NULL)
    return;

  self->state = QMP_STATE_READY;
  if (self->connect_cancel_source != NULL)
    {
      g_source_destroy (self->connect_cancel_source);
      g_clear_pointer (&self->connect_cancel_source, g_source_unref);
    }
  task = g_steal_pointer (&self->connect_task);
  g_task_return_pointer (task, g_object_ref (self), g_object_unref);
}

static void
qmp_handle_greeting (FerryQmp *self, JsonObject *message)
{
  if (!json_object_has_member (message, "QMP"))
    {
      qmp_close_literal (self, FERRY_ERROR_QEMU,
                         "QEMU monitor did not start with a QMP greeting");
      return;
    }
  self->state = QMP_STATE_NEGOTIATING;
  /* Out-of-band execution when QEMU offers it: commands such as
   * migrate-pause and migrate-recover must get through while a vCPU holds
   * QEMU's big lock waiting for a post-copy page that will not come. */
  JsonObject *qmp = ferry_json_object_object (message, "QMP");
  JsonNode *caps_node = qmp ? json_object_get_member (qmp, "capabilities") : NULL;
  JsonArray *caps = caps_node && JSON_NODE_HOLDS_ARRAY (caps_node) ? json_node_get_array (caps_node) : NULL;
  g_autoptr(JsonObject) arguments = NULL;
  for (guint i = 0; caps != NULL && i < json_array_get_length (caps); i++)
    {
      JsonNode *cap = json_array_get_element (caps, i);
      if (JSON_NODE_HOLDS_VALUE (cap) && json_node_get_value_type (cap) == G_TYPE_STRING
          && g_str_equal (json_node_get_string (cap), "oob"))
        {
          JsonArray *enable = json_array_new ();
          json_array_add_string_element (enable, "oob");
          arguments = json_object_new ();
          json_object_set_array_member (arguments, "enable", enable);
          self->oob = TRUE;
        }
    }
  qmp_execute_internal (self, "qmp_capabilities", arguments, FALSE, NULL, qmp_on_capabilities, NULL);
}

static void
qmp_handle_event (FerryQmp *self, JsonObject *message)
{
  JsonNode *name_node = json_object_get_member (message, "event");
  JsonNode *data_node = json_object_get_member (message, "data");
  JsonNode *ts_node = json_object_get_member (message, "timestamp");
  JsonObject *data = NULL;
  gint64 timestamp_us = 0;

  if (!JSON_NODE_HOLDS_VALUE (name_node) ||
      json_node_get_value_type (name_node) != G_TYPE_STRING)
    {
      g_debug ("QMP: ignoring event without a name");
      return;
    }
  if (data_node != NULL && JSON_NODE_HOLDS_OBJECT (data_node))
    data = json_node_get_object (data_node);
  if (ts_node != NULL && JSON_NODE_HOLDS_OBJECT (ts_node))
    {
      JsonObject *ts = json_node_get_object (ts_node);
      JsonNode *s = json_object_get_member (ts, "seconds");
      JsonNode *us = json_object_get_member (ts, "microseconds");

      /* Computed unsigned: hostile values must not overflow signed math. */
      if (s != NULL && JSON_NODE_HOLDS_VALUE (s) && json_node_get_value_type (s) == G_TYPE_INT64 &&
          us != NULL && JSON_NODE_HOLDS_VALUE (us) && json_node_get_value_type (us) == G_TYPE_INT64)
        timestamp_us = (gint64) ((guint64) json_node_get_int (s) * G_USEC_PER_SEC +
                                 (guint64) json_node_get_int (us));
    }

  g_signal_emit (self, signals[SIGNAL_EVENT], 0,
                 json_node_get_string (name_node), data, timestamp_us);
}

static void
qmp_handle_reply (FerryQmp *self, JsonObject *message)
{
  JsonNode *id_node = json_object_get_member (message, "id");
  g_autoptr(GTask) task = NULL;
  g_autofree char *command = NULL;
  QmpPending *p;

  if (id_node == NULL || !JSON_NODE_HOLDS_VALUE (id_node) ||
      json_node_get_value_type (id_node) != G_TYPE_STRING)
    {
      /* QEMU only omits the id when it could not parse our command. */
      g_debug ("QMP: ignoring reply without a string id");
      return;
    }
  p = g_hash_table_lookup (self->pending, json_node_get_string (id_node));
  if (p == NULL || !p->sent)
    {
      g_debug ("QMP: ignoring reply with unknown id %s", json_node_get_string (id_node));
      return;
    }

  task = g_steal_pointer (&p->task);
  command = g_strdup (p->command);
  g_hash_table_remove (self->pending, p->id);
  if (task == NULL)
    return; /* cancelled: the caller already had its answer */

  if (json_object_has_member (message, "return"))
    {
      g_task_return_pointer (task, json_node_copy (json_object_get_member (message, "return")),
                             (GDestroyNotify) json_node_unref);
    }
  else
    {
      JsonNode *err_node = json_object_get_member (message, "error");
      const char *desc = NULL;
      const char *klass = NULL;

      if (JSON_NODE_HOLDS_OBJECT (err_node))
        {
          JsonObject *err = json_node_get_object (err_node);
          JsonNode *n;

          n = json_object_get_member (err, "desc");
          if (n != NULL && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_STRING)
            desc = json_node_get_string (n);
          n = json_object_get_member (err, "class");
          if (n != NULL && JSON_NODE_HOLDS_VALUE (n) && json_node_get_value_type (n) == G_TYPE_STRING)
            klass = json_node_get_string (n);
        }
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_QEMU, "%s: %s (%s)", command,
                               desc != NULL ? desc : "unknown error",
                               klass != NULL ? klass : "GenericError");
    }
}

/* QEMU's JSON is shallow; anything deeper than QMP_MAX_NESTING is refused
 * before json-glib recurses into it. */
static gboolean
qmp_nesting_ok (const guint8 *data, gsize size)
{
  gboolean in_string = FALSE;
  gboolean escaped = FALSE;
  guint depth = 0;

  for (gsize i = 0; i < size; i++)
    {
      guint8 c = data[i];

      if (in_string)
        {
          if (escaped)
            escaped = FALSE;
          else if (c == '\\')
            escaped = TRUE;
          else if (c == '"')
            in_string = FALSE;
          continue;
        }
      if (c == '"')
        in_string = TRUE;
      else if (c == '{' || c == '[')
        {
          if (++depth > QMP_MAX_NESTING)
            return FALSE;
        }
      else if ((c == '}' || c == ']') && depth > 0)
        depth--;
    }
  return TRUE;
}

static void
qmp_handle_line (FerryQmp *self, const guint8 *data, gsize size)
{
  g_autoptr(JsonParser) parser = NULL;
  g_autoptr(GError) error = NULL;
  JsonNode *root;
  JsonObject *message;
  gsize start = 0;

  while (start < size && g_ascii_isspace (data[start]))
    start++;
  if (start == size)
    return; /* QEMU ends lines with "\r\n"; blank lines carry nothing */

  if (!qmp_nesting_ok (data + start, size - start))
    {
      qmp_close_literal (self, FERRY_ERROR_QEMU, "QEMU sent a QMP message nested too deeply");
      return;
    }

  /* Mutable nodes: callers may edit the replies they are handed. */
  parser = json_parser_new ();
  if (!json_parser_load_from_data (parser, (const char *) data + start, size - start, &error))
    {
      qmp_close_with_error (self,
                            g_error_new (FERRY_ERROR, FERRY_ERROR_QEMU,
                                         "QEMU sent malformed QMP: %s", error->message),
                            TRUE);
      return;
    }
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      qmp_close_literal (self, FERRY_ERROR_QEMU, "QEMU sent malformed QMP: not a JSON object");
      return;
    }
  message = json_node_get_object (root);

  if (self->state == QMP_STATE_GREETING)
    qmp_handle_greeting (self, message);
  else if (json_object_has_member (message, "event"))
    qmp_handle_event (self, message);
  else if (json_object_has_member (message, "return") || json_object_has_member (message, "error"))
    qmp_handle_reply (self, message);
  else
    g_debug ("QMP: ignoring unknown message");
}

/* Splits a chunk into messages. Returns FALSE once the client closed. */
static gboolean
qmp_consume (FerryQmp *self, const guint8 *data, gsize size)
{
  while (size > 0 && self->state != QMP_STATE_CLOSED)
    {
      const guint8 *newline = memchr (data, '\n', size);
      gsize take = newline != NULL ? (gsize) (newline - data) : size;

      if (self->partial->len + take > FERRY_QMP_MAX_MESSAGE)
        {
          g_autofree char *message =
            g_strdup_printf ("QEMU sent a QMP message larger than %d bytes", FERRY_QMP_MAX_MESSAGE);
          qmp_close_literal (self, FERRY_ERROR_TOO_LARGE, message);
          break;
        }

      if (newline == NULL)
        {
          g_byte_array_append (self->partial, data, take);
          break;
        }

      if (self->partial->len == 0)
        qmp_handle_line (self, data, take);
      else
        {
          g_autoptr(GByteArray) line = g_steal_pointer (&self->partial);

          self->partial = g_byte_array_new ();
          g_byte_array_append (line, data, take);
          qmp_handle_line (self, line->data, line->len);
        }
      data += take + 1;
      size -= take + 1;
    }
  return self->state != QMP_STATE_CLOSED;
}

static gboolean
qmp_on_readable (GObject *stream, gpointer user_data)
{
  FerryQmp *self = user_data;
  g_autoptr(GError) error = NULL;
  gssize n;

  /* Handlers run from here may drop every other reference. */
  g_object_ref (self);

  n = g_pollable_input_stream_read_nonblocking (self->input, self->read_buffer,
                                                QMP_READ_CHUNK, NULL, &error);
  if (n < 0 && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
    ; /* spurious wake-up */
  else if (n < 0)
    {
      qmp_close_with_error (self,
                            g_error_new (FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                         "QEMU monitor closed: %s", error->message),
                            TRUE);
    }
  else if (n == 0)
    qmp_close_literal (self, FERRY_ERROR_UNAVAILABLE, "QEMU monitor closed");
  else
    qmp_consume (self, self->read_buffer, n);

  g_object_unref (self);
  /* After a close the source is already destroyed, so this is moot. */
  return G_SOURCE_CONTINUE;
}

/* ---- connecting --------------------------------------------------------- */

static gboolean
qmp_on_connect_cancelled (GCancellable *cancellable, gpointer user_data)
{
  FerryQmp *self = user_data;

  g_clear_pointer (&self->connect_cancel_source, g_source_unref);
  qmp_close_with_error (self,
                        g_error_new_literal (G_IO_ERROR, G_IO_ERROR_CANCELLED,
                                             "Connecting to the QEMU monitor was cancelled"),
                        TRUE);
  return G_SOURCE_REMOVE;
}

void
ferry_qmp_new_for_stream_async (GIOStream *stream,
                                GCancellable *cancellable,
                                GAsyncReadyCallback callback,
                                gpointer user_data)
{
  g_autoptr(FerryQmp) self = NULL;
  g_autoptr(GTask) task = NULL;
  GInputStream *in;
  GOutputStream *out;

  g_return_if_fail (G_IS_IO_STREAM (stream));
  g_return_if_fail (cancellable == NULL || G_IS_CANCELLABLE (cancellable));

  self = g_object_new (FERRY_TYPE_QMP, NULL);
  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, ferry_qmp_new_for_stream_async);

  in = g_io_stream_get_input_stream (stream);
  out = g_io_stream_get_output_stream (stream);
  if (!G_IS_POLLABLE_INPUT_STREAM (in) ||
      !g_pollable_input_stream_can_poll (G_POLLABLE_INPUT_STREAM (in)) ||
      !G_IS_POLLABLE_OUTPUT_STREAM (out) ||
      !g_pollable_output_stream_can_poll (G_POLLABLE_OUTPUT_STREAM (out)))
    {
      self->state = QMP_STATE_CLOSED;
      self->close_error = g_error_new_literal (FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                                               "QMP needs a pollable stream");
      qmp_task_return_copy (task, self->close_error);
      return;
    }

  self->stream = g_object_ref (stream);
  self->input = G_POLLABLE_INPUT_STREAM (in);
  self->output = G_POLLABLE_OUTPUT_STREAM (out);
  self->read_buffer = g_malloc (QMP_READ_CHUNK);
  self->connect_task = g_steal_pointer (&task);

  if (cancellable != NULL)
    {
      self->connect_cancel_source = g_cancellable_source_new (cancellable);
      g_source_set_callback (self->connect_cancel_source,
                             G_SOURCE_FUNC (qmp_on_connect_cancelled), self, NULL);
      g_source_set_static_name (self->connect_cancel_source, "ferry-qmp-connect-cancel");
      g_source_attach (self->connect_cancel_source, self->context);
    }

  self->read_source = g_pollable_input_stream_create_source (self->input, NULL);
  g_source_set_callback (self->read_source, G_SOURCE_FUNC (qmp_on_readable), self, NULL);
  g_source_set_static_name (self->read_source, "ferry-qmp-read");
  g_source_attach (self->read_source, self->context);
  /* The connect task holds the reference from here until it completes. */
}

FerryQmp *
ferry_qmp_new_for_stream_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (G_IS_TASK (result), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}

static void
qmp_on_stream_ready (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr(GTask) task = user_data;
  g_autoptr(GError) error = NULL;
  FerryQmp *qmp = ferry_qmp_new_for_stream_finish (result, &error);

  if (qmp == NULL)
    g_task_return_error (task, g_steal_pointer (&error));
  else
    g_task_return_pointer (task, qmp, g_object_unref);
}

static void
qmp_on_socket_connected (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr(GTask) task = user_data;
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocketConnection) connection = NULL;

  connection = g_socket_client_connect_finish (G_SOCKET_CLIENT (source), result, &error);
  if (connection == NULL)
    {
      if (g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
        g_task_return_error (task, g_steal_pointer (&error));
      else
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                 "cannot connect to QEMU monitor %s: %s",
                                 (const char *) g_task_get_task_data (task), error->message);
      return;
    }
  ferry_qmp_new_for_stream_async (G_IO_STREAM (connection), g_task_get_cancellable (task),
                                  qmp_on_stream_ready, g_object_ref (task));
}

void
ferry_qmp_connect_async (const char *socket_path,
                         GCancellable *cancellable,
                         GAsyncReadyCallback callback,
                         gpointer user_data)
{
  g_autoptr(GTask) task = g_task_new (NULL, cancellable, callback, user_data);
  g_autoptr(GSocketClient) client = g_socket_client_new ();
  g_autoptr(GSocketAddress) address = NULL;

  g_return_if_fail (socket_path != NULL);

  g_task_set_source_tag (task, ferry_qmp_connect_async);
  g_task_set_task_data (task, g_strdup (socket_path), g_free);
  address = g_unix_socket_address_new (socket_path);
  g_socket_client_connect_async (client, G_SOCKET_CONNECTABLE (address), cancellable,
                                 qmp_on_socket_connected, g_steal_pointer (&task));
}

FerryQmp *
ferry_qmp_connect_finish (GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, NULL), NULL);
  return g_task_propagate_pointer (G_TASK (result), error);
}
