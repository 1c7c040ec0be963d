/* ferry CLI — talking to an agent's HTTPS API. */
#pragma once

#include <json-glib/json-glib.h>
#include <libsoup/soup.h>

G_BEGIN_DECLS

typedef struct {
  char *url;         /* https://HOST:PORT, no trailing slash */
  char *tls_dir;     /* ca-cert.pem, cert.pem, key.pem */
  gboolean json;     /* --json: machine-readable output */
  SoupSession *session;
  GTlsCertificate *certificate;
} FerryClient;

/* Resolution order for each setting: command line, environment
 * (FERRY_URL, FERRY_TLS_DIR), config file (FERRY_CONFIG or
 * ~/.config/ferry/config, [client] url= tls-dir=), built-in default. */
FerryClient *ferry_client_new (const char *url, const char *tls_dir, gboolean json, GError **error);
void ferry_client_free (FerryClient *client);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryClient, ferry_client_free)

/* Sends a request; body may be NULL. Returns the parsed JSON object reply
 * (or NULL with the agent's error message). */
JsonObject *ferry_client_call (FerryClient *client, const char *method, const char *path,
                               JsonObject *body, GError **error);
/* Raw body (for vm define: YAML or JSON text; console log). */
GBytes *ferry_client_call_raw (FerryClient *client, const char *method, const char *path,
                               const char *content_type, GBytes *body, GError **error);

char *ferry_client_escape (const char *segment);

G_END_DECLS
