/* ferry — QMP schema checker.
 *
 * Works directly on the introspection JSON (docs/devel/qapi-code-gen: "Client
 * JSON Protocol introspection"). Type names other than builtins are masked
 * by QEMU ("123"), so messages speak of JSON kinds rather than type names.
 */
#include "qmp-schema.h"

#include <json-glib/json-glib.h>

#include "ferry-error.h"

/* Commands we build are shallow; the bound keeps recursion finite even for
 * the schema's self-referencing types. */
#define SCHEMA_MAX_DEPTH 64

struct _FerryQmpSchema {
  JsonNode *root;
  GHashTable *commands;   /* name -> JsonObject *, borrowed from root */
  GHashTable *types;      /* name -> JsonObject *, borrowed from root */
};

void
ferry_qmp_schema_free (FerryQmpSchema *schema)
{
  if (schema == NULL)
    return;
  g_clear_pointer (&schema->commands, g_hash_table_unref);
  g_clear_pointer (&schema->types, g_hash_table_unref);
  g_clear_pointer (&schema->root, json_node_unref);
  g_free (schema);
}

static const char *
get_string (JsonObject *object, const char *member)
{
  JsonNode *node = json_object_get_member (object, member);

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node) ||
      json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

static JsonArray *
get_array (JsonObject *object, const char *member)
{
  JsonNode *node = json_object_get_member (object, member);

  if (node == NULL || !JSON_NODE_HOLDS_ARRAY (node))
    return NULL;
  return json_node_get_array (node);
}

FerryQmpSchema *
ferry_qmp_schema_new_from_data (const char *data, gsize length, GError **error)
{
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autoptr(GError) local_error = NULL;
  g_autoptr(FerryQmpSchema) schema = NULL;
  JsonArray *entries;

  if (length > FERRY_QMP_SCHEMA_MAX_BYTES)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                   "QMP schema is larger than %d bytes", FERRY_QMP_SCHEMA_MAX_BYTES);
      return NULL;
    }
  if (!json_parser_load_from_data (parser, data, length, &local_error))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "QMP schema is not valid JSON: %s", local_error->message);
      return NULL;
    }
  if (json_parser_get_root (parser) == NULL || !JSON_NODE_HOLDS_ARRAY (json_parser_get_root (parser)))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "QMP schema is not a JSON array (the return of query-qmp-schema)");
      return NULL;
    }

  schema = g_new0 (FerryQmpSchema, 1);
  schema->root = json_parser_steal_root (parser);
  schema->commands = g_hash_table_new (g_str_hash, g_str_equal);
  schema->types = g_hash_table_new (g_str_hash, g_str_equal);

  entries = json_node_get_array (schema->root);
  for (guint i = 0; i < json_array_get_length (entries); i++)
    {
      JsonNode *node = json_array_get_element (entries, i);
      JsonObject *entry;
      const char *name, *meta;

      if (!JSON_NODE_HOLDS_OBJECT (node))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "QMP schema entry %u is not an object", i);
          return NULL;
        }
      entry = json_node_get_object (node);
      name = get_string (entry, "name");
      meta = get_string (entry, "meta-type");
      if (name == NULL || meta == NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "QMP schema entry %u lacks a name or meta-type", i);
          return NULL;
        }
      if (g_str_equal (meta, "command"))
        g_hash_table_insert (schema->commands, (gpointer) name, entry);
      else if (!g_str_equal (meta, "event"))
        g_hash_table_insert (schema->types, (gpointer) name, entry);
    }

  return g_steal_pointer (&schema);
}

FerryQmpSchema *
ferry_qmp_schema_load (const char *path, GError **error)
{
  g_autoptr(GMappedFile) file = NULL;
  g_autoptr(GError) local_error = NULL;
  FerryQmpSchema *schema;

  file = g_mapped_file_new (path, FALSE, &local_error);
  if (file == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                   "cannot read QMP schema %s: %s", path, local_error->message);
      return NULL;
    }
  schema = ferry_qmp_schema_new_from_data (g_mapped_file_get_contents (file),
                                           g_mapped_file_get_length (file), error);
  if (schema == NULL)
    g_prefix_error (error, "%s: ", path);
  return schema;
}

