/* ferry test guest: small helpers shared by the guest workload programs.
 *
 * The programs are built with `gcc -static` and run as children of the
 * busybox /init with stdout on the serial console, so everything here is
 * plain libc.
 */
#ifndef FERRY_GUEST_COMMON_H
#define FERRY_GUEST_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FERRY_NSEC_PER_SEC 1000000000LL
#define FERRY_BOOT_ID_BUF 40 /* 36-char UUID + NUL, rounded up */
#define FERRY_LINE_MAX 512

static inline int64_t
ferry_clock_ns (clockid_t clock)
{
  struct timespec ts;

  clock_gettime (clock, &ts);
  return (int64_t) ts.tv_sec * FERRY_NSEC_PER_SEC + ts.tv_nsec;
}

static inline int64_t
ferry_mono_ns (void)
{
  return ferry_clock_ns (CLOCK_MONOTONIC);
}

/* Absolute deadlines keep periodic work from drifting with the time the
   work itself takes (which is large and variable under TCG). */
static inline void
ferry_sleep_until (int64_t deadline_ns)
{
  struct timespec ts = {
    .tv_sec = deadline_ns / FERRY_NSEC_PER_SEC,
    .tv_nsec = deadline_ns % FERRY_NSEC_PER_SEC,
  };

  while (clock_nanosleep (CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* Emits one whole line with a single write(): several programs share the
   console, and test harnesses parse it line by line, so a line must never
   be split by another program's output. */
static inline void ferry_emit (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

static inline void
ferry_emit (const char *fmt, ...)
{
  char line[FERRY_LINE_MAX];
  va_list ap;
  int len;
  size_t done = 0;

  va_start (ap, fmt);
  len = vsnprintf (line, sizeof line - 1, fmt, ap);
  va_end (ap);
  if (len < 0)
    return;
  if ((size_t) len > sizeof line - 2)
    len = sizeof line - 2;
  line[len++] = '\n';

  while (done < (size_t) len)
    {
      ssize_t n = write (STDOUT_FILENO, line + done, len - done);

      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return;
      done += n;
    }
}

/* Fills buf with the kernel's boot id, or "unknown" if it can't be read
   (the programs must keep working, e.g. when run on a host for tests). */
static inline void
ferry_read_boot_id (char buf[FERRY_BOOT_ID_BUF])
{
  int fd = open ("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  ssize_t n = -1;

  if (fd >= 0)
    {
      n = read (fd, buf, FERRY_BOOT_ID_BUF - 1);
      close (fd);
    }
  if (n <= 0)
    {
      snprintf (buf, FERRY_BOOT_ID_BUF, "unknown");
      return;
    }
  buf[n] = '\0';
  buf[strcspn (buf, "\n")] = '\0';
}

/* Strict decimal parse: the whole string, no sign, at most max. */
static inline bool
ferry_parse_u64 (const char *text, uint64_t max, uint64_t *out)
{
  char *end = NULL;
  unsigned long long value;

  if (!text || *text < '0' || *text > '9')
    return false;
  errno = 0;
  value = strtoull (text, &end, 10);
  if (errno != 0 || *end != '\0' || value > max)
    return false;
  *out = value;
  return true;
}

#endif /* FERRY_GUEST_COMMON_H */
