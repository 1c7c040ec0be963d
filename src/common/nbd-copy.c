/* ferry — disk copy engine (see nbd-copy.h). */
#include "nbd-copy.h"

#include <errno.h>
#include <libnbd.h>
#include <string.h>
#include <xxhash.h>

#include "ferry-error.h"
#include "nbd-poll.h"

#define DEFAULT_CONNECTIONS 8
#define DEFAULT_IN_FLIGHT   8
#define DEFAULT_STALL_S     30
#define POLL_SLICE_MS       500
#define ZERO_BLOCK          4096
#define CHUNKS_PER_FLUSH    4

/* ---- rate limit ----------------------------------------------------------- */

struct _FerryRateLimit {
  GMutex lock;
  guint64 bytes_per_s;
  double tokens;
  gint64 refilled_us;
};

FerryRateLimit *
ferry_rate_limit_new (guint64 bytes_per_s)
{
  FerryRateLimit *limit = g_new0 (FerryRateLimit, 1);
  g_mutex_init (&limit->lock);
  limit->bytes_per_s = bytes_per_s;
  limit->refilled_us = g_get_monotonic_time ();
  return limit;
}

void
ferry_rate_limit_set (FerryRateLimit *limit, guint64 bytes_per_s)
{
  g_mutex_lock (&limit->lock);
  limit->bytes_per_s = bytes_per_s;
  g_mutex_unlock (&limit->lock);
}

void
ferry_rate_limit_free (FerryRateLimit *limit)
{
  if (limit == NULL)
    return;
  g_mutex_clear (&limit->lock);
  g_free (limit);
}

gboolean
ferry_rate_limit_acquire (FerryRateLimit *limit, guint64 bytes, GCancellable *cancellable)
{
  if (limit == NULL)
    return !g_cancellable_is_cancelled (cancellable);
  for (;;)
    {
      if (g_cancellable_is_cancelled (cancellable))
        return FALSE;
      gint64 wait_us;
      g_mutex_lock (&limit->lock);
      if (limit->bytes_per_s == 0)
        {
          g_mutex_unlock (&limit->lock);
          return TRUE;
        }
      gint64 now = g_get_monotonic_time ();
      /* At most a quarter second of burst, so a limit holds over short
       * windows too; a request larger than that may borrow (go negative). */
      double burst = MAX ((double) limit->bytes_per_s / 4, 1.0);
      limit->tokens = MIN (burst, limit->tokens + (double) (now - limit->refilled_us)
                                                    * (double) limit->bytes_per_s / 1e6);
      limit->refilled_us = now;
      if (limit->tokens > 0)
        {
          limit->tokens -= (double) bytes;
          g_mutex_unlock (&limit->lock);
          return TRUE;
        }
      wait_us = (gint64) (-limit->tokens * 1e6 / (double) limit->bytes_per_s) + 1000;
      g_mutex_unlock (&limit->lock);
      /* Pacing, not waiting for an event: sleep in slices so that
       * cancellation and a raised limit take effect quickly. */
      g_usleep (MIN (wait_us, 100000));
    }
}

/* ---- libnbd plumbing --------------------------------------------------------- */

static void
set_nbd_error (GError **error, const char *what)
{
  int errnum = nbd_get_errno ();
  const char *message = nbd_get_error ();
  FerryErrorCode code = FERRY_ERROR_UNAVAILABLE;
  if (errnum == ENOSPC || errnum == EDQUOT)
    code = FERRY_ERROR_NO_SPACE;
  g_set_error (error, FERRY_ERROR, code, "%s: %s", what, message ? message : g_strerror (errnum));
}

/* Completion of one command: remembers the first failure of a batch. */
typedef struct {
  int first_errno;
} Batch;

static int
on_command_done (void *user_data, int *error)
{
  Batch *batch = user_data;
  if (*error != 0 && batch->first_errno == 0)
    batch->first_errno = *error;
  return 1; /* retire the command */
}

static gboolean
batch_check (Batch *batch, const char *what, GError **error)
{
  if (batch->first_errno == 0)
    return TRUE;
  FerryErrorCode code = FERRY_ERROR_FAILED;
  switch (batch->first_errno)
    {
    case ENOSPC:
    case EDQUOT:
      code = FERRY_ERROR_NO_SPACE;
      break;
    case ENOTCONN:
    case ESHUTDOWN:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case ETIMEDOUT:
      /* The connection died under the command: worth another attempt. */
      code = FERRY_ERROR_UNAVAILABLE;
      break;
    default:
      break;
    }
  g_set_error (error, FERRY_ERROR, code, "%s: %s", what, g_strerror (batch->first_errno));
  return FALSE;
}

/* Runs the handle until at most max_in_flight commands remain. A handle
 * that makes no progress for stall_s fails: a cut link would otherwise
 * leave TCP retransmitting for minutes. */
static gboolean
drain (struct nbd_handle *h, int max_in_flight, guint stall_s, GCancellable *cancellable,
       const char *what, GError **error)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) stall_s * G_USEC_PER_SEC;
  while (nbd_aio_in_flight (h) > max_in_flight)
    {
      int r = ferry_nbd_poll (h, POLL_SLICE_MS);
      if (r == -1)
        {
          set_nbd_error (error, what);
          return FALSE;
        }
      if (r == 1)
        deadline = g_get_monotonic_time () + (gint64) stall_s * G_USEC_PER_SEC;
      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        return FALSE;
      if (g_get_monotonic_time () > deadline)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT, "%s: no answer for %u s", what, stall_s);
          return FALSE;
        }
    }
  return TRUE;
}

/* polite: the connection works (no error on it), so say goodbye; nbd_close
 * alone tears TLS down mid-stream and the server logs an error. Never on
 * a failed connection: the goodbye would wait for a peer that may be gone. */
static void
close_handle (struct nbd_handle *h, gboolean polite)
{
  if (h == NULL)
    return;
  if (polite && nbd_aio_is_ready (h) && nbd_aio_in_flight (h) == 0)
    nbd_shutdown (h, 0);
  nbd_close (h);
}

static void
close_failed (struct nbd_handle *h)
{
  close_handle (h, FALSE);
}

/* extra_context: a meta context asked for besides base:allocation (a
 * dirty bitmap), or NULL. */
static struct nbd_handle *
connect_uri (const char *uri, const char *extra_context, guint stall_s, GCancellable *cancellable,
             GError **error)
{
  struct nbd_handle *h = nbd_create ();
  if (h == NULL)
    {
      set_nbd_error (error, "cannot create an NBD handle");
      return NULL;
    }
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1
      || (extra_context != NULL && nbd_add_meta_context (h, extra_context) == -1)
      || nbd_set_uri_allow_local_file (h, true) == -1
      || nbd_aio_connect_uri (h, uri) == -1)
    {
      g_autofree char *what = g_strdup_printf ("cannot connect to %s", uri);
      set_nbd_error (error, what);
      nbd_close (h);
      return NULL;
    }
  ferry_nbd_run_while_connecting (h, g_get_monotonic_time () + (gint64) stall_s * G_USEC_PER_SEC, cancellable,
                                  POLL_SLICE_MS);
  if (!nbd_aio_is_ready (h))
    {
      g_autofree char *what = g_strdup_printf ("cannot connect to %s", uri);
      if (g_cancellable_is_cancelled (cancellable))
        g_cancellable_set_error_if_cancelled (cancellable, error);
      else if (nbd_aio_is_connecting (h))
        g_set_error (error, FERRY_ERROR, FERRY_ERROR_TIMEOUT, "%s: no answer for %u s", what, stall_s);
      else
        set_nbd_error (error, what);
      nbd_close (h);
      return NULL;
    }
  return h;
}

