/* ferry — VM specification: YAML/JSON text → JSON tree → FerryVmSpec.
 *
 * Parsing is two steps so that API bodies (already JSON trees) and user
 * files (YAML or JSON text) go through one validator: libyaml turns the
 * text into a JsonNode tree, rejecting what YAML allows but a spec never
 * needs (aliases, tags, complex keys, several documents), then
 * ferry_vm_spec_from_json() checks every field.
 */
#include "vmspec.h"

#include <math.h>
#include <string.h>
#include <yaml.h>

#include "ferry-error.h"

/* Collections nested deeper than this are refused while parsing; a valid
 * spec needs three levels (root, disks, disk). */
#define SPEC_MAX_DEPTH   16
#define SPEC_MAX_MACHINE 64
#define SPEC_MAX_CPU     256
#define SPEC_MAX_IFNAME  15   /* IFNAMSIZ - 1 */
/* How much of a user-supplied string an error message repeats. */
#define MESSAGE_MAX_CHARS 64

static const char *const spec_fields[] = {
  "name", "uuid", "vcpus", "memory", "machine", "cpu", "boot", "disks",
  "nics", "serial", NULL,
};
static const char *const boot_fields[] = {
  "kernel", "initrd", "cmdline", "firmware", NULL,
};
static const char *const disk_fields[] = {
  "path", "pool", "volume", "format", "bus", "readonly", "cache", NULL,
};
static const char *const nic_fields[] = {
  "model", "mac", "network", "ifname", NULL,
};

/* Indexed by the enum values of the header. */
static const char *const disk_format_names[] = { "raw", "qcow2", NULL };
static const char *const disk_bus_names[] = { "virtio", "ide", NULL };
static const char *const nic_network_names[] = { "user", "none", "tap", NULL };
static const char *const serial_names[] = { "log", "none", NULL };
/* Kept as strings in the spec; the first is the default. */
static const char *const disk_cache_names[] = { "none", "writeback", "writethrough", NULL };
static const char *const nic_model_names[] = { "virtio-net-pci", "e1000", NULL };
static const char *const firmware_names[] = { "bios", "uefi", NULL };

/* ---- small helpers ------------------------------------------------------ */

/* Control characters, and what YAML reads as a line break or refuses
 * (C1 controls, U+2028/9, U+FEFF, U+FFFE/F). */
static gboolean
is_unsafe_char (gunichar c)
{
  return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x2028 || c == 0x2029
         || c == 0xfeff || c == 0xfffe || c == 0xffff;
}

/* User text inside an error message: quoted, escaped, and cut short, so a
 * hostile spec cannot put control characters or megabytes into logs. */
static char *
quote_for_message (const char *s)
{
  GString *out = g_string_new ("\"");
  const char *p = s;
  guint chars = 0;

  while (*p != '\0')
    {
      gunichar c = g_utf8_get_char_validated (p, -1);

      if (chars++ == MESSAGE_MAX_CHARS)
        {
          g_string_append (out, "...");
          break;
        }
      if (c == (gunichar) -1 || c == (gunichar) -2)
        {
          g_string_append_printf (out, "\\x%02x", (guchar) *p);
          p++;
          continue;
        }
      if (c == '"' || c == '\\')
        g_string_append_printf (out, "\\%c", (char) c);
      else if (c < 0x100 && is_unsafe_char (c))
        g_string_append_printf (out, "\\x%02x", (guint) c);
      else if (is_unsafe_char (c))
        g_string_append_printf (out, "\\u%04x", (guint) c);
      else
        g_string_append_unichar (out, c);
      p = g_utf8_next_char (p);
    }
  g_string_append_c (out, '"');
  return g_string_free (out, FALSE);
}

/* A key as it appears in a path: bare when it is a plain identifier. */
static char *
key_for_path (const char *key)
{
  if (*key == '\0')
    return g_strdup ("\"\"");
  for (const char *p = key; *p != '\0'; p++)
    if (!g_ascii_isalnum (*p) && *p != '_' && *p != '-')
      return quote_for_message (key);
  if (strlen (key) > MESSAGE_MAX_CHARS)
    return quote_for_message (key);
  return g_strdup (key);
}

static const char *
node_kind (JsonNode *node)
{
  GType type;

  switch (JSON_NODE_TYPE (node))
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
  type = json_node_get_value_type (node);
  if (type == G_TYPE_INT64 || type == G_TYPE_INT || type == G_TYPE_UINT)
    return "integer";
  if (type == G_TYPE_DOUBLE || type == G_TYPE_FLOAT)
    return "number";
  if (type == G_TYPE_BOOLEAN)
    return "boolean";
  if (type == G_TYPE_STRING)
    return "string";
  return "value";
}

static gboolean
node_is_string (JsonNode *node)
{
  return JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING;
}

static char *
join_choices (const char *const *choices)
{
  return g_strjoinv (", ", (char **) choices);
}

static gint
lookup_choice (const char *const *choices, const char *value)
{
  for (gint i = 0; choices[i] != NULL; i++)
    if (g_str_equal (choices[i], value))
      return i;
  return -1;
}

/* A spec accepted from a JSON API body must still read back from its
 * canonical text, and must not smuggle control sequences into logs. */
static gboolean
has_control_chars (const char *s)
{
  if (!g_utf8_validate (s, -1, NULL))
    return TRUE;
  for (const char *p = s; *p != '\0'; p = g_utf8_next_char (p))
    if (is_unsafe_char (g_utf8_get_char (p)))
      return TRUE;
  return FALSE;
}

static gboolean
matches_charset (const char *s, const char *extra, gboolean allow_upper)
{
  if (*s == '\0')
    return FALSE;
  for (const char *p = s; *p != '\0'; p++)
    {
      if (g_ascii_islower (*p) || g_ascii_isdigit (*p))
        continue;
      if (allow_upper && g_ascii_isupper (*p))
        continue;
      if (strchr (extra, *p) != NULL)
        continue;
      return FALSE;
    }
  return TRUE;
}

/* Optimal string alignment distance (Levenshtein plus transpositions, so
 * "memroy" is one edit from "memory"). Inputs are short field names; the
 * caller skips long keys. */
static guint
edit_distance (const char *a, const char *b)
{
  gsize la = strlen (a), lb = strlen (b);
  g_autofree guint *d = g_new0 (guint, (la + 1) * (lb + 1));
#define D(i, j) d[(i) * (lb + 1) + (j)]

  for (gsize i = 0; i <= la; i++)
    D (i, 0) = i;
  for (gsize j = 0; j <= lb; j++)
    D (0, j) = j;
  for (gsize i = 1; i <= la; i++)
    for (gsize j = 1; j <= lb; j++)
      {
        guint cost = a[i - 1] == b[j - 1] ? 0 : 1;
        guint best = MIN (D (i - 1, j) + 1, D (i, j - 1) + 1);

        best = MIN (best, D (i - 1, j - 1) + cost);
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
          best = MIN (best, D (i - 2, j - 2) + 1);
        D (i, j) = best;
      }
  return D (la, lb);
#undef D
}

