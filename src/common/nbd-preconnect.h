/* ferry — NBD connections opened ahead of the export they will read.
 *
 * A warm pass's export exists only once the source has taken the pass's
 * snapshot, but the NBD server that will serve it (the guest's QEMU) runs
 * from the first pass on, and the costly part of a connection to it, the
 * TLS handshake with a QEMU whose main loop is busy with the guest, does
 * not depend on the export. So when the source announces a pass, the
 * destination opens its connections at once and stops each one in the
 * NBD option phase (libnbd's option mode), before it names an export;
 * when the pass's snapshot is exported, the copy engine takes them and
 * only asks for the export (NBD_OPT_GO, with its meta contexts): one
 * round trip instead of a handshake.
 *
 * Connecting runs in threads of its own and is bounded; a connection
 * that failed, or that the server dropped meanwhile, is simply not there
 * or fails its NBD_OPT_GO, and the engine connects afresh. Connections
 * left unused are closed with NBD_OPT_ABORT (the server sees a client
 * leave, not an error) when the last reference goes.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

struct nbd_handle;

typedef struct _FerryNbdPreconnect FerryNbdPreconnect;

/* Starts n connections to the server of `uri` (a libnbd URI with the
 * export the copy will use) and returns at once. */
FerryNbdPreconnect *ferry_nbd_preconnect_start (const char *uri, guint n);
FerryNbdPreconnect *ferry_nbd_preconnect_ref (FerryNbdPreconnect *pre);
/* Stops connections still being made and closes the unused ones once
 * the last reference is gone. */
void ferry_nbd_preconnect_unref (FerryNbdPreconnect *pre);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryNbdPreconnect, ferry_nbd_preconnect_unref)

/* A connection made ready for the export of `uri` (which must be the
 * URI the connections were started with), asking for base:allocation
 * and `extra_context` (NULL = none); blocking for at most stall_s. NULL
 * when none is ready yet (connections still being made are not waited
 * for), when `uri` differs, or when the server refused or dropped it:
 * the caller connects afresh. Thread-safe. */
struct nbd_handle *ferry_nbd_preconnect_claim (FerryNbdPreconnect *pre, const char *uri,
                                               const char *extra_context, guint stall_s,
                                               GCancellable *cancellable);

/* Waits until every connection is made or has failed, at most
 * timeout_ms; FALSE when some are still being made. The copy never
 * waits (it connects afresh instead); tests do. */
gboolean ferry_nbd_preconnect_wait (FerryNbdPreconnect *pre, guint timeout_ms);

/* How many connections were ready and how many were claimed (for the
 * job's events and the tests). */
void ferry_nbd_preconnect_get_counts (FerryNbdPreconnect *pre, guint *ready, guint *claimed);

G_END_DECLS