/* A source connection for the copy: one opened ahead if there is one
 * ready, else a new one. */
static struct nbd_handle *
connect_source (const char *uri, const char *extra_context, const FerryNbdCopyOptions *options,
                GCancellable *cancellable, GError **error)
{
  struct nbd_handle *h = ferry_nbd_preconnect_claim (options->preconnected, uri, extra_context,
                                                     options->stall_timeout_s, cancellable);
  return h != NULL ? h : connect_uri (uri, extra_context, options->stall_timeout_s, cancellable, error);
}

/* ---- extents --------------------------------------------------------------- */

typedef struct {
  guint64 offset;
  guint64 length;
} Range;

typedef struct {
  const char *context; /* the meta context read */
  gboolean dirty;      /* select dirty extents (a bitmap), else not-known-zero ones */
  GArray *data;        /* of Range: the selected extents */
  guint64 covered_to;  /* absolute end of what the replies described */
} ExtentScan;

/* A dirty bitmap's context marks dirty blocks with flag 1. */
#define DIRTY_FLAG 1u

static int
on_extents (void *user_data, const char *metacontext, uint64_t offset, uint32_t *entries,
            size_t n_entries, int *error)
{
  ExtentScan *scan = user_data;
  if (strcmp (metacontext, scan->context) != 0)
    return 0;
  guint64 position = offset;
  for (size_t i = 0; i + 1 < n_entries; i += 2)
    {
      guint64 length = entries[i];
      gboolean selected = scan->dirty ? (entries[i + 1] & DIRTY_FLAG) != 0
                                      : !(entries[i + 1] & LIBNBD_STATE_ZERO);
      if (selected && length > 0)
        {
          Range *last = scan->data->len ? &g_array_index (scan->data, Range, scan->data->len - 1) : NULL;
          if (last != NULL && last->offset + last->length == position)
            last->length += length;
          else
            g_array_append_val (scan->data, ((Range) { position, length }));
        }
      position += length;
    }
  scan->covered_to = MAX (scan->covered_to, position);
  return 0;
}

/* The ranges of [offset, offset+length), clipped, that block status of
 * `context` selects: not known zero (base:allocation), or dirty (a
 * bitmap's context). */
static GArray *
scan_ranges (struct nbd_handle *h, const char *context, gboolean dirty, guint64 offset, guint64 length,
             guint stall_s, GCancellable *cancellable, GError **error)
{
  g_autoptr (GArray) data = g_array_new (FALSE, FALSE, sizeof (Range));
  guint64 end = offset + length;
  guint64 position = offset;

  if (!nbd_can_meta_context (h, context))
    {
      if (dirty)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                       "the source does not export the dirty bitmap '%s'", context);
          return NULL;
        }
      /* No block status: everything is data (still zero-detected). */
      g_array_append_val (data, ((Range) { offset, length }));
      return g_steal_pointer (&data);
    }
  while (position < end)
    {
      ExtentScan scan = { .context = context, .dirty = dirty, .data = data, .covered_to = position };
      Batch batch = { 0 };
      /* One request describes at most 1 GiB (the protocol's lengths are
       * 32-bit; servers answer large ones in pieces anyway). */
      if (nbd_aio_block_status (h, MIN (end - position, (guint64) 1 << 30), position,
                                (nbd_extent_callback) { .callback = on_extents, .user_data = &scan },
                                (nbd_completion_callback) { .callback = on_command_done, .user_data = &batch },
                                0) == -1)
        {
          set_nbd_error (error, "block status");
          return NULL;
        }
      if (!drain (h, 0, stall_s, cancellable, "block status", error)
          || !batch_check (&batch, "block status", error))
        return NULL;
      if (scan.covered_to <= position)
        {
          g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                       "block status at %" G_GUINT64_FORMAT " described nothing", position);
          return NULL;
        }
      position = scan.covered_to;
    }
  /* Replies may run past the range asked for. */
  for (guint i = 0; i < data->len; i++)
    {
      Range *range = &g_array_index (data, Range, i);
      guint64 range_end = MIN (range->offset + range->length, end);
      range->offset = MAX (range->offset, offset);
      range->length = range_end > range->offset ? range_end - range->offset : 0;
    }
  return g_steal_pointer (&data);
}

static GArray *
data_ranges (struct nbd_handle *h, guint64 offset, guint64 length, guint stall_s,
             GCancellable *cancellable, GError **error)
{
  return scan_ranges (h, LIBNBD_CONTEXT_BASE_ALLOCATION, FALSE, offset, length, stall_s, cancellable, error);
}

/* The parts of sorted, disjoint ranges inside [offset, offset+length). */
static GArray *
ranges_within (GArray *ranges, guint64 offset, guint64 length)
{
  GArray *inside = g_array_new (FALSE, FALSE, sizeof (Range));
  guint64 end = offset + length;
  /* The first range that ends past offset. */
  guint low = 0, high = ranges->len;
  while (low < high)
    {
      guint middle = low + (high - low) / 2;
      const Range *range = &g_array_index (ranges, Range, middle);
      if (range->offset + range->length <= offset)
        low = middle + 1;
      else
        high = middle;
    }
  for (guint i = low; i < ranges->len; i++)
    {
      const Range *range = &g_array_index (ranges, Range, i);
      if (range->offset >= end)
        break;
      guint64 start = MAX (range->offset, offset);
      guint64 stop = MIN (range->offset + range->length, end);
      if (start < stop)
        g_array_append_val (inside, ((Range) { start, stop - start }));
    }
  return inside;
}

/* The parts of sorted, disjoint range lists a and b that both cover. */
static GArray *
intersect_ranges (GArray *a, GArray *b)
{
  GArray *both = g_array_new (FALSE, FALSE, sizeof (Range));
  guint i = 0, j = 0;
  while (i < a->len && j < b->len)
    {
      const Range *x = &g_array_index (a, Range, i);
      const Range *y = &g_array_index (b, Range, j);
      guint64 start = MAX (x->offset, y->offset);
      guint64 end = MIN (x->offset + x->length, y->offset + y->length);
      if (start < end)
        g_array_append_val (both, ((Range) { start, end - start }));
      if (x->offset + x->length < y->offset + y->length)
        i++;
      else
        j++;
    }
  return both;
}

/* What a streamed chunk's reader tells its writer: these bytes of the
 * buffer hold the source's data now; or, last, that the reads ended. */
typedef struct {
  Range range;
  gboolean end;
  gboolean ok;          /* end: every read arrived */
  guint64 bytes_read;   /* end: what the reads asked of the source */
} Piece;

/* One read of read_ranges: its part of the batch, and where to say that
 * its bytes have arrived. */
typedef struct {
  Batch *batch;
  GAsyncQueue *pieces;
  Range range;
} PieceRead;

static int
on_piece_read (void *user_data, int *error)
{
  PieceRead *read = user_data;
  on_command_done (read->batch, error);
  if (*error == 0 && read->pieces != NULL)
    {
      Piece *piece = g_new0 (Piece, 1);
      piece->range = read->range;
      g_async_queue_push (read->pieces, piece);
    }
  return 1;
}

/* Reads the ranges into buf (buf[0] is absolute offset `base`), several
 * requests in flight. With `pieces`, each read's Range is pushed there as
 * soon as its bytes are in buf (in the order they arrive), so a writer
 * can pass them on while the rest is still on the way. */