static const char *
suggest_field (const char *key, const char *const *known)
{
  const char *best = NULL;
  guint best_distance = G_MAXUINT;

  if (strlen (key) > 32)
    return NULL;
  for (gsize i = 0; known[i] != NULL; i++)
    {
      guint distance = edit_distance (key, known[i]);

      if (distance < best_distance)
        {
          best_distance = distance;
          best = known[i];
        }
    }
  if (best != NULL && best_distance <= 2 && best_distance * 2 < strlen (best))
    return best;
  return NULL;
}

/* ---- field readers: each sets "field: reason"; callers prefix the path -- */

static gboolean
check_fields (JsonObject *obj, const char *const *known, GError **error)
{
  JsonObjectIter iter;
  const char *key;
  JsonNode *value;

  json_object_iter_init (&iter, obj);
  while (json_object_iter_next (&iter, &key, &value))
    {
      g_autofree char *shown = NULL;
      const char *suggestion;

      if (lookup_choice (known, key) >= 0)
        continue;
      shown = key_for_path (key);
      suggestion = suggest_field (key, known);
      if (suggestion != NULL)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "%s: unknown field (did you mean '%s'?)", shown, suggestion);
      else
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "%s: unknown field", shown);
      return FALSE;
    }
  return TRUE;
}

/* Absent and null mean the same: the field takes its default. */
static JsonNode *
member (JsonObject *obj, const char *key)
{
  JsonNode *node = json_object_get_member (obj, key);

  if (node == NULL || JSON_NODE_HOLDS_NULL (node))
    return NULL;
  return node;
}

static gboolean
require_present (JsonNode *node, const char *key, GError **error)
{
  if (node != NULL)
    return TRUE;
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: required", key);
  return FALSE;
}

/* *out is left alone when the field is absent, so it keeps its default. */
static gboolean
read_string (JsonObject *obj, const char *key, gboolean required,
             const char **out, GError **error)
{
  JsonNode *node = member (obj, key);

  if (node == NULL)
    {
      if (required)
        return require_present (NULL, key, error);
      return TRUE;
    }
  if (!node_is_string (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be a string (got %s)", key, node_kind (node));
      return FALSE;
    }
  *out = json_node_get_string (node);
  return TRUE;
}

static gboolean
read_choice (JsonObject *obj, const char *key, const char *const *choices,
             gint *out, GError **error)
{
  const char *value = NULL;
  gint index;

  if (!read_string (obj, key, FALSE, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  index = lookup_choice (choices, value);
  if (index < 0)
    {
      g_autofree char *list = join_choices (choices);
      g_autofree char *shown = quote_for_message (value);

      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be one of %s (got %s)", key, list, shown);
      return FALSE;
    }
  *out = index;
  return TRUE;
}

static gboolean
read_bool (JsonObject *obj, const char *key, gboolean *out, GError **error)
{
  JsonNode *node = member (obj, key);

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_BOOLEAN)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be a boolean (got %s)", key, node_kind (node));
      return FALSE;
    }
  *out = json_node_get_boolean (node);
  return TRUE;
}

static gboolean
range_error (const char *key, guint64 min, guint64 max, const char *unit,
             const char *got, GError **error)
{
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "%s: must be between %" G_GUINT64_FORMAT "%s and %" G_GUINT64_FORMAT "%s (got %s)",
               key, min, unit, max, unit, got);
  return FALSE;
}

/* JSON integers arrive as int64 from json-glib and from our YAML reader,
 * but other producers may send 2.0; accept a double when it is integral. */
static gboolean
read_number_in_range (JsonNode *node, const char *key, guint64 min, guint64 max,
                      const char *unit, guint64 *out, GError **error)
{
  GType type = json_node_get_value_type (node);

  if (type == G_TYPE_INT64 || type == G_TYPE_INT || type == G_TYPE_UINT)
    {
      gint64 v = json_node_get_int (node);

      if (v < 0 || (guint64) v < min || (guint64) v > max)
        {
          char got[32];

          g_snprintf (got, sizeof got, "%" G_GINT64_FORMAT, v);
          return range_error (key, min, max, unit, got, error);
        }
      *out = (guint64) v;
      return TRUE;
    }
  if (type == G_TYPE_DOUBLE || type == G_TYPE_FLOAT)
    {
      double v = json_node_get_double (node);
      char got[G_ASCII_DTOSTR_BUF_SIZE];

      g_ascii_dtostr (got, sizeof got, v);
      if (!isfinite (v) || v != floor (v))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "%s: must be an integer (got %s)", key, got);
          return FALSE;
        }
      if (v < (double) min || v > (double) max)
        return range_error (key, min, max, unit, got, error);
      *out = (guint64) v;
      return TRUE;
    }
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "%s: must be an integer (got %s)", key, node_kind (node));
  return FALSE;
}

static gboolean
read_uint (JsonObject *obj, const char *key, guint64 min, guint64 max,
           guint64 *out, GError **error)
{
  JsonNode *node = member (obj, key);

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be an integer (got %s)", key, node_kind (node));
      return FALSE;
    }
  return read_number_in_range (node, key, min, max, "", out, error);
}

/* "1024", "512M", "512MiB", "1G", "1GiB", "1T", "1TiB"; a space may
 * separate number and unit. Result in MiB; FALSE without error means the
 * number is too big to represent, which the caller reports as a range. */
static gboolean
parse_memory_string (const char *s, guint64 *mib, gboolean *overflow)
{
  static const struct {
    const char *suffix;
    guint shift;
  } units[] = {
    { "", 0 }, { "M", 0 }, { "MiB", 0 }, { "G", 10 }, { "GiB", 10 },
    { "T", 20 }, { "TiB", 20 },
  };
  guint64 value = 0;
  const char *p = s;

  *overflow = FALSE;
  if (!g_ascii_isdigit (*p))
    return FALSE;
  for (; g_ascii_isdigit (*p); p++)
    {
      guint digit = (guint) (*p - '0');

      if (value > (G_MAXUINT64 - digit) / 10)
        *overflow = TRUE;
      else
        value = value * 10 + digit;
    }
  if (*p == ' ')
    p++;
  for (gsize i = 0; i < G_N_ELEMENTS (units); i++)
    if (g_str_equal (p, units[i].suffix))
      {
        if (units[i].shift > 0 && value > (G_MAXUINT64 >> units[i].shift))
          *overflow = TRUE;
        *mib = value << units[i].shift;
        return !*overflow;
      }
  *overflow = FALSE;
  return FALSE;
}

static gboolean
read_memory (JsonObject *obj, guint64 *out, GError **error)
{
  JsonNode *node = member (obj, "memory");
  const guint64 min = FERRY_SPEC_MIN_MEMORY_MIB, max = FERRY_SPEC_MAX_MEMORY_MIB;
  guint64 mib = 0;
  gboolean overflow;

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_VALUE (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "memory: must be an integer (MiB) or a size such as \"1G\" (got %s)",
                   node_kind (node));
      return FALSE;
    }
  if (!node_is_string (node))
    return read_number_in_range (node, "memory", min, max, " MiB", out, error);

  if (!parse_memory_string (json_node_get_string (node), &mib, &overflow))
    {
      g_autofree char *shown = quote_for_message (json_node_get_string (node));

      if (overflow)
        return range_error ("memory", min, max, " MiB", shown, error);
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "memory: must be an integer (MiB) or a size with unit M, MiB, G, GiB, T or TiB (got %s)",
                   shown);
      return FALSE;
    }
  if (mib < min || mib > max)
    {
      char got[32];

      g_snprintf (got, sizeof got, "%" G_GUINT64_FORMAT, mib);
      return range_error ("memory", min, max, " MiB", got, error);
    }
  *out = mib;
  return TRUE;
}

