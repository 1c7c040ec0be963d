#include "client.h"

#include "ferry-error.h"
#include "jsonutil.h"
#include "tls.h"

#define DEFAULT_URL "https://127.0.0.1:7711"
#define MAX_REPLY (64 * 1024 * 1024)

static char *
config_value (const char *key)
{
  g_autofree char *path = g_getenv ("FERRY_CONFIG")
                          ? g_strdup (g_getenv ("FERRY_CONFIG"))
                          : g_build_filename (g_get_user_config_dir (), "ferry", "config", NULL);
  g_autoptr (GKeyFile) file = g_key_file_new ();
  if (!g_key_file_load_from_file (file, path, G_KEY_FILE_NONE, NULL))
    return NULL;
  return g_key_file_get_string (file, "client", key, NULL);
}

FerryClient *
ferry_client_new (const char *url, const char *tls_dir, gboolean json, GError **error)
{
  g_autoptr (FerryClient) client = g_new0 (FerryClient, 1);

  client->json = json;
  if (url != NULL)
    client->url = g_strdup (url);
  else if (g_getenv ("FERRY_URL") != NULL)
    client->url = g_strdup (g_getenv ("FERRY_URL"));
  else if ((client->url = config_value ("url")) == NULL)
    client->url = g_strdup (DEFAULT_URL);
  if (g_str_has_suffix (client->url, "/"))
    client->url[strlen (client->url) - 1] = '\0';

  if (tls_dir != NULL)
    client->tls_dir = g_strdup (tls_dir);
  else if (g_getenv ("FERRY_TLS_DIR") != NULL)
    client->tls_dir = g_strdup (g_getenv ("FERRY_TLS_DIR"));
  else if ((client->tls_dir = config_value ("tls-dir")) == NULL)
    client->tls_dir = g_build_filename (g_get_user_config_dir (), "ferry", "tls", NULL);

  g_autoptr (GUri) uri = g_uri_parse (client->url, G_URI_FLAGS_NONE, NULL);
  if (uri == NULL || g_strcmp0 (g_uri_get_scheme (uri), "https") != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "--connect: '%s' is not an https://HOST:PORT URL", client->url);
      return NULL;
    }
  g_autoptr (FerryTls) tls = ferry_tls_load (client->tls_dir, error);
  if (tls == NULL)
    return NULL;
  client->certificate = g_object_ref (tls->certificate);
  client->session = soup_session_new_with_options ("tls-database", tls->ca_database,
                                                   "user-agent", "ferry-cli",
                                                   "timeout", 120, NULL);
  return g_steal_pointer (&client);
}

void
ferry_client_free (FerryClient *client)
{
  if (client == NULL)
    return;
  g_free (client->url);
  g_free (client->tls_dir);
  g_clear_object (&client->session);
  g_clear_object (&client->certificate);
  g_free (client);
}

char *
ferry_client_escape (const char *segment)
{
  return g_uri_escape_string (segment, NULL, FALSE);
}

static GBytes *
send_request (FerryClient *client, const char *method, const char *path, const char *content_type,
              GBytes *body, guint *status, GError **error)
{
  g_autofree char *url = g_strconcat (client->url, path, NULL);
  g_autoptr (SoupMessage) message = soup_message_new (method, url);
  g_autoptr (GError) local_error = NULL;
  if (message == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "invalid URL %s", url);
      return NULL;
    }
  soup_message_set_tls_client_certificate (message, client->certificate);
  if (body != NULL)
    soup_message_set_request_body_from_bytes (message, content_type, body);
  GBytes *reply = soup_session_send_and_read (client->session, message, NULL, &local_error);
  if (reply == NULL)
    {
      if (local_error->domain == G_TLS_ERROR)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_PERMISSION,
                     "%s: TLS handshake failed: %s (is the agent's certificate from the CA in %s?)",
                     client->url, local_error->message, client->tls_dir);
      else if (g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED)
               || g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE)
               || strstr (local_error->message, "reset by peer") != NULL)
        /* An agent that refuses our certificate drops the connection
         * during the handshake; say so rather than only "reset". */
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_PERMISSION,
                     "the agent at %s closed the connection: %s (does it trust the certificate "
                     "in %s? it must be issued by the agent's CA)",
                     client->url, local_error->message, client->tls_dir);
      else
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "cannot reach the agent at %s: %s",
                     client->url, local_error->message);
      return NULL;
    }
  *status = soup_message_get_status (message);
  return reply;
}

static gboolean
check_status (guint status, GBytes *reply, GError **error)
{
  if (status >= 200 && status < 300)
    return TRUE;
  gsize length = 0;
  const char *data = g_bytes_get_data (reply, &length);
  g_autoptr (JsonObject) object = ferry_json_parse_object (data ? data : "", length, MAX_REPLY, NULL);
  JsonObject *inner = object && json_object_has_member (object, "error")
                      ? json_object_get_object_member (object, "error") : NULL;
  const char *code = ferry_json_object_string (inner, "code");
  const char *message = ferry_json_object_string (inner, "message");
  g_set_error (error, FERRY_ERROR,
               code ? ferry_error_code_from_string (code) : ferry_error_code_from_http_status (status),
               "%s", message ? message : soup_status_get_phrase (status));
  return FALSE;
}

GBytes *
ferry_client_call_raw (FerryClient *client, const char *method, const char *path,
                       const char *content_type, GBytes *body, GError **error)
{
  guint status = 0;
  g_autoptr (GBytes) reply = send_request (client, method, path, content_type, body, &status, error);
  if (reply == NULL || !check_status (status, reply, error))
    return NULL;
  return g_steal_pointer (&reply);
}

JsonObject *
ferry_client_call (FerryClient *client, const char *method, const char *path, JsonObject *body,
                   GError **error)
{
  g_autoptr (GBytes) request = NULL;
  if (body != NULL)
    {
      char *text = ferry_json_object_to_string (body, FALSE);
      request = g_bytes_new_take (text, strlen (text));
    }
  g_autoptr (GBytes) reply = ferry_client_call_raw (client, method, path, "application/json",
                                                    request, error);
  if (reply == NULL)
    return NULL;
  gsize length = 0;
  const char *data = g_bytes_get_data (reply, &length);
  JsonObject *object = ferry_json_parse_object (data ? data : "", length, MAX_REPLY, error);
  if (object == NULL)
    g_prefix_error (error, "unreadable reply from the agent: ");
  return object;
}
