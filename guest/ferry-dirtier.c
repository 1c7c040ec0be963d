/* ferry-dirtier: dirties guest memory at a controlled rate.
 *
 * Live-migration tests need a guest whose dirty-page rate they choose: low
 * enough that pre-copy converges, or higher than the link so that it can't
 * and ferry has to escalate.  The buffer's pages are made
 *   - non-zero and non-duplicate, so QEMU can't skip them as zero pages and
 *     every page really crosses the wire;
 *   - incompressible by default (pseudo-random fill), like a busy real guest;
 *   - marked with a plaintext marker, so a test can look for it in captured
 *     migration traffic (found without TLS, never found with TLS).
 *
 * Page layout (4 KiB):
 *   [0, 128)     "<marker> page=<16 hex digits>\n", NUL padded; never changes
 *   [128, 136)   64-bit counter; the one word rewritten to dirty the page
 *   [136, 4096)  fill: pseudo-random bytes, or the header line repeated
 *
 * With --ramp-after S the rate changes to --ramp-rate after S seconds of
 * dirtying: a guest that is quiet while ferry measures it and busy once
 * the migration runs (the plan's premise broken mid-way).
 *
 * Output: "dirtier mib=SIZE rate=MBPS" once the buffer is filled and
 * dirtying starts, "dirtier ramp rate=MBPS" when the rate changes, then
 * "dirtier achieved=X MB/s" every 5 s.  MB means MiB
 * (2^20 bytes), the unit QEMU's calc-dirty-rate reports in.
 */
#include "guest-common.h"

#include <getopt.h>
#include <sys/mman.h>

#define PAGE_SIZE_BYTES 4096u
#define HEADER_BYTES 128u
#define COUNTER_OFFSET HEADER_BYTES
#define FILL_OFFSET (COUNTER_OFFSET + sizeof (uint64_t))
#define MARKER_MAX 64u
#define MIB_MAX (64u * 1024u)     /* 64 GiB: far beyond any test guest */
#define RATE_MAX (1024u * 1024u)  /* MiB/s */
#define RAMP_AFTER_MAX 86400u     /* seconds */
#define REPORT_INTERVAL_NS (5 * FERRY_NSEC_PER_SEC)
/* Pacing granularity: small enough that a slow rate looks smooth to QEMU's
   dirty-rate sampling, large enough that clock calls cost nothing. */
#define SLICES_PER_SEC 100u
#define SLICE_NS (FERRY_NSEC_PER_SEC / SLICES_PER_SEC)
#define UNPACED_CHUNK_PAGES 4096u

enum fill_kind
{
  FILL_RANDOM,
  FILL_TEXT,
};

struct dirtier
{
  uint8_t *buf;
  size_t pages;
  size_t next_page;
  uint64_t counter;
};

static void
usage (FILE *out)
{
  fprintf (out,
           "usage: ferry-dirtier --mib SIZE [--rate MBPS] [--marker STRING]"
           " [--fill random|text] [--ramp-after S --ramp-rate MBPS]\n"
           "  --mib     MiB of memory to allocate and keep dirtying (1..%u)\n"
           "  --rate    MiB/s of pages to dirty, 0 = as fast as possible\n"
           "  --marker  plaintext marker in every page (1..%u chars,"
           " default FERRY-GUEST-MARKER)\n"
           "  --fill    rest of each page: random (default, incompressible)"
           " or text\n"
           "  --ramp-after  seconds of dirtying after which --ramp-rate"
           " applies (1..%u)\n"
           "  --ramp-rate   the later rate in MiB/s, 0 = as fast as possible\n",
           MIB_MAX, MARKER_MAX, RAMP_AFTER_MAX);
}

static bool
marker_is_valid (const char *marker)
{
  size_t len = strlen (marker);

  if (len == 0 || len > MARKER_MAX)
    return false;
  /* Printable ASCII only: it must be findable as plain bytes in a capture. */
  for (size_t i = 0; i < len; i++)
    if (marker[i] < 0x21 || marker[i] > 0x7e)
      return false;
  return true;
}