static gboolean
check_absolute_path (const char *key, const char *path, GError **error)
{
  g_autofree char *shown = NULL;
  const char *reason = NULL;

  if (path[0] != '/')
    reason = "must be an absolute path";
  else if (strlen (path) > FERRY_SPEC_MAX_PATH)
    reason = "path is too long (at most " G_STRINGIFY (FERRY_SPEC_MAX_PATH) " bytes)";
  else if (has_control_chars (path))
    reason = "must not contain control characters";
  if (reason == NULL)
    return TRUE;
  shown = quote_for_message (path);
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "%s: %s (got %s)", key, reason, shown);
  return FALSE;
}

static gboolean
read_path (JsonObject *obj, const char *key, gboolean required, char **out,
           GError **error)
{
  const char *value = NULL;

  if (!read_string (obj, key, required, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  if (!check_absolute_path (key, value, error))
    return FALSE;
  g_free (*out);
  *out = g_strdup (value);
  return TRUE;
}

/* Reads a string restricted to a character set and length. */
static gboolean
read_token (JsonObject *obj, const char *key, const char *extra,
            gboolean allow_upper, gsize max_len, const char *charset_text,
            char **out, GError **error)
{
  const char *value = NULL;

  if (!read_string (obj, key, FALSE, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  if (strlen (value) > max_len || !matches_charset (value, extra, allow_upper))
    {
      g_autofree char *shown = quote_for_message (value);

      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be 1 to %" G_GSIZE_FORMAT " characters from %s (got %s)",
                   key, max_len, charset_text, shown);
      return FALSE;
    }
  g_free (*out);
  *out = g_strdup (value);
  return TRUE;
}

static gboolean
read_string_choice (JsonObject *obj, const char *key, const char *const *choices,
                    char **out, GError **error)
{
  gint index = -1;

  if (!read_choice (obj, key, choices, &index, error))
    return FALSE;
  if (index >= 0)
    {
      g_free (*out);
      *out = g_strdup (choices[index]);
    }
  return TRUE;
}

static gboolean
read_enum (JsonObject *obj, const char *key, const char *const *choices,
           int *out, GError **error)
{
  gint index = -1;

  if (!read_choice (obj, key, choices, &index, error))
    return FALSE;
  if (index >= 0)
    *out = index;
  return TRUE;
}

/* Parses "52:54:00:12:34:56" (either case) into canonical lower case. */
static gboolean
normalize_mac (const char *text, char **canonical, GError **error)
{
  guint8 octets[6];
  g_autofree char *shown = NULL;

  if (strlen (text) == 17)
    {
      gboolean ok = TRUE;

      for (guint i = 0; i < 6 && ok; i++)
        {
          const char *p = text + i * 3;

          if (!g_ascii_isxdigit (p[0]) || !g_ascii_isxdigit (p[1])
              || (i < 5 && p[2] != ':'))
            ok = FALSE;
          else
            octets[i] = (guint8) (g_ascii_xdigit_value (p[0]) << 4 | g_ascii_xdigit_value (p[1]));
        }
      if (ok)
        {
          gboolean zero = TRUE;

          for (guint i = 0; i < 6; i++)
            zero = zero && octets[i] == 0;
          if ((octets[0] & 1) != 0 || zero)
            {
              shown = quote_for_message (text);
              g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "mac: not a unicast MAC address (got %s)", shown);
              return FALSE;
            }
          *canonical = g_strdup_printf ("%02x:%02x:%02x:%02x:%02x:%02x",
                                        octets[0], octets[1], octets[2],
                                        octets[3], octets[4], octets[5]);
          return TRUE;
        }
    }
  shown = quote_for_message (text);
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "mac: not a MAC address; expected six hex octets such as \"52:54:00:12:34:56\" (got %s)",
               shown);
  return FALSE;
}

/* ---- construction and destruction -------------------------------------- */

FerryDiskSpec *
ferry_disk_spec_new (void)
{
  FerryDiskSpec *disk = g_new0 (FerryDiskSpec, 1);

  disk->format = FERRY_DISK_FORMAT_RAW;
  disk->bus = FERRY_DISK_BUS_VIRTIO;
  disk->cache = g_strdup (disk_cache_names[0]);
  return disk;
}

void
ferry_disk_spec_free (FerryDiskSpec *disk)
{
  if (disk == NULL)
    return;
  g_free (disk->path);
  g_free (disk->pool);
  g_free (disk->volume);
  g_free (disk->cache);
  g_free (disk);
}

FerryNicSpec *
ferry_nic_spec_new (void)
{
  FerryNicSpec *nic = g_new0 (FerryNicSpec, 1);

  nic->model = g_strdup (nic_model_names[0]);
  nic->network = FERRY_NIC_NETWORK_USER;
  return nic;
}

void
ferry_nic_spec_free (FerryNicSpec *nic)
{
  if (nic == NULL)
    return;
  g_free (nic->model);
  g_free (nic->mac);
  g_free (nic->ifname);
  g_free (nic);
}

FerryVmSpec *
ferry_vm_spec_new (void)
{
  FerryVmSpec *spec = g_new0 (FerryVmSpec, 1);

  spec->vcpus = 1;
  spec->memory_mib = 512;
  spec->machine = g_strdup ("q35");
  spec->cpu_model = g_strdup ("qemu64");
  spec->firmware = g_strdup (firmware_names[0]);
  spec->disks = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_disk_spec_free);
  spec->nics = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_nic_spec_free);
  spec->serial = FERRY_SERIAL_LOG;
  return spec;
}

void
ferry_vm_spec_free (FerryVmSpec *spec)
{
  if (spec == NULL)
    return;
  g_free (spec->name);
  g_free (spec->uuid);
  g_free (spec->machine);
  g_free (spec->cpu_model);
  g_free (spec->kernel);
  g_free (spec->initrd);
  g_free (spec->cmdline);
  g_free (spec->firmware);
  g_clear_pointer (&spec->disks, g_ptr_array_unref);
  g_clear_pointer (&spec->nics, g_ptr_array_unref);
  g_free (spec);
}

