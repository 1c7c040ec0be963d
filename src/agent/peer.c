/* ferry agent — HTTPS client for agent-to-agent calls (the migration
 * handshake). Mutual TLS with the host certificate; peers must chain to
 * our CA. */
#include "agent.h"

#include "jsonutil.h"

typedef struct {
  SoupMessage *message;
  GCancellable *cancellable;
  guint timeout_id;
  gboolean timed_out;
  char *what;
} PeerRequest;

static void
peer_request_free (PeerRequest *request)
{
  g_clear_handle_id (&request->timeout_id, g_source_remove);
  g_clear_object (&request->message);
  g_clear_object (&request->cancellable);
  g_free (request->what);
  g_free (request);
}

static gboolean
on_peer_timeout (gpointer user_data)
{
  PeerRequest *request = user_data;
  request->timeout_id = 0;
  request->timed_out = TRUE;
  g_cancellable_cancel (request->cancellable);
  return G_SOURCE_REMOVE;
}

/* Could the peer have received the request? Failures while connecting or
 * during the TLS handshake mean it did not; anything later may have. */
static gboolean
error_maybe_delivered (const GError *error)
{
  if (error->domain == G_TLS_ERROR || error->domain == G_RESOLVER_ERROR)
    return FALSE;
  if (error->domain == G_IO_ERROR)
    switch (error->code)
      {
      case G_IO_ERROR_CONNECTION_REFUSED:
      case G_IO_ERROR_HOST_UNREACHABLE:
      case G_IO_ERROR_NETWORK_UNREACHABLE:
      case G_IO_ERROR_HOST_NOT_FOUND:
        return FALSE;
      default:
        break;
      }
  return TRUE;
}

/* A certificate refused (by us or by the peer) stays refused; a handshake
 * cut short ("Peer failed to perform TLS handshake: … Connection reset
 * by peer", seen while the peer's agent restarted) is worth another try. */
static gboolean
tls_error_is_permanent (const GError *error)
{
  return error->domain == G_TLS_ERROR
         && (error->code == G_TLS_ERROR_BAD_CERTIFICATE || error->code == G_TLS_ERROR_CERTIFICATE_REQUIRED
             || error->code == G_TLS_ERROR_HANDSHAKE || error->code == G_TLS_ERROR_INAPPROPRIATE_FALLBACK);
}

static void
on_peer_reply (GObject *source, GAsyncResult *result, gpointer user_data)
{
  g_autoptr (GTask) task = user_data;
  PeerRequest *request = g_task_get_task_data (task);
  g_autoptr (GError) error = NULL;
  g_autoptr (GBytes) body = soup_session_send_and_read_finish (SOUP_SESSION (source), result, &error);

  if (body == NULL)
    {
      gboolean delivered = request->timed_out || error_maybe_delivered (error);
      g_object_set_data (G_OBJECT (task), "maybe-delivered", GINT_TO_POINTER (delivered));
      if (request->timed_out)
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                 "%s: no answer in time", request->what);
      else if (tls_error_is_permanent (error))
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_PERMISSION,
                                 "%s: TLS handshake failed (certificate not from our CA?): %s",
                                 request->what, error->message);
      else if (error->domain == G_TLS_ERROR)
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                 "%s: TLS handshake cut short: %s", request->what, error->message);
      else
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s: %s",
                                 request->what, error->message);
      return;
    }

  g_object_set_data (G_OBJECT (task), "maybe-delivered", GINT_TO_POINTER (TRUE));
  guint status = soup_message_get_status (request->message);
  gsize length = 0;
  const char *data = g_bytes_get_data (body, &length);
  g_autoptr (GError) parse_error = NULL;
  g_autoptr (JsonObject) reply = ferry_json_parse_object (data, length, FERRY_API_MAX_BODY,
                                                          &parse_error);
  if (status >= 200 && status < 300)
    {
      if (reply == NULL)
        g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_FAILED,
                                 "%s: unreadable reply: %s", request->what, parse_error->message);
      else
        g_task_return_pointer (task, g_steal_pointer (&reply), (GDestroyNotify) json_object_unref);
      return;
    }
  JsonObject *error_object = ferry_json_object_object (reply, "error");
  const char *code = ferry_json_object_string (error_object, "code");
  const char *message = ferry_json_object_string (error_object, "message");
  g_task_return_new_error (task, FERRY_ERROR,
                           code ? ferry_error_code_from_string (code)
                                : ferry_error_code_from_http_status (status),
                           "%s: %s", request->what,
                           message ? message : soup_status_get_phrase (status));
}

