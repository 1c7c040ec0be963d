/* ferry agent — the migration planner (see strategy.h) and the automatic
 * strategy: measure, predict, choose, and say why. */
#include "agent.h"
#include "strategy.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "jsonutil.h"

/* QEMU's per-migration setup and the device state at switchover. */
#define SETUP_S 0.1
#define DEVICE_STATE_BYTES (512 * 1024)
#define PROBE_BYTES (32 * 1024 * 1024)
#define WARM_UP_BYTES 4096
#define PAGE_BYTES 4096.0
/* From QEMU's pass event to its switch, asked for by ferry: 58 ms in
 * bench/live's trace. */
#define SWITCH_REQUEST_S 0.06
/* Fitted on the set-up times of bench/live's eight runs from 2026-11-23
 * 14:56 to 2026-11-24 06:57 (ferry's plan revised after set-up, 1 GiB
 * guest, pages set-up's sync found dirty): 0.3-0.6 µs a page at rest,
 * 9.3-12.5 at 44-56 MiB/s (every run of the eight), 36-47 at 120-132
 * (a few near 27); a straight line through rest and the maximum would
 * say 17 at 50 MiB/s. Runs before 2026-11-23 paid more (set-up 4.2-4.5 s
 * at 50-64 MiB/s, 16 µs a page; about 180 µs a page at the maximum after
 * a cancelled migration): the level moves between days on this machine
 * with nothing ferry can see beforehand; the revision after set-up
 * (ferry_plan_revise) measures it. */
#define TCG_SYNC_S_PER_PAGE_AT_REST 0.45e-6
#define TCG_SYNC_S_PER_PAGE_DIRTY_SCALE 0.0223e-6
#define TCG_SYNC_DIRTY_EXPONENT 1.55

double
ferry_tcg_sync_s_per_page (double dirty_bytes_per_s)
{
  return TCG_SYNC_S_PER_PAGE_AT_REST
         + TCG_SYNC_S_PER_PAGE_DIRTY_SCALE * pow (MAX (dirty_bytes_per_s, 0.0) / 1048576.0, TCG_SYNC_DIRTY_EXPONENT);
}

static double
sync_s (const FerryPlanInputs *inputs, double dirty_bytes)
{
  return dirty_bytes / PAGE_BYTES * inputs->sync_s_per_page;
}

double
ferry_dirtied_bytes (const FerryPlanInputs *inputs, double seconds)
{
  double over_2s = MAX (inputs->dirty_bytes_per_s, 0.0) * 2;
  double over_1s = inputs->dirty_1s_bytes_per_s > 0 ? inputs->dirty_1s_bytes_per_s : over_2s / 2;
  double dirtied;
  if (seconds <= 1)
    {
      /* 0: 2 s saw twice what 1 s saw (an even rate); 1: no more. */
      double saturated = over_1s > 0 ? CLAMP ((2 * over_1s - over_2s) / over_1s, 0.0, 1.0) : 0;
      dirtied = over_1s * (saturated + (1 - saturated) * MAX (seconds, 0.0));
    }
  else
    dirtied = over_1s + MAX (over_2s - over_1s, 0.0) * (seconds - 1);
  return MIN (dirtied, (double) inputs->ram_bytes);
}

/* What set-up's sync finds dirty: every page of RAM, unless this QEMU
 * synced before. */
static double
setup_dirty_bytes (const FerryPlanInputs *inputs)
{
  if (inputs->since_last_sync_s > 0)
    return ferry_dirtied_bytes (inputs, inputs->since_last_sync_s);
  return (double) inputs->ram_bytes;
}

void
ferry_predict_precopy (const FerryPlanInputs *inputs, FerryPrediction *prediction)
{
  double link = MAX (inputs->link_bytes_per_s, 1.0);
  double limit_s = inputs->downtime_limit_ms / 1000.0;
  double to_send = (double) MAX (inputs->resident_bytes, 0);
  /* Set-up syncs what QEMU's bitmap holds dirty (setup_dirty_bytes), and
   * every touched page goes in the first pass. The
   * guest dirties during the passes only: under TCG with the padding it
   * stands still through every sync (QEMU's trace: no page written during
   * an 11.4 s set-up sync nor the passes' syncs, 13 000 pages a second
   * between them), and under KVM a sync takes milliseconds. QEMU stops
   * the guest right after the sync that finds the rest small enough, so
   * the stopped guest's own sync finds next to nothing (traced: 3 ms). */
  double total_s = SETUP_S + sync_s (inputs, setup_dirty_bytes (inputs));
  double bytes = 0;
  gint64 max_passes = inputs->max_passes > 0 ? inputs->max_passes : 30;

  *prediction = (FerryPrediction) { 0 };
  for (gint64 pass = 1; pass <= max_passes; pass++)
    {
      double pass_s = to_send / link;
      if (pass == 1)
        prediction->first_pass_s = pass_s;
      /* QEMU switches over once what is left fits in the downtime limit. */
      if (pass > 1 && (to_send + DEVICE_STATE_BYTES) / link <= limit_s)
        {
          prediction->converges = TRUE;
          prediction->passes = pass;
          prediction->downtime_ms = (to_send + DEVICE_STATE_BYTES) / link * 1000.0;
          prediction->total_s = total_s + prediction->downtime_ms / 1000.0;
          prediction->bytes = (gint64) (bytes + to_send + DEVICE_STATE_BYTES);
          return;
        }
      bytes += to_send;
      /* What the guest dirtied meanwhile, and the sync that collects it
       * before the next pass. */
      to_send = ferry_dirtied_bytes (inputs, pass_s);
      total_s += pass_s + sync_s (inputs, to_send);
    }
  prediction->converges = FALSE;
  prediction->passes = max_passes;
  prediction->total_s = INFINITY;
  prediction->downtime_ms = (to_send + DEVICE_STATE_BYTES) / link * 1000.0;
  prediction->bytes = (gint64) bytes;
}