FerryVmSpec *
ferry_vm_spec_copy (const FerryVmSpec *spec)
{
  FerryVmSpec *copy;

  g_return_val_if_fail (spec != NULL, NULL);

  copy = g_new0 (FerryVmSpec, 1);
  copy->name = g_strdup (spec->name);
  copy->uuid = g_strdup (spec->uuid);
  copy->vcpus = spec->vcpus;
  copy->memory_mib = spec->memory_mib;
  copy->machine = g_strdup (spec->machine);
  copy->cpu_model = g_strdup (spec->cpu_model);
  copy->kernel = g_strdup (spec->kernel);
  copy->initrd = g_strdup (spec->initrd);
  copy->cmdline = g_strdup (spec->cmdline);
  copy->firmware = g_strdup (spec->firmware);
  copy->serial = spec->serial;
  copy->disks = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_disk_spec_free);
  copy->nics = g_ptr_array_new_with_free_func ((GDestroyNotify) ferry_nic_spec_free);
  for (guint i = 0; spec->disks != NULL && i < spec->disks->len; i++)
    {
      const FerryDiskSpec *disk = g_ptr_array_index (spec->disks, i);
      FerryDiskSpec *d = g_new0 (FerryDiskSpec, 1);

      d->path = g_strdup (disk->path);
      d->pool = g_strdup (disk->pool);
      d->volume = g_strdup (disk->volume);
      d->format = disk->format;
      d->bus = disk->bus;
      d->readonly = disk->readonly;
      d->cache = g_strdup (disk->cache);
      g_ptr_array_add (copy->disks, d);
    }
  for (guint i = 0; spec->nics != NULL && i < spec->nics->len; i++)
    {
      const FerryNicSpec *nic = g_ptr_array_index (spec->nics, i);
      FerryNicSpec *n = g_new0 (FerryNicSpec, 1);

      n->model = g_strdup (nic->model);
      n->mac = g_strdup (nic->mac);
      n->network = nic->network;
      n->ifname = g_strdup (nic->ifname);
      g_ptr_array_add (copy->nics, n);
    }
  return copy;
}

static guint
array_len (GPtrArray *array)
{
  return array != NULL ? array->len : 0;
}

gboolean
ferry_vm_spec_equal (const FerryVmSpec *a, const FerryVmSpec *b)
{
  if (a == b)
    return TRUE;
  if (a == NULL || b == NULL)
    return FALSE;
  if (g_strcmp0 (a->name, b->name) != 0
      || g_strcmp0 (a->uuid, b->uuid) != 0
      || a->vcpus != b->vcpus
      || a->memory_mib != b->memory_mib
      || g_strcmp0 (a->machine, b->machine) != 0
      || g_strcmp0 (a->cpu_model, b->cpu_model) != 0
      || g_strcmp0 (a->kernel, b->kernel) != 0
      || g_strcmp0 (a->initrd, b->initrd) != 0
      || g_strcmp0 (a->cmdline, b->cmdline) != 0
      || g_strcmp0 (a->firmware, b->firmware) != 0
      || a->serial != b->serial
      || array_len (a->disks) != array_len (b->disks)
      || array_len (a->nics) != array_len (b->nics))
    return FALSE;
  for (guint i = 0; i < array_len (a->disks); i++)
    {
      const FerryDiskSpec *x = g_ptr_array_index (a->disks, i);
      const FerryDiskSpec *y = g_ptr_array_index (b->disks, i);

      if (g_strcmp0 (x->path, y->path) != 0 || g_strcmp0 (x->pool, y->pool) != 0
          || g_strcmp0 (x->volume, y->volume) != 0 || x->format != y->format
          || x->bus != y->bus || !x->readonly != !y->readonly
          || g_strcmp0 (x->cache, y->cache) != 0)
        return FALSE;
    }
  for (guint i = 0; i < array_len (a->nics); i++)
    {
      const FerryNicSpec *x = g_ptr_array_index (a->nics, i);
      const FerryNicSpec *y = g_ptr_array_index (b->nics, i);

      if (g_strcmp0 (x->model, y->model) != 0 || g_strcmp0 (x->mac, y->mac) != 0
          || x->network != y->network || g_strcmp0 (x->ifname, y->ifname) != 0)
        return FALSE;
    }
  return TRUE;
}

static gboolean
name_is_valid (const char *name, gsize max_len)
{
  gsize len;

  if (name == NULL || !g_ascii_isalnum (name[0]))
    return FALSE;
  len = strlen (name);
  if (len > max_len)
    return FALSE;
  for (gsize i = 1; i < len; i++)
    if (!g_ascii_isalnum (name[i]) && name[i] != '_' && name[i] != '.' && name[i] != '-')
      return FALSE;
  return TRUE;
}

gboolean
ferry_vm_name_is_valid (const char *name)
{
  return name_is_valid (name, FERRY_SPEC_MAX_NAME);
}

gboolean
ferry_volume_name_is_valid (const char *name)
{
  return name_is_valid (name, FERRY_SPEC_MAX_VOLUME_NAME);
}

static const char *
enum_to_string (const char *const *names, gsize n_names, guint value)
{
  /* n_names counts the NULL terminator. */
  return value < n_names - 1 ? names[value] : NULL;
}

const char *
ferry_disk_format_to_string (FerryDiskFormat format)
{
  return enum_to_string (disk_format_names, G_N_ELEMENTS (disk_format_names), format);
}

const char *
ferry_disk_bus_to_string (FerryDiskBus bus)
{
  return enum_to_string (disk_bus_names, G_N_ELEMENTS (disk_bus_names), bus);
}

const char *
ferry_nic_network_to_string (FerryNicNetwork network)
{
  return enum_to_string (nic_network_names, G_N_ELEMENTS (nic_network_names), network);
}

const char *
ferry_serial_mode_to_string (FerrySerialMode mode)
{
  return enum_to_string (serial_names, G_N_ELEMENTS (serial_names), mode);
}

/* ---- JSON tree → spec ---------------------------------------------------- */

static gboolean
parse_boot (FerryVmSpec *spec, JsonObject *obj, GError **error)
{
  const char *cmdline = NULL;

  if (!check_fields (obj, boot_fields, error)
      || !read_path (obj, "kernel", FALSE, &spec->kernel, error)
      || !read_path (obj, "initrd", FALSE, &spec->initrd, error)
      || !read_string (obj, "cmdline", FALSE, &cmdline, error)
      || !read_string_choice (obj, "firmware", firmware_names, &spec->firmware, error))
    return FALSE;

  if (cmdline != NULL)
    {
      if (strlen (cmdline) > FERRY_SPEC_MAX_CMDLINE)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "cmdline: too long (at most %d bytes)", FERRY_SPEC_MAX_CMDLINE);
          return FALSE;
        }
      if (has_control_chars (cmdline))
        {
          g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                               "cmdline: must not contain control characters");
          return FALSE;
        }
      spec->cmdline = g_strdup (cmdline);
    }

  /* QEMU takes -initrd and -append only together with -kernel. */
  if (spec->kernel == NULL && spec->initrd != NULL)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "initrd: requires boot.kernel");
      return FALSE;
    }
  if (spec->kernel == NULL && spec->cmdline != NULL)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "cmdline: requires boot.kernel");
      return FALSE;
    }
  return TRUE;
}

/* A pool or volume name: it becomes a file name on the agent, so the
 * character set keeps it inside the pool directory. */
static gboolean
read_name (JsonObject *obj, const char *key, gsize max_len, char **out, GError **error)
{
  const char *value = NULL;

  if (!read_string (obj, key, FALSE, &value, error))
    return FALSE;
  if (value == NULL)
    return TRUE;
  if (!name_is_valid (value, max_len))
    {
      g_autofree char *shown = quote_for_message (value);

      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be 1 to %" G_GSIZE_FORMAT " characters from A-Z, a-z, 0-9, '_', '.', '-', "
                   "starting with a letter or digit (got %s)", key, max_len, shown);
      return FALSE;
    }
  g_free (*out);
  *out = g_strdup (value);
  return TRUE;
}