gboolean
ferry_qmp_schema_has_command (FerryQmpSchema *schema, const char *name)
{
  g_return_val_if_fail (schema != NULL, FALSE);
  return name != NULL && g_hash_table_contains (schema->commands, name);
}

/* ---- checking ----------------------------------------------------------- */

/* The JSON kind of a value, in the words the messages use. */
static const char *
node_kind (JsonNode *node)
{
  switch (json_node_get_node_type (node))
    {
    case JSON_NODE_OBJECT:
      return "object";
    case JSON_NODE_ARRAY:
      return "array";
    case JSON_NODE_NULL:
      return "null";
    case JSON_NODE_VALUE:
      break;
    }
  switch (json_node_get_value_type (node))
    {
    case G_TYPE_INT64:
      return "int";
    case G_TYPE_DOUBLE:
      return "number";
    case G_TYPE_BOOLEAN:
      return "boolean";
    case G_TYPE_STRING:
      return "string";
    default:
      return "unknown";
    }
}

static JsonObject *
lookup_type (FerryQmpSchema *schema, const char *name, const char *path, GError **error)
{
  JsonObject *entry = name != NULL ? g_hash_table_lookup (schema->types, name) : NULL;

  if (entry == NULL)
    g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                 "%s: QMP schema is inconsistent: no type '%s'", path, name ? name : "(none)");
  return entry;
}

/* What a type accepts, for messages: builtins by name, others by kind. */
static const char *
type_description (JsonObject *entry)
{
  const char *meta = get_string (entry, "meta-type");

  if (g_strcmp0 (meta, "builtin") == 0)
    return get_string (entry, "name");
  if (g_strcmp0 (meta, "enum") == 0)
    return "enum string";
  return meta;
}

/* The JSON kind a type's values have, to pick an alternate's branch the way
 * QEMU does: by the kind of the value. */
static const char *
type_json_kind (JsonObject *entry)
{
  const char *meta = get_string (entry, "meta-type");

  if (g_strcmp0 (meta, "builtin") == 0)
    {
      const char *json_type = get_string (entry, "json-type");

      if (g_strcmp0 (json_type, "boolean") == 0)
        return "boolean";
      return json_type;
    }
  if (g_strcmp0 (meta, "enum") == 0)
    return "string";
  return meta;
}

static gboolean check_value (FerryQmpSchema *schema, const char *type_name, JsonNode *value,
                             const char *path, guint depth, GError **error);

static gboolean
check_builtin (JsonObject *entry, JsonNode *value, const char *path, GError **error)
{
  const char *json_type = get_string (entry, "json-type");
  const char *kind = node_kind (value);
  gboolean ok;

  if (g_strcmp0 (json_type, "value") == 0)
    ok = TRUE;
  else if (g_strcmp0 (json_type, "number") == 0)
    ok = g_str_equal (kind, "number") || g_str_equal (kind, "int");
  else
    ok = g_strcmp0 (json_type, kind) == 0;

  if (!ok)
    g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                 "%s: expected %s, got %s", path, get_string (entry, "name"), kind);
  return ok;
}

static gboolean
check_enum (JsonObject *entry, JsonNode *value, const char *path, GError **error)
{
  JsonArray *values = get_array (entry, "values");
  g_autoptr(GString) allowed = g_string_new (NULL);
  const char *s;

  if (!g_str_equal (node_kind (value), "string"))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: expected enum string, got %s", path, node_kind (value));
      return FALSE;
    }
  s = json_node_get_string (value);
  for (guint i = 0; values != NULL && i < json_array_get_length (values); i++)
    {
      const char *v = json_array_get_string_element (values, i);

      if (g_strcmp0 (v, s) == 0)
        return TRUE;
      g_string_append_printf (allowed, "%s%s", i > 0 ? ", " : "", v ? v : "?");
    }
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "%s: '%s' is not one of %s", path, s, allowed->str);
  return FALSE;
}

