/* ferry-diskwriter: a durable, verifiable write log on a raw block device.
 *
 * Storage-migration tests need to prove that no acknowledged write was lost
 * or reordered across a migration.  This program appends fixed-size records
 * (see record.h) with sequence numbers 1, 2, 3, ... and only reports a
 * sequence number as "durable seq=N" after the write carrying it completed
 * with O_DSYNC.  After the VM is stopped, disk-check on the host must find
 * every record up to the highest N the console showed.
 *
 * On start it resumes after the last valid record of the contiguous log,
 * so a guest that is rebooted (or cold-migrated) continues the sequence.
 *
 * Output lines:
 *   diskwriter device=PATH resume_seq=N capacity=RECORDS rate=R
 *   durable seq=N            at most ~5 per second, the latest always shown
 *   diskwriter full seq=N    the device is full; the program then idles
 *   diskwriter error seq=N op=write errno=E (TEXT)   (retried every second)
 */
#include "guest-common.h"
#include "record.h"

#include <getopt.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#define RATE_MAX 100000u
#define DEFAULT_RATE 20u
#define PRINT_INTERVAL_NS (200 * 1000 * 1000LL)
#define OPEN_WAIT_NS (30 * FERRY_NSEC_PER_SEC)
#define OPEN_RETRY_NS (100 * 1000 * 1000LL)
#define SCAN_BATCH_RECORDS 64u
#define NEVER INT64_MAX

struct writer
{
  const char *device;
  int fd;
  uint64_t capacity;            /* records that fit on the device */
  struct ferry_record *record;  /* aligned for O_DIRECT */
  char boot_id[FERRY_BOOT_ID_BUF];
};

static void
usage (FILE *out)
{
  fprintf (out,
           "usage: ferry-diskwriter --device PATH [--rate N] [--count N]\n"
           "  --device  block device (or file) to write the log to\n"
           "  --rate    records per second, 0 = as fast as possible"
           " (default %u)\n"
           "  --count   stop after writing N records (default: never)\n",
           DEFAULT_RATE);
}

/* The device node appears asynchronously after virtio_blk probes, so give
   it some time instead of failing the whole test on a race. */
static int
open_device (const char *path)
{
  int64_t give_up = ferry_mono_ns () + OPEN_WAIT_NS;

  for (;;)
    {
      int fd = open (path, O_RDWR | O_CLOEXEC | O_DIRECT | O_DSYNC);

      /* O_DIRECT is refused by some file systems (tmpfs) when the program
         is run on a host against a plain file; O_DSYNC alone is still
         durable. */
      if (fd < 0 && errno == EINVAL)
        fd = open (path, O_RDWR | O_CLOEXEC | O_DSYNC);
      if (fd >= 0 || errno != ENOENT || ferry_mono_ns () >= give_up)
        return fd;
      ferry_sleep_until (ferry_mono_ns () + OPEN_RETRY_NS);
    }
}

static int
device_capacity (struct writer *w)
{
  struct stat st;
  uint64_t bytes = 0;

  if (fstat (w->fd, &st) != 0)
    return -1;
  if (S_ISBLK (st.st_mode))
    {
      if (ioctl (w->fd, BLKGETSIZE64, &bytes) != 0)
        return -1;
    }
  else
    bytes = st.st_size;
  w->capacity = bytes / FERRY_RECORD_SIZE;
  return 0;
}

/* Returns the number of valid records at the start of the device, i.e. the
   last sequence number that was durably written before. */
static uint64_t
scan_existing (struct writer *w)
{
  struct ferry_record *batch = NULL;
  uint64_t valid = 0;

  if (posix_memalign ((void **) &batch, FERRY_RECORD_SIZE,
                      SCAN_BATCH_RECORDS * FERRY_RECORD_SIZE) != 0)
    return 0;

  while (valid < w->capacity)
    {
      uint64_t want = w->capacity - valid;
      ssize_t n;

      if (want > SCAN_BATCH_RECORDS)
        want = SCAN_BATCH_RECORDS;
      n = pread (w->fd, batch, want * FERRY_RECORD_SIZE,
                 (off_t) (valid * FERRY_RECORD_SIZE));
      if (n < 0 && errno == EINTR)
        continue;
      if (n < (ssize_t) FERRY_RECORD_SIZE)
        break;
      for (uint64_t i = 0; i < (uint64_t) n / FERRY_RECORD_SIZE; i++)
        {
          if (ferry_record_check (&batch[i], valid + 1) != FERRY_RECORD_OK)
            goto out;
          valid++;
        }
    }
out:
  free (batch);
  return valid;
}

static int
write_record (struct writer *w, uint64_t seq)
{
  off_t offset = (off_t) ((seq - 1) * FERRY_RECORD_SIZE);
  ssize_t n;

  ferry_record_build (w->record, seq, ferry_clock_ns (CLOCK_REALTIME),
                      w->boot_id);
  do
    n = pwrite (w->fd, w->record, FERRY_RECORD_SIZE, offset);
  while (n < 0 && errno == EINTR);
  if (n == (ssize_t) FERRY_RECORD_SIZE)
    return 0;
  if (n >= 0)
    errno = ENOSPC;             /* short write: the device ended */
  return -1;
}

