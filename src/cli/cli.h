/* ferry CLI — shared declarations of the verb groups. */
#pragma once

#include "client.h"

G_BEGIN_DECLS

/* Global options, accepted anywhere on the command line. */
typedef struct {
  char *connect;
  char *tls_dir;
  gboolean json;
} FerryGlobalOptions;

extern FerryGlobalOptions ferry_global;
extern GOptionEntry ferry_global_entries[];

/* Parses argv with the global entries plus the verb's own; leaves the
 * positional arguments in argv. Prints usage errors and returns FALSE. */
gboolean ferry_cli_parse (const char *usage, const char *summary, GOptionEntry *entries,
                          int *argc, char ***argv);
FerryClient *ferry_cli_client (void);
int ferry_cli_fail (const GError *error);
void ferry_cli_print_json (JsonObject *object);
/* After a request the agent may hold (wait_ms): one answered in under half
 * of interval_ms came from an agent that does not hold it, and is not
 * asked again sooner than interval_ms after asked_us. */
void ferry_cli_pace (gint64 asked_us, gint64 interval_ms);

int ferry_cmd_pki (int argc, char **argv);
int ferry_cmd_vm (int argc, char **argv);
int ferry_cmd_migrate (int argc, char **argv);
int ferry_cmd_job (int argc, char **argv);
int ferry_cmd_dirtyrate (int argc, char **argv);
int ferry_cmd_pool (int argc, char **argv);
int ferry_cmd_volume (int argc, char **argv);

/* Human formats. */
char *ferry_format_bytes (gint64 bytes);
/* A job's ferry-restart: "after 10.0 s of multifd (200.4 MiB sent, 3 passes)". */
char *ferry_format_restart (JsonObject *restart);
void ferry_print_job (JsonObject *job);

G_END_DECLS