static gboolean
read_ranges (struct nbd_handle *h, guint8 *buf, guint64 base, GArray *ranges, guint in_flight,
             FerryRateLimit *limit, guint stall_s, GCancellable *cancellable, GAsyncQueue *pieces,
             guint64 *bytes_read, GError **error)
{
  Batch batch = { 0 };
  for (guint i = 0; i < ranges->len; i++)
    {
      const Range *range = &g_array_index (ranges, Range, i);
      for (guint64 done = 0; done < range->length;)
        {
          guint64 count = MIN (range->length - done, FERRY_COPY_MAX_REQUEST);
          guint64 offset = range->offset + done;
          if (!ferry_rate_limit_acquire (limit, count, cancellable))
            return !g_cancellable_set_error_if_cancelled (cancellable, error);
          if (!drain (h, (int) in_flight - 1, stall_s, cancellable, "read", error))
            return FALSE;
          PieceRead *read = g_new (PieceRead, 1);
          *read = (PieceRead) { &batch, pieces, { offset, count } };
          if (nbd_aio_pread (h, buf + (offset - base), count, offset,
                             (nbd_completion_callback) { .callback = on_piece_read, .user_data = read,
                                                         .free = g_free },
                             0) == -1)
            {
              set_nbd_error (error, "read");
              return FALSE;
            }
          done += count;
          if (bytes_read)
            *bytes_read += count;
        }
    }
  return drain (h, 0, stall_s, cancellable, "read", error) && batch_check (&batch, "read", error);
}

static gboolean
block_is_zero (const guint8 *block, gsize length)
{
  /* memcmp against itself shifted by one word: zero iff the first word is
   * zero and every word equals its neighbour. */
  if (length < sizeof (guint64))
    {
      for (gsize i = 0; i < length; i++)
        if (block[i])
          return FALSE;
      return TRUE;
    }
  guint64 first;
  memcpy (&first, block, sizeof first);
  return first == 0 && memcmp (block, block + sizeof first, length - sizeof first) == 0;
}

/* The digest over a chunk held in buf (see nbd-copy.h). */
static void
digest_buffer (const guint8 *buf, guint64 length, char out[FERRY_COPY_DIGEST_LEN])
{
  /* Allocated: the state's layout is not part of libxxhash's ABI. */
  XXH3_state_t *state = XXH3_createState ();
  g_assert (state != NULL);
  XXH3_128bits_reset (state);
  for (guint64 block = 0; block * FERRY_COPY_DIGEST_BLOCK < length; block++)
    {
      guint64 start = block * FERRY_COPY_DIGEST_BLOCK;
      guint64 size = MIN (FERRY_COPY_DIGEST_BLOCK, length - start);
      if (block_is_zero (buf + start, size))
        continue;
      guint64 index_le = GUINT64_TO_LE (block);
      XXH3_128bits_update (state, &index_le, sizeof index_le);
      XXH3_128bits_update (state, buf + start, size);
    }
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash (&canonical, XXH3_128bits_digest (state));
  XXH3_freeState (state);
  for (guint i = 0; i < sizeof canonical.digest; i++)
    g_snprintf (out + 2 * i, 3, "%02x", canonical.digest[i]);
}

/* Zeroes the parts of buf (absolute offset base) that no range covers:
 * the reads fill the rest. */
static void
fill_gaps (guint8 *buf, guint64 base, guint64 length, GArray *ranges)
{
  guint64 position = base;
  for (guint i = 0; i < ranges->len; i++)
    {
      const Range *range = &g_array_index (ranges, Range, i);
      if (range->offset > position)
        memset (buf + (position - base), 0, range->offset - position);
      position = MAX (position, range->offset + range->length);
    }
  if (position < base + length)
    memset (buf + (position - base), 0, base + length - position);
}

/* Reads a chunk of h into buf (holes as zeroes) and digests it. */
static gboolean
digest_chunk (struct nbd_handle *h, guint64 offset, guint64 length, guint8 *buf, guint in_flight,
              guint stall_s, GCancellable *cancellable, char out[FERRY_COPY_DIGEST_LEN],
              GError **error)
{
  g_autoptr (GArray) ranges = data_ranges (h, offset, length, stall_s, cancellable, error);
  if (ranges == NULL)
    return FALSE;
  if (ranges->len == 0)
    {
      /* Known zero throughout: nothing to read or scan. */
      digest_buffer (NULL, 0, out);
      return TRUE;
    }
  fill_gaps (buf, offset, length, ranges);
  if (!read_ranges (h, buf, offset, ranges, in_flight, NULL, stall_s, cancellable, NULL, NULL, error))
    return FALSE;
  digest_buffer (buf, length, out);
  return TRUE;
}

guint64
ferry_copy_chunk_count (guint64 size)
{
  return (size + FERRY_COPY_CHUNK_BYTES - 1) / FERRY_COPY_CHUNK_BYTES;
}

guint
ferry_copy_connections_for_delta (guint64 dirty_bytes)
{
  if (dirty_bytes == 0)
    return 1;
  /* Contiguous data not aligned to chunks touches one chunk more. */
  return (guint) MIN ((guint64) DEFAULT_CONNECTIONS, ferry_copy_chunk_count (dirty_bytes) + 1);
}

/* ---- the copy ----------------------------------------------------------------- */

struct _FerryNbdCopy {
  char *source_uri;
  char *destination_uri;
  char *dirty_context;         /* "qemu:dirty-bitmap:NAME" for a delta */
  guint64 fault_chunk;         /* test hook (FERRY_FAULT_CORRUPT_CHUNK); G_MAXUINT64 = none */
  FerryNbdCopyOptions options;
  GArray *selected;            /* guint64 chunk indexes; NULL = all */
  /* A delta's dirty extents over the whole disk (sorted Range), scanned
   * once before the workers start and only read by them: the bitmap is
   * frozen while a pass is copied. */
  GArray *dirty_ranges;
  FerryCopyChunkDone chunk_done;
  gpointer chunk_done_data;
  FerryCopyChunkStarted chunk_started;
  gpointer chunk_started_data;

  GMutex lock;                 /* guards everything below */
  gboolean work_ready;         /* the work list is set, or the copy stopped */
  GCond work_ready_cond;
  guint64 next_position;       /* into the work list */
  guint64 n_work;
  GError *first_error;
  GCancellable *stop;          /* cancelled on the first error or by the caller */
  FerryNbdCopyProgress progress;
};

FerryNbdCopy *
ferry_nbd_copy_new (const char *source_uri, const char *destination_uri,
                    const FerryNbdCopyOptions *options)
{
  FerryNbdCopy *copy = g_new0 (FerryNbdCopy, 1);
  copy->source_uri = g_strdup (source_uri);
  copy->destination_uri = g_strdup (destination_uri);
  if (options)
    copy->options = *options;
  if (copy->options.connections == 0)
    copy->options.connections = DEFAULT_CONNECTIONS;
  copy->options.connections = MIN (copy->options.connections, FERRY_COPY_MAX_CONNECTIONS);
  if (copy->options.requests_in_flight == 0)
    copy->options.requests_in_flight = DEFAULT_IN_FLIGHT;
  copy->options.requests_in_flight = MIN (copy->options.requests_in_flight, FERRY_COPY_MAX_IN_FLIGHT);
  if (copy->options.stall_timeout_s == 0)
    copy->options.stall_timeout_s = DEFAULT_STALL_S;
  if (copy->options.dirty_bitmap != NULL)
    copy->dirty_context = g_strdup_printf ("qemu:dirty-bitmap:%s", copy->options.dirty_bitmap);
  copy->options.dirty_bitmap = NULL; /* not ours to keep: dirty_context is */
  if (copy->options.preconnected != NULL)
    ferry_nbd_preconnect_ref (copy->options.preconnected);
  const char *fault = g_getenv ("FERRY_FAULT_CORRUPT_CHUNK");
  copy->fault_chunk = fault ? g_ascii_strtoull (fault, NULL, 10) : G_MAXUINT64;
  g_mutex_init (&copy->lock);
  g_cond_init (&copy->work_ready_cond);
  return copy;
}