/* Sends body (NULL: none) to base_url + path. repeatable: the peer answers
 * a repeat alike, so the request may go over a kept-alive connection. */
static void
peer_request_start (FerryAgent *agent, const char *base_url, const char *method, const char *path,
                    GBytes *body, const char *content_type, guint timeout_s, gboolean repeatable,
                    GCancellable *cancellable, GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = g_task_new (NULL, NULL, callback, user_data);
  PeerRequest *request = g_new0 (PeerRequest, 1);
  g_task_set_task_data (task, request, (GDestroyNotify) peer_request_free);
  g_autofree char *url = g_strconcat (base_url, path, NULL);

  request->what = g_strdup_printf ("%s %s", method, url);
  request->message = soup_message_new (method, url);
  if (request->message == NULL)
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                               "destination: '%s' is not a valid URL", base_url);
      return;
    }
  soup_message_set_tls_client_certificate (request->message, agent->tls->certificate);
  if (repeatable)
    soup_message_add_flags (request->message, SOUP_MESSAGE_IDEMPOTENT);
  if (body != NULL)
    soup_message_set_request_body_from_bytes (request->message, content_type, body);
  request->cancellable = cancellable ? g_object_ref (cancellable) : g_cancellable_new ();
  request->timeout_id = g_timeout_add_seconds (timeout_s, on_peer_timeout, request);
  soup_session_send_and_read_async (agent->peer_session, request->message, G_PRIORITY_DEFAULT,
                                    request->cancellable, on_peer_reply, g_steal_pointer (&task));
}

/* A JSON body (NULL: none). */
static void
peer_json_request_start (FerryAgent *agent, const char *base_url, const char *method, const char *path,
                         JsonObject *body, guint timeout_s, gboolean repeatable, GCancellable *cancellable,
                         GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GBytes) bytes = NULL;
  if (body != NULL)
    {
      char *text = ferry_json_object_to_string (body, FALSE);
      bytes = g_bytes_new_take (text, strlen (text));
    }
  peer_request_start (agent, base_url, method, path, bytes, "application/json", timeout_s, repeatable,
                      cancellable, callback, user_data);
}

void
ferry_peer_request_async (FerryAgent *agent, const char *base_url, const char *method,
                          const char *path, JsonObject *body, guint timeout_s,
                          GCancellable *cancellable, GAsyncReadyCallback callback,
                          gpointer user_data)
{
  peer_json_request_start (agent, base_url, method, path, body, timeout_s, FALSE, cancellable, callback,
                           user_data);
}

void
ferry_peer_request_repeatable_async (FerryAgent *agent, const char *base_url, const char *method,
                                     const char *path, JsonObject *body, guint timeout_s,
                                     GCancellable *cancellable, GAsyncReadyCallback callback,
                                     gpointer user_data)
{
  peer_json_request_start (agent, base_url, method, path, body, timeout_s, TRUE, cancellable, callback,
                           user_data);
}

void
ferry_peer_probe_async (FerryAgent *agent, const char *base_url, gsize bytes,
                        GAsyncReadyCallback callback, gpointer user_data)
{
  /* Random bytes: a link that compresses must not look faster than QEMU's
   * stream of (incompressible) guest pages will be. xorshift64*, seeded
   * once: g_random_int takes a lock per call (0.1 s for 32 MiB). */
  guint64 *data = g_malloc0 (bytes);   /* a tail shorter than a word is sent as zeroes */
  guint64 state = ((guint64) g_random_int () << 32) | g_random_int () | 1;
  for (gsize i = 0; i < bytes / sizeof (guint64); i++)
    {
      state ^= state >> 12;
      state ^= state << 25;
      state ^= state >> 27;
      data[i] = state * G_GUINT64_CONSTANT (0x2545F4914F6CDD1D);
    }
  g_autoptr (GBytes) body = g_bytes_new_take (data, bytes);
  /* Repeatable, so it goes over the connection the caller's warm-up
   * opened: the clock must not include a TLS handshake. */
  peer_request_start (agent, base_url, "POST", "/v1/probe", body, "application/octet-stream", 60, TRUE, NULL,
                      callback, user_data);
}

JsonObject *
ferry_peer_request_finish (GAsyncResult *result, gboolean *maybe_delivered, GError **error)
{
  if (maybe_delivered != NULL)
    *maybe_delivered = GPOINTER_TO_INT (g_object_get_data (G_OBJECT (result), "maybe-delivered"));
  return g_task_propagate_pointer (G_TASK (result), error);
}
