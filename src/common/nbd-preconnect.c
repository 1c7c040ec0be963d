/* ferry — NBD connections opened ahead of their export (see nbd-preconnect.h). */
#include "nbd-preconnect.h"

#include <libnbd.h>

#include "nbd-poll.h"

/* A connection still not through its handshake after this long is given
 * up: the copy connects afresh (with its own, longer, stall limit). */
#define CONNECT_LIMIT_S 10
#define POLL_SLICE_MS   100

struct _FerryNbdPreconnect {
  gatomicrefcount ref;
  char *uri;
  GAsyncQueue *ready;         /* struct nbd_handle* in the option phase */
  GCancellable *stop;         /* cancelled when the last user lets go */
  gint users;                 /* references other than the connecting threads' */
  gint opened;
  gint claimed;
  GMutex lock;
  GCond settled_cond;         /* a connecting thread ended */
  guint connecting;           /* threads not yet ended; under lock */
};

static void
close_unused (struct nbd_handle *h)
{
  /* NBD_OPT_ABORT: QEMU answers and closes without logging an error; we
   * do not wait for that answer. */
  if (nbd_aio_is_negotiating (h))
    (void) nbd_aio_opt_abort (h);
  nbd_close (h);
}

static void
preconnect_free (FerryNbdPreconnect *pre)
{
  struct nbd_handle *h;
  while ((h = g_async_queue_try_pop (pre->ready)) != NULL)
    close_unused (h);
  g_async_queue_unref (pre->ready);
  g_object_unref (pre->stop);
  g_mutex_clear (&pre->lock);
  g_cond_clear (&pre->settled_cond);
  g_free (pre->uri);
  g_free (pre);
}

static void
drop_ref (FerryNbdPreconnect *pre)
{
  if (g_atomic_ref_count_dec (&pre->ref))
    preconnect_free (pre);
}

static gpointer
connect_run (gpointer user_data)
{
  FerryNbdPreconnect *pre = user_data;
  struct nbd_handle *h = nbd_create ();
  if (h != NULL && nbd_set_opt_mode (h, true) == 0 && nbd_set_uri_allow_local_file (h, true) == 0
      && nbd_aio_connect_uri (h, pre->uri) == 0)
    {
      ferry_nbd_run_while_connecting (h, g_get_monotonic_time () + CONNECT_LIMIT_S * G_USEC_PER_SEC, pre->stop,
                                      POLL_SLICE_MS);
      if (nbd_aio_is_negotiating (h) && !g_cancellable_is_cancelled (pre->stop))
        {
          g_atomic_int_inc (&pre->opened);
          g_async_queue_push (pre->ready, g_steal_pointer (&h));
        }
    }
  if (h != NULL)
    close_unused (h);
  g_mutex_lock (&pre->lock);
  pre->connecting--;
  g_cond_broadcast (&pre->settled_cond);
  g_mutex_unlock (&pre->lock);
  drop_ref (pre);
  return NULL;
}

FerryNbdPreconnect *
ferry_nbd_preconnect_start (const char *uri, guint n)
{
  FerryNbdPreconnect *pre = g_new0 (FerryNbdPreconnect, 1);
  g_atomic_ref_count_init (&pre->ref);
  pre->uri = g_strdup (uri);
  pre->ready = g_async_queue_new ();
  pre->stop = g_cancellable_new ();
  pre->users = 1;
  g_mutex_init (&pre->lock);
  g_cond_init (&pre->settled_cond);
  pre->connecting = n;
  for (guint i = 0; i < n; i++)
    {
      g_atomic_ref_count_inc (&pre->ref);
      g_thread_unref (g_thread_new ("ferry-preconnect", connect_run, pre));
    }
  return pre;
}

FerryNbdPreconnect *
ferry_nbd_preconnect_ref (FerryNbdPreconnect *pre)
{
  g_atomic_int_inc (&pre->users);
  g_atomic_ref_count_inc (&pre->ref);
  return pre;
}

void
ferry_nbd_preconnect_unref (FerryNbdPreconnect *pre)
{
  if (pre == NULL)
    return;
  /* The last user gone, connections still being made are of no use. */
  if (g_atomic_int_dec_and_test (&pre->users))
    g_cancellable_cancel (pre->stop);
  drop_ref (pre);
}

struct nbd_handle *
ferry_nbd_preconnect_claim (FerryNbdPreconnect *pre, const char *uri, const char *extra_context, guint stall_s,
                            GCancellable *cancellable)
{
  if (pre == NULL || g_strcmp0 (uri, pre->uri) != 0)
    return NULL;
  struct nbd_handle *h;
  while ((h = g_async_queue_try_pop (pre->ready)) != NULL)
    {
      if (nbd_aio_is_negotiating (h) && nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0
          && (extra_context == NULL || nbd_add_meta_context (h, extra_context) == 0)
          && nbd_aio_opt_go (h, (nbd_completion_callback) { 0 }) == 0)
        {
          ferry_nbd_run_while_connecting (h, g_get_monotonic_time () + (gint64) stall_s * G_USEC_PER_SEC,
                                          cancellable, POLL_SLICE_MS);
          if (nbd_aio_is_ready (h))
            {
              g_atomic_int_inc (&pre->claimed);
              return h;
            }
        }
      /* Dropped by the server meanwhile, or the export refused: this
       * one is of no use, and likely neither are the others. */
      g_debug ("pre-opened NBD connection to %s: %s", uri, nbd_get_error () ? nbd_get_error () : "not ready");
      close_unused (h);
      if (g_cancellable_is_cancelled (cancellable))
        return NULL;
    }
  return NULL;
}

gboolean
ferry_nbd_preconnect_wait (FerryNbdPreconnect *pre, guint timeout_ms)
{
  gint64 deadline = g_get_monotonic_time () + (gint64) timeout_ms * 1000;
  g_mutex_lock (&pre->lock);
  while (pre->connecting > 0)
    if (!g_cond_wait_until (&pre->settled_cond, &pre->lock, deadline))
      break;
  gboolean settled = pre->connecting == 0;
  g_mutex_unlock (&pre->lock);
  return settled;
}

void
ferry_nbd_preconnect_get_counts (FerryNbdPreconnect *pre, guint *ready, guint *claimed)
{
  *ready = (guint) g_atomic_int_get (&pre->opened);
  *claimed = (guint) g_atomic_int_get (&pre->claimed);
}
