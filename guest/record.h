/* ferry test guest: on-disk record format of ferry-diskwriter.
 *
 * Shared by the guest program that writes records (ferry-diskwriter) and the
 * host program that verifies an image after a migration (disk-check), so the
 * two can never disagree about the layout.
 *
 * The log is a plain array of fixed-size records starting at byte 0 of the
 * block device: record with sequence number N (N >= 1) lives at offset
 * (N - 1) * FERRY_RECORD_SIZE.  Because the slot is implied by the sequence
 * number, a record that is intact but sits in the wrong slot (a misdirected
 * or stale write) is detected as bad, not silently accepted.
 *
 * Integers are stored in host byte order: both writer and checker run on
 * x86-64, which is the only architecture ferry targets.
 */
#ifndef FERRY_GUEST_RECORD_H
#define FERRY_GUEST_RECORD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FERRY_RECORD_SIZE 4096u
#define FERRY_RECORD_MAGIC "FERRYREC" /* 8 bytes, stored without NUL */
#define FERRY_RECORD_MAGIC_LEN 8u
#define FERRY_RECORD_VERSION 1u
#define FERRY_BOOT_ID_LEN 36u /* textual UUID from /proc/sys/kernel/random/boot_id */

struct ferry_record
{
  char magic[FERRY_RECORD_MAGIC_LEN];
  uint32_t version;
  uint32_t record_size;         /* FERRY_RECORD_SIZE, guards against format drift */
  uint64_t seq;                 /* 1, 2, 3, ... */
  uint64_t timestamp_ns;        /* CLOCK_REALTIME of the guest when built */
  char boot_id[40];             /* FERRY_BOOT_ID_LEN chars, NUL padded */
  /* Derived from seq, so a record whose header survived but whose body
     was replaced by another record's body is still caught. */
  uint8_t payload[FERRY_RECORD_SIZE - 72 - 8];
  uint64_t checksum;            /* FNV-1a 64 over every byte before it */
};

_Static_assert (sizeof (struct ferry_record) == FERRY_RECORD_SIZE,
                "record must fill exactly one 4 KiB block");
_Static_assert (offsetof (struct ferry_record, payload) == 72,
                "header layout changed: bump FERRY_RECORD_VERSION");

enum ferry_record_status
{
  FERRY_RECORD_OK = 0,
  FERRY_RECORD_BAD_MAGIC,       /* includes never-written (zero) blocks */
  FERRY_RECORD_BAD_HEADER,      /* wrong version or size */
  FERRY_RECORD_BAD_CHECKSUM,    /* torn or corrupted */
  FERRY_RECORD_BAD_SEQ,         /* intact, but not the record for this slot */
  FERRY_RECORD_BAD_PAYLOAD,     /* checksum matches a body not derived from seq */
};

static inline const char *
ferry_record_status_name (enum ferry_record_status status)
{
  switch (status)
    {
    case FERRY_RECORD_OK: return "ok";
    case FERRY_RECORD_BAD_MAGIC: return "bad-magic";
    case FERRY_RECORD_BAD_HEADER: return "bad-header";
    case FERRY_RECORD_BAD_CHECKSUM: return "bad-checksum";
    case FERRY_RECORD_BAD_SEQ: return "bad-seq";
    case FERRY_RECORD_BAD_PAYLOAD: return "bad-payload";
    }
  return "unknown";
}

static inline uint64_t
ferry_record_fnv1a64 (const void *data, size_t len)
{
  const uint8_t *bytes = data;
  uint64_t hash = 0xcbf29ce484222325ull;

  for (size_t i = 0; i < len; i++)
    {
      hash ^= bytes[i];
      hash *= 0x100000001b3ull;
    }
  return hash;
}

/* splitmix64: cheap, and every seq gives a different, non-repeating body. */
static inline uint64_t
ferry_record_splitmix64 (uint64_t *state)
{
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline void
ferry_record_fill_payload (uint8_t *payload, size_t len, uint64_t seq)
{
  uint64_t state = seq;

  for (size_t off = 0; off < len; off += sizeof (uint64_t))
    {
      uint64_t word = ferry_record_splitmix64 (&state);
      size_t n = len - off < sizeof word ? len - off : sizeof word;

      memcpy (payload + off, &word, n);
    }
}

static inline int
ferry_record_payload_matches (const uint8_t *payload, size_t len, uint64_t seq)
{
  uint64_t state = seq;

  for (size_t off = 0; off < len; off += sizeof (uint64_t))
    {
      uint64_t word = ferry_record_splitmix64 (&state);
      size_t n = len - off < sizeof word ? len - off : sizeof word;

      if (memcmp (payload + off, &word, n) != 0)
        return 0;
    }
  return 1;
}

/* boot_id may be shorter than FERRY_BOOT_ID_LEN or NULL (unknown). */
static inline void
ferry_record_build (struct ferry_record *record, uint64_t seq,
                    uint64_t timestamp_ns, const char *boot_id)
{
  memset (record, 0, sizeof *record);
  memcpy (record->magic, FERRY_RECORD_MAGIC, FERRY_RECORD_MAGIC_LEN);
  record->version = FERRY_RECORD_VERSION;
  record->record_size = FERRY_RECORD_SIZE;
  record->seq = seq;
  record->timestamp_ns = timestamp_ns;
  if (boot_id)
    {
      size_t len = strnlen (boot_id, FERRY_BOOT_ID_LEN);
      memcpy (record->boot_id, boot_id, len);
    }
  ferry_record_fill_payload (record->payload, sizeof record->payload, seq);
  record->checksum = ferry_record_fnv1a64 (record,
                                           offsetof (struct ferry_record,
                                                     checksum));
}

/* Checks the record found in the slot that must hold expected_seq. */
static inline enum ferry_record_status
ferry_record_check (const struct ferry_record *record, uint64_t expected_seq)
{
  if (memcmp (record->magic, FERRY_RECORD_MAGIC, FERRY_RECORD_MAGIC_LEN) != 0)
    return FERRY_RECORD_BAD_MAGIC;
  if (record->version != FERRY_RECORD_VERSION
      || record->record_size != FERRY_RECORD_SIZE)
    return FERRY_RECORD_BAD_HEADER;
  if (record->checksum
      != ferry_record_fnv1a64 (record,
                               offsetof (struct ferry_record, checksum)))
    return FERRY_RECORD_BAD_CHECKSUM;
  if (record->seq != expected_seq)
    return FERRY_RECORD_BAD_SEQ;
  if (!ferry_record_payload_matches (record->payload, sizeof record->payload,
                                     record->seq))
    return FERRY_RECORD_BAD_PAYLOAD;
  return FERRY_RECORD_OK;
}

#endif /* FERRY_GUEST_RECORD_H */