void
ferry_predict_postcopy (const FerryPlanInputs *inputs, gint64 switch_at_pass,
                        FerryPrediction *prediction)
{
  double link = MAX (inputs->link_bytes_per_s, 1.0);
  double resident = (double) MAX (inputs->resident_bytes, 0);
  double first_pass_s = resident / link;
  double setup_sync_s = sync_s (inputs, setup_dirty_bytes (inputs));
  double total_s = SETUP_S + setup_sync_s;
  double precopy_bytes = 0;
  /* What the stopped guest's sync collects, and what is left to send
   * after the switch: everything, or what the guest dirtied since the
   * first pass read it. */
  double dirtied_since, rest;
  if (switch_at_pass >= 2)
    {
      precopy_bytes = resident;
      double dirtied = MIN (ferry_dirtied_bytes (inputs, first_pass_s), resident);
      total_s += first_pass_s + sync_s (inputs, dirtied);
      /* Asked for at QEMU's pass event: the guest runs on until the
       * request arrives. */
      dirtied_since = MIN (ferry_dirtied_bytes (inputs, SWITCH_REQUEST_S), resident);
      rest = MIN (dirtied + dirtied_since, resident);
    }
  else
    {
      /* Asked for with the migration (mig_src_perform), the switch stops
       * the guest the moment set-up's sync ends, and the guest stood
       * still through that sync (under TCG with the padding, QEMU's
       * trace showed no page dirtied during an 11.4 s set-up sync; under
       * KVM the sync takes milliseconds): the stop finds next to nothing. */
      dirtied_since = 0;
      rest = resident;
    }
  double switch_s = DEVICE_STATE_BYTES / link + sync_s (inputs, dirtied_since);
  *prediction = (FerryPrediction) {
    .converges = TRUE,
    .passes = switch_at_pass >= 2 ? 1 : 0,
    .first_pass_s = first_pass_s,
    .downtime_ms = switch_s * 1000.0,
    .total_s = total_s + switch_s + rest / link,
    .bytes = (gint64) (precopy_bytes + rest + DEVICE_STATE_BYTES),
    .after_switch_bytes = (gint64) rest,
  };
}

/* A first pass pays while the guest leaves most of what it sent alone. */
#define POSTCOPY_SKIP_PASS_SHARE 0.5
/* Switched at set-up, the guest runs on pages fetched over the link until
 * all it touched has crossed: at most this long. A guest that rewrites a
 * small buffer fast dirties "everything" in a long pass too, and over a
 * slow link it would crawl (test_failures: 194 MiB over 4 MiB/s, 41 s
 * after the move). */
#define POSTCOPY_AT_SETUP_MAX_S 5.0

/* redirtied: the share of a first pass the guest would dirty again;
 * all_remote_s: how long everything it touched takes over the link;
 * stop_after_pass_ms: the switch's stop after a first pass, against the
 * downtime limit. */
static char *
postcopy_switch_point (double redirtied, double all_remote_s, double stop_after_pass_ms, gint64 limit_ms,
                       gint64 *switch_at_pass)
{
  *switch_at_pass = 2;
  gboolean rewrites = redirtied >= POSTCOPY_SKIP_PASS_SHARE;
  gboolean long_stop = stop_after_pass_ms > limit_ms;
  if (!rewrites && !long_stop)
    return g_strdup ("post-copy once the first pass is done");
  if (all_remote_s > POSTCOPY_AT_SETUP_MAX_S)
    return g_strdup_printf ("post-copy once the first pass is done (switched at once, the guest would run "
                            "%.0f s on pages fetched over the link)", all_remote_s);
  *switch_at_pass = 1;
  if (rewrites)
    return g_strdup_printf ("post-copy as soon as QEMU's set-up is done: the guest would dirty again %.0f %% "
                            "of what a first pass sent", redirtied * 100);
  return g_strdup_printf ("post-copy as soon as QEMU's set-up is done: switched after a first pass, the guest "
                          "would stop about %.1f s for the sync of what it rewrites while the switch is asked "
                          "for", stop_after_pass_ms / 1000.0);
}

char *
ferry_choose_postcopy_switch (const FerryPlanInputs *inputs, gint64 *switch_at_pass)
{
  FerryPrediction after_pass;
  ferry_predict_postcopy (inputs, 2, &after_pass);
  double resident = (double) MAX (inputs->resident_bytes, 1);
  return postcopy_switch_point (after_pass.after_switch_bytes / resident,
                                resident / MAX (inputs->link_bytes_per_s, 1.0), after_pass.downtime_ms,
                                inputs->downtime_limit_ms, switch_at_pass);
}

char *
ferry_choose_postcopy_switch_after_stall (gint64 resident_bytes, gint64 stalled_bytes, double link_bytes_per_s,
                                          gint64 *switch_at_pass)
{
  double resident = (double) MAX (resident_bytes, 1);
  return postcopy_switch_point (MIN (stalled_bytes / resident, 1.0), resident / MAX (link_bytes_per_s, 1.0), 0, 0,
                                switch_at_pass);
}

