/* ferry — validated access to JSON request bodies.
 *
 * Every API body is untrusted: members are read through these helpers,
 * which name the field and the reason on failure, and
 * ferry_json_reject_unknown() refuses members the endpoint does not know.
 */
#pragma once

#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Parses a JSON object of at most max_bytes. */
JsonObject *ferry_json_parse_object (const char *data, gsize length, gsize max_bytes,
                                     GError **error);

/* Optional members keep *out untouched when absent (so callers preset defaults). */
gboolean ferry_json_get_string (JsonObject *object, const char *member, gboolean required,
                                char **out, GError **error);
gboolean ferry_json_get_int (JsonObject *object, const char *member, gboolean required,
                             gint64 min, gint64 max, gint64 *out, GError **error);
gboolean ferry_json_get_bool (JsonObject *object, const char *member, gboolean required,
                              gboolean *out, GError **error);
gboolean ferry_json_reject_unknown (JsonObject *object, const char *const *known,
                                    GError **error);

char *ferry_json_to_string (JsonNode *node, gboolean pretty);
char *ferry_json_object_to_string (JsonObject *object, gboolean pretty);

/* Reads an int member that QEMU or a peer may send as int or double; 0 when absent. */
gint64 ferry_json_object_int (JsonObject *object, const char *member);
const char *ferry_json_object_string (JsonObject *object, const char *member);
/* An object member, or NULL when absent or of another type (untrusted
 * input: json-glib's own getter logs a CRITICAL then). */
JsonObject *ferry_json_object_object (JsonObject *object, const char *member);

G_END_DECLS