static gpointer
parse_disk (JsonObject *obj, GError **error)
{
  g_autoptr (FerryDiskSpec) disk = ferry_disk_spec_new ();
  int format = -1, bus = disk->bus;

  if (!check_fields (obj, disk_fields, error)
      || !read_path (obj, "path", FALSE, &disk->path, error)
      || !read_name (obj, "pool", FERRY_SPEC_MAX_NAME, &disk->pool, error)
      || !read_name (obj, "volume", FERRY_SPEC_MAX_VOLUME_NAME, &disk->volume, error)
      || !read_enum (obj, "format", disk_format_names, &format, error)
      || !read_enum (obj, "bus", disk_bus_names, &bus, error)
      || !read_bool (obj, "readonly", &disk->readonly, error)
      || !read_string_choice (obj, "cache", disk_cache_names, &disk->cache, error))
    return NULL;
  /* Guessing the format of an image is how QEMU got CVE-2008-2004. */
  if (format < 0)
    {
      require_present (NULL, "format", error);
      return NULL;
    }
  if (disk->pool != NULL && disk->volume == NULL)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "pool: only allowed together with volume");
      return NULL;
    }
  if (disk->volume != NULL && disk->pool == NULL)
    disk->pool = g_strdup (FERRY_DEFAULT_POOL);
  disk->format = format;
  disk->bus = bus;
  return g_steal_pointer (&disk);
}

static char *
generate_mac (GPtrArray *nics)
{
  for (;;)
    {
      guint32 r = g_random_int ();
      g_autofree char *mac = g_strdup_printf ("52:54:00:%02x:%02x:%02x",
                                              (r >> 16) & 0xff, (r >> 8) & 0xff, r & 0xff);
      gboolean taken = FALSE;

      for (guint i = 0; i < nics->len && !taken; i++)
        taken = g_strcmp0 (((FerryNicSpec *) g_ptr_array_index (nics, i))->mac, mac) == 0;
      if (!taken)
        return g_steal_pointer (&mac);
    }
}

static gpointer
parse_nic (JsonObject *obj, GError **error)
{
  g_autoptr (FerryNicSpec) nic = ferry_nic_spec_new ();
  const char *mac = NULL;
  int network = nic->network;

  if (!check_fields (obj, nic_fields, error)
      || !read_string_choice (obj, "model", nic_model_names, &nic->model, error)
      || !read_string (obj, "mac", FALSE, &mac, error)
      || (mac != NULL && !normalize_mac (mac, &nic->mac, error))
      || !read_enum (obj, "network", nic_network_names, &network, error)
      || !read_token (obj, "ifname", "_.-", TRUE, SPEC_MAX_IFNAME,
                      "A-Z, a-z, 0-9, '_', '.', '-'", &nic->ifname, error))
    return NULL;
  nic->network = network;

  if (nic->ifname != NULL
      && (g_str_equal (nic->ifname, ".") || g_str_equal (nic->ifname, "..")))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "ifname: not a valid interface name");
      return NULL;
    }
  if (nic->network == FERRY_NIC_NETWORK_TAP && nic->ifname == NULL)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "ifname: required when network is tap");
      return NULL;
    }
  if (nic->network != FERRY_NIC_NETWORK_TAP && nic->ifname != NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "ifname: only allowed when network is tap (network is %s)",
                   nic_network_names[nic->network]);
      return NULL;
    }
  return g_steal_pointer (&nic);
}

/* Runs fn on each element of the array at key, which must hold objects. */
static gboolean
parse_list (JsonObject *obj, const char *key, guint max, GPtrArray *out,
            gpointer (*fn) (JsonObject *, GError **), GError **error)
{
  JsonNode *node = member (obj, key);
  JsonArray *array;
  guint len;

  if (node == NULL)
    return TRUE;
  if (!JSON_NODE_HOLDS_ARRAY (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: must be an array (got %s)", key, node_kind (node));
      return FALSE;
    }
  array = json_node_get_array (node);
  len = json_array_get_length (array);
  if (len > max)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "%s: at most %u entries (got %u)", key, max, len);
      return FALSE;
    }
  for (guint i = 0; i < len; i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      gpointer item;

      if (!JSON_NODE_HOLDS_OBJECT (element))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "%s[%u]: must be an object (got %s)", key, i, node_kind (element));
          return FALSE;
        }
      item = fn (json_node_get_object (element), error);
      if (item == NULL)
        {
          g_prefix_error (error, "%s[%u].", key, i);
          return FALSE;
        }
      g_ptr_array_add (out, item);
    }
  return TRUE;
}

/* The error names the disk, not a field of it: the fault is the
 * combination. (parse_disk's errors get "disks[i]." from parse_list.) */
static gboolean
check_disk_sources (FerryVmSpec *spec, GError **error)
{
  for (guint i = 0; i < spec->disks->len; i++)
    {
      const FerryDiskSpec *disk = g_ptr_array_index (spec->disks, i);

      if (disk->path != NULL && disk->volume != NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "disks[%u]: give either path or volume, not both", i);
          return FALSE;
        }
      if (disk->path == NULL && disk->volume == NULL)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "disks[%u]: path or volume is required", i);
          return FALSE;
        }
    }
  return TRUE;
}

/* Two disks on one image corrupt it; two NICs with one MAC confuse every
 * switch. Both are mistakes, never intent. (A path and a volume that are
 * the same file can only be seen by the agent: ferry_spec_check_disks.) */
static gboolean
check_unique (FerryVmSpec *spec, GError **error)
{
  for (guint i = 0; i < spec->disks->len; i++)
    for (guint j = 0; j < i; j++)
      {
        const FerryDiskSpec *a = g_ptr_array_index (spec->disks, i);
        const FerryDiskSpec *b = g_ptr_array_index (spec->disks, j);

        if (a->path != NULL && b->path != NULL && g_str_equal (a->path, b->path))
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                         "disks[%u].path: same image as disks[%u]", i, j);
            return FALSE;
          }
        if (a->volume != NULL && b->volume != NULL && g_str_equal (a->volume, b->volume)
            && g_str_equal (a->pool, b->pool))
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                         "disks[%u].volume: same volume as disks[%u]", i, j);
            return FALSE;
          }
      }
  for (guint i = 0; i < spec->nics->len; i++)
    for (guint j = 0; j < i; j++)
      {
        const char *a = ((FerryNicSpec *) g_ptr_array_index (spec->nics, i))->mac;
        const char *b = ((FerryNicSpec *) g_ptr_array_index (spec->nics, j))->mac;

        if (a != NULL && b != NULL && g_str_equal (a, b))
          {
            g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                         "nics[%u].mac: same address as nics[%u]", i, j);
            return FALSE;
          }
      }
  return TRUE;
}

