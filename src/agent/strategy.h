/* ferry agent — predicting a live migration and choosing its strategy.
 *
 * The model is pre-copy's own arithmetic: pass 1 sends the guest's
 * resident memory at the link's rate; each later pass sends what the guest
 * dirtied during the previous one; QEMU stops the guest once the rest fits
 * in the downtime limit. If the guest dirties as fast as the link carries,
 * no pass shrinks and pre-copy never ends.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

typedef struct {
  gint64 ram_bytes;          /* guest RAM size */
  gint64 resident_bytes;     /* pages the guest touched (non-zero candidates) */
  double dirty_bytes_per_s;  /* measured dirty rate, over 2 s */
  /* The same measured over 1 s; 0 = not measured, the guest taken to
   * dirty evenly. Page sampling sees only which pages changed between two
   * looks, so a guest that rewrites a working set faster than that shows
   * as many bytes over 1 s as over 2 s, twice the rate (bench/live's
   * dirtymax: about 256 and 128 MiB/s; it rewrote its 256 MiB buffer in
   * a tenth of a second, and QEMU's trace caught it rewriting 37 880 pages
   * in 58 ms). See ferry_dirtied_bytes. */
  double dirty_1s_bytes_per_s;
  double link_bytes_per_s;   /* measured throughput to the destination */
  gint64 downtime_limit_ms;
  gint64 max_passes;         /* stop predicting after this many */
  /* QEMU's dirty-bitmap sync, seconds per dirty page: 0 but for TCG with
   * QEMU's lost-dirty-page workaround, whose sync is slow (see
   * ferry_tcg_sync_s_per_page). Each sync runs at a pass's end, the first
   * before the first pass (see since_last_sync_s for what it finds), the
   * last while the guest is stopped. */
  double sync_s_per_page;
  /* Seconds since this QEMU's last dirty-bitmap sync (a migration that did
   * not complete); 0 = none since QEMU started, and set-up's sync then
   * finds every page of RAM dirty, else what the guest dirtied since. */
  double since_last_sync_s;
  /* For the stream's carriage (ferry_choose_stream): the source host's
   * CPUs, how many of them sat idle while the dirty rate was measured,
   * how well the guest's non-zero pages compress (raw / compressed, a
   * sample through zstd at multifd's level; 1 = not at all or unknown)
   * and how many raw bytes a second one core compresses them at (0 =
   * unknown: taken to keep up with any link). */
  guint cpus;
  double free_cores;
  double compress_ratio;
  double compress_bytes_per_s;
  /* link_bytes_per_s is the user's bandwidth limit, not the link: QEMU
   * 7.2 counts that limit in bytes before multifd compression, so
   * compressing would not make the stream any faster. */
  gboolean bandwidth_capped;
} FerryPlanInputs;

typedef struct {
  gboolean converges;
  gint64 passes;
  double total_s;            /* start to switchover complete */
  double downtime_ms;        /* predicted stop-and-copy time */
  gint64 bytes;              /* predicted bytes on the wire */
  double first_pass_s;
  gint64 after_switch_bytes; /* post-copy: what goes after the switch, the pages the guest may fault on */
} FerryPrediction;

/* The sync cost per page for TCG with guest RAM padded against QEMU
 * 7.2's lost-dirty-page bug: the padding sends every sync down QEMU's
 * page-at-a-time path, which scans the vCPU's TLB for each dirty page,
 * and a guest that works over more memory has a larger TLB. Fitted to
 * set-up times measured here (bench/live, a 1 GiB guest): about 0.1 s
 * of sync at rest, 2.6 s dirtying 50 MiB/s, 10.5 s at 125 MiB/s, rising
 * faster than the rate (0.45 + 0.0223 × MiB/s^1.55 µs a page); without
 * the padding set-up took 3–17 ms. */
double ferry_tcg_sync_s_per_page (double dirty_bytes_per_s);

/* What the guest dirties in `seconds`, from the two measurements: at an
 * even rate when 2 s saw twice what 1 s saw; when 2 s saw no more, all
 * of it in any interval, however short (a working set rewritten faster
 * than the sampling sees); in between, in proportion. At most its RAM. */
double ferry_dirtied_bytes (const FerryPlanInputs *inputs, double seconds);

/* Pure: the same inputs give the same prediction (unit-tested). */
void ferry_predict_precopy (const FerryPlanInputs *inputs, FerryPrediction *prediction);

/* Post-copy, switched at pass switch_at_pass: 1 = as soon as set-up's
 * sync is done (the guest moves at once and every page follows; asked for
 * with the migration, so the guest stops the moment that sync ends), 2 =
 * once the first pass is done (the guest moves with most pages already
 * there; what it dirtied follows; asked for at QEMU's pass event, so the
 * guest runs on until the request arrives, and the stopped guest's sync
 * collects what it rewrote meanwhile: under TCG 1.7-3.4 s for bench/live's
 * dirtymax). */
