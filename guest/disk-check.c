/* disk-check: verifies the record log ferry-diskwriter left on a disk.
 *
 * Runs on the host, after the VM is stopped, on a RAW image or a block
 * device.  A qcow2 image must first be converted
 * (qemu-img convert -O raw disk.qcow2 disk.raw) or exposed as a block device
 * (qemu-nbd --read-only -c /dev/nbd0 disk.qcow2); disk-check refuses qcow2
 * input rather than report an empty log.
 *
 * Output (one JSON object on stdout):
 *   {"last_seq": N, "valid": N, "first_bad_offset": OFFSET|null, "gaps": N,
 *    "boot_ids": N, "last_boot_id": "ID", "records_scanned": N}
 * last_seq: highest sequence number found intact in its slot;
 * valid: intact records; gaps: slots below last_seq that are not intact;
 * first_bad_offset: byte offset of the first such slot (null if none);
 * boot_ids: number of boot-id changes along the log plus one (1 = written by
 *   one boot: a live migration keeps it, a reboot adds one).
 * Slots past last_seq are not errors: the write in flight when the VM
 * stopped was never reported durable.
 *
 * Exit status: 0 if records 1..last_seq are all intact (and last_seq >= the
 * --expect-at-least value); 1 if not; 2 on usage or I/O errors.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "record.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH_RECORDS 256u /* 1 MiB reads */

struct scan
{
  uint64_t scanned;
  uint64_t valid;
  uint64_t last_seq;
  uint64_t bad_below_last;      /* bad slots seen before the latest valid one */
  uint64_t bad_since_last_valid;
  int64_t first_bad_offset;     /* first bad slot, maybe past last_seq */
  int64_t first_bad_below_last;
  uint64_t boot_ids;
  char last_boot_id[FERRY_BOOT_ID_LEN + 1];
};

static void
usage (FILE *out)
{
  fprintf (out,
           "usage: disk-check [--expect-at-least N] IMAGE_OR_DEVICE\n"
           "Verifies the ferry-diskwriter log on a raw image or block device\n"
           "(convert qcow2 with qemu-img convert -O raw, or use qemu-nbd).\n");
}

static bool
is_all_zero (const void *data, size_t len)
{
  const uint8_t *bytes = data;

  for (size_t i = 0; i < len; i++)
    if (bytes[i])
      return false;
  return true;
}

static void
scan_record (struct scan *s, const struct ferry_record *record)
{
  uint64_t slot = s->scanned++;
  enum ferry_record_status status;

  /* Cheap skip for never-written space, which is most of a sparse image. */
  if (record->magic[0] == 0 && is_all_zero (record, sizeof *record))
    status = FERRY_RECORD_BAD_MAGIC;
  else
    status = ferry_record_check (record, slot + 1);

  if (status != FERRY_RECORD_OK)
    {
      if (s->bad_since_last_valid++ == 0 && s->first_bad_offset < 0)
        s->first_bad_offset = (int64_t) (slot * FERRY_RECORD_SIZE);
      return;
    }

  /* The bad slots between the previous valid record and this one are holes
     in the log now that a later record exists. */
  if (s->bad_since_last_valid > 0 && s->first_bad_below_last < 0)
    s->first_bad_below_last = s->first_bad_offset;
  s->bad_below_last += s->bad_since_last_valid;
  s->bad_since_last_valid = 0;

  s->valid++;
  s->last_seq = record->seq;
  if (s->boot_ids == 0
      || strncmp (s->last_boot_id, record->boot_id, FERRY_BOOT_ID_LEN) != 0)
    {
      s->boot_ids++;
      memcpy (s->last_boot_id, record->boot_id, FERRY_BOOT_ID_LEN);
      s->last_boot_id[FERRY_BOOT_ID_LEN] = '\0';
    }
}

/* Boot ids come from the disk, which may hold anything: only print what is
   safe inside a JSON string. */
static void
print_json_safe (const char *text)
{
  for (const char *p = text; *p; p++)
    putchar ((*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') ? *p : '?');
}

int
main (int argc, char **argv)
{
  static const struct option options[] = {
    { "expect-at-least", required_argument, NULL, 'e' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct scan s = { .first_bad_offset = -1, .first_bad_below_last = -1 };
  uint64_t expect_at_least = 0;
  struct ferry_record *batch;
  const char *path;
  off_t offset = 0;
  bool ok;
  int fd, opt;

  while ((opt = getopt_long (argc, argv, "", options, NULL)) != -1)
    {
      switch (opt)
        {
        case 'e':
          {
            char *end = NULL;

            errno = 0;
            expect_at_least = strtoull (optarg, &end, 10);
            if (errno != 0 || *optarg < '0' || *optarg > '9' || *end != '\0')
              {
                fprintf (stderr, "disk-check: invalid --expect-at-least '%s'\n",
                         optarg);
                return 2;
              }
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
  if (optind != argc - 1)
    {
      usage (stderr);
      return 2;
    }
  path = argv[optind];

  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    {
      fprintf (stderr, "disk-check: cannot open %s: %s\n", path,
               strerror (errno));
      return 2;
    }
  batch = malloc (BATCH_RECORDS * FERRY_RECORD_SIZE);
  if (!batch)
    {
      fprintf (stderr, "disk-check: out of memory\n");
      return 2;
    }

  for (;;)
    {
      ssize_t n = pread (fd, batch, BATCH_RECORDS * FERRY_RECORD_SIZE, offset);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          fprintf (stderr, "disk-check: read error on %s at %lld: %s\n", path,
                   (long long) offset, strerror (errno));
          return 2;
        }
      if (offset == 0 && n >= 4 && memcmp (batch, "QFI\xfb", 4) == 0)
        {
          fprintf (stderr,
                   "disk-check: %s is qcow2; convert it (qemu-img convert -O"
                   " raw) or read it through qemu-nbd\n", path);
          return 2;
        }
      /* A trailing partial record can't hold a record: ignore it. */
      for (ssize_t i = 0; i < n / (ssize_t) FERRY_RECORD_SIZE; i++)
        scan_record (&s, &batch[i]);
      if (n < (ssize_t) (BATCH_RECORDS * FERRY_RECORD_SIZE))
        break;
      offset += n;
    }
  free (batch);
  close (fd);

  printf ("{\"last_seq\": %" PRIu64 ", \"valid\": %" PRIu64
          ", \"first_bad_offset\": ", s.last_seq, s.valid);
  if (s.first_bad_below_last >= 0)
    printf ("%" PRId64, s.first_bad_below_last);
  else
    printf ("null");
  printf (", \"gaps\": %" PRIu64 ", \"boot_ids\": %" PRIu64
          ", \"last_boot_id\": \"", s.bad_below_last, s.boot_ids);
  print_json_safe (s.last_boot_id);
  printf ("\", \"records_scanned\": %" PRIu64 "}\n", s.scanned);

  ok = s.bad_below_last == 0 && s.last_seq >= expect_at_least;
  if (s.last_seq < expect_at_least)
    fprintf (stderr, "disk-check: last_seq %" PRIu64 " < expected %" PRIu64
             "\n", s.last_seq, expect_at_least);
  if (s.bad_below_last > 0)
    fprintf (stderr, "disk-check: %" PRIu64 " missing or bad record(s) below"
             " last_seq, first at offset %" PRId64 "\n", s.bad_below_last,
             s.first_bad_below_last);
  return ok ? 0 : 1;
}