/* Multifd needs room: the guest must dirty at most this share of the link
 * and pre-copy must be predicted to take at most this share of the
 * completion limit (auto-converge, its only way out, is slow to act). */
#define MULTIFD_MAX_DIRTY_SHARE 0.5
#define MULTIFD_MAX_LIMIT_SHARE 0.25
#define MULTIFD_MAX_CHANNELS 4
/* Compression pays once it saves a tenth of the bytes (bench/live,
 * dirty50 over 1 Gbit/s: a zlib sample said 1.21:1, and two channels
 * took 8.9 s without zstd, 7.7 s with it) and the cores compress fast
 * enough for the stream to carry a tenth more. */
#define COMPRESS_MIN_RATIO 1.1
#define COMPRESS_MIN_SPEEDUP 1.1
/* The prediction never counts on more than this (a sample can flatter). */
#define COMPRESS_MAX_COUNTED_RATIO 3.0

/* The compress ratio a prediction counts on: the sample's, at most 3:1. */
static double
counted_compress_ratio (double sampled)
{
  return CLAMP (sampled, 1.0, COMPRESS_MAX_COUNTED_RATIO);
}

double
ferry_compressed_speedup (const FerryPlanInputs *inputs, gint64 channels)
{
  double link = MAX (inputs->link_bytes_per_s, 1.0);
  double carried = link * counted_compress_ratio (inputs->compress_ratio);
  if (inputs->compress_bytes_per_s > 0)
    carried = MIN (carried, inputs->compress_bytes_per_s * CLAMP (inputs->free_cores, 1.0, (double) MAX (channels, 1)));
  return carried / link;
}

char *
ferry_choose_stream (const FerryPlanInputs *inputs, const FerryPrediction *precopy, double limit_s,
                     FerryStreamChoice *choice)
{
  *choice = (FerryStreamChoice) { .channels = 0, .compress = FALSE, .compress_ratio = 1.0, .speedup = 1.0 };
  if (inputs->cpus < 2)
    return g_strdup ("one stream: multifd needs two CPUs or more");
  if (!precopy->converges || precopy->total_s > limit_s * MULTIFD_MAX_LIMIT_SHARE
      || inputs->dirty_bytes_per_s > inputs->link_bytes_per_s * MULTIFD_MAX_DIRTY_SHARE)
    return g_strdup ("one stream, post-copy in reserve: pre-copy has too little room to give up post-copy "
                     "for multifd");
  /* One channel per idle core, at least two: each channel is a TLS
   * stream encrypted on a core of its own. */
  choice->channels = CLAMP ((gint64) floor (inputs->free_cores), 2, MIN (MULTIFD_MAX_CHANNELS, (gint64) inputs->cpus));
  g_autofree char *compression = NULL;
  double speedup = ferry_compressed_speedup (inputs, choice->channels);
  if (inputs->bandwidth_capped)
    compression = g_strdup ("without compression (QEMU applies the bandwidth limit to the bytes before "
                            "compression)");
  else if (inputs->free_cores < 1.0)
    compression = g_strdup_printf ("without compression (%.1f cores are idle)", inputs->free_cores);
  else if (inputs->compress_ratio < COMPRESS_MIN_RATIO)
    compression = g_strdup_printf ("without compression (the guest's memory compresses only %.2f:1)",
                                   inputs->compress_ratio);
  else if (speedup < COMPRESS_MIN_SPEEDUP)
    compression = g_strdup_printf ("without compression (zstd compresses the guest's memory at %.0f MiB/s a "
                                   "core: %.1f idle cores would not keep up with the %.0f MiB/s link)",
                                   inputs->compress_bytes_per_s / 1048576.0, inputs->free_cores,
                                   inputs->link_bytes_per_s / 1048576.0);
  else
    {
      choice->compress = TRUE;
      choice->compress_ratio = counted_compress_ratio (inputs->compress_ratio);
      choice->speedup = speedup;
      g_autofree char *speed = inputs->compress_bytes_per_s > 0
                                 ? g_strdup_printf (" at %.0f MiB/s a core", inputs->compress_bytes_per_s / 1048576.0)
                                 : g_strdup ("");
      compression = g_strdup_printf ("with zstd (the guest's memory compresses %.1f:1%s and %.1f cores are idle: "
                                     "the stream carries %.1f times the link's rate of memory)",
                                     inputs->compress_ratio, speed, inputs->free_cores, choice->speedup);
    }
  return g_strdup_printf ("%" G_GINT64_FORMAT " multifd channels %s; auto-converge in reserve, and should a "
                          "pass not shrink what is left, the stream starts again as one stream with post-copy",
                          choice->channels, compression);
}

/* ---- measuring ---------------------------------------------------------------- */

/* QEMU's mapping of the guest's RAM: its largest anonymous mapping of
 * about the guest's RAM size, found in /proc/PID/smaps. */
typedef struct {
  guint64 start;
  gint64 size;
  gint64 resident;       /* pages the guest touched; untouched ones are zero */
} GuestRamMapping;

