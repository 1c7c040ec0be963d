/* ferry — checks QMP commands against the schema of a real QEMU.
 *
 * The schema is the "return" of query-qmp-schema as captured from the QEMU
 * binary ferry supports (scripts/capture-qmp-schema.sh). Unit tests run every
 * command the agent builds through ferry_qmp_schema_check_command(), so a
 * misspelt argument or a wrong type fails at build time instead of in the
 * middle of a migration.
 *
 * Errors are FERRY_ERROR_INVALID_ARGUMENT and name the offending place by
 * path: "migrate-set-parameters.max-bandwidth: expected int, got string".
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Largest schema file accepted (7.2's is about 300 KiB). */
#define FERRY_QMP_SCHEMA_MAX_BYTES (64 * 1024 * 1024)

typedef struct _FerryQmpSchema FerryQmpSchema;

FerryQmpSchema *ferry_qmp_schema_load (const char *path, GError **error);
FerryQmpSchema *ferry_qmp_schema_new_from_data (const char *data, gsize length, GError **error);
void ferry_qmp_schema_free (FerryQmpSchema *schema);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryQmpSchema, ferry_qmp_schema_free)

gboolean ferry_qmp_schema_has_command (FerryQmpSchema *schema, const char *name);

/* command_json is a wire command: {"execute": NAME, "arguments": {...},
 * "id": ...}; "arguments" and "id" are optional. Checks that the command
 * exists, that every argument is declared with the right type (recursively,
 * through objects, unions, enums, arrays and alternates) and that every
 * required argument is present. */
gboolean ferry_qmp_schema_check_command (FerryQmpSchema *schema,
                                         const char *command_json,
                                         GError **error);

G_END_DECLS