void
ferry_nbd_copy_free (FerryNbdCopy *copy)
{
  if (copy == NULL)
    return;
  g_free (copy->source_uri);
  g_free (copy->destination_uri);
  g_free (copy->dirty_context);
  ferry_nbd_preconnect_unref (copy->options.preconnected);
  if (copy->selected)
    g_array_unref (copy->selected);
  g_clear_pointer (&copy->dirty_ranges, g_array_unref);
  g_clear_error (&copy->first_error);
  g_clear_object (&copy->stop);
  g_mutex_clear (&copy->lock);
  g_cond_clear (&copy->work_ready_cond);
  g_free (copy);
}

void
ferry_nbd_copy_select_chunks (FerryNbdCopy *copy, const guint64 *indexes, guint n_indexes)
{
  if (copy->selected)
    g_array_unref (copy->selected);
  copy->selected = g_array_sized_new (FALSE, FALSE, sizeof (guint64), n_indexes);
  g_array_append_vals (copy->selected, indexes, n_indexes);
}

void
ferry_nbd_copy_set_chunk_done (FerryNbdCopy *copy, FerryCopyChunkDone callback, gpointer user_data)
{
  copy->chunk_done = callback;
  copy->chunk_done_data = user_data;
}

void
ferry_nbd_copy_set_chunk_started (FerryNbdCopy *copy, FerryCopyChunkStarted callback, gpointer user_data)
{
  copy->chunk_started = callback;
  copy->chunk_started_data = user_data;
}

void
ferry_nbd_copy_get_progress (FerryNbdCopy *copy, FerryNbdCopyProgress *progress)
{
  g_mutex_lock (&copy->lock);
  *progress = copy->progress;
  g_mutex_unlock (&copy->lock);
}

/* Next chunk index to copy, or FALSE when the work is out (or stopped). */
static gboolean
take_chunk (FerryNbdCopy *copy, guint64 *index)
{
  gboolean found = FALSE;
  g_mutex_lock (&copy->lock);
  while (copy->next_position < copy->n_work && !g_cancellable_is_cancelled (copy->stop))
    {
      guint64 position = copy->next_position++;
      *index = copy->selected ? g_array_index (copy->selected, guint64, position) : position;
      if (*index < ferry_copy_chunk_count (copy->progress.size))
        {
          found = TRUE;
          break;
        }
    }
  g_mutex_unlock (&copy->lock);
  return found;
}

