/* The prediction model and the option rules: what --estimate and
 * --strategy auto decide from, and what ferry refuses. */
#include <math.h>

#include <glib.h>

#include "agent.h"
#include "jsonutil.h"
#include "strategy.h"

#define MiB (1024.0 * 1024.0)

static FerryPlanInputs
inputs (double resident_mib, double dirty_mib_s, double link_mib_s)
{
  return (FerryPlanInputs) {
    .ram_bytes = 1024 * 1024 * 1024,
    .resident_bytes = (gint64) (resident_mib * MiB),
    .dirty_bytes_per_s = dirty_mib_s * MiB,
    .link_bytes_per_s = link_mib_s * MiB,
    .downtime_limit_ms = 300,
    .max_passes = 30,
  };
}

static void
test_idle_guest_converges_in_two_passes (void)
{
  FerryPlanInputs in = inputs (200, 0, 100);
  FerryPrediction p;
  ferry_predict_precopy (&in, &p);
  g_assert_true (p.converges);
  g_assert_cmpint (p.passes, ==, 2);
  /* 200 MiB at 100 MiB/s, plus setup and device state. */
  g_assert_cmpfloat_with_epsilon (p.first_pass_s, 2.0, 1e-9);
  g_assert_cmpfloat (p.total_s, >, 2.0);
  g_assert_cmpfloat (p.total_s, <, 2.2);
  g_assert_cmpfloat (p.downtime_ms, <=, 300);
}

static void
test_moderate_dirtier_needs_more_passes (void)
{
  FerryPlanInputs in = inputs (200, 50, 100);
  FerryPrediction p;
  ferry_predict_precopy (&in, &p);
  g_assert_true (p.converges);
  /* 2 s, then 100 MiB in 1 s, 50 MiB in 0.5 s, 25 in .25 → 12.5 MiB fits 300 ms... */
  g_assert_cmpint (p.passes, >=, 4);
  g_assert_cmpfloat (p.total_s, >, 3.5);
  g_assert_cmpint (p.bytes, >, (gint64) (350 * MiB));
}

/* TCG with the padding workaround: set-up syncs every page of RAM and
 * each pass's end the pages dirtied; the guest stands still through a
 * sync, so the syncs cost time, not passes, and the stopped guest's sync
 * right after the last one finds nothing. */
static void
test_slow_dirty_sync_adds_setup_and_downtime (void)
{
  FerryPlanInputs fast = inputs (200, 50, 100);
  FerryPlanInputs slow = fast;
  slow.sync_s_per_page = ferry_tcg_sync_s_per_page (slow.dirty_bytes_per_s);
  /* bench/live's 50 MiB/s guest paid 9.3-12.5 µs a page. */
  double per_page = slow.sync_s_per_page;
  g_assert_cmpfloat_with_epsilon (per_page, 10.0e-6, 0.05e-6);
  /* Faster than in proportion to the dirty rate: at rest and at the
   * maximum as measured, 0.3-0.6 and 36-47 µs. */
  g_assert_cmpfloat_with_epsilon (ferry_tcg_sync_s_per_page (0), 0.45e-6, 1e-12);
  g_assert_cmpfloat (ferry_tcg_sync_s_per_page (125 * MiB), >, 36e-6);
  g_assert_cmpfloat (ferry_tcg_sync_s_per_page (125 * MiB), <, 47e-6);
  FerryPrediction a, b;
  ferry_predict_precopy (&fast, &a);
  ferry_predict_precopy (&slow, &b);
  g_assert_true (b.converges);
  g_assert_cmpint (b.passes, ==, a.passes);
  g_assert_cmpfloat_with_epsilon (b.downtime_ms, a.downtime_ms, 1e-9);
  /* 262144 pages × 10 µs = 2.6 s of set-up, and each pass's sync:
   * 100 MiB dirtied in the 2 s first pass, 50 in the 1 s second, 25 in
   * the third; the fourth's 25 fit in the downtime limit. */
  g_assert_cmpint (b.passes, ==, 4);
  g_assert_cmpfloat_with_epsilon (b.total_s - a.total_s, (262144 + 175 * 256) * per_page, 1e-6);

  FerryPrediction c, d;
  ferry_predict_postcopy (&fast, 1, &c);
  ferry_predict_postcopy (&slow, 1, &d);
  /* Switched the moment set-up's 2.6 s sync ends (asked for with the
   * migration): the guest stood still through the sync, so the stop
   * finds nothing more to sync; the set-up itself takes the time. */
  double setup_sync_s = 262144 * per_page;
  g_assert_cmpfloat_with_epsilon (d.downtime_ms, c.downtime_ms, 1e-9);
  g_assert_cmpfloat_with_epsilon (d.total_s - c.total_s, setup_sync_s, 1e-9);
}

