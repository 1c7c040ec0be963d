/* ferry-tick: the test guest's heartbeat.
 *
 * Prints "tick N boot_id=<ID>" once a second, N = 1, 2, 3, ...  A live
 * migration shows as a gap in wall-clock time with N and boot_id continuing;
 * a reboot (which a live migration must never cause) shows as a new boot_id
 * and N starting again at 1.
 */
#include "guest-common.h"

int
main (void)
{
  char boot_id[FERRY_BOOT_ID_BUF];
  int64_t deadline;

  ferry_read_boot_id (boot_id);
  deadline = ferry_mono_ns ();
  for (uint64_t n = 1;; n++)
    {
      ferry_emit ("tick %llu boot_id=%s", (unsigned long long) n, boot_id);
      deadline += FERRY_NSEC_PER_SEC;
      /* After a long pause (the guest stopped for migration) don't emit a
         burst of catch-up ticks; one per second of running time is the
         contract. */
      if (ferry_mono_ns () > deadline + FERRY_NSEC_PER_SEC)
        deadline = ferry_mono_ns ();
      ferry_sleep_until (deadline);
    }
  return 0;
}