FerryVmSpec *
ferry_vm_spec_from_json (JsonNode *node, GError **error)
{
  g_autoptr (FerryVmSpec) spec = NULL;
  JsonObject *obj;
  JsonNode *boot;
  const char *name = NULL, *uuid = NULL;
  guint64 vcpus;
  int serial;

  if (node == NULL || JSON_NODE_HOLDS_NULL (node))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "spec is empty");
      return NULL;
    }
  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "spec must be an object (got %s)", node_kind (node));
      return NULL;
    }
  obj = json_node_get_object (node);
  if (!check_fields (obj, spec_fields, error))
    return NULL;

  spec = ferry_vm_spec_new ();
  vcpus = spec->vcpus;
  serial = spec->serial;

  if (!read_string (obj, "name", TRUE, &name, error))
    return NULL;
  if (!ferry_vm_name_is_valid (name))
    {
      g_autofree char *shown = quote_for_message (name);

      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "name: must be 1 to %d characters from A-Z, a-z, 0-9, '_', '.', '-', "
                   "starting with a letter or digit (got %s)", FERRY_SPEC_MAX_NAME, shown);
      return NULL;
    }
  spec->name = g_strdup (name);

  if (!read_string (obj, "uuid", FALSE, &uuid, error))
    return NULL;
  if (uuid != NULL)
    {
      if (!g_uuid_string_is_valid (uuid))
        {
          g_autofree char *shown = quote_for_message (uuid);

          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "uuid: not a valid UUID (got %s)", shown);
          return NULL;
        }
      spec->uuid = g_ascii_strdown (uuid, -1);
    }
  else
    spec->uuid = g_uuid_string_random ();

  if (!read_uint (obj, "vcpus", 1, FERRY_SPEC_MAX_VCPUS, &vcpus, error)
      || !read_memory (obj, &spec->memory_mib, error)
      || !read_token (obj, "machine", "._-", FALSE, SPEC_MAX_MACHINE,
                      "a-z, 0-9, '.', '_', '-'", &spec->machine, error)
      || !read_token (obj, "cpu", "._,=+-", TRUE, SPEC_MAX_CPU,
                      "A-Z, a-z, 0-9, '.', '_', ',', '=', '+', '-'", &spec->cpu_model, error))
    return NULL;
  spec->vcpus = (guint) vcpus;

  boot = member (obj, "boot");
  if (boot != NULL)
    {
      if (!JSON_NODE_HOLDS_OBJECT (boot))
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "boot: must be an object (got %s)", node_kind (boot));
          return NULL;
        }
      if (!parse_boot (spec, json_node_get_object (boot), error))
        {
          g_prefix_error (error, "boot.");
          return NULL;
        }
    }

  if (!parse_list (obj, "disks", FERRY_SPEC_MAX_DISKS, spec->disks,
                   parse_disk, error)
      || !check_disk_sources (spec, error)
      || !parse_list (obj, "nics", FERRY_SPEC_MAX_NICS, spec->nics,
                      parse_nic, error)
      || !check_unique (spec, error)
      || !read_enum (obj, "serial", serial_names, &serial, error))
    return NULL;
  spec->serial = serial;

  /* Only after every given MAC is known, so a generated one avoids them. */
  for (guint i = 0; i < spec->nics->len; i++)
    {
      FerryNicSpec *nic = g_ptr_array_index (spec->nics, i);

      if (nic->mac == NULL)
        nic->mac = generate_mac (spec->nics);
    }

  return g_steal_pointer (&spec);
}

/* ---- spec → canonical JSON ------------------------------------------------ */

static void
set_string_if (JsonObject *obj, const char *key, const char *value)
{
  if (value != NULL)
    json_object_set_string_member (obj, key, value);
}

JsonNode *
ferry_vm_spec_to_json (const FerryVmSpec *spec)
{
  JsonObject *obj, *boot;
  JsonArray *disks, *nics;
  JsonNode *node;

  g_return_val_if_fail (spec != NULL, NULL);

  obj = json_object_new ();
  set_string_if (obj, "name", spec->name);
  set_string_if (obj, "uuid", spec->uuid);
  json_object_set_int_member (obj, "vcpus", spec->vcpus);
  json_object_set_int_member (obj, "memory", (gint64) spec->memory_mib);
  set_string_if (obj, "machine", spec->machine);
  set_string_if (obj, "cpu", spec->cpu_model);

  boot = json_object_new ();
  set_string_if (boot, "kernel", spec->kernel);
  set_string_if (boot, "initrd", spec->initrd);
  set_string_if (boot, "cmdline", spec->cmdline);
  set_string_if (boot, "firmware", spec->firmware);
  json_object_set_object_member (obj, "boot", boot);

  disks = json_array_new ();
  for (guint i = 0; i < array_len (spec->disks); i++)
    {
      const FerryDiskSpec *disk = g_ptr_array_index (spec->disks, i);
      JsonObject *d = json_object_new ();

      set_string_if (d, "path", disk->path);
      set_string_if (d, "pool", disk->pool);
      set_string_if (d, "volume", disk->volume);
      set_string_if (d, "format", ferry_disk_format_to_string (disk->format));
      set_string_if (d, "bus", ferry_disk_bus_to_string (disk->bus));
      json_object_set_boolean_member (d, "readonly", disk->readonly);
      set_string_if (d, "cache", disk->cache);
      json_array_add_object_element (disks, d);
    }
  json_object_set_array_member (obj, "disks", disks);

  nics = json_array_new ();
  for (guint i = 0; i < array_len (spec->nics); i++)
    {
      const FerryNicSpec *nic = g_ptr_array_index (spec->nics, i);
      JsonObject *n = json_object_new ();

      set_string_if (n, "model", nic->model);
      set_string_if (n, "mac", nic->mac);
      set_string_if (n, "network", ferry_nic_network_to_string (nic->network));
      set_string_if (n, "ifname", nic->ifname);
      json_array_add_object_element (nics, n);
    }
  json_object_set_array_member (obj, "nics", nics);

  set_string_if (obj, "serial", ferry_serial_mode_to_string (spec->serial));

  node = json_node_new (JSON_NODE_OBJECT);
  json_node_take_object (node, obj);
  return node;
}

char *
ferry_vm_spec_to_json_string (const FerryVmSpec *spec)
{
  g_autoptr (JsonNode) node = NULL;

  g_return_val_if_fail (spec != NULL, NULL);

  node = ferry_vm_spec_to_json (spec);
  return json_to_string (node, TRUE);
}

/* ---- YAML text → JSON tree ---------------------------------------------- */

typedef struct {
  JsonNode *node;     /* object or array, owned by the tree */
  char *path;         /* "" for the root, then "disks", "disks[0]", ... */
  char *pending_key;  /* object: key seen, value not yet */
  guint n_items;      /* array: index of the next element */
} YamlFrame;

typedef struct {
  JsonNode *root;
  GArray *frames;     /* of YamlFrame */
  guint documents;
} YamlBuilder;

static void
yaml_frame_clear (gpointer data)
{
  YamlFrame *frame = data;

  g_free (frame->path);
  g_free (frame->pending_key);
}

static void
yaml_builder_clear (YamlBuilder *b)
{
  g_clear_pointer (&b->root, json_node_unref);
  g_clear_pointer (&b->frames, g_array_unref);
}