/* Measured here: a guest dirtying "120 MiB/s" over a 211 MiB/s link;
 * plain arithmetic says pre-copy converges, but QEMU took 48 s and
 * stopped the guest for 10.5 s. It rewrote a 256 MiB buffer every tenth
 * of a second: measured over 1 s it dirtied as much as over 2 s. */
static void
test_working_set_rewritten_keeps_precopy_from_converging (void)
{
  FerryPlanInputs in = inputs (350, 120, 211);
  FerryPrediction p;
  ferry_predict_precopy (&in, &p);
  g_assert_true (p.converges);
  in.dirty_1s_bytes_per_s = 240 * MiB;
  ferry_predict_precopy (&in, &p);
  g_assert_false (p.converges);
}

/* What a guest dirties in a while, from page sampling over 1 s and 2 s. */
static void
test_dirtied_bytes (void)
{
  /* Measured over 2 s only, or twice as much over 2 s as over 1 s: an
   * even rate. */
  FerryPlanInputs even = inputs (350, 50, 100);
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&even, 0.5), 25 * MiB, 1);
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&even, 3), 150 * MiB, 1);
  even.dirty_1s_bytes_per_s = 50 * MiB;
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&even, 0.06), 3 * MiB, 1);
  /* bench/live's dirtymax: 256 MiB over 1 s, 256 over 2 s (128 MiB/s):
   * its buffer, in any while however short. */
  FerryPlanInputs rewrites = inputs (350, 128, 100);
  rewrites.dirty_1s_bytes_per_s = 256 * MiB;
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&rewrites, 0.06), 256 * MiB, 1);
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&rewrites, 5), 256 * MiB, 1);
  /* Half way: 100 over 1 s, 150 over 2 s. */
  FerryPlanInputs between = inputs (350, 75, 100);
  between.dirty_1s_bytes_per_s = 100 * MiB;
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&between, 0.5), 75 * MiB, 1);
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&between, 3), 200 * MiB, 1);
  /* Never more than the guest's RAM. */
  g_assert_cmpfloat_with_epsilon (ferry_dirtied_bytes (&between, 100), 1024 * MiB, 1);
}

static void
test_dirtier_faster_than_link_never_converges (void)
{
  FerryPlanInputs in = inputs (300, 150, 100);
  FerryPrediction p;
  ferry_predict_precopy (&in, &p);
  g_assert_false (p.converges);
  g_assert_true (isinf (p.total_s));
}

static void
test_lower_downtime_limit_costs_passes (void)
{
  FerryPlanInputs relaxed = inputs (200, 50, 100);
  FerryPlanInputs strict = relaxed;
  strict.downtime_limit_ms = 30;
  FerryPrediction a, b;
  ferry_predict_precopy (&relaxed, &a);
  ferry_predict_precopy (&strict, &b);
  g_assert_cmpint (b.passes, >, a.passes);
  g_assert_cmpfloat (b.downtime_ms, <, a.downtime_ms);
}

/* Strategy auto starts QEMU below the allowed downtime when a pass or two
 * more buy a shorter stop, never below 20 ms, never for a guest that
 * would not converge, never at more than a tenth (and 0.2 s) more time. */
