/* ferry — disk copy engine: one NBD export to another, sparse, parallel,
 * verified and resumable.
 *
 * The disk is cut into fixed chunks (FERRY_COPY_CHUNK_BYTES). Chunks are the
 * unit of work, of resumption and of verification: a worker thread takes the
 * next chunk, asks the source for its block status, reads only the data
 * extents (several requests in flight on its own connection), writes only the
 * blocks that are not all zeroes (so a fresh destination stays sparse) and
 * computes the chunk's digest: of the data written or, with
 * verify_readback, of what the destination returns when read back. After a
 * chunk that carried data (or a few that did not) the worker flushes the
 * destination; only then are its chunks reported done, so a resumed copy
 * can skip every chunk reported before.
 *
 * The digest of a chunk is defined on its content alone, so both hosts can
 * compute it independently from their own storage (ferry_nbd_chunk_digests):
 * XXH3-128 over, for every FERRY_COPY_DIGEST_BLOCK-sized block that is not
 * all zeroes, its index within the chunk (64-bit little endian) followed by
 * its bytes. Holes, zero extents and zero-filled data all hash the same.
 * The digest catches corruption (storage, memory, a bug on either side),
 * not an attacker: the data crosses the link inside mutually authenticated
 * TLS. XXH3-128 is the hash rsync uses for the same purpose; at 7+ GB/s
 * against SHA-256's 1.3 GB/s (with SHA-NI) it keeps the verification off
 * the copy's critical path on a small host.
 *
 * The engine is blocking: run it in a thread. Its callbacks come from worker
 * threads.
 */
#pragma once

#include <gio/gio.h>

#include "nbd-preconnect.h"

G_BEGIN_DECLS

#define FERRY_COPY_CHUNK_BYTES     (16 * 1024 * 1024)
#define FERRY_COPY_DIGEST_BLOCK    (64 * 1024)
/* The largest read or write. A chunk's reads stream to its writer as
 * they land, so the last one's write and the digest are the tail of a
 * copy: with 4 MiB requests the 48 MiB pass of bench/warm ended 5-6 ms
 * after its last byte arrived, with 1 MiB 2 ms; and QEMU's server
 * answers the smaller reads sooner (the same pass moved 112 → 114 MiB/s,
 * the unshaped cold copy of bench/disk 6.2 → 5.3 s). */
#define FERRY_COPY_MAX_REQUEST     (1 * 1024 * 1024)
#define FERRY_COPY_MAX_CONNECTIONS 16
#define FERRY_COPY_MAX_IN_FLIGHT   64
/* hex XXH3-128 plus NUL */
#define FERRY_COPY_DIGEST_LEN      33

/* A token bucket shared by every worker of every disk of one job, so
 * --bandwidth bounds the job as a whole. Thread-safe. */
typedef struct _FerryRateLimit FerryRateLimit;
/* bytes_per_s 0 = unlimited. */
FerryRateLimit *ferry_rate_limit_new (guint64 bytes_per_s);
void ferry_rate_limit_set (FerryRateLimit *limit, guint64 bytes_per_s);
/* Blocks until `bytes` may be sent; FALSE when cancelled. */
gboolean ferry_rate_limit_acquire (FerryRateLimit *limit, guint64 bytes, GCancellable *cancellable);
void ferry_rate_limit_free (FerryRateLimit *limit);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryRateLimit, ferry_rate_limit_free)

typedef struct {
  guint connections;          /* per side; 0 = 8 */
  guint requests_in_flight;   /* per connection; 0 = 8 */
  FerryRateLimit *rate_limit; /* NULL = unlimited; not owned */
  /* A connection that makes no progress this long fails the copy (a cut
   * link otherwise blocks TCP for minutes). 0 = 30 s. */
  guint stall_timeout_s;
  /* Read every chunk back from the destination after the flush and digest
   * what is stored, not what was sent: catches a destination that loses
   * writes, at the cost of reading and hashing the data again (about a
   * third more CPU on the destination). */
  gboolean verify_readback;
  /* Delta copy: only the blocks this dirty bitmap of the source marks
   * (NBD meta context "qemu:dirty-bitmap:NAME", as QEMU exports one) are
   * copied; dirty blocks that read as zeroes now are zeroed on the
   * destination. Each chunk's digest is then of the whole chunk as the
   * destination holds it (the dirty parts as written, the others read
   * locally), so it compares with the source's digest of the same point
   * in time; a chunk without a dirty block is
   * reported unchanged, with an empty digest. NULL = copy everything. */
  const char *dirty_bitmap;
  /* Connections to the source opened ahead (see nbd-preconnect.h): the
   * workers take these first and connect afresh for the rest. The copy
   * holds its own reference. NULL = none. */
  FerryNbdPreconnect *preconnected;
} FerryNbdCopyOptions;

