/* ferry — waiting on a libnbd handle (shared by nbd-copy.c and
 * nbd-preconnect.c). */
#pragma once

#include <gio/gio.h>
#include <libnbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* QEMU's NBD server (7.2, qemu-nbd too) leaves Nagle on for its
 * connections, and an answer it writes as several small TLS records goes
 * out one segment, then waits for our ACK, which Linux delays up to 40 ms
 * while we have nothing to say. Asking for quick ACKs before every wait
 * takes those stalls out: a TLS connection to qemu-nbd took 88-92 ms (two
 * 40 ms stalls in strace), 6-49 ms with them. The kernel leaves quick-ACK
 * mode by itself once traffic looks interactive, hence before each poll.
 * On a Unix socket the option does not apply and the call fails,
 * harmlessly. Returns as nbd_poll. */
static inline int
ferry_nbd_poll (struct nbd_handle *h, int timeout_ms)
{
  int fd = nbd_aio_get_fd (h);
  if (fd >= 0)
    {
      int one = 1;
      (void) setsockopt (fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
  return nbd_poll (h, timeout_ms);
}

/* Runs h while it connects (or, in option mode, asks for an export) until
 * that is over, deadline_us (monotonic) passes, cancellable is cancelled
 * or polling fails; the caller then looks at the handle's state. */
static inline void
ferry_nbd_run_while_connecting (struct nbd_handle *h, gint64 deadline_us, GCancellable *cancellable,
                                int slice_ms)
{
  while (nbd_aio_is_connecting (h))
    {
      if (ferry_nbd_poll (h, slice_ms) == -1 || g_get_monotonic_time () > deadline_us
          || g_cancellable_is_cancelled (cancellable))
        break;
    }
}