static gboolean
find_guest_ram (FerryVm *vm, gint64 ram_bytes, GuestRamMapping *found)
{
  g_autofree char *path = g_strdup_printf ("/proc/%d/smaps", vm->pid);
  g_autofree char *smaps = NULL;
  if (vm->pid <= 0 || !g_file_get_contents (path, &smaps, NULL, NULL))
    return FALSE;
  gboolean any = FALSE;
  GuestRamMapping current = { 0 };
  g_auto (GStrv) lines = g_strsplit (smaps, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++)
    {
      guint64 start, end;
      /* A mapping's header: "START-END perms offset dev inode path". */
      if (sscanf (lines[i], "%" G_GINT64_MODIFIER "x-%" G_GINT64_MODIFIER "x ", &start, &end) == 2)
        current = (GuestRamMapping) { .start = start };
      else if (g_str_has_prefix (lines[i], "Size:"))
        current.size = g_ascii_strtoll (lines[i] + 5, NULL, 10) * 1024;
      else if (g_str_has_prefix (lines[i], "Rss:"))
        {
          current.resident = g_ascii_strtoll (lines[i] + 4, NULL, 10) * 1024;
          /* Guest RAM: at least its size, at most a few MiB more (alignment). */
          if (current.size >= ram_bytes && current.size <= ram_bytes + 4 * 1024 * 1024
              && (!any || current.resident > found->resident))
            {
              *found = current;
              any = TRUE;
            }
        }
    }
  return any;
}

/* Runs of consecutive pages read from across the guest's RAM: multifd
 * compresses a channel's pages as one stream, so neighbours count. */
#define SAMPLE_RUNS 64
#define SAMPLE_RUN_PAGES 4

/* QEMU's default multifd-zstd-level, which ferry leaves alone. */
#define MULTIFD_ZSTD_LEVEL 1
/* Compressions of the sample timed; the fastest counts (the first warms
 * the caches, and the host may preempt any). */
#define SAMPLE_TIMINGS 3

typedef struct {
  double ratio;          /* raw / compressed; 1 = unknown */
  double bytes_per_s;    /* raw bytes one core compresses a second; 0 = unknown */
} CompressionSample;

static double
thread_cpu_s (void)
{
  struct timespec now;
  clock_gettime (CLOCK_THREAD_CPUTIME_ID, &now);
  return now.tv_sec + now.tv_nsec / 1e9;
}

/* How well, and how fast, zstd at multifd's level compresses the guest's
 * non-zero pages, read through /proc/PID/mem as one stream (a channel's
 * zstd context runs on across its pages). Zero pages are left out: QEMU
 * sends those as a flag. About 1 MiB read, compressed three times: a few
 * milliseconds of this thread's CPU time, which is what is timed. */
static CompressionSample
sample_compression (FerryVm *vm, const GuestRamMapping *ram)
{
  CompressionSample unknown = { .ratio = 1.0, .bytes_per_s = 0 };
  g_autofree char *path = g_strdup_printf ("/proc/%d/mem", vm->pid);
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return unknown;
  g_autoptr (GByteArray) sample = g_byte_array_new ();
  guint8 page[4096];
  static const guint8 zero_page[4096];
  gint64 stride = ram->size / SAMPLE_RUNS / 4096 * 4096;
  for (guint run = 0; run < SAMPLE_RUNS && stride > 0; run++)
    for (guint i = 0; i < SAMPLE_RUN_PAGES; i++)
      {
        off_t at = (off_t) (ram->start + run * stride + i * sizeof page);
        if (pread (fd, page, sizeof page, at) == (ssize_t) sizeof page && memcmp (page, zero_page, sizeof page) != 0)
          g_byte_array_append (sample, page, sizeof page);
      }
  close (fd);
  if (sample->len == 0)
    return unknown;
  ZSTD_CCtx *context = ZSTD_createCCtx ();
  if (context == NULL)
    return unknown;
  gsize capacity = ZSTD_compressBound (sample->len);
  g_autofree guint8 *compressed = g_malloc (capacity);
  size_t out = 0;
  double fastest_s = INFINITY;
  for (guint timing = 0; timing < SAMPLE_TIMINGS; timing++)
    {
      double started = thread_cpu_s ();
      out = ZSTD_compressCCtx (context, compressed, capacity, sample->data, sample->len, MULTIFD_ZSTD_LEVEL);
      fastest_s = MIN (fastest_s, thread_cpu_s () - started);
      if (ZSTD_isError (out) || out == 0)
        break;
    }
  ZSTD_freeCCtx (context);
  if (ZSTD_isError (out) || out == 0)
    return unknown;
  return (CompressionSample) {
    .ratio = (double) sample->len / out,
    .bytes_per_s = fastest_s > 0 ? sample->len / fastest_s : 0,
  };
}

/* CPU time of the whole host so far, from /proc/stat's first line:
 * idle (idle + iowait) and all, in clock ticks. */
typedef struct {
  guint64 idle;
  guint64 total;
} CpuTimes;

static gboolean
read_cpu_times (CpuTimes *times)
{
  g_autofree char *stat = NULL;
  if (!g_file_get_contents ("/proc/stat", &stat, NULL, NULL) || !g_str_has_prefix (stat, "cpu "))
    return FALSE;
  *times = (CpuTimes) { 0 };
  char *cursor = stat + 4;
  for (guint field = 0; field < 8; field++)
    {
      char *end;
      guint64 value = g_ascii_strtoull (cursor, &end, 10);
      if (end == cursor)
        return FALSE;
      cursor = end;
      times->total += value;
      if (field == 3 || field == 4)
        times->idle += value;
    }
  return TRUE;
}

