#include "jsonutil.h"

#include <math.h>

#include "ferry-error.h"

JsonObject *
ferry_json_parse_object (const char *data, gsize length, gsize max_bytes, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  g_autoptr (GError) local_error = NULL;

  if (length > max_bytes)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                   "body: %" G_GSIZE_FORMAT " bytes is over the limit of %" G_GSIZE_FORMAT,
                   length, max_bytes);
      return NULL;
    }
  if (length == 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "body: empty, expected a JSON object");
      return NULL;
    }
  if (!json_parser_load_from_data (parser, data, length, &local_error))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "body: not valid JSON: %s",
                   local_error->message);
      return NULL;
    }
  JsonNode *root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "body: expected a JSON object");
      return NULL;
    }
  return json_object_ref (json_node_get_object (root));
}

/* FALSE when a required member is missing; *node is NULL when an
 * optional one is absent. */
static gboolean
get_member (JsonObject *object, const char *member, gboolean required, JsonNode **node,
            GError **error)
{
  *node = json_object_get_member (object, member);
  if (*node == NULL && required)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: required", member);
      return FALSE;
    }
  return TRUE;
}

gboolean
ferry_json_get_string (JsonObject *object, const char *member, gboolean required,
                       char **out, GError **error)
{
  JsonNode *node;
  if (!get_member (object, member, required, &node, error))
    return FALSE;
  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: expected a string", member);
      return FALSE;
    }
  g_free (*out);
  *out = g_strdup (json_node_get_string (node));
  return TRUE;
}

gboolean
ferry_json_get_int (JsonObject *object, const char *member, gboolean required,
                    gint64 min, gint64 max, gint64 *out, GError **error)
{
  JsonNode *node;
  if (!get_member (object, member, required, &node, error))
    return FALSE;
  if (node == NULL)
    return TRUE;
  gint64 value;
  GType type = JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : G_TYPE_INVALID;
  if (type == G_TYPE_INT64)
    value = json_node_get_int (node);
  else if (type == G_TYPE_DOUBLE && nearbyint (json_node_get_double (node)) == json_node_get_double (node)
           && fabs (json_node_get_double (node)) < 9.0e15)
    value = (gint64) json_node_get_double (node);
  else
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: expected an integer", member);
      return FALSE;
    }
  if (value < min || value > max)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be between %" G_GINT64_FORMAT " and %" G_GINT64_FORMAT
                   " (got %" G_GINT64_FORMAT ")", member, min, max, value);
      return FALSE;
    }
  *out = value;
  return TRUE;
}

gboolean
ferry_json_get_bool (JsonObject *object, const char *member, gboolean required,
                     gboolean *out, GError **error)
{
  JsonNode *node;
  if (!get_member (object, member, required, &node, error))
    return FALSE;
  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_BOOLEAN)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: expected true or false", member);
      return FALSE;
    }
  *out = json_node_get_boolean (node);
  return TRUE;
}

gboolean
ferry_json_reject_unknown (JsonObject *object, const char *const *known, GError **error)
{
  JsonObjectIter iter;
  const char *name;
  json_object_iter_init (&iter, object);
  while (json_object_iter_next (&iter, &name, NULL))
    if (!g_strv_contains (known, name))
      {
        g_autofree char *list = g_strjoinv (", ", (char **) known);
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "%s: unknown field (known: %s)", name, list);
        return FALSE;
      }
  return TRUE;
}

char *
ferry_json_to_string (JsonNode *node, gboolean pretty)
{
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  json_generator_set_pretty (generator, pretty);
  json_generator_set_root (generator, node);
  return json_generator_to_data (generator, NULL);
}

char *
ferry_json_object_to_string (JsonObject *object, gboolean pretty)
{
  g_autoptr (JsonNode) node = json_node_init_object (json_node_alloc (), object);
  return ferry_json_to_string (node, pretty);
}

gint64
ferry_json_object_int (JsonObject *object, const char *member)
{
  JsonNode *node = object ? json_object_get_member (object, member) : NULL;
  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node))
    return 0;
  GType type = json_node_get_value_type (node);
  if (type == G_TYPE_INT64)
    return json_node_get_int (node);
  if (type == G_TYPE_DOUBLE)
    return (gint64) json_node_get_double (node);
  return 0;
}

const char *
ferry_json_object_string (JsonObject *object, const char *member)
{
  JsonNode *node = object ? json_object_get_member (object, member) : NULL;
  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

JsonObject *
ferry_json_object_object (JsonObject *object, const char *member)
{
  JsonNode *node = object ? json_object_get_member (object, member) : NULL;
  return node != NULL && JSON_NODE_HOLDS_OBJECT (node) ? json_node_get_object (node) : NULL;
}