static void
fill_pages (struct dirtier *d, const char *marker, enum fill_kind fill)
{
  for (size_t page = 0; page < d->pages; page++)
    {
      uint8_t *p = d->buf + page * PAGE_SIZE_BYTES;
      char header[HEADER_BYTES];
      int header_len;

      memset (header, 0, sizeof header);
      header_len = snprintf (header, sizeof header, "%s page=%016zx\n",
                             marker, page);
      memcpy (p, header, sizeof header);
      d->counter++;
      memcpy (p + COUNTER_OFFSET, &d->counter, sizeof d->counter);

      if (fill == FILL_RANDOM)
        {
          /* xorshift64*, seeded per page so pages differ from each other. */
          uint64_t state = (page + 1) * 0x9e3779b97f4a7c15ull;

          for (size_t off = FILL_OFFSET; off < PAGE_SIZE_BYTES;
               off += sizeof (uint64_t))
            {
              uint64_t word;

              state ^= state >> 12;
              state ^= state << 25;
              state ^= state >> 27;
              word = state * 0x2545f4914f6cdd1dull;
              memcpy (p + off, &word, sizeof word);
            }
        }
      else
        {
          for (size_t off = FILL_OFFSET; off < PAGE_SIZE_BYTES;
               off += header_len)
            {
              size_t n = PAGE_SIZE_BYTES - off;

              if (n > (size_t) header_len)
                n = header_len;
              memcpy (p + off, header, n);
            }
        }
    }
}

/* Dirties count pages, round robin over the buffer. */
static void
dirty_pages (struct dirtier *d, uint64_t count)
{
  for (uint64_t i = 0; i < count; i++)
    {
      volatile uint64_t *word
        = (volatile uint64_t *) (d->buf + d->next_page * PAGE_SIZE_BYTES
                                 + COUNTER_OFFSET);

      *word = ++d->counter;
      if (++d->next_page == d->pages)
        d->next_page = 0;
    }
}