static void
test_downtime_start (void)
{
  /* bench/live's dirty50 over 1 Gbit/s: an eighth of 300 ms. */
  FerryPlanInputs moderate = inputs (362, 50, 108);
  FerryPrediction at_max, at_start;
  ferry_predict_precopy (&moderate, &at_max);
  gint64 start = ferry_choose_downtime_start (&moderate, &at_max, &at_start);
  g_assert_cmpint (start, ==, 37);
  g_assert_true (at_start.converges);
  g_assert_cmpint (at_start.passes, >, at_max.passes);
  g_assert_cmpfloat (at_start.downtime_ms, <, at_max.downtime_ms / 4);
  g_assert_cmpfloat (at_start.total_s, <=, at_max.total_s * 1.1 + 0.2);
  FerryPlanInputs check = moderate;
  check.downtime_limit_ms = start;
  FerryPrediction again;
  ferry_predict_precopy (&check, &again);
  g_assert_cmpfloat_with_epsilon (again.total_s, at_start.total_s, 1e-9);

  /* An idle guest: the same passes at any limit. */
  FerryPlanInputs idle = inputs (126, 0, 335);
  ferry_predict_precopy (&idle, &at_max);
  g_assert_cmpint (ferry_choose_downtime_start (&idle, &at_max, &at_start), ==, 37);
  g_assert_cmpint (at_start.passes, ==, at_max.passes);

  /* Not under 20 ms: of 100 ms allowed, a quarter. */
  idle.downtime_limit_ms = 100;
  ferry_predict_precopy (&idle, &at_max);
  g_assert_cmpint (ferry_choose_downtime_start (&idle, &at_max, &at_start), ==, 25);

  /* A guest dirtying at 70 % of the link: an eighth would cost too many
   * passes (0.7 s more than at 300 ms), a quarter does not. */
  FerryPlanInputs busy = inputs (100, 70, 100);
  ferry_predict_precopy (&busy, &at_max);
  g_assert_cmpint (ferry_choose_downtime_start (&busy, &at_max, &at_start), ==, 75);
  g_assert_cmpfloat (at_start.total_s, <=, at_max.total_s * 1.1 + 0.2);
  g_assert_cmpfloat (at_start.total_s, >, at_max.total_s);

  /* A guest pre-copy cannot move keeps the maximum. */
  FerryPlanInputs fast = inputs (300, 150, 100);
  ferry_predict_precopy (&fast, &at_max);
  g_assert_cmpint (ferry_choose_downtime_start (&fast, &at_max, &at_start), ==, 300);
}

static void
test_postcopy_bounded_by_one_pass_and_the_rest (void)
{
  FerryPlanInputs in = inputs (300, 150, 100);
  FerryPrediction p;
  ferry_predict_postcopy (&in, 2, &p);
  g_assert_true (p.converges);
  /* 3 s first pass, then at most what was dirtied (≤ resident) once more. */
  g_assert_cmpfloat (p.total_s, >, 6.0);
  g_assert_cmpfloat (p.total_s, <, 6.5);
  g_assert_cmpint (p.bytes, >, (gint64) (600 * MiB));
  g_assert_cmpfloat (p.downtime_ms, <, 50);
}

/* Switched right after set-up: every resident page crosses once, after
 * the switch; no pass before it. */
static void
test_postcopy_after_setup_sends_everything_once (void)
{
  FerryPlanInputs in = inputs (300, 150, 100);
  FerryPrediction p;
  ferry_predict_postcopy (&in, 1, &p);
  g_assert_cmpint (p.passes, ==, 0);
  g_assert_cmpfloat (p.total_s, >, 3.0);
  g_assert_cmpfloat (p.total_s, <, 3.2);
  g_assert_cmpint (p.bytes, <, (gint64) (301 * MiB));
  g_assert_cmpint (p.bytes, >=, (gint64) (300 * MiB));
}

/* Where post-copy switches: after a first pass unless the guest would
 * dirty again at least half of what it sent. */