static gboolean
check_array (FerryQmpSchema *schema, JsonObject *entry, JsonNode *value,
             const char *path, guint depth, GError **error)
{
  const char *element_type = get_string (entry, "element-type");
  JsonArray *array;

  if (!JSON_NODE_HOLDS_ARRAY (value))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: expected array, got %s", path, node_kind (value));
      return FALSE;
    }
  array = json_node_get_array (value);
  for (guint i = 0; i < json_array_get_length (array); i++)
    {
      g_autofree char *element_path = g_strdup_printf ("%s[%u]", path, i);

      if (!check_value (schema, element_type, json_array_get_element (array, i),
                        element_path, depth + 1, error))
        return FALSE;
    }
  return TRUE;
}

/* Members an object accepts: its own, plus those of the variant its tag
 * selects, recursively (a variant may itself be a union). */
static gboolean
gather_members (FerryQmpSchema *schema, JsonObject *entry, JsonObject *value,
                GPtrArray *members, const char *path, guint depth, GError **error)
{
  JsonArray *own = get_array (entry, "members");
  JsonArray *variants = get_array (entry, "variants");
  const char *tag = get_string (entry, "tag");
  const char *tag_value;

  if (depth > SCHEMA_MAX_DEPTH)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: nested too deeply", path);
      return FALSE;
    }

  for (guint i = 0; own != NULL && i < json_array_get_length (own); i++)
    {
      JsonNode *m = json_array_get_element (own, i);

      if (JSON_NODE_HOLDS_OBJECT (m))
        g_ptr_array_add (members, json_node_get_object (m));
    }

  if (tag == NULL || variants == NULL)
    return TRUE;
  /* A missing or mistyped tag is reported by the member checks. */
  tag_value = get_string (value, tag);
  if (tag_value == NULL)
    return TRUE;
  for (guint i = 0; i < json_array_get_length (variants); i++)
    {
      JsonNode *v = json_array_get_element (variants, i);
      JsonObject *variant, *variant_entry;

      if (!JSON_NODE_HOLDS_OBJECT (v))
        continue;
      variant = json_node_get_object (v);
      if (g_strcmp0 (get_string (variant, "case"), tag_value) != 0)
        continue;
      variant_entry = lookup_type (schema, get_string (variant, "type"), path, error);
      if (variant_entry == NULL)
        return FALSE;
      return gather_members (schema, variant_entry, value, members, path, depth + 1, error);
    }
  /* Cases without members are left out of "variants". */
  return TRUE;
}

static gboolean
check_object (FerryQmpSchema *schema, JsonObject *entry, JsonNode *value,
              const char *path, guint depth, GError **error)
{
  g_autoptr(GPtrArray) members = g_ptr_array_new ();
  g_autoptr(GList) names = NULL;
  JsonObject *object;

  if (!JSON_NODE_HOLDS_OBJECT (value))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: expected object, got %s", path, node_kind (value));
      return FALSE;
    }
  object = json_node_get_object (value);
  if (!gather_members (schema, entry, object, members, path, depth, error))
    return FALSE;

  /* Unknown members first: a misspelt name also looks like a missing one,
   * and the misspelling is the useful message. */
  names = json_object_get_members (object);
  for (GList *l = names; l != NULL; l = l->next)
    {
      gboolean declared = FALSE;

      for (guint i = 0; i < members->len && !declared; i++)
        declared = g_strcmp0 (get_string (members->pdata[i], "name"), l->data) == 0;
      if (!declared)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "%s.%s: unknown member", path, (const char *) l->data);
          return FALSE;
        }
    }

  for (guint i = 0; i < members->len; i++)
    {
      JsonObject *member = members->pdata[i];
      const char *name = get_string (member, "name");
      g_autofree char *member_path = g_strdup_printf ("%s.%s", path, name ? name : "?");
      JsonNode *member_value = name != NULL ? json_object_get_member (object, name) : NULL;

      if (member_value == NULL)
        {
          /* Optional members carry "default" (always null in 7.2). */
          if (!json_object_has_member (member, "default"))
            {
              g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "%s: missing required member", member_path);
              return FALSE;
            }
          continue;
        }
      if (!check_value (schema, get_string (member, "type"), member_value,
                        member_path, depth + 1, error))
        return FALSE;
    }
  return TRUE;
}