int
main (int argc, char **argv)
{
  static const struct option options[] = {
    { "mib", required_argument, NULL, 'm' },
    { "rate", required_argument, NULL, 'r' },
    { "marker", required_argument, NULL, 'k' },
    { "fill", required_argument, NULL, 'f' },
    { "ramp-after", required_argument, NULL, 'a' },
    { "ramp-rate", required_argument, NULL, 'R' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  uint64_t mib = 0, rate = 0, ramp_after = 0, ramp_rate = 0;
  bool ramp_rate_given = false;
  const char *marker = "FERRY-GUEST-MARKER";
  enum fill_kind fill = FILL_RANDOM;
  struct dirtier d = { 0 };
  size_t size;
  int opt;

  while ((opt = getopt_long (argc, argv, "", options, NULL)) != -1)
    {
      switch (opt)
        {
        case 'm':
          if (!ferry_parse_u64 (optarg, MIB_MAX, &mib) || mib == 0)
            {
              ferry_emit ("ferry-dirtier: invalid --mib '%s'", optarg);
              return 2;
            }
          break;
        case 'r':
          if (!ferry_parse_u64 (optarg, RATE_MAX, &rate))
            {
              ferry_emit ("ferry-dirtier: invalid --rate '%s'", optarg);
              return 2;
            }
          break;
        case 'k':
          marker = optarg;
          if (!marker_is_valid (marker))
            {
              ferry_emit ("ferry-dirtier: invalid --marker (1..%u printable"
                          " chars, no spaces)", MARKER_MAX);
              return 2;
            }
          break;
        case 'f':
          if (strcmp (optarg, "random") == 0)
            fill = FILL_RANDOM;
          else if (strcmp (optarg, "text") == 0)
            fill = FILL_TEXT;
          else
            {
              ferry_emit ("ferry-dirtier: invalid --fill '%s'", optarg);
              return 2;
            }
          break;
        case 'a':
          if (!ferry_parse_u64 (optarg, RAMP_AFTER_MAX, &ramp_after) || ramp_after == 0)
            {
              ferry_emit ("ferry-dirtier: invalid --ramp-after '%s'", optarg);
              return 2;
            }
          break;
        case 'R':
          if (!ferry_parse_u64 (optarg, RATE_MAX, &ramp_rate))
            {
              ferry_emit ("ferry-dirtier: invalid --ramp-rate '%s'", optarg);
              return 2;
            }
          ramp_rate_given = true;
          break;
        case 'h':
          usage (stdout);
          return 0;
        default:
          usage (stderr);
          return 2;
        }
    }
  if (mib == 0 || optind != argc)
    {
      usage (stderr);
      return 2;
    }
  if ((ramp_after > 0) != ramp_rate_given)
    {
      ferry_emit ("ferry-dirtier: --ramp-after and --ramp-rate go together");
      return 2;
    }

  size = (size_t) mib * 1024 * 1024;
  d.pages = size / PAGE_SIZE_BYTES;
  /* MAP_POPULATE + mlock: the buffer must stay resident, otherwise the
     dirty rate would depend on page faults instead of the requested rate. */
  d.buf = mmap (NULL, size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (d.buf == MAP_FAILED)
    {
      ferry_emit ("ferry-dirtier: cannot allocate %llu MiB: %s",
                  (unsigned long long) mib, strerror (errno));
      return 1;
    }
  if (mlock (d.buf, size) != 0)
    ferry_emit ("ferry-dirtier: warning: mlock failed: %s", strerror (errno));
  /* Transparent huge pages would make one 4 KiB write dirty 2 MiB in the
     guest's own accounting; QEMU tracks 4 KiB pages either way, but keep
     the guest's view simple. */
  madvise (d.buf, size, MADV_NOHUGEPAGE);

  fill_pages (&d, marker, fill);
  ferry_emit ("dirtier mib=%llu rate=%llu", (unsigned long long) mib,
              (unsigned long long) rate);

  {
    uint64_t pages_per_sec = rate * (1024 * 1024 / PAGE_SIZE_BYTES);
    int64_t now = ferry_mono_ns ();
    int64_t ramp_at = ramp_after > 0 ? now + (int64_t) ramp_after * FERRY_NSEC_PER_SEC : 0;
    /* Paced mode runs a schedule of SLICES_PER_SEC slices per second from
       schedule_start; slice k ends with pages_per_sec * k / SLICES_PER_SEC
       pages dirtied in total, so rounding never accumulates. */
    int64_t schedule_start = now;
    uint64_t slice = 0;
    uint64_t scheduled_pages = 0;
    int64_t report_start = now;
    uint64_t report_pages = 0;

    for (;;)
      {
        uint64_t chunk;

        if (rate == 0)
          chunk = UNPACED_CHUNK_PAGES;
        else
          {
            uint64_t target = pages_per_sec * ++slice / SLICES_PER_SEC;

            chunk = target - scheduled_pages;
            scheduled_pages = target;
          }

        dirty_pages (&d, chunk);
        report_pages += chunk;
        now = ferry_mono_ns ();

        if (ramp_at != 0 && now >= ramp_at)
          {
            ramp_at = 0;
            rate = ramp_rate;
            pages_per_sec = rate * (1024 * 1024 / PAGE_SIZE_BYTES);
            schedule_start = now;
            slice = 0;
            scheduled_pages = 0;
            ferry_emit ("dirtier ramp rate=%llu", (unsigned long long) rate);
          }

        if (now - report_start >= REPORT_INTERVAL_NS)
          {
            double seconds = (double) (now - report_start) / FERRY_NSEC_PER_SEC;
            double achieved = (double) report_pages * PAGE_SIZE_BYTES
                              / (1024.0 * 1024.0) / seconds;

            ferry_emit ("dirtier achieved=%.1f MB/s", achieved);
            report_start = now;
            report_pages = 0;
          }

        if (rate > 0)
          {
            int64_t slice_end = schedule_start
                                + (int64_t) slice * SLICE_NS;

            if (now - slice_end > FERRY_NSEC_PER_SEC)
              {
                /* We were stopped (migration downtime) or the CPU can't
                   keep up: restart the schedule instead of catching up in
                   a burst. */
                schedule_start = now;
                slice = 0;
                scheduled_pages = 0;
              }
            else if (slice_end > now)
              ferry_sleep_until (slice_end);
          }
      }
  }
  return 0;
}