typedef struct {
  guint64 index;
  guint64 offset;
  guint64 length;
  guint64 bytes_read;         /* data bytes read from the source */
  guint64 bytes_written;      /* bytes written (and, for a delta, zeroed) on the destination */
  gboolean changed;           /* FALSE: a delta found nothing dirty here (digest empty) */
  char digest[FERRY_COPY_DIGEST_LEN]; /* of what was written (read back with verify_readback) */
} FerryCopyChunk;

/* Called from a worker thread for each chunk copied and flushed. */
typedef void (*FerryCopyChunkDone) (const FerryCopyChunk *chunk, gpointer user_data);
/* Called from a worker thread when a chunk whose digest will count
 * starts to be copied (every chunk of a full copy; a delta's chunks with
 * a dirty block): its source digest may be asked for now, so the
 * comparison need not wait for it after the copy. */
typedef void (*FerryCopyChunkStarted) (guint64 index, gpointer user_data);

typedef struct _FerryNbdCopy FerryNbdCopy;

/* URIs as libnbd takes them: "nbds://HOST:PORT/EXPORT?tls-certificates=DIR",
 * "nbd+unix:///EXPORT?socket=PATH". */
FerryNbdCopy *ferry_nbd_copy_new (const char *source_uri, const char *destination_uri,
                                  const FerryNbdCopyOptions *options);
void ferry_nbd_copy_free (FerryNbdCopy *copy);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryNbdCopy, ferry_nbd_copy_free)

/* Only these chunks are copied (a resumed copy, or chunks whose digests
 * disagreed). Without a call, all chunks are. */
void ferry_nbd_copy_select_chunks (FerryNbdCopy *copy, const guint64 *indexes, guint n_indexes);
void ferry_nbd_copy_set_chunk_done (FerryNbdCopy *copy, FerryCopyChunkDone callback, gpointer user_data);
void ferry_nbd_copy_set_chunk_started (FerryNbdCopy *copy, FerryCopyChunkStarted callback, gpointer user_data);

/* Copies. Both exports must have the same size. Blocking. */
gboolean ferry_nbd_copy_run (FerryNbdCopy *copy, GCancellable *cancellable, GError **error);

typedef struct {
  guint64 size;               /* export size (0 until connected) */
  guint64 chunks_total;       /* selected chunks */
  guint64 chunks_done;
  guint64 bytes_total;        /* selected chunks' bytes, virtual */
  guint64 bytes_done;         /* virtual bytes of chunks done */
  guint64 bytes_read;         /* data bytes asked of the source, failed chunks included (≈ on the wire) */
  guint64 bytes_written;
  guint64 chunks_changed;     /* chunks a delta found dirty (all chunks otherwise) */
} FerryNbdCopyProgress;

/* Thread-safe snapshot. */
void ferry_nbd_copy_get_progress (FerryNbdCopy *copy, FerryNbdCopyProgress *progress);

/* Export size of an NBD URI (connects briefly). */
gboolean ferry_nbd_uri_size (const char *uri, guint64 *size, GError **error);

/* Digests of the given chunks of an export, computed from its content
 * (see above). digests gets n_indexes strings (char[FERRY_COPY_DIGEST_LEN]
 * each, consecutive). Blocking. */
gboolean ferry_nbd_chunk_digests (const char *uri, const guint64 *indexes, guint n_indexes,
                                  char *digests, GCancellable *cancellable, GError **error);

/* Connections worth opening for a delta whose bitmap marks dirty_bytes:
 * enough for the chunks that much contiguous data spans (a worker keeps
 * taking chunks, so scattered changes are still all copied), at least
 * one, which scans the bitmap. */
guint ferry_copy_connections_for_delta (guint64 dirty_bytes);

/* Number of chunks of a disk of `size` bytes. */
guint64 ferry_copy_chunk_count (guint64 size);

G_END_DECLS