static YamlFrame *
yaml_top (YamlBuilder *b)
{
  if (b->frames->len == 0)
    return NULL;
  return &g_array_index (b->frames, YamlFrame, b->frames->len - 1);
}

/* Path of the node about to be added under the top frame; for a key in
 * key position, pass it as key. */
static char *
yaml_child_path (YamlBuilder *b, const char *key)
{
  YamlFrame *top = yaml_top (b);
  g_autofree char *shown = NULL;

  if (top == NULL)
    return g_strdup ("");
  if (JSON_NODE_HOLDS_ARRAY (top->node))
    return g_strdup_printf ("%s[%u]", top->path, top->n_items);
  if (key == NULL)
    key = top->pending_key;
  if (key == NULL)
    return g_strdup (top->path);
  shown = key_for_path (key);
  if (top->path[0] == '\0')
    return g_steal_pointer (&shown);
  return g_strdup_printf ("%s.%s", top->path, shown);
}

G_GNUC_PRINTF (4, 5)
static gboolean
yaml_fail (YamlBuilder *b, const yaml_event_t *event, GError **error,
           const char *format, ...)
{
  g_autofree char *path = yaml_child_path (b, NULL);
  g_autofree char *reason = NULL;
  va_list args;

  va_start (args, format);
  reason = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
               "%s%s%s (line %zu)", path, path[0] != '\0' ? ": " : "", reason,
               event->start_mark.line + 1);
  return FALSE;
}

/* Plain scalars are typed by the YAML 1.2 core schema; quoted and block
 * scalars are always strings. YAML 1.1's yes/no/on/off stay strings:
 * "country: no" becoming false is a famous trap. */
typedef enum {
  YAML_INT_NO_MATCH,
  YAML_INT_OK,
  YAML_INT_OVERFLOW,
} YamlIntMatch;

/* [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+ */
static YamlIntMatch
yaml_match_int (const char *s, gint64 *out)
{
  const char *p = s;
  gboolean negative = FALSE;
  guint64 value = 0, limit;
  guint base = 10;

  if (g_str_has_prefix (s, "0x"))
    {
      base = 16;
      p += 2;
    }
  else if (g_str_has_prefix (s, "0o"))
    {
      base = 8;
      p += 2;
    }
  else if (*p == '-' || *p == '+')
    negative = *p++ == '-';

  if (*p == '\0')
    return YAML_INT_NO_MATCH;
  for (const char *q = p; *q != '\0'; q++)
    if (!g_ascii_isxdigit (*q) || g_ascii_xdigit_value (*q) >= (gint) base)
      return YAML_INT_NO_MATCH;

  limit = negative ? (guint64) G_MAXINT64 + 1 : (guint64) G_MAXINT64;
  for (; *p != '\0'; p++)
    {
      guint digit = (guint) g_ascii_xdigit_value (*p);

      if (value > (limit - digit) / base)
        return YAML_INT_OVERFLOW;
      value = value * base + digit;
    }
  *out = negative ? (gint64) (0 - value) : (gint64) value;
  return YAML_INT_OK;
}

static gboolean
yaml_match_float (const char *s, double *out)
{
  const char *p = s;
  gboolean digits = FALSE;

  if (*p == '-' || *p == '+')
    p++;
  if (g_str_equal (p, ".inf") || g_str_equal (p, ".Inf") || g_str_equal (p, ".INF"))
    {
      *out = s[0] == '-' ? -INFINITY : INFINITY;
      return TRUE;
    }
  if (g_str_equal (s, ".nan") || g_str_equal (s, ".NaN") || g_str_equal (s, ".NAN"))
    {
      *out = NAN;
      return TRUE;
    }
  /* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
  while (g_ascii_isdigit (*p))
    p++, digits = TRUE;
  if (*p == '.')
    {
      p++;
      if (!digits && !g_ascii_isdigit (*p))
        return FALSE;
      while (g_ascii_isdigit (*p))
        p++, digits = TRUE;
    }
  if (!digits)
    return FALSE;
  if (*p == 'e' || *p == 'E')
    {
      p++;
      if (*p == '-' || *p == '+')
        p++;
      if (!g_ascii_isdigit (*p))
        return FALSE;
      while (g_ascii_isdigit (*p))
        p++;
    }
  if (*p != '\0')
    return FALSE;
  *out = g_ascii_strtod (s, NULL);
  return TRUE;
}

static JsonNode *
yaml_resolve_scalar (YamlBuilder *b, const yaml_event_t *event, GError **error)
{
  const char *value = (const char *) event->data.scalar.value;
  gint64 i;
  double d;

  if (event->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return json_node_init_string (json_node_alloc (), value);

  if (*value == '\0' || g_str_equal (value, "~") || g_str_equal (value, "null")
      || g_str_equal (value, "Null") || g_str_equal (value, "NULL"))
    return json_node_init_null (json_node_alloc ());
  if (g_str_equal (value, "true") || g_str_equal (value, "True") || g_str_equal (value, "TRUE"))
    return json_node_init_boolean (json_node_alloc (), TRUE);
  if (g_str_equal (value, "false") || g_str_equal (value, "False") || g_str_equal (value, "FALSE"))
    return json_node_init_boolean (json_node_alloc (), FALSE);
  switch (yaml_match_int (value, &i))
    {
    case YAML_INT_OK:
      return json_node_init_int (json_node_alloc (), i);
    case YAML_INT_OVERFLOW:
      {
        g_autofree char *shown = quote_for_message (value);

        yaml_fail (b, event, error, "integer %s is out of range", shown);
        return NULL;
      }
    case YAML_INT_NO_MATCH:
      break;
    }
  if (yaml_match_float (value, &d))
    return json_node_init_double (json_node_alloc (), d);
  return json_node_init_string (json_node_alloc (), value);
}

/* Hangs node (transfer full) under the top frame, or makes it the root. */
static void
yaml_attach (YamlBuilder *b, JsonNode *node)
{
  YamlFrame *top = yaml_top (b);

  if (top == NULL)
    {
      g_clear_pointer (&b->root, json_node_unref);
      b->root = node;
    }
  else if (JSON_NODE_HOLDS_ARRAY (top->node))
    {
      json_array_add_element (json_node_get_array (top->node), node);
      top->n_items++;
    }
  else
    {
      g_autofree char *key = g_steal_pointer (&top->pending_key);

      json_object_set_member (json_node_get_object (top->node), key, node);
    }
}

static gboolean
yaml_in_key_position (YamlBuilder *b)
{
  YamlFrame *top = yaml_top (b);

  return top != NULL && JSON_NODE_HOLDS_OBJECT (top->node) && top->pending_key == NULL;
}

static gboolean
yaml_check_node_props (YamlBuilder *b, const yaml_event_t *event,
                       const yaml_char_t *anchor, const yaml_char_t *tag,
                       GError **error)
{
  /* Aliases are how "billion laughs" expands a small file into gigabytes;
   * a spec has no use for them, so anchors go too. */
  if (anchor != NULL)
    return yaml_fail (b, event, error, "anchors and aliases are not allowed");
  if (tag != NULL)
    return yaml_fail (b, event, error, "tags are not allowed");
  return TRUE;
}

static gboolean
yaml_handle_event (YamlBuilder *b, const yaml_event_t *event, GError **error)
{
  switch (event->type)
    {
    case YAML_NO_EVENT:
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
      return TRUE;

    case YAML_STREAM_END_EVENT:
      if (b->documents == 0)
        {
          g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                               "spec is empty");
          return FALSE;
        }
      return TRUE;

    case YAML_DOCUMENT_START_EVENT:
      if (b->documents++ > 0)
        return yaml_fail (b, event, error, "multiple documents are not allowed");
      return TRUE;

    case YAML_ALIAS_EVENT:
      return yaml_fail (b, event, error, "anchors and aliases are not allowed");

    case YAML_SCALAR_EVENT:
      {
        const char *value = (const char *) event->data.scalar.value;
        JsonNode *node;

        if (!yaml_check_node_props (b, event, event->data.scalar.anchor,
                                    event->data.scalar.tag, error))
          return FALSE;
        /* Double-quoted "\0" and "\x00" would cut our C strings short. */
        if (memchr (value, '\0', event->data.scalar.length) != NULL)
          return yaml_fail (b, event, error, "NUL characters are not allowed");

        if (yaml_in_key_position (b))
          {
            YamlFrame *top = yaml_top (b);

            if (json_object_has_member (json_node_get_object (top->node), value))
              {
                g_autofree char *path = yaml_child_path (b, value);

                g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                             "%s: duplicate key (line %zu)", path,
                             event->start_mark.line + 1);
                return FALSE;
              }
            top->pending_key = g_strdup (value);
            return TRUE;
          }

        node = yaml_resolve_scalar (b, event, error);
        if (node == NULL)
          return FALSE;
        yaml_attach (b, node);
        return TRUE;
      }

    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      {
        gboolean is_map = event->type == YAML_MAPPING_START_EVENT;
        YamlFrame frame = { 0 };

        if (!yaml_check_node_props (b, event,
                                    is_map ? event->data.mapping_start.anchor
                                           : event->data.sequence_start.anchor,
                                    is_map ? event->data.mapping_start.tag
                                           : event->data.sequence_start.tag,
                                    error))
          return FALSE;
        if (yaml_in_key_position (b))
          return yaml_fail (b, event, error, "mapping keys must be scalars");
        if (b->frames->len >= SPEC_MAX_DEPTH)
          return yaml_fail (b, event, error, "nesting deeper than %d levels",
                            SPEC_MAX_DEPTH);

        frame.path = yaml_child_path (b, NULL);
        if (is_map)
          {
            frame.node = json_node_new (JSON_NODE_OBJECT);
            json_node_take_object (frame.node, json_object_new ());
          }
        else
          {
            frame.node = json_node_new (JSON_NODE_ARRAY);
            json_node_take_array (frame.node, json_array_new ());
          }
        yaml_attach (b, frame.node);
        g_array_append_val (b->frames, frame);
        return TRUE;
      }

    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      g_array_set_size (b->frames, b->frames->len - 1);
      return TRUE;
    }
  return TRUE;
}