/* Idle cores between two readings; 0 when either is missing. */
static double
idle_cores (const CpuTimes *before, const CpuTimes *after, guint cpus)
{
  if (after->total <= before->total)
    return 0;
  return (double) (after->idle - before->idle) / (after->total - before->total) * cpus;
}

typedef struct {
  FerryAgent *agent;
  char *vm_name;
  char *dest_url;
  FerryMigrateOptions options;
  gint64 probe_started_us;
  double link_bytes_per_s;
  double dirty_bytes_per_s;      /* over 2 s */
  double dirty_1s_bytes_per_s;   /* over 1 s, measured first */
  CpuTimes cpu_before;       /* when the dirty-rate measurements began */
  double free_cores;
} PlanData;

static void
plan_data_free (PlanData *data)
{
  g_free (data->vm_name);
  g_free (data->dest_url);
  g_free (data);
}

static JsonObject *
prediction_json (const FerryPrediction *prediction)
{
  JsonObject *json = json_object_new ();
  json_object_set_boolean_member (json, "converges", prediction->converges);
  json_object_set_int_member (json, "passes", prediction->passes);
  if (isfinite (prediction->total_s))
    json_object_set_double_member (json, "total_s", prediction->total_s);
  json_object_set_double_member (json, "downtime_ms", prediction->downtime_ms);
  json_object_set_int_member (json, "bytes", prediction->bytes);
  json_object_set_double_member (json, "first_pass_s", prediction->first_pass_s);
  return json;
}

JsonObject *
ferry_plan_revise (JsonObject *plan, gint64 setup_ms)
{
  JsonNode *measured_node = plan ? json_object_get_member (plan, "measured") : NULL;
  JsonNode *options_node = plan ? json_object_get_member (plan, "options") : NULL;
  if (measured_node == NULL || !JSON_NODE_HOLDS_OBJECT (measured_node) || setup_ms <= 0)
    return NULL;
  JsonObject *measured = json_node_get_object (measured_node);
  JsonObject *options = options_node && JSON_NODE_HOLDS_OBJECT (options_node)
                          ? json_node_get_object (options_node) : NULL;
  FerryPlanInputs inputs = {
    .ram_bytes = ferry_json_object_int (measured, "ram_bytes"),
    .resident_bytes = ferry_json_object_int (measured, "resident_bytes"),
    .dirty_bytes_per_s = json_object_get_double_member_with_default (measured, "dirty_mib_s", 0) * 1048576.0,
    .dirty_1s_bytes_per_s = json_object_get_double_member_with_default (measured, "dirty_1s_mib_s", 0) * 1048576.0,
    .link_bytes_per_s = json_object_get_double_member_with_default (measured, "link_mib_s", 0) * 1048576.0,
    .downtime_limit_ms = ferry_json_object_int (measured, "downtime_limit_ms"),
    .max_passes = 30,
  };
  if (inputs.ram_bytes <= 0 || inputs.link_bytes_per_s <= 0)
    return NULL;
  inputs.since_last_sync_s = json_object_get_double_member_with_default (measured, "since_last_sync_s", 0);
  inputs.sync_s_per_page = MAX (0.0, setup_ms / 1000.0 - SETUP_S) / MAX (setup_dirty_bytes (&inputs) / PAGE_BYTES, 1.0);
  /* The plan's compression carries more over the same link (never
   * chosen under a bandwidth limit, which QEMU counts before it). */
  if (options && g_strcmp0 (ferry_json_object_string (options, "compress"), "zstd") == 0)
    {
      inputs.compress_ratio = json_object_get_double_member_with_default (measured, "compress_ratio", 1.0);
      inputs.compress_bytes_per_s = json_object_get_double_member_with_default (measured, "compress_mib_s", 0)
                                    * 1048576.0;
      inputs.free_cores = json_object_get_double_member_with_default (measured, "free_cores", 1.0);
      inputs.link_bytes_per_s *= ferry_compressed_speedup (&inputs, ferry_json_object_int (options,
                                                                                        "parallel_connections"));
    }
  gint64 switch_at_pass = options ? ferry_json_object_int (options, "postcopy_at_pass") : 0;
  gint64 downtime_start_ms = options ? ferry_json_object_int (options, "downtime_start_ms") : 0;
  if (downtime_start_ms > 0)
    inputs.downtime_limit_ms = downtime_start_ms;
  FerryPrediction revised;
  if (switch_at_pass > 0)
    ferry_predict_postcopy (&inputs, switch_at_pass, &revised);
  else
    ferry_predict_precopy (&inputs, &revised);
  JsonObject *json = json_object_new ();
  json_object_set_double_member (json, "sync_us_per_page", inputs.sync_s_per_page * 1e6);
  json_object_set_int_member (json, "setup_ms", setup_ms);
  json_object_set_object_member (json, "prediction", prediction_json (&revised));
  return json;
}

#define DOWNTIME_START_MIN_MS 20
#define DOWNTIME_START_MAX_EXTRA_SHARE 0.1
#define DOWNTIME_START_MAX_EXTRA_S 0.2

gint64
ferry_choose_downtime_start (const FerryPlanInputs *inputs, const FerryPrediction *at_max,
                             FerryPrediction *prediction)
{
  *prediction = *at_max;
  if (!at_max->converges)
    return inputs->downtime_limit_ms;
  for (gint64 divisor = 8; divisor >= 2; divisor /= 2)
    {
      FerryPlanInputs lower = *inputs;
      lower.downtime_limit_ms = inputs->downtime_limit_ms / divisor;
      if (lower.downtime_limit_ms < DOWNTIME_START_MIN_MS)
        continue;
      FerryPrediction at_lower;
      ferry_predict_precopy (&lower, &at_lower);
      if (at_lower.converges
          && at_lower.total_s <= at_max->total_s * (1 + DOWNTIME_START_MAX_EXTRA_SHARE) + DOWNTIME_START_MAX_EXTRA_S)
        {
          *prediction = at_lower;
          return lower.downtime_limit_ms;
        }
    }
  return inputs->downtime_limit_ms;
}