static void
record_failure (FerryNbdCopy *copy, GError *error)
{
  g_mutex_lock (&copy->lock);
  if (copy->first_error == NULL && !g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    copy->first_error = g_error_copy (error);
  g_mutex_unlock (&copy->lock);
  g_cancellable_cancel (copy->stop);
}

/* Writes the non-zero blocks of buf (absolute offset base) as requests of
 * up to FERRY_COPY_MAX_REQUEST; zero blocks are skipped, which keeps a
 * fresh destination sparse. */
static gboolean
write_nonzero (FerryNbdCopy *copy, struct nbd_handle *h, const guint8 *buf, guint64 base,
               guint64 length, guint64 *bytes_written, GError **error)
{
  Batch batch = { 0 };
  guint stall_s = copy->options.stall_timeout_s;
  guint64 run_start = 0, run_length = 0;

  /* One pass past the end (size 0) sends the last run. Zeroes are found
   * at the file system's block size, so the destination allocates no
   * more than the source did. */
  for (guint64 position = 0; position < length + ZERO_BLOCK; position += ZERO_BLOCK)
    {
      guint64 size = position < length ? MIN (ZERO_BLOCK, length - position) : 0;
      gboolean data = size > 0 && !block_is_zero (buf + position, size);
      if (data && run_length == 0)
        run_start = position;
      if (data)
        run_length += size;
      if (run_length > 0 && (!data || run_length >= FERRY_COPY_MAX_REQUEST))
        {
          if (!drain (h, (int) copy->options.requests_in_flight - 1, stall_s, copy->stop, "write", error))
            return FALSE;
          if (nbd_aio_pwrite (h, buf + run_start, run_length, base + run_start,
                              (nbd_completion_callback) { .callback = on_command_done, .user_data = &batch },
                              0) == -1)
            {
              set_nbd_error (error, "write");
              return FALSE;
            }
          *bytes_written += run_length;
          run_length = 0;
        }
    }
  return drain (h, 0, stall_s, copy->stop, "write", error) && batch_check (&batch, "write", error);
}

/* A delta's dirty ranges: runs of data blocks are written, runs of zero
 * blocks zeroed (the destination may punch holes), so the destination
 * ends up with what the source holds there now. */
static gboolean
write_delta (FerryNbdCopy *copy, struct nbd_handle *h, const guint8 *buf, guint64 base, GArray *dirty,
             guint64 *bytes_written, GError **error)
{
  Batch batch = { 0 };
  guint stall_s = copy->options.stall_timeout_s;
  for (guint i = 0; i < dirty->len; i++)
    {
      const Range *range = &g_array_index (dirty, Range, i);
      guint64 run_start = range->offset, position = range->offset, end = range->offset + range->length;
      gboolean run_data = FALSE;
      while (position <= end)
        {
          guint64 size = position < end ? MIN (ZERO_BLOCK, end - position) : 0;
          gboolean data = size > 0 && !block_is_zero (buf + (position - base), size);
          gboolean flush_run = position > run_start
                               && (size == 0 || data != run_data || position - run_start >= FERRY_COPY_MAX_REQUEST);
          if (flush_run)
            {
              guint64 length = position - run_start;
              int r;
              if (!drain (h, (int) copy->options.requests_in_flight - 1, stall_s, copy->stop, "write", error))
                return FALSE;
              nbd_completion_callback done = { .callback = on_command_done, .user_data = &batch };
              if (run_data)
                r = nbd_aio_pwrite (h, buf + (run_start - base), length, run_start, done, 0);
              else
                r = nbd_aio_zero (h, length, run_start, done, 0);
              if (r == -1)
                {
                  set_nbd_error (error, run_data ? "write" : "write zeroes");
                  return FALSE;
                }
              *bytes_written += length;
              run_start = position;
            }
          if (size == 0)
            break;
          if (position == run_start)
            run_data = data;
          position += size;
        }
    }
  return drain (h, 0, stall_s, copy->stop, "write", error) && batch_check (&batch, "write", error);
}

/* Counts a chunk done and tells the caller. */
static void
report_done (FerryNbdCopy *copy, const FerryCopyChunk *chunk)
{
  g_mutex_lock (&copy->lock);
  copy->progress.chunks_done++;
  copy->progress.bytes_done += chunk->length;
  copy->progress.bytes_written += chunk->bytes_written;
  copy->progress.chunks_changed += chunk->changed;
  g_mutex_unlock (&copy->lock);
  if (copy->chunk_done)
    copy->chunk_done (chunk, copy->chunk_done_data);
}

/* Makes the worker's writes durable, then reports its chunks done; a
 * crash before the flush only costs these chunks again. */
static gboolean
flush_and_report (FerryNbdCopy *copy, struct nbd_handle *h, GArray *pending, GError **error)
{
  Batch batch = { 0 };
  if (pending->len == 0)
    return TRUE;
  if (nbd_aio_flush (h, (nbd_completion_callback) { .callback = on_command_done, .user_data = &batch },
                     0) == -1)
    {
      set_nbd_error (error, "flush");
      return FALSE;
    }
  if (!drain (h, 0, copy->options.stall_timeout_s, copy->stop, "flush", error)
      || !batch_check (&batch, "flush", error))
    return FALSE;
  for (guint i = 0; i < pending->len; i++)
    report_done (copy, &g_array_index (pending, FerryCopyChunk, i));
  g_array_set_size (pending, 0);
  return TRUE;
}

/* The parts of [offset, offset+length) that sorted, disjoint ranges leave out. */
static GArray *
complement_ranges (GArray *ranges, guint64 offset, guint64 length)
{
  GArray *gaps = g_array_new (FALSE, FALSE, sizeof (Range));
  guint64 position = offset;
  for (guint i = 0; i < ranges->len; i++)
    {
      const Range *range = &g_array_index (ranges, Range, i);
      if (range->offset > position)
        g_array_append_val (gaps, ((Range) { position, range->offset - position }));
      position = MAX (position, range->offset + range->length);
    }
  if (position < offset + length)
    g_array_append_val (gaps, ((Range) { position, offset + length - position }));
  return gaps;
}

/* Completes buf (holding the dirty parts just written) with the parts
 * the pass did not touch, as the destination holds them (a local read of
 * its data extents), so the whole chunk can be digested without reading
 * back what was just written. */
static gboolean
read_clean_parts (FerryNbdCopy *copy, struct nbd_handle *dst, guint8 *buf, const FerryCopyChunk *chunk,
                  GArray *dirty, GError **error)
{
  guint stall_s = copy->options.stall_timeout_s;
  g_autoptr (GArray) clean = complement_ranges (dirty, chunk->offset, chunk->length);
  if (clean->len == 0)
    return TRUE;
  g_autoptr (GArray) stored = data_ranges (dst, chunk->offset, chunk->length, stall_s, copy->stop, error);
  if (stored == NULL)
    return FALSE;
  g_autoptr (GArray) reads = intersect_ranges (stored, clean);
  /* fill_gaps zeroed everything the source reads left out. */
  return read_ranges (dst, buf, chunk->offset, reads, copy->options.requests_in_flight, NULL, stall_s, copy->stop,
                      NULL, NULL, error);
}

/* ---- one connection pair: a reader and a writer ------------------------------ */

/* Each worker is two threads: the reader keeps its source connection
 * busy (block status, reads) while the writer writes, verifies and
 * flushes the previous chunk on the destination, so a write or a flush
 * never leaves the link idle. Two buffers go round between them. */
#define BUFFERS_PER_WORKER 2

/* A chunk on its way to the writer; buf NULL ends the stream. The writer
 * gets it before its data arrives: the reader then sends each read's
 * Piece as it lands in buf (and an end Piece), so the writer writes while
 * the rest crosses the link, and a chunk's last write (and, for a delta,
 * the local read of its clean parts) no longer waits for its last read.
 * A 16 MiB chunk took 20-47 ms to write and digest after its reads. */
typedef struct {
  FerryCopyChunk chunk;
  GArray *ranges;       /* full copy: the data ranges read; delta: the dirty ranges */
  GArray *reads;        /* what is read from the source (NULL: nothing) */
  GAsyncQueue *pieces;  /* Piece*, while reads is not empty */
  guint64 fault_at;     /* test hook: the byte to damage on arrival; G_MAXUINT64 = none */
  guint8 *buf;
} ReadChunk;

static void
read_chunk_free (ReadChunk *item)
{
  if (item->ranges)
    g_array_unref (item->ranges);
  if (item->reads)
    g_array_unref (item->reads);
  if (item->pieces)
    g_async_queue_unref (item->pieces);
  g_free (item);
}

/* Test hook: with FERRY_FAULT_CORRUPT_CHUNK=N in the environment, the
 * first read of chunk N in this process is damaged after it arrived (one
 * byte flipped), as a faulty read or link would; the digest comparison
 * with the source must catch it and copy the chunk again. */
static gboolean
fault_corrupts (FerryNbdCopy *copy, guint64 index)
{
  static gint fired = 0;
  return index == copy->fault_chunk && g_atomic_int_compare_and_exchange (&fired, 0, 1);
}

/* The reader's half of a chunk, before its data: what to copy (block
 * status of the data, or the dirty bitmap's extents for a delta) and
 * what to read, the rest of the buffer zeroed. */
static gboolean
plan_chunk (FerryNbdCopy *copy, struct nbd_handle *src, ReadChunk *item, GError **error)
{
  FerryCopyChunk *chunk = &item->chunk;
  guint stall_s = copy->options.stall_timeout_s;
  g_autoptr (GArray) reads = NULL;

  item->fault_at = G_MAXUINT64;
  if (copy->dirty_context != NULL)
    {
      item->ranges = ranges_within (copy->dirty_ranges, chunk->offset, chunk->length);
      if (item->ranges->len == 0)
        return TRUE; /* unchanged since the last pass */
      if (copy->chunk_started)
        copy->chunk_started (chunk->index, copy->chunk_started_data);
      g_autoptr (GArray) data = data_ranges (src, chunk->offset, chunk->length, stall_s, copy->stop, error);
      if (data == NULL)
        return FALSE;
      reads = intersect_ranges (data, item->ranges);
    }
  else
    {
      if (copy->chunk_started)
        copy->chunk_started (chunk->index, copy->chunk_started_data);
      item->ranges = data_ranges (src, chunk->offset, chunk->length, stall_s, copy->stop, error);
      if (item->ranges == NULL)
        return FALSE;
      if (item->ranges->len == 0)
        return TRUE; /* nothing but zeroes: nothing crosses the link */
      reads = g_array_ref (item->ranges);
    }
  chunk->changed = TRUE;
  fill_gaps (item->buf, chunk->offset, chunk->length, reads);
  if (reads->len > 0)
    {
      item->pieces = g_async_queue_new_full (g_free);
      if (fault_corrupts (copy, chunk->index))
        item->fault_at = g_array_index (reads, Range, 0).offset;
      item->reads = g_steal_pointer (&reads);
    }
  return TRUE;
}

/* The reader's other half, once the writer has the chunk: the reads,
 * each announced as it arrives, then the end. */
static gboolean
stream_chunk (FerryNbdCopy *copy, struct nbd_handle *src, guint8 *buf, guint64 base, GArray *reads,
              GAsyncQueue *pieces, GError **error)
{
  guint64 bytes_read = 0;
  gboolean ok = read_ranges (src, buf, base, reads, copy->options.requests_in_flight, copy->options.rate_limit,
                             copy->options.stall_timeout_s, copy->stop, pieces, &bytes_read, error);
  /* Counted as read even if the chunk fails later: this is what crossed
   * the link (requests issued; a broken one may have carried less). */
  g_mutex_lock (&copy->lock);
  copy->progress.bytes_read += bytes_read;
  g_mutex_unlock (&copy->lock);
  Piece *end = g_new0 (Piece, 1);
  *end = (Piece) { .end = TRUE, .ok = ok, .bytes_read = bytes_read };
  g_async_queue_push (pieces, end);
  return ok;
}

/* The writer's wait for a streamed chunk's data: calls write_piece for
 * each read as it arrives (the test hook's damage done first). FALSE
 * when the reads failed (the reader says why) or a write did; either
 * way it returns only after the reader's end, as until then the reader
 * may still fill the buffer. write_piece NULL: only that wait. */
typedef gboolean (*WritePiece) (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, const Range *range,
                                GError **error);

static gboolean
write_pieces (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, WritePiece write_piece, GError **error)
{
  gboolean ok = write_piece != NULL;
  for (;;)
    {
      g_autofree Piece *piece = g_async_queue_pop (item->pieces);
      if (piece->end)
        {
          item->chunk.bytes_read = piece->bytes_read;
          return ok && piece->ok;
        }
      if (!ok)
        continue;
      if (item->fault_at >= piece->range.offset && item->fault_at < piece->range.offset + piece->range.length)
        item->buf[item->fault_at - item->chunk.offset] ^= 0x5a;
      ok = write_piece (copy, dst, item, &piece->range, error);
    }
}

static gboolean
write_piece_delta (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, const Range *range, GError **error)
{
  g_autoptr (GArray) one = g_array_new (FALSE, FALSE, sizeof (Range));
  g_array_append_val (one, *range);
  return write_delta (copy, dst, item->buf, item->chunk.offset, one, &item->chunk.bytes_written, error);
}

static gboolean
write_piece_full (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, const Range *range, GError **error)
{
  return write_nonzero (copy, dst, item->buf + (range->offset - item->chunk.offset), range->offset, range->length,
                        &item->chunk.bytes_written, error);
}

/* The writer's half of a delta's chunk: only the dirty ranges are
 * written; the digest is of the whole chunk as the destination holds it
 * then. What needs no source data goes first: the parts the pass did not
 * touch are read locally and dirty blocks that read as zero now (no
 * reads there) are zeroed; then each read as it arrives. */
static gboolean
write_chunk_delta (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, GError **error)
{
  FerryCopyChunk *chunk = &item->chunk;
  if (item->ranges->len == 0)
    return TRUE;
  g_autoptr (GArray) not_read = item->reads ? complement_ranges (item->reads, chunk->offset, chunk->length) : NULL;
  g_autoptr (GArray) zeroed = not_read ? intersect_ranges (item->ranges, not_read) : g_array_ref (item->ranges);
  gboolean ok = read_clean_parts (copy, dst, item->buf, chunk, item->ranges, error)
                && write_delta (copy, dst, item->buf, chunk->offset, zeroed, &chunk->bytes_written, error);
  if (item->pieces != NULL)
    ok = write_pieces (copy, dst, item, ok ? write_piece_delta : NULL, error) && ok;
  if (!ok)
    return FALSE;
  digest_buffer (item->buf, chunk->length, chunk->digest);
  return TRUE;
}

/* The writer's half of a chunk: written (holes and zeroes skipped),
 * digested, verified when asked; then added to `pending` (done once
 * flushed). */
static gboolean
write_chunk (FerryNbdCopy *copy, struct nbd_handle *dst, ReadChunk *item, guint8 *readback, GArray *pending,
             GError **error)
{
  FerryCopyChunk *chunk = &item->chunk;
  char sent[FERRY_COPY_DIGEST_LEN];

  if (copy->dirty_context != NULL)
    {
      if (!write_chunk_delta (copy, dst, item, error))
        return FALSE;
      g_array_append_val (pending, *chunk);
      return TRUE;
    }
  if (!chunk->changed)
    digest_buffer (NULL, 0, sent);
  else
    {
      /* Only the reads carry data: the rest of the buffer is zeroes,
       * which write_nonzero would skip anyway. */
      if (!write_pieces (copy, dst, item, write_piece_full, error))
        return FALSE;
      digest_buffer (item->buf, chunk->length, sent);
    }
  chunk->changed = TRUE; /* a full copy's chunk always counts as copied */
  /* The digest the source's own is compared with: of what was written,
   * or of what the destination holds now, read back through its export
   * (for a chunk without data, block status alone unless an earlier
   * attempt left data there). */
  if (!copy->options.verify_readback)
    memcpy (chunk->digest, sent, sizeof chunk->digest);
  else if (!digest_chunk (dst, chunk->offset, chunk->length, readback, copy->options.requests_in_flight,
                          copy->options.stall_timeout_s, copy->stop, chunk->digest, error))
    return FALSE;
  if (strcmp (sent, chunk->digest) != 0)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "chunk %" G_GUINT64_FORMAT " (offset %" G_GUINT64_FORMAT
                   "): the destination holds other data than was written", chunk->index, chunk->offset);
      return FALSE;
    }
  g_array_append_val (pending, *chunk);
  return TRUE;
}