static void
yaml_set_parser_error (const yaml_parser_t *parser, GError **error)
{
  const char *problem = parser->problem != NULL ? parser->problem : "syntax error";

  switch (parser->error)
    {
    case YAML_MEMORY_ERROR:
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                           "out of memory while parsing the spec");
      break;
    case YAML_READER_ERROR:
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "byte %zu: %s", parser->problem_offset, problem);
      break;
    default:
      if (parser->context != NULL)
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "line %zu column %zu: %s %s", parser->problem_mark.line + 1,
                     parser->problem_mark.column + 1, parser->context, problem);
      else
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                     "line %zu column %zu: %s", parser->problem_mark.line + 1,
                     parser->problem_mark.column + 1, problem);
      break;
    }
}

static JsonNode *
yaml_to_json (const char *data, gsize length, GError **error)
{
  yaml_parser_t parser;
  YamlBuilder b = { 0 };
  JsonNode *root = NULL;
  gboolean ok = TRUE;

  if (!yaml_parser_initialize (&parser))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                           "cannot initialise the YAML parser");
      return NULL;
    }
  yaml_parser_set_input_string (&parser, (const unsigned char *) data, length);
  yaml_parser_set_encoding (&parser, YAML_UTF8_ENCODING);

  b.frames = g_array_new (FALSE, TRUE, sizeof (YamlFrame));
  g_array_set_clear_func (b.frames, yaml_frame_clear);

  while (ok)
    {
      yaml_event_t event;
      yaml_event_type_t type;

      if (!yaml_parser_parse (&parser, &event))
        {
          yaml_set_parser_error (&parser, error);
          ok = FALSE;
          break;
        }
      type = event.type;
      ok = yaml_handle_event (&b, &event, error);
      yaml_event_delete (&event);
      if (type == YAML_STREAM_END_EVENT)
        break;
    }
  yaml_parser_delete (&parser);

  if (ok && (b.root == NULL || JSON_NODE_HOLDS_NULL (b.root)))
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "spec is empty");
      ok = FALSE;
    }
  if (ok)
    root = g_steal_pointer (&b.root);
  yaml_builder_clear (&b);
  return root;
}

/* JSON allows tabs around the top-level value, YAML reads a tab at the
 * start of a line outside a flow collection as bad indentation. For text
 * that is a flow collection, turn those tabs into spaces (keeping line
 * numbers); returns NULL when nothing needs changing. */
static char *
untab_json_margins (const char *data, gsize length)
{
  gsize start = 0, end = length;
  char *copy;

  while (start < length && strchr (" \t\r\n", data[start]) != NULL)
    start++;
  if (start == length || (data[start] != '{' && data[start] != '['))
    return NULL;
  while (end > start && strchr (" \t\r\n", data[end - 1]) != NULL)
    end--;
  if (memchr (data, '\t', start) == NULL && memchr (data + end, '\t', length - end) == NULL)
    return NULL;

  copy = g_memdup2 (data, length);
  for (gsize i = 0; i < length; i++)
    if ((i < start || i >= end) && copy[i] == '\t')
      copy[i] = ' ';
  return copy;
}

FerryVmSpec *
ferry_vm_spec_parse (const char *data, gsize length, GError **error)
{
  g_autoptr (JsonNode) root = NULL;
  g_autofree char *untabbed = NULL;
  const char *end = NULL;

  g_return_val_if_fail (data != NULL || length == 0, NULL);

  if (length > FERRY_SPEC_MAX_BYTES)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_TOO_LARGE,
                   "spec is %" G_GSIZE_FORMAT " bytes, more than the limit of %d",
                   length, FERRY_SPEC_MAX_BYTES);
      return NULL;
    }
  if (length == 0)
    {
      g_set_error_literal (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                           "spec is empty");
      return NULL;
    }
  /* Also refuses NUL bytes, which libyaml would otherwise see as text. */
  if (!g_utf8_validate_len (data, length, &end))
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                   "spec is not UTF-8 text (invalid byte at offset %td)", end - data);
      return NULL;
    }

  untabbed = untab_json_margins (data, length);
  root = yaml_to_json (untabbed != NULL ? untabbed : data, length, error);
  if (root == NULL)
    return NULL;
  return ferry_vm_spec_from_json (root, error);
}