static void
test_postcopy_switch_point (void)
{
  gint64 at_pass = 0;
  /* bench/live's dirtymax over 1 Gbit/s: a 3.4 s pass, 138 MiB/s rewrite it all. */
  FerryPlanInputs busy = inputs (364, 138, 108);
  g_autofree char *busy_reason = ferry_choose_postcopy_switch (&busy, &at_pass);
  g_assert_cmpint (at_pass, ==, 1);
  g_assert_nonnull (strstr (busy_reason, "as soon as QEMU's set-up is done"));
  g_assert_nonnull (strstr (busy_reason, "100 %"));
  /* A small buffer rewritten fast over a slow link (test_failures): the
   * model says "everything again", but switched at once the guest would
   * run 48 s on remote pages. */
  FerryPlanInputs slow_link = inputs (194, 7, 4);
  g_autofree char *slow_reason = ferry_choose_postcopy_switch (&slow_link, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_nonnull (strstr (slow_reason, "would run 48 s on pages fetched over the link"));
  /* A big quiet guest over a slow link: the pass moves most pages first. */
  FerryPlanInputs quiet = inputs (256, 1, 4);
  g_autofree char *quiet_reason = ferry_choose_postcopy_switch (&quiet, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_cmpstr (quiet_reason, ==, "post-copy once the first pass is done");
  /* A 1 s pass over a fast link, 129 MiB/s at an even rate: 38 % of it
   * again; the guest stands still through the pass's TCG sync, so the
   * same under TCG... */
  FerryPlanInputs fast_link = inputs (364, 129, 354);
  g_autofree char *kvm_reason = ferry_choose_postcopy_switch (&fast_link, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_cmpstr (kvm_reason, ==, "post-copy once the first pass is done");
  fast_link.sync_s_per_page = 36e-6;
  g_autofree char *even_reason = ferry_choose_postcopy_switch (&fast_link, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_cmpstr (even_reason, ==, "post-copy once the first pass is done");
  /* ...but bench/live's dirtymax dirtied as much over 1 s as over 2 s:
   * it rewrites its 256 MiB in any while. */
  fast_link.dirty_1s_bytes_per_s = 258 * MiB;
  g_autofree char *rewrites_reason = ferry_choose_postcopy_switch (&fast_link, &at_pass);
  g_assert_cmpint (at_pass, ==, 1);
  g_assert_nonnull (strstr (rewrites_reason, "would dirty again 100 %"));
  /* A guest rewriting a 64 MiB set fast dirties 35 % of a first pass
   * again, but under TCG the stop after the pass would sync all 64 MiB
   * it rewrote while the switch was asked for: 0.6 s; under KVM
   * milliseconds. */
  FerryPlanInputs small_set = inputs (364, 32, 354);
  small_set.dirty_1s_bytes_per_s = 64 * MiB;
  g_autofree char *small_kvm = ferry_choose_postcopy_switch (&small_set, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_cmpstr (small_kvm, ==, "post-copy once the first pass is done");
  small_set.sync_s_per_page = 36e-6;
  g_autofree char *small_tcg = ferry_choose_postcopy_switch (&small_set, &at_pass);
  g_assert_cmpint (at_pass, ==, 1);
  g_assert_nonnull (strstr (small_tcg, "would stop about 0.6 s for the sync"));
  /* After a stalled multifd stream: test_strategy_restart's guest left
   * 56 of its 200 MiB a pass, so a first pass still pays... */
  g_autofree char *stall_reason = ferry_choose_postcopy_switch_after_stall (
    (gint64) (200 * MiB), (gint64) (56 * MiB), 16 * MiB, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_cmpstr (stall_reason, ==, "post-copy once the first pass is done");
  /* ...a guest rewriting 256 of its 364 MiB each pass on a fast link does not... */
  g_autofree char *busy_stall = ferry_choose_postcopy_switch_after_stall (
    (gint64) (364 * MiB), (gint64) (256 * MiB), 354 * MiB, &at_pass);
  g_assert_cmpint (at_pass, ==, 1);
  g_assert_nonnull (strstr (busy_stall, "70 %"));
  /* ...unless the link is slow: 23 s on remote pages. */
  g_autofree char *slow_stall = ferry_choose_postcopy_switch_after_stall (
    (gint64) (364 * MiB), (gint64) (256 * MiB), 16 * MiB, &at_pass);
  g_assert_cmpint (at_pass, ==, 2);
  g_assert_nonnull (strstr (slow_stall, "23 s"));
  /* The switch point's prediction is the shorter one here. */
  FerryPrediction after_setup, after_pass;
  ferry_predict_postcopy (&busy, 1, &after_setup);
  ferry_predict_postcopy (&busy, 2, &after_pass);
  g_assert_cmpfloat (after_setup.total_s, <, after_pass.total_s);
  g_assert_cmpint (after_setup.after_switch_bytes, ==, busy.resident_bytes);
}

static JsonObject *
plan_json (double resident_mib, double dirty_mib_s, double dirty_1s_mib_s, double link_mib_s,
           gint64 postcopy_at_pass)
{
  JsonObject *plan = json_object_new ();
  JsonObject *measured = json_object_new ();
  JsonObject *options = json_object_new ();
  json_object_set_int_member (measured, "ram_bytes", 1024 * MiB);
  json_object_set_int_member (measured, "resident_bytes", (gint64) (resident_mib * MiB));
  json_object_set_double_member (measured, "dirty_mib_s", dirty_mib_s);
  json_object_set_double_member (measured, "dirty_1s_mib_s", dirty_1s_mib_s);
  json_object_set_double_member (measured, "link_mib_s", link_mib_s);
  json_object_set_int_member (measured, "downtime_limit_ms", 300);
  json_object_set_int_member (options, "postcopy_at_pass", postcopy_at_pass);
  json_object_set_object_member (plan, "measured", measured);
  json_object_set_object_member (plan, "options", options);
  return plan;
}

/* bench/live's traced dirtymax run over 1 Gbit/s: set-up 18.9 s for all
 * 262144 pages, the pass-1 sync 5.3 s, QEMU's stop at the switch 4.3 s,
 * 32-34 s in all, where the plan said 22-23.5 s. The set-up alone gives
 * the cost per page, and with it the rest (the guest rewrote its buffer
 * in any while: 240 MiB over 1 s as over 2 s). */
static void
test_revised_after_setup_uses_the_measured_sync (void)
{
  g_autoptr (JsonObject) plan = plan_json (300, 120, 240, 104, 2);
  g_autoptr (JsonObject) revised = ferry_plan_revise (plan, 18900);
  g_assert_nonnull (revised);
  double us_per_page = json_object_get_double_member (revised, "sync_us_per_page");
  g_assert_cmpfloat (us_per_page, >, 70);
  g_assert_cmpfloat (us_per_page, <, 73);
  JsonObject *prediction = json_object_get_object_member (revised, "prediction");
  g_test_message ("revised: %.1f s total, %.0f ms downtime", json_object_get_double_member (prediction, "total_s"),
                  json_object_get_double_member (prediction, "downtime_ms"));
  g_assert_cmpfloat (json_object_get_double_member (prediction, "total_s"), >, 30);
  g_assert_cmpfloat (json_object_get_double_member (prediction, "total_s"), <, 38);
  g_assert_cmpfloat (json_object_get_double_member (prediction, "downtime_ms"), >, 3000);

  /* An idle guest's quick set-up: pre-copy, as planned, under a second. */
  g_autoptr (JsonObject) idle = plan_json (110, 0, 0, 104, 0);
  g_autoptr (JsonObject) quick = ferry_plan_revise (idle, 300);
  prediction = json_object_get_object_member (quick, "prediction");
  g_assert_true (json_object_get_boolean_member (prediction, "converges"));
  g_assert_cmpfloat (json_object_get_double_member (prediction, "total_s"), <, 1.5);

  /* A manual migration's plan has no measurements: nothing to revise. */
  g_autoptr (JsonObject) manual = json_object_new ();
  g_assert_null (ferry_plan_revise (manual, 500));
  g_assert_null (ferry_plan_revise (plan, 0));
}

/* QEMU's dirty bitmap starts with every page dirty and only a sync clears
 * it: after a migration that did not complete, set-up syncs only what the
 * guest dirtied since (bench/live: 63 828 pages and 3.1 s after the
 * defaults' cancelled run, all 262 144 and 11 s on a fresh QEMU). */
static void
test_setup_after_an_earlier_sync (void)
{
  FerryPlanInputs fresh = inputs (350, 128, 108);
  fresh.dirty_1s_bytes_per_s = 256 * MiB;
  fresh.sync_s_per_page = 45e-6;
  FerryPlanInputs synced = fresh;
  synced.since_last_sync_s = 12;
  FerryPrediction a, b;
  ferry_predict_postcopy (&fresh, 1, &a);
  ferry_predict_postcopy (&synced, 1, &b);
  g_assert_cmpfloat_with_epsilon (a.total_s - b.total_s, (262144 - 65536) * 45e-6, 1e-6);
  /* The revision divides set-up's time by the pages it synced. */
  g_autoptr (JsonObject) plan = plan_json (350, 128, 256, 108, 1);
  json_object_set_double_member (json_object_get_object_member (plan, "measured"), "since_last_sync_s", 12);
  g_autoptr (JsonObject) revised = ferry_plan_revise (plan, 3100);
  g_assert_cmpfloat_with_epsilon (json_object_get_double_member (revised, "sync_us_per_page"),
                                  3.0 / 65536 * 1e6, 0.01);
}

/* ferry_choose_stream's choice for these inputs, and a fragment its
 * reason must hold. */
static void
assert_stream (const FerryPlanInputs *in, const FerryPrediction *precopy, double limit_s, gint64 channels,
               gboolean compress, double counted_ratio, const char *fragment)
{
  FerryStreamChoice choice;
  g_autofree char *reason = ferry_choose_stream (in, precopy, limit_s, &choice);
  g_test_message ("%s", reason);
  g_assert_cmpint (choice.channels, ==, channels);
  g_assert_cmpint (choice.compress, ==, compress);
  g_assert_cmpfloat (choice.compress_ratio, ==, counted_ratio);
  /* Without a measured compression speed the cores keep up: the stream
   * carries the ratio more. */
  if (in->compress_bytes_per_s == 0)
    g_assert_cmpfloat (choice.speedup, ==, counted_ratio);
  if (strstr (reason, fragment) == NULL)
    g_error ("'%s' should mention '%s'", reason, fragment);
}

/* Multifd only with room to spare, one channel per idle core (2..4),
 * zstd only when a core is idle and the sample compresses. */
static void
test_stream_choice (void)
{
  FerryPlanInputs idle = inputs (110, 0, 400);
  idle.cpus = 2;
  idle.free_cores = 1.9;
  idle.compress_ratio = 2.6;
  FerryPrediction precopy;
  ferry_predict_precopy (&idle, &precopy);
  assert_stream (&idle, &precopy, 150, 2, TRUE, 2.6, "2 multifd channels with zstd (the guest's memory compresses "
                                                     "2.6:1");

  /* A big idle host: one channel per idle core, four at most; a sample
   * that flatters is counted at 3:1. */
  FerryPlanInputs big = idle;
  big.cpus = 32;
  big.free_cores = 30;
  big.compress_ratio = 8;
  assert_stream (&big, &precopy, 150, 4, TRUE, 3.0, "4 multifd channels with zstd");

  /* The cores compress 300 MiB/s each: on 1.9 idle cores the stream
   * carries 570 MiB/s of memory over the 400 MiB/s link, not 2.6 times
   * its rate, and the prediction counts on that. */
  FerryPlanInputs cpu_bound = idle;
  cpu_bound.compress_bytes_per_s = 300 * 1048576.0;
  FerryStreamChoice choice;
  g_autofree char *cpu_bound_reason = ferry_choose_stream (&cpu_bound, &precopy, 150, &choice);
  g_assert_true (choice.compress);
  g_assert_cmpfloat (choice.compress_ratio, ==, 2.6);
  g_assert_cmpfloat_with_epsilon (choice.speedup, 570.0 / 400, 1e-9);
  g_assert_nonnull (strstr (cpu_bound_reason, "2.6:1 at 300 MiB/s a core and 1.9 cores are idle: the stream carries 1.4 times"));

  /* A link faster than the cores compress (10 GbE against 300 MiB/s a
   * core): zstd would slow the stream down. */
  FerryPlanInputs fast_link = cpu_bound;
  fast_link.link_bytes_per_s = 1200 * 1048576.0;
  FerryPrediction fast_precopy;
  ferry_predict_precopy (&fast_link, &fast_precopy);
  assert_stream (&fast_link, &fast_precopy, 150, 2, FALSE, 1.0, "1.9 idle cores would not keep up with the "
                                                                 "1200 MiB/s link");
  g_assert_cmpfloat (ferry_compressed_speedup (&fast_link, 2), <, 0.5);

  /* Random data: channels without compression, and the reason says why. */
  FerryPlanInputs random_data = idle;
  random_data.compress_ratio = 1.02;
  assert_stream (&random_data, &precopy, 150, 2, FALSE, 1.0, "compresses only 1.02:1");

  /* No idle core: no compression either. */
  FerryPlanInputs busy = idle;
  busy.free_cores = 0.4;
  assert_stream (&busy, &precopy, 150, 2, FALSE, 1.0, "0.4 cores are idle");

  /* Under a bandwidth limit, which QEMU counts before compression: no
   * compression, it would not go faster. */
  FerryPlanInputs capped = idle;
  capped.bandwidth_capped = TRUE;
  assert_stream (&capped, &precopy, 150, 2, FALSE, 1.0, "bandwidth limit");

  /* One CPU: one stream. */
  FerryPlanInputs single = idle;
  single.cpus = 1;
  assert_stream (&single, &precopy, 150, 0, FALSE, 1.0, "two CPUs or more");

  /* Dirtying more than half the link, or pre-copy taking over a quarter
   * of the completion limit: post-copy stays in reserve, one stream. */
  FerryPlanInputs dirty = inputs (300, 60, 100);
  dirty.cpus = 2;
  dirty.free_cores = 1.5;
  dirty.compress_ratio = 2;
  FerryPrediction dirty_precopy;
  ferry_predict_precopy (&dirty, &dirty_precopy);
  g_assert_true (dirty_precopy.converges);
  assert_stream (&dirty, &dirty_precopy, 150, 0, FALSE, 1.0, "post-copy in reserve");
  assert_stream (&idle, &precopy, precopy.total_s * 3, 0, FALSE, 1.0, "post-copy in reserve");
}

static JsonObject *
body (const char *json)
{
  g_autoptr (GError) error = NULL;
  JsonObject *object = ferry_json_parse_object (json, strlen (json), 1 << 20, &error);
  g_assert_no_error (error);
  return object;
}

static void
assert_refused (const char *json, const char *fragment)
{
  g_autoptr (JsonObject) request = body (json);
  g_autofree char *dest = NULL;
  g_autoptr (GError) error = NULL;
  FerryMigrateOptions options;
  g_assert_false (ferry_migrate_options_parse (request, &dest, &options, &error));
  g_assert_error (error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  if (strstr (error->message, fragment) == NULL)
    g_error ("'%s' should mention '%s'", error->message, fragment);
}

static void
test_option_defaults (void)
{
  g_autoptr (JsonObject) request = body ("{\"dest\": \"https://b:7711\", \"mode\": \"live\"}");
  g_autofree char *dest = NULL;
  g_autoptr (GError) error = NULL;
  FerryMigrateOptions options;
  g_assert_true (ferry_migrate_options_parse (request, &dest, &options, &error));
  g_assert_true (options.live && options.tls);
  g_assert_cmpint (options.strategy, ==, FERRY_STRATEGY_AUTO);
  g_assert_cmpint (options.max_downtime_ms, ==, 300);
  g_assert_cmpint (options.completion_timeout_per_gib_s, ==, 150);
  g_assert_cmpint (options.progress_timeout_s, ==, 150);
  g_assert_cmpint (options.timeout_action, ==, FERRY_TIMEOUT_ABORT);
  g_assert_cmpint (options.bandwidth_mib, ==, 0);
}

/* A multifd plan restarted as one stream (mig-src.c): settings QEMU
 * takes together (validate refuses multifd with post-copy), the user's
 * limits kept. */
static void
test_postcopy_leaves_multifd (void)
{
  g_autoptr (JsonObject) request = body ("{\"dest\": \"https://b:7711\", \"mode\": \"live\", "
                                         "\"strategy\": \"manual\", \"parallel_connections\": 3, "
                                         "\"compress\": \"zstd\", \"auto_converge\": true, "
                                         "\"bandwidth_mib\": 40, \"max_downtime_ms\": 500}");
  g_autofree char *dest = NULL;
  g_autoptr (GError) error = NULL;
  FerryMigrateOptions options;
  g_assert_true (ferry_migrate_options_parse (request, &dest, &options, &error));
  g_assert_true (ferry_migrate_options_multifd (&options));
  ferry_migrate_options_postcopy (&options, 2);
  g_assert_false (ferry_migrate_options_multifd (&options));
  g_assert_cmpint (options.compress, ==, FERRY_COMPRESS_NONE);
  g_assert_false (options.auto_converge);
  g_assert_true (options.postcopy);
  g_assert_cmpint (options.postcopy_at_pass, ==, 2);
  g_assert_cmpint (options.postcopy_after_s, ==, 0);
  g_assert_cmpint (options.timeout_action, ==, FERRY_TIMEOUT_POSTCOPY);
  g_assert_cmpint (options.bandwidth_mib, ==, 40);
  g_assert_cmpint (options.max_downtime_ms, ==, 500);
  g_assert_true (ferry_migrate_options_validate (&options, &error));
  g_assert_no_error (error);
}

static void
test_option_conflicts_refused (void)
{
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"strategy\": \"manual\", "
                  "\"parallel_connections\": 4, \"postcopy\": true}", "multifd");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"strategy\": \"manual\", \"compress\": \"zstd\"}",
                  "parallel_connections");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"strategy\": \"manual\", \"postcopy_after_s\": 5}",
                  "postcopy_after_s");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"timeout_action\": \"postcopy\"}", "timeout_action");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"xbzrle\": true}", "strategy");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"bandwidth_mib\": 5}",
                  "without copy_storage sends no data");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"xbzrle\": true}",
                  "live migration only");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"copy_storage\": true, "
                  "\"delete_source_disks\": true}", "undefine_source");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"storage_map\": [\"a=b\"]}",
                  "need copy_storage");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"copy_storage\": true, "
                  "\"storage_map\": [\"a=b\", \"a=c\"]}", "mapped twice");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"copy_storage\": true, "
                  "\"storage_map\": [\"a\"]}", "storage_map[0]");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"copy_storage\": true, "
                  "\"parallel_disks\": 9}", "parallel_disks");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"start\": true}", "start");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"parallel_connections\": -1}", "parallel_connections");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"progress_timeout_s\": 0}", "progress_timeout_s");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"compress\": \"lz4\"}", "compress");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"sideways\"}", "mode");
  assert_refused ("{\"dest\": \"x\"}", "mode");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"bogus\": 1}", "bogus");
  /* Warm migration. */
  assert_refused ("{\"dest\": \"x\", \"mode\": \"warm\", \"precopy_interval_s\": 4}", "precopy_interval_s");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"warm\", \"cutover_at\": 1000}", "in the past");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"warm\", \"cutover_at\": -5}", "cutover_at");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"offline\", \"persistent\": true, \"copy_storage\": true, "
                  "\"precopy_interval_s\": 60}", "apply to warm migration");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"live\", \"cutover_at\": 4000000000}", "apply to warm migration");
  assert_refused ("{\"dest\": \"x\", \"mode\": \"warm\", \"postcopy\": true}", "live migration only");
}