typedef struct {
  FerryNbdCopy *copy;
  struct nbd_handle *src;   /* may be pre-connected (worker 0) */
  struct nbd_handle *dst;
  GAsyncQueue *filled;      /* ReadChunk*: reader → writer */
  GAsyncQueue *empty;       /* guint8* buffers: writer → reader */
} Worker;

/* Chunks without data are cheap to redo and are batched; a chunk that
 * carried data is made durable right away, so that an interruption costs
 * at most the data in flight. */
static gboolean
flush_due (GArray *pending)
{
  guint64 written = 0;
  for (guint i = 0; i < pending->len; i++)
    written += g_array_index (pending, FerryCopyChunk, i).bytes_written;
  return pending->len >= CHUNKS_PER_FLUSH || written > 0;
}

/* The writer thread: takes chunks until the reader's end marker, and
 * always hands each buffer back (the reader may wait for one), even
 * after a failure. */
static gpointer
writer_run (gpointer user_data)
{
  Worker *worker = user_data;
  FerryNbdCopy *copy = worker->copy;
  g_autoptr (GError) error = NULL;
  g_autofree guint8 *readback = copy->options.verify_readback ? g_malloc (FERRY_COPY_CHUNK_BYTES) : NULL;
  g_autoptr (GArray) pending = g_array_new (FALSE, FALSE, sizeof (FerryCopyChunk));
  gboolean ok = TRUE;
  for (;;)
    {
      ReadChunk *item = g_async_queue_pop (worker->filled);
      guint8 *buf = item->buf;
      if (buf != NULL && ok && !g_cancellable_is_cancelled (copy->stop))
        ok = write_chunk (copy, worker->dst, item, readback, pending, &error)
             && (!flush_due (pending) || flush_and_report (copy, worker->dst, pending, &error));
      else if (item->pieces != NULL)
        write_pieces (copy, worker->dst, item, NULL, NULL); /* the buffer is free once the reader is done */
      read_chunk_free (item);
      if (buf == NULL)
        break;
      g_async_queue_push (worker->empty, buf);
    }
  if (ok && !g_cancellable_is_cancelled (copy->stop))
    flush_and_report (copy, worker->dst, pending, &error);
  if (error != NULL)
    record_failure (copy, error);
  return NULL;
}

/* The reader, in the worker's own thread: chunk after chunk into
 * whichever buffer the writer has handed back, each handed to the writer
 * before its reads. */