/* The last durable seq goes out before "full", so a reader that stops at
   "full" has seen the final count. */
static void
announce_full (bool *print_pending, uint64_t latest_durable, uint64_t seq)
{
  if (*print_pending)
    ferry_emit ("durable seq=%llu", (unsigned long long) latest_durable);
  *print_pending = false;
  ferry_emit ("diskwriter full seq=%llu", (unsigned long long) seq);
}

int
main (int argc, char **argv)
{
  static const struct option options[] = {
    { "device", required_argument, NULL, 'd' },
    { "rate", required_argument, NULL, 'r' },
    { "count", required_argument, NULL, 'c' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct writer w = { .fd = -1 };
  uint64_t rate = DEFAULT_RATE;
  uint64_t count = UINT64_MAX;
  uint64_t seq, written = 0, latest_durable = 0;
  int64_t interval_ns, next_write, last_print;
  bool print_pending = false, full = false;
  int opt;

  while ((opt = getopt_long (argc, argv, "", options, NULL)) != -1)
    {
      switch (opt)
        {
        case 'd':
          w.device = optarg;
          break;
        case 'r':
          if (!ferry_parse_u64 (optarg, RATE_MAX, &rate))
            {
              ferry_emit ("ferry-diskwriter: invalid --rate '%s'", optarg);
              return 2;
            }
          break;
        case 'c':
          if (!ferry_parse_u64 (optarg, UINT64_MAX / 2, &count))
            {
              ferry_emit ("ferry-diskwriter: invalid --count '%s'", optarg);
              return 2;
            }
          break;
        case 'h':
          usage (stdout);
          return 0;
        default:
          usage (stderr);
          return 2;
        }
    }
  if (!w.device || optind != argc)
    {
      usage (stderr);
      return 2;
    }

  ferry_read_boot_id (w.boot_id);
  if (posix_memalign ((void **) &w.record, FERRY_RECORD_SIZE,
                      FERRY_RECORD_SIZE) != 0)
    {
      ferry_emit ("ferry-diskwriter: out of memory");
      return 1;
    }
  w.fd = open_device (w.device);
  if (w.fd < 0)
    {
      ferry_emit ("ferry-diskwriter: cannot open %s: %s", w.device,
                  strerror (errno));
      return 1;
    }
  if (device_capacity (&w) != 0)
    {
      ferry_emit ("ferry-diskwriter: cannot size %s: %s", w.device,
                  strerror (errno));
      return 1;
    }

  seq = scan_existing (&w) + 1;
  ferry_emit ("diskwriter device=%s resume_seq=%llu capacity=%llu rate=%llu",
              w.device, (unsigned long long) seq,
              (unsigned long long) w.capacity, (unsigned long long) rate);

  interval_ns = rate ? FERRY_NSEC_PER_SEC / (int64_t) rate : 0;
  next_write = ferry_mono_ns ();
  last_print = next_write - PRINT_INTERVAL_NS;

  for (;;)
    {
      int64_t now = ferry_mono_ns ();
      int64_t wake;

      if (print_pending && now - last_print >= PRINT_INTERVAL_NS)
        {
          ferry_emit ("durable seq=%llu", (unsigned long long) latest_durable);
          last_print = now;
          print_pending = false;
        }

      if (written >= count && !print_pending)
        return 0;

      if (!full && written < count && now >= next_write)
        {
          if (seq > w.capacity)
            {
              full = true;
              announce_full (&print_pending, latest_durable, seq);
            }
          else if (write_record (&w, seq) == 0)
            {
              latest_durable = seq++;
              written++;
              print_pending = true;
              next_write += interval_ns;
              /* After a pause (migration downtime, slow TCG), restart the
                 schedule rather than writing a burst to catch up. */
              if (now - next_write > FERRY_NSEC_PER_SEC)
                next_write = now;
            }
          else if (errno == ENOSPC)
            {
              full = true;
              announce_full (&print_pending, latest_durable, seq);
            }
          else
            {
              int err = errno;

              ferry_emit ("diskwriter error seq=%llu op=write errno=%d (%s)",
                          (unsigned long long) seq, err, strerror (err));
              next_write = now + FERRY_NSEC_PER_SEC;
            }
          continue;
        }

      wake = full || written >= count ? NEVER : next_write;
      if (print_pending && last_print + PRINT_INTERVAL_NS < wake)
        wake = last_print + PRINT_INTERVAL_NS;
      if (wake == NEVER)
        {
          /* Full: nothing left to do, but the program stays alive so the
             console shows it didn't crash. */
          ferry_sleep_until (now + 3600 * FERRY_NSEC_PER_SEC);
          continue;
        }
      ferry_sleep_until (wake);
    }
}