/* Adds a clause to the plan's reason. */
static void G_GNUC_PRINTF (2, 3)
reason_append (char **reason, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *clause = g_strdup_vprintf (format, args);
  va_end (args);
  char *longer = g_strconcat (*reason, clause, NULL);
  g_free (*reason);
  *reason = longer;
}

/* Chooses settings from a prediction and explains the choice. */
static JsonObject *
choose (PlanData *data, FerryVm *vm)
{
  FerryPlanInputs inputs = {
    .ram_bytes = (gint64) vm->spec->memory_mib * 1024 * 1024,
    .dirty_bytes_per_s = data->dirty_bytes_per_s,
    .dirty_1s_bytes_per_s = data->dirty_1s_bytes_per_s,
    .link_bytes_per_s = data->link_bytes_per_s,
    .downtime_limit_ms = data->options.max_downtime_ms,
    .max_passes = 30,
    .sync_s_per_page = data->agent->pad_ram_for_tcg ? ferry_tcg_sync_s_per_page (data->dirty_bytes_per_s) : 0,
    .cpus = g_get_num_processors (),
    .free_cores = data->free_cores,
    .compress_ratio = 1.0,
  };
  if (vm->last_dirty_sync_us > 0)
    inputs.since_last_sync_s = MAX (g_get_monotonic_time () - vm->last_dirty_sync_us, 1) / 1e6;
  GuestRamMapping guest_ram;
  inputs.resident_bytes = inputs.ram_bytes;
  if (find_guest_ram (vm, inputs.ram_bytes, &guest_ram))
    {
      inputs.resident_bytes = guest_ram.resident;
      CompressionSample compression = sample_compression (vm, &guest_ram);
      inputs.compress_ratio = compression.ratio;
      inputs.compress_bytes_per_s = compression.bytes_per_s;
    }
  if (data->options.bandwidth_mib > 0 && data->options.bandwidth_mib * 1048576.0 <= inputs.link_bytes_per_s)
    {
      inputs.link_bytes_per_s = data->options.bandwidth_mib * 1048576.0;
      inputs.bandwidth_capped = TRUE;
    }

  FerryPrediction precopy, chosen;
  ferry_predict_precopy (&inputs, &precopy);
  double limit_s = data->options.completion_timeout_per_gib_s * (inputs.ram_bytes / 1073741824.0);
  FerryMigrateOptions *options = &data->options;
  g_autofree char *reason = NULL;
  const char *strategy;

  if (options->strategy == FERRY_STRATEGY_MANUAL)
    {
      strategy = options->postcopy ? "manual (post-copy allowed)" : "manual";
      chosen = precopy;
      reason = g_strdup ("options given by the user");
    }
  else if (options->copy_storage)
    {
      /* The disk mirrors must end while the guest is paused on the source,
       * so post-copy (the guest runs there first) is out; auto-converge
       * is the way to finish a guest that dirties too fast. It is on even
       * when pre-copy should converge: QEMU throttles only once a pass
       * dirties more than half of what it sent, and a write-blocking
       * mirror shares the link with the memory stream (test_live_storage
       * over 40 Mbit/s: predicted 2 passes, ran 150 s of sub-second passes
       * until the completion timeout). */
      strategy = precopy.converges ? "pre-copy" : "pre-copy with auto-converge";
      chosen = precopy;
      options->auto_converge = TRUE;
      reason = precopy.converges
                 ? g_strdup_printf ("pre-copy converges in %" G_GINT64_FORMAT " passes (%.1f s); post-copy "
                                    "is not used with a storage copy, so auto-converge throttles the guest "
                                    "should a pass not shrink what is left", precopy.passes, precopy.total_s)
                 : g_strdup ("pre-copy cannot converge and post-copy is not used with a storage copy: "
                             "auto-converge throttles the guest");
    }
  else if (precopy.converges && precopy.total_s <= limit_s / 2)
    {
      strategy = "pre-copy";
      chosen = precopy;
      FerryStreamChoice stream;
      g_autofree char *stream_reason = ferry_choose_stream (&inputs, &precopy, limit_s, &stream);
      g_autofree char *reserve = NULL;
      /* What the stream carries: compressed, more over the same link. */
      FerryPlanInputs carried = inputs;
      if (stream.channels > 0)
        {
          options->parallel_connections = stream.channels;
          options->compress = stream.compress ? FERRY_COMPRESS_ZSTD : FERRY_COMPRESS_NONE;
          /* Multifd rules out post-copy: a guest that speeds up is
           * throttled instead, and a timeout aborts (the guest stays). */
          options->auto_converge = TRUE;
          carried.link_bytes_per_s *= stream.speedup;
          ferry_predict_precopy (&carried, &chosen);
          reserve = g_strdup ("");
        }
      else
        {
          /* Post-copy stays available as the way out if the guest speeds
           * up: the watchdogs switch instead of aborting. */
          options->postcopy = TRUE;
          options->timeout_action = FERRY_TIMEOUT_POSTCOPY;
          options->postcopy_after_s = (gint64) ceil (precopy.total_s * 3 + 10);
          reserve = g_strdup_printf ("post-copy after %" G_GINT64_FORMAT " s if it does not; ",
                                     options->postcopy_after_s);
        }
      FerryPrediction at_max = chosen;
      gint64 start_ms = ferry_choose_downtime_start (&carried, &at_max, &chosen);
      chosen.bytes = (gint64) (chosen.bytes / stream.compress_ratio);
      g_autofree char *downtime_clause = NULL;
      if (start_ms < options->max_downtime_ms)
        {
          options->downtime_start_ms = start_ms;
          downtime_clause = g_strdup_printf ("; QEMU's downtime limit starts at %" G_GINT64_FORMAT " ms, raised "
                                             "toward the allowed %" G_GINT64_FORMAT " should a pass shrink what is "
                                             "left by less than half: %" G_GINT64_FORMAT " passes for a %.0f ms stop "
                                             "rather than %" G_GINT64_FORMAT " for %.0f", start_ms,
                                             options->max_downtime_ms, chosen.passes, chosen.downtime_ms,
                                             at_max.passes, at_max.downtime_ms);
        }
      reason = g_strdup_printf ("pre-copy converges in %" G_GINT64_FORMAT " passes (%.1f s, %.0f ms downtime); %s%s%s",
                                chosen.passes, chosen.total_s, chosen.downtime_ms, reserve, stream_reason,
                                downtime_clause ? downtime_clause : "");
    }
  else
    {
      strategy = "post-copy";
      gint64 switch_at_pass;
      g_autofree char *switch_reason = ferry_choose_postcopy_switch (&inputs, &switch_at_pass);
      ferry_migrate_options_postcopy (options, switch_at_pass);
      ferry_predict_postcopy (&inputs, options->postcopy_at_pass, &chosen);
      if (precopy.converges)
        reason = g_strdup_printf ("pre-copy would take %.1f s, over half the completion limit of %.0f s; %s",
                                  precopy.total_s, limit_s, switch_reason);
      else
        reason = g_strdup_printf ("the guest dirties %.0f MiB/s, the link carries %.0f MiB/s: pre-copy "
                                  "cannot converge; %s", inputs.dirty_bytes_per_s / 1048576.0,
                                  inputs.link_bytes_per_s / 1048576.0, switch_reason);
      if (chosen.downtime_ms > data->options.max_downtime_ms)
        reason_append (&reason, "; the switch will stop the guest for about %.1f s, over the %" G_GINT64_FORMAT
                       " ms limit: QEMU's dirty-bitmap sync of what it dirtied meanwhile (%.0f µs a page here)",
                       chosen.downtime_ms / 1000.0, data->options.max_downtime_ms, inputs.sync_s_per_page * 1e6);
    }

  /* Set-up's sync (of setup_dirty_bytes) holds the guest still that long
   * (see report_setup_stall in mig-src.c). Nothing worth saying under
   * KVM. */
  double setup_dirty = setup_dirty_bytes (&inputs);
  double setup_stall_s = sync_s (&inputs, setup_dirty);
  if (setup_stall_s * 1000.0 > inputs.downtime_limit_ms)
    reason_append (&reason, ". QEMU's set-up will hold the guest still for about %.1f s "
                   "(TCG's dirty-bitmap sync of %.0f of its %" G_GINT64_FORMAT " MiB)", setup_stall_s,
                   setup_dirty / 1048576.0, inputs.ram_bytes >> 20);

  JsonObject *plan = json_object_new ();
  JsonObject *measured = json_object_new ();
  json_object_set_int_member (measured, "ram_bytes", inputs.ram_bytes);
  json_object_set_int_member (measured, "resident_bytes", inputs.resident_bytes);
  json_object_set_double_member (measured, "dirty_mib_s", inputs.dirty_bytes_per_s / 1048576.0);
  json_object_set_double_member (measured, "dirty_1s_mib_s", inputs.dirty_1s_bytes_per_s / 1048576.0);
  json_object_set_double_member (measured, "link_mib_s", inputs.link_bytes_per_s / 1048576.0);
  json_object_set_int_member (measured, "downtime_limit_ms", inputs.downtime_limit_ms);
  json_object_set_double_member (measured, "sync_us_per_page", inputs.sync_s_per_page * 1e6);
  json_object_set_double_member (measured, "since_last_sync_s", inputs.since_last_sync_s);
  json_object_set_int_member (measured, "cpus", inputs.cpus);
  json_object_set_double_member (measured, "free_cores", inputs.free_cores);
  json_object_set_double_member (measured, "compress_ratio", inputs.compress_ratio);
  json_object_set_double_member (measured, "compress_mib_s", inputs.compress_bytes_per_s / 1048576.0);
  json_object_set_object_member (plan, "measured", measured);
  json_object_set_object_member (plan, "precopy", prediction_json (&precopy));
  json_object_set_string_member (plan, "strategy", strategy);
  json_object_set_object_member (plan, "prediction", prediction_json (&chosen));
  json_object_set_double_member (plan, "setup_stall_s", setup_stall_s);
  json_object_set_string_member (plan, "reason", reason);
  json_object_set_object_member (plan, "options", ferry_migrate_options_to_json (options));
  return plan;
}