static void
reader_run (Worker *worker, GError **error)
{
  FerryNbdCopy *copy = worker->copy;
  guint64 size = copy->progress.size; /* set before the workers start */
  guint64 index;
  while (take_chunk (copy, &index))
    {
      ReadChunk *item = g_new0 (ReadChunk, 1);
      item->chunk = (FerryCopyChunk) { .index = index, .offset = index * FERRY_COPY_CHUNK_BYTES };
      item->chunk.length = MIN ((guint64) FERRY_COPY_CHUNK_BYTES, size - item->chunk.offset);
      item->buf = g_async_queue_pop (worker->empty);
      if (!plan_chunk (copy, worker->src, item, error))
        {
          g_async_queue_push (worker->empty, item->buf);
          read_chunk_free (item);
          return;
        }
      if (item->pieces == NULL)
        {
          g_async_queue_push (worker->filled, item);
          continue;
        }
      /* The writer may be done with the item before this returns: what
       * the reads need is kept here. */
      g_autoptr (GAsyncQueue) pieces = g_async_queue_ref (item->pieces);
      g_autoptr (GArray) reads = g_array_ref (item->reads);
      guint8 *buf = item->buf;
      guint64 base = item->chunk.offset;
      g_async_queue_push (worker->filled, item);
      if (!stream_chunk (copy, worker->src, buf, base, reads, pieces, error))
        return;
    }
}

/* Lets the workers take chunks: the work list is set up, or the copy
 * stopped before it was (they find no work then). */
static void
open_work (FerryNbdCopy *copy)
{
  g_mutex_lock (&copy->lock);
  copy->work_ready = TRUE;
  g_cond_broadcast (&copy->work_ready_cond);
  g_mutex_unlock (&copy->lock);
}

static void
wait_for_work (FerryNbdCopy *copy)
{
  g_mutex_lock (&copy->lock);
  while (!copy->work_ready)
    g_cond_wait (&copy->work_ready_cond, &copy->lock);
  g_mutex_unlock (&copy->lock);
}

static gpointer
worker_run (gpointer user_data)
{
  Worker *worker = user_data;
  FerryNbdCopy *copy = worker->copy;
  g_autoptr (GError) error = NULL;

  if (worker->src == NULL)
    worker->src = connect_source (copy->source_uri, copy->dirty_context, &copy->options, copy->stop, &error);
  if (worker->src != NULL && worker->dst == NULL)
    worker->dst = connect_uri (copy->destination_uri, NULL, copy->options.stall_timeout_s, copy->stop, &error);
  if (error != NULL)
    {
      /* Said before the wait: it stops the set-up, which then reports it. */
      record_failure (copy, error);
      g_clear_error (&error);
    }
  wait_for_work (copy);
  if (worker->dst != NULL)
    {
      worker->filled = g_async_queue_new ();
      worker->empty = g_async_queue_new_full (g_free);
      for (guint i = 0; i < BUFFERS_PER_WORKER; i++)
        g_async_queue_push (worker->empty, g_malloc (FERRY_COPY_CHUNK_BYTES));
      GThread *writer = g_thread_new ("ferry-write", writer_run, worker);
      reader_run (worker, &error);
      g_async_queue_push (worker->filled, g_new0 (ReadChunk, 1)); /* the end */
      g_thread_join (writer);
      g_clear_pointer (&worker->filled, g_async_queue_unref);
      g_clear_pointer (&worker->empty, g_async_queue_unref);
    }
  /* The writer recorded its own failure; this is the reader's (or the
   * connection's). */
  if (error != NULL)
    record_failure (copy, error);
  gboolean polite = !g_cancellable_is_cancelled (copy->stop);
  close_handle (worker->src, polite);
  close_handle (worker->dst, polite);
  worker->src = worker->dst = NULL;
  return NULL;
}

static gboolean
export_size (struct nbd_handle *h, const char *uri, guint64 *size, GError **error)
{
  int64_t value = nbd_get_size (h);
  if (value < 0)
    {
      g_autofree char *what = g_strdup_printf ("size of %s", uri);
      set_nbd_error (error, what);
      return FALSE;
    }
  *size = (guint64) value;
  return TRUE;
}

/* A delta: one scan of the bitmap over the whole disk; chunks without a
 * dirty block are reported done (unchanged) at once, and only the others
 * go to the workers. Saves a round trip and a flush per clean chunk. */
static gboolean
skip_clean_chunks (FerryNbdCopy *copy, struct nbd_handle *src, guint64 n_chunks, GError **error)
{
  g_autoptr (GArray) dirty = scan_ranges (src, copy->dirty_context, TRUE, 0, copy->progress.size,
                                          copy->options.stall_timeout_s, copy->stop, error);
  if (dirty == NULL)
    return FALSE;
  g_autofree gboolean *is_dirty = g_new0 (gboolean, n_chunks);
  for (guint i = 0; i < dirty->len; i++)
    {
      const Range *range = &g_array_index (dirty, Range, i);
      if (range->length == 0)
        continue;
      for (guint64 chunk = range->offset / FERRY_COPY_CHUNK_BYTES;
           chunk <= (range->offset + range->length - 1) / FERRY_COPY_CHUNK_BYTES && chunk < n_chunks; chunk++)
        is_dirty[chunk] = TRUE;
    }
  g_autoptr (GArray) work = g_array_new (FALSE, FALSE, sizeof (guint64));
  for (guint64 position = 0; position < copy->n_work; position++)
    {
      guint64 index = copy->selected ? g_array_index (copy->selected, guint64, position) : position;
      if (index >= n_chunks)
        continue;
      if (is_dirty[index])
        {
          g_array_append_val (work, index);
          continue;
        }
      FerryCopyChunk chunk = { .index = index, .offset = index * FERRY_COPY_CHUNK_BYTES };
      chunk.length = MIN ((guint64) FERRY_COPY_CHUNK_BYTES, copy->progress.size - chunk.offset);
      report_done (copy, &chunk);
    }
  g_mutex_lock (&copy->lock);
  if (copy->selected)
    g_array_unref (copy->selected);
  copy->selected = g_steal_pointer (&work);
  copy->n_work = copy->selected->len;
  g_clear_pointer (&copy->dirty_ranges, g_array_unref);
  copy->dirty_ranges = g_steal_pointer (&dirty);
  g_mutex_unlock (&copy->lock);
  return TRUE;
}

/* The helpers (workers 1..n-1) connect in their own threads while the
 * calling thread connects worker 0 and sets the work up: every connection
 * is made at once, not one after the other (against a busy QEMU, a TLS
 * connection took 0.1 s). A delta's work is known only after its bitmap
 * scan, so it gets every connection; a resumed or repaired copy no more
 * than it has chunks. */
typedef struct {
  guint n;
  Worker *workers;
  GThread **threads;
} Workers;

static void
start_helpers (FerryNbdCopy *copy, Workers *workers)
{
  guint n = copy->options.connections;
  if (copy->selected != NULL)
    n = MIN (n, MAX (copy->selected->len, 1));
  workers->n = n;
  workers->workers = g_new0 (Worker, n);
  workers->threads = g_new0 (GThread *, n);
  for (guint i = 1; i < n; i++)
    {
      workers->workers[i] = (Worker) { copy, NULL, NULL };
      workers->threads[i] = g_thread_new ("ferry-copy", worker_run, &workers->workers[i]);
    }
}

