/* ferry agent — the source side of a live migration, between its two
 * modules: mig-src.c (Begin, Prepare, Perform, Finish, Confirm, rollback,
 * the stream's watch) and mig-src-postcopy.c (the switch to post-copy and
 * its recovery). Not an interface for anything else: agent.h has that. */
#pragma once

#include "agent.h"

#define MIG_SRC_PEER_TIMEOUT_S 30

/* mig-src.c */
char *mig_src_incoming_path (FerryJob *job, const char *suffix);
void mig_src_stop_timers (FerryJob *job);
/* The destination runs the guest: stop the source copy, complete. */
void mig_src_confirm (FerryJob *job);
/* Source stop to destination resume, from the destination's resume time. */
void mig_src_record_guest_downtime (FerryJob *job, gint64 resumed_us);
/* Polls QEMU's progress and heartbeats the destination (idempotent). */
void mig_src_watch (FerryJob *job);

/* mig-src-postcopy.c */
/* Asks QEMU to switch to post-copy; it does at its next iteration (mid-
 * pass, or right after set-up's sync when asked for with migrate). FALSE
 * when this migration cannot (started without post-copy, not in pre-copy). */
gboolean mig_src_request_postcopy (FerryJob *job, const char *why, GError **error);
/* --postcopy-after's timer, when the options ask for one. */
void mig_src_arm_postcopy_timer (FerryJob *job);
/* Strategy auto's switch point: QEMU reports pass number pass. */
void mig_src_postcopy_at_pass (FerryJob *job, gint64 pass);
/* QEMU reports postcopy-active: persist, then ask the destination to resume. */
void mig_src_postcopy_switched (FerryJob *job);
/* The post-copy stream broke (postcopy-paused): retry with backoff. */
void mig_src_schedule_recovery (FerryJob *job);
/* The destination went silent in post-copy: pause the stream so recovery can start. */
void mig_src_pause_stuck_postcopy (FerryJob *job);
/* After an agent restart in post-copy, the source QEMU still there. */
void mig_src_postcopy_restore (FerryAgent *agent, FerryStoreJob *stored, FerryVm *vm);