static void
plan_fail (GTask *task, GError *error)
{
  g_task_return_error (task, error);
  g_object_unref (task);
}

static FerryVm *
plan_vm (GTask *task, GError **error)
{
  PlanData *data = g_task_get_task_data (task);
  FerryVm *vm = ferry_vm_lookup (data->agent, data->vm_name, error);
  if (vm != NULL && vm->qmp == NULL)
    {
      g_set_error (error, FERRY_ERROR, FERRY_ERROR_CONFLICT, "VM '%s' stopped while planning",
                   data->vm_name);
      return NULL;
    }
  return vm;
}

/* A dirty-rate measurement's result in bytes/s into *bytes_per_s, and the
 * VM still there; NULL with the plan failed. */
static FerryVm *
dirty_rate_measured (GAsyncResult *result, GTask *task, double *bytes_per_s)
{
  GError *error = NULL;
  g_autoptr (JsonObject) measurement = ferry_dirtyrate_measure_finish (result, &error);
  FerryVm *vm = measurement ? plan_vm (task, &error) : NULL;
  if (vm == NULL)
    {
      plan_fail (task, error);
      return NULL;
    }
  *bytes_per_s = ferry_json_object_int (measurement, "dirty_rate_mib_s") * 1048576.0;
  return vm;
}