static void
join_helpers (Workers *workers)
{
  for (guint i = 1; i < workers->n; i++)
    g_thread_join (workers->threads[i]);
  g_clear_pointer (&workers->workers, g_free);
  g_clear_pointer (&workers->threads, g_free);
}

gboolean
ferry_nbd_copy_run (FerryNbdCopy *copy, GCancellable *cancellable, GError **error)
{
  guint stall_s = copy->options.stall_timeout_s;
  guint64 source_size, destination_size;

  g_clear_object (&copy->stop);
  copy->stop = g_cancellable_new ();
  gulong forward = 0;
  if (cancellable)
    forward = g_cancellable_connect (cancellable, G_CALLBACK (g_cancellable_cancel),
                                     g_object_ref (copy->stop), g_object_unref);

  g_mutex_lock (&copy->lock);
  copy->work_ready = FALSE;
  g_mutex_unlock (&copy->lock);
  Workers workers;
  start_helpers (copy, &workers);
  struct nbd_handle *src = connect_source (copy->source_uri, copy->dirty_context, &copy->options, copy->stop, error);
  struct nbd_handle *dst = src ? connect_uri (copy->destination_uri, NULL, stall_s, copy->stop, error) : NULL;
  if (dst == NULL || !export_size (src, "the source", &source_size, error)
      || !export_size (dst, "the destination", &destination_size, error))
    goto failed;
  if (source_size != destination_size)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_FAILED,
                   "the source has %" G_GUINT64_FORMAT " bytes but the destination %" G_GUINT64_FORMAT,
                   source_size, destination_size);
      goto failed;
    }

  guint64 n_chunks = ferry_copy_chunk_count (source_size);
  g_mutex_lock (&copy->lock);
  copy->progress = (FerryNbdCopyProgress) { .size = source_size };
  copy->n_work = copy->selected ? copy->selected->len : n_chunks;
  copy->next_position = 0;
  for (guint64 position = 0; position < copy->n_work; position++)
    {
      guint64 index = copy->selected ? g_array_index (copy->selected, guint64, position) : position;
      if (index >= n_chunks)
        continue;
      copy->progress.chunks_total++;
      copy->progress.bytes_total += MIN ((guint64) FERRY_COPY_CHUNK_BYTES,
                                         source_size - index * FERRY_COPY_CHUNK_BYTES);
    }
  g_mutex_unlock (&copy->lock);
  if (copy->dirty_context != NULL && !skip_clean_chunks (copy, src, n_chunks, error))
    goto failed;

  open_work (copy);
  workers.workers[0] = (Worker) { copy, src, dst };
  worker_run (&workers.workers[0]);
  src = dst = NULL;
  join_helpers (&workers);

  if (forward)
    g_cancellable_disconnect (cancellable, forward);
  if (copy->first_error)
    {
      g_propagate_error (error, g_steal_pointer (&copy->first_error));
      return FALSE;
    }
  if (g_cancellable_set_error_if_cancelled (cancellable, error))
    return FALSE;
  return TRUE;

failed:
  /* The helpers give up their connections and find no work. */
  g_cancellable_cancel (copy->stop);
  open_work (copy);
  join_helpers (&workers);
  /* A helper that failed to connect stopped our own connecting: its
   * reason is the one to give. */
  if (copy->first_error != NULL && error != NULL && g_error_matches (*error, G_IO_ERROR, G_IO_ERROR_CANCELLED)
      && !g_cancellable_is_cancelled (cancellable))
    {
      g_clear_error (error);
      g_propagate_error (error, g_steal_pointer (&copy->first_error));
    }
  g_clear_error (&copy->first_error);
  if (forward)
    g_cancellable_disconnect (cancellable, forward);
  close_failed (src);
  close_failed (dst);
  return FALSE;
}

/* ---- standalone helpers ---------------------------------------------------------- */

gboolean
ferry_nbd_uri_size (const char *uri, guint64 *size, GError **error)
{
  struct nbd_handle *h = connect_uri (uri, NULL, DEFAULT_STALL_S, NULL, error);
  if (h == NULL)
    return FALSE;
  gboolean ok = export_size (h, uri, size, error);
  close_handle (h, ok);
  return ok;
}

typedef struct {
  const char *uri;
  const guint64 *indexes;
  guint n_indexes;
  guint first;               /* this worker takes first, first + stride, … */
  guint stride;
  char *digests;
  GCancellable *cancellable;
  GError *error;
} DigestWorker;

static gpointer
digest_worker_run (gpointer user_data)
{
  DigestWorker *worker = user_data;
  guint64 size;
  struct nbd_handle *h = connect_uri (worker->uri, NULL, DEFAULT_STALL_S, worker->cancellable, &worker->error);
  if (h == NULL)
    return NULL;
  gboolean ok = export_size (h, worker->uri, &size, &worker->error);
  g_autofree guint8 *buf = ok ? g_malloc (FERRY_COPY_CHUNK_BYTES) : NULL;
  for (guint i = worker->first; ok && i < worker->n_indexes; i += worker->stride)
    {
      guint64 offset = worker->indexes[i] * FERRY_COPY_CHUNK_BYTES;
      if (worker->indexes[i] >= ferry_copy_chunk_count (size))
        {
          g_set_error (&worker->error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "chunks[%u]: %" G_GUINT64_FORMAT " is past the end of the disk", i, worker->indexes[i]);
          ok = FALSE;
          break;
        }
      ok = digest_chunk (h, offset, MIN ((guint64) FERRY_COPY_CHUNK_BYTES, size - offset), buf,
                         DEFAULT_IN_FLIGHT, DEFAULT_STALL_S, worker->cancellable,
                         worker->digests + (gsize) i * FERRY_COPY_DIGEST_LEN, &worker->error);
    }
  close_handle (h, ok);
  return NULL;
}

gboolean
ferry_nbd_chunk_digests (const char *uri, const guint64 *indexes, guint n_indexes, char *digests,
                         GCancellable *cancellable, GError **error)
{
  /* Hashing a chunk that a local qemu-nbd reads from the page cache is
   * bound by the CPU: one worker (and connection) per core, no more, as
   * the copy itself and the export's server need the same cores. Over
   * TLS (a running guest's snapshot, served by its QEMU) each read waits
   * on that QEMU, and more connections shorten the wait: a warm pass's
   * last digests took 0.50-0.58 s on 2 connections, 0.37-0.44 s on 8. */
  guint per_core = MIN (DEFAULT_CONNECTIONS, MAX (2, g_get_num_processors ()));
  guint wanted = g_str_has_prefix (uri, "nbds://") ? DEFAULT_CONNECTIONS : per_core;
  guint n_workers = MAX (1, MIN (wanted, n_indexes));
  g_autofree DigestWorker *workers = g_new0 (DigestWorker, n_workers);
  g_autofree GThread **threads = g_new0 (GThread *, n_workers);
  for (guint i = 0; i < n_workers; i++)
    {
      workers[i] = (DigestWorker) { uri, indexes, n_indexes, i, n_workers, digests, cancellable, NULL };
      if (i > 0)
        threads[i] = g_thread_new ("ferry-digest", digest_worker_run, &workers[i]);
    }
  digest_worker_run (&workers[0]);
  gboolean ok = TRUE;
  for (guint i = 0; i < n_workers; i++)
    {
      if (i > 0)
        g_thread_join (threads[i]);
      if (workers[i].error != NULL && ok)
        {
          g_propagate_error (error, workers[i].error);
          ok = FALSE;
        }
      else
        g_clear_error (&workers[i].error);
    }
  return ok;
}