static void
test_warm_options (void)
{
  gint64 later = g_get_real_time () / G_USEC_PER_SEC + 3600;
  g_autofree char *json = g_strdup_printf ("{\"dest\": \"https://b:7711\", \"mode\": \"warm\", "
                                           "\"precopy_interval_s\": 600, \"cutover_at\": %" G_GINT64_FORMAT
                                           ", \"storage_map\": [\"a=b\"]}", later);
  g_autoptr (JsonObject) request = body (json);
  g_autofree char *dest = NULL;
  g_autoptr (GError) error = NULL;
  FerryMigrateOptions options;
  g_assert_true (ferry_migrate_options_parse (request, &dest, &options, &error));
  g_assert_no_error (error);
  /* Warm implies the disk copy and a start on the destination. */
  g_assert_true (options.warm && options.copy_storage && options.start && !options.live);
  g_assert_cmpint (options.precopy_interval_s, ==, 600);
  g_assert_cmpint (options.cutover_at, ==, later);
  /* Stored and read back by a restarted agent. */
  g_autoptr (JsonObject) stored = ferry_migrate_options_to_json (&options);
  g_autoptr (JsonNode) node = json_node_init_object (json_node_alloc (), stored);
  g_autofree char *text = json_to_string (node, FALSE);
  FerryMigrateOptions restored;
  ferry_migrate_options_from_stored (text, &restored);
  g_assert_true (restored.warm);
  g_assert_cmpint (restored.precopy_interval_s, ==, 600);
  g_assert_cmpint (restored.cutover_at, ==, later);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/plan/idle-guest-converges-in-two-passes", test_idle_guest_converges_in_two_passes);
  g_test_add_func ("/plan/moderate-dirtier-needs-more-passes", test_moderate_dirtier_needs_more_passes);
  g_test_add_func ("/plan/slow-dirty-sync-adds-setup-and-downtime", test_slow_dirty_sync_adds_setup_and_downtime);
  g_test_add_func ("/plan/dirtied-bytes", test_dirtied_bytes);
  g_test_add_func ("/plan/setup-after-an-earlier-sync", test_setup_after_an_earlier_sync);
  g_test_add_func ("/plan/working-set-rewritten-keeps-precopy-from-converging",
                   test_working_set_rewritten_keeps_precopy_from_converging);
  g_test_add_func ("/plan/dirtier-faster-than-link-never-converges", test_dirtier_faster_than_link_never_converges);
  g_test_add_func ("/plan/lower-downtime-limit-costs-passes", test_lower_downtime_limit_costs_passes);
  g_test_add_func ("/plan/downtime-start", test_downtime_start);
  g_test_add_func ("/plan/postcopy-bounded", test_postcopy_bounded_by_one_pass_and_the_rest);
  g_test_add_func ("/plan/postcopy-after-setup", test_postcopy_after_setup_sends_everything_once);
  g_test_add_func ("/plan/postcopy-switch-point", test_postcopy_switch_point);
  g_test_add_func ("/plan/revised-after-setup", test_revised_after_setup_uses_the_measured_sync);
  g_test_add_func ("/plan/stream-choice", test_stream_choice);
  g_test_add_func ("/options/defaults", test_option_defaults);
  g_test_add_func ("/options/conflicts-refused", test_option_conflicts_refused);
  g_test_add_func ("/options/postcopy-leaves-multifd", test_postcopy_leaves_multifd);
  g_test_add_func ("/options/warm", test_warm_options);
  return g_test_run ();
}