void ferry_predict_postcopy (const FerryPlanInputs *inputs, gint64 switch_at_pass,
                             FerryPrediction *prediction);

/* Where strategy auto switches to post-copy: 2, once the first pass is
 * done, so the guest moves with most of its pages there, faults on few,
 * and the window in which a broken link pauses it is short (switching at
 * once over a 4 MiB/s limit left a 256 MiB guest crawling for 40 s); or 1,
 * as soon as QEMU's set-up is done, when all it touched crosses in 5 s or
 * less and either the guest would dirty again at least half of what that
 * pass sent (a guest that rewrites its working set faster than the link
 * carries it: the pass would cost its time and a dirty-bitmap sync, and
 * spare the guest few faults) or the stop after that pass would exceed
 * the downtime limit (under TCG, the sync of what the guest rewrites while
 * the switch is asked for). Pure (unit-tested); sets *switch_at_pass and
 * returns the reason clause. */
char *ferry_choose_postcopy_switch (const FerryPlanInputs *inputs, gint64 *switch_at_pass);

/* The same choice for a multifd stream started again as one stream
 * (mig-src.c): what a stalled pass had left to send (stalled_bytes) is
 * what the guest rewrites in a pass, the share of a first pass it would
 * dirty again at least. Pure (unit-tested). */
char *ferry_choose_postcopy_switch_after_stall (gint64 resident_bytes, gint64 stalled_bytes,
                                                double link_bytes_per_s, gint64 *switch_at_pass);

/* How pre-copy's stream crosses the link: one TLS stream, or multifd
 * channels (one TLS stream each, spread over cores), compressed or not. */
typedef struct {
  gint64 channels;           /* 0 = one stream, else multifd channels (2..4) */
  gboolean compress;         /* zstd on the channels */
  double compress_ratio;     /* what the prediction counts on; 1 = none */
  /* The raw bytes the stream carries a second over the link's rate: the
   * ratio, or less where the cores compress slower than the link would
   * carry; 1 = none. */
  double speedup;
} FerryStreamChoice;

/* ferry_choose_stream's speedup for `channels` compressing channels:
 * QEMU compresses a channel's pages on that channel's thread, so the
 * channels compress at most compress_bytes_per_s on each idle core
 * they find. Pure. */
double ferry_compressed_speedup (const FerryPlanInputs *inputs, gint64 channels);

/* For a plan whose pre-copy converges well within the completion limit
 * (limit_s). Multifd (two channels, more with more idle cores) when the
 * host has two CPUs or more and pre-copy has room to spare: QEMU does not
 * run multifd with post-copy, so the way out of a guest that speeds up
 * is auto-converge instead. Compression when a core is idle and the
 * guest's memory compresses (ratio 1.1 or better) fast enough to carry a
 * tenth more than the link does uncompressed (on a link faster than the
 * cores compress, zstd would slow the stream down): fewer bytes to
 * encrypt and carry; not under a bandwidth limit (bandwidth_capped).
 * Pure (unit-tested); sets *choice and returns the reason clause. */
char *ferry_choose_stream (const FerryPlanInputs *inputs, const FerryPrediction *precopy, double limit_s,
                           FerryStreamChoice *choice);

/* QEMU's downtime limit for a pre-copy to start with (OpenStack Nova's
 * downtime steps, chosen by the model): the lowest of an eighth, a
 * quarter and half of the allowed maximum (inputs->downtime_limit_ms),
 * not under 20 ms, whose prediction still converges and takes at most a
 * tenth (and 0.2 s) longer than at the maximum: QEMU then stops the guest
 * once what is left fits in that shorter time, a pass or two later. The
 * maximum when none does (a guest that dirties near the link's rate).
 * mig-src.c raises it toward the maximum when a pass shrinks what is left
 * by less than half. Pure (unit-tested); returns the start limit in ms and
 * the prediction at it in *prediction. */
gint64 ferry_choose_downtime_start (const FerryPlanInputs *inputs, const FerryPrediction *at_max,
                                    FerryPrediction *prediction);

/* The plan again once QEMU has said how long its set-up took. That sync
 * covered the pages the plan counted dirty for it (all of RAM on a QEMU
 * that never synced, else what the guest dirtied since), so it gives the
 * cost per page this guest
 * pays now, which the plan could only guess from the dirty rate (under
 * TCG the same guest paid 36 µs a page in one run and 72-81 in the next).
 * Returns {"sync_us_per_page", "prediction"} for the plan's own strategy
 * (post-copy at its switch pass, else pre-copy), totals counted from the
 * stream's start; NULL when the plan lacks its measurements. Pure. */
JsonObject *ferry_plan_revise (JsonObject *plan, gint64 setup_ms);

G_END_DECLS