static gboolean
check_alternate (FerryQmpSchema *schema, JsonObject *entry, JsonNode *value,
                 const char *path, guint depth, GError **error)
{
  JsonArray *members = get_array (entry, "members");
  const char *kind = node_kind (value);
  const char *chosen = NULL;
  g_autoptr(GString) expected = g_string_new (NULL);

  for (guint pass = 0; pass < 2 && chosen == NULL; pass++)
    for (guint i = 0; members != NULL && i < json_array_get_length (members) && chosen == NULL; i++)
      {
        JsonNode *m = json_array_get_element (members, i);
        const char *type_name;
        JsonObject *branch;
        const char *branch_kind;

        if (!JSON_NODE_HOLDS_OBJECT (m))
          continue;
        type_name = get_string (json_node_get_object (m), "type");
        branch = lookup_type (schema, type_name, path, error);
        if (branch == NULL)
          return FALSE;
        branch_kind = type_json_kind (branch);
        if (pass == 0)
          {
            g_string_append_printf (expected, "%s%s", i > 0 ? " or " : "", type_description (branch));
            if (g_strcmp0 (branch_kind, kind) == 0)
              chosen = type_name;
          }
        else if (g_strcmp0 (branch_kind, "value") == 0 ||
                 (g_strcmp0 (branch_kind, "number") == 0 && g_str_equal (kind, "int")))
          chosen = type_name;
      }

  if (chosen == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: expected %s, got %s", path, expected->str, kind);
      return FALSE;
    }
  return check_value (schema, chosen, value, path, depth + 1, error);
}

static gboolean
check_value (FerryQmpSchema *schema, const char *type_name, JsonNode *value,
             const char *path, guint depth, GError **error)
{
  JsonObject *entry;
  const char *meta;

  if (depth > SCHEMA_MAX_DEPTH)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: nested too deeply", path);
      return FALSE;
    }
  entry = lookup_type (schema, type_name, path, error);
  if (entry == NULL)
    return FALSE;
  meta = get_string (entry, "meta-type");

  if (g_strcmp0 (meta, "builtin") == 0)
    return check_builtin (entry, value, path, error);
  if (g_strcmp0 (meta, "enum") == 0)
    return check_enum (entry, value, path, error);
  if (g_strcmp0 (meta, "array") == 0)
    return check_array (schema, entry, value, path, depth, error);
  if (g_strcmp0 (meta, "object") == 0)
    return check_object (schema, entry, value, path, depth, error);
  if (g_strcmp0 (meta, "alternate") == 0)
    return check_alternate (schema, entry, value, path, depth, error);

  g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
               "%s: QMP schema type '%s' has unknown meta-type '%s'",
               path, type_name, meta ? meta : "(none)");
  return FALSE;
}

gboolean
ferry_qmp_schema_check_command (FerryQmpSchema *schema, const char *command_json, GError **error)
{
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autoptr(GError) local_error = NULL;
  g_autoptr(JsonNode) empty = NULL;
  g_autoptr(GList) keys = NULL;
  JsonNode *root, *arguments;
  JsonObject *wire, *command;
  const char *name;

  g_return_val_if_fail (schema != NULL, FALSE);
  g_return_val_if_fail (command_json != NULL, FALSE);

  if (!json_parser_load_from_data (parser, command_json, -1, &local_error))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "command is not valid JSON: %s", local_error->message);
      return FALSE;
    }
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "command is not a JSON object");
      return FALSE;
    }
  wire = json_node_get_object (root);
  name = get_string (wire, "execute");
  if (name == NULL)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "execute: missing or not a string");
      return FALSE;
    }

  keys = json_object_get_members (wire);
  for (GList *l = keys; l != NULL; l = l->next)
    if (!g_str_equal (l->data, "execute") && !g_str_equal (l->data, "arguments") &&
        !g_str_equal (l->data, "id"))
      {
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "%s: unknown top-level member '%s'", name, (const char *) l->data);
        return FALSE;
      }

  command = g_hash_table_lookup (schema->commands, name);
  if (command == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: no such command in the QMP schema", name);
      return FALSE;
    }

  arguments = json_object_get_member (wire, "arguments");
  if (arguments == NULL)
    {
      empty = json_node_init_object (json_node_alloc (), NULL);
      json_node_take_object (empty, json_object_new ());
      arguments = empty;
    }
  return check_value (schema, get_string (command, "arg-type"), arguments, name, 0, error);
}