static void
on_dirty_rate_2s (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PlanData *data = g_task_get_task_data (task);
  FerryVm *vm = dirty_rate_measured (result, task, &data->dirty_bytes_per_s);
  if (vm == NULL)
    return;
  CpuTimes cpu_after;
  if (data->cpu_before.total > 0 && read_cpu_times (&cpu_after))
    data->free_cores = idle_cores (&data->cpu_before, &cpu_after, g_get_num_processors ());
  g_task_return_pointer (task, choose (data, vm), (GDestroyNotify) json_object_unref);
  g_object_unref (task);
}

static void
on_dirty_rate_1s (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PlanData *data = g_task_get_task_data (task);
  FerryVm *vm = dirty_rate_measured (result, task, &data->dirty_1s_bytes_per_s);
  if (vm != NULL)
    ferry_dirtyrate_measure_async (vm, 2, on_dirty_rate_2s, task);
}

/* A probe's reply, or NULL with the plan failed. */
static JsonObject *
probe_reply (GAsyncResult *result, GTask *task)
{
  GError *error = NULL;
  JsonObject *reply = ferry_peer_request_finish (result, NULL, &error);
  if (reply == NULL)
    {
      g_prefix_error (&error, "measuring the link to the destination: ");
      plan_fail (task, error);
    }
  return reply;
}

static void
on_probed (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PlanData *data = g_task_get_task_data (task);
  GError *error = NULL;
  g_autoptr (JsonObject) reply = probe_reply (result, task);
  if (reply == NULL)
    return;
  double seconds = (g_get_monotonic_time () - data->probe_started_us) / 1e6;
  data->link_bytes_per_s = ferry_json_object_int (reply, "bytes") / MAX (seconds, 1e-3);
  FerryVm *vm = plan_vm (task, &error);
  if (vm == NULL)
    {
      plan_fail (task, error);
      return;
    }
  /* One second, then two: a one-second sample misses slow dirtiers, and
   * the two together tell an even dirtier from one that rewrites a working
   * set faster than sampling sees (ferry_dirtied_bytes). How busy the
   * host's CPUs are is read over the same three seconds. */
  if (!read_cpu_times (&data->cpu_before))
    data->cpu_before = (CpuTimes) { 0 };
  ferry_dirtyrate_measure_async (vm, 1, on_dirty_rate_1s, task);
}

static void
on_warmed_up (GObject *source, GAsyncResult *result, gpointer user_data)
{
  GTask *task = user_data;
  PlanData *data = g_task_get_task_data (task);
  g_autoptr (JsonObject) reply = probe_reply (result, task);
  if (reply == NULL)
    return;
  /* The body is made before the call returns: the clock runs from the
   * send on. */
  ferry_peer_probe_async (data->agent, data->dest_url, PROBE_BYTES, on_probed, task);
  data->probe_started_us = g_get_monotonic_time ();
}

void
ferry_plan_async (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options,
                  GAsyncReadyCallback callback, gpointer user_data)
{
  GTask *task = g_task_new (NULL, NULL, callback, user_data);
  PlanData *data = g_new0 (PlanData, 1);
  data->agent = vm->agent;
  data->vm_name = g_strdup (vm->name);
  data->dest_url = g_strdup (dest_url);
  data->options = *options;
  g_task_set_task_data (task, data, (GDestroyNotify) plan_data_free);
  if (!options->live || vm->qmp == NULL || (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED))
    {
      g_task_return_new_error (task, FERRY_ERROR, FERRY_ERROR_CONFLICT,
                               "VM '%s' is %s; estimates are for live migrations of running VMs",
                               vm->name, ferry_vm_state_to_string (vm->state));
      g_object_unref (task);
      return;
    }
  /* A small probe first: the timed one then finds the TLS connection
   * made (a handshake is not link rate). */
  ferry_peer_probe_async (vm->agent, dest_url, WARM_UP_BYTES, on_warmed_up, task);
}

JsonObject *
ferry_plan_finish (GAsyncResult *result, FerryMigrateOptions *chosen, GError **error)
{
  JsonObject *plan = g_task_propagate_pointer (G_TASK (result), error);
  if (plan != NULL && chosen != NULL)
    *chosen = ((PlanData *) g_task_get_task_data (G_TASK (result)))->options;
  return plan;
}
