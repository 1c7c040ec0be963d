/* ferry agent (ferryd) — internal interface shared by the agent's modules.
 *
 * One FerryAgent per process. It owns the store, the TLS material, the VMs
 * of this host (FerryVm, vm.c), the migration jobs (FerryJob, job.c,
 * mig-src.c, mig-dst.c), the HTTPS API (api.c) and the client used to talk
 * to peer agents (peer.c). Everything runs on the default main context.
 */
#pragma once

#include <gio/gio.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>

#include "ferry-config.h"
#include "ferry-error.h"
#include "qmp.h"
#include "store.h"
#include "tls.h"
#include "vmspec.h"

G_BEGIN_DECLS

typedef struct _FerryAgent FerryAgent;
typedef struct _FerryVm FerryVm;
typedef struct _FerryJob FerryJob;

/* Largest API request body. Specs are far smaller; this bounds memory. */
#define FERRY_API_MAX_BODY (1024 * 1024)

typedef struct {
  char *state_dir;
  char *tls_dir;
  char *listen;                /* "ADDR:PORT" */
  char *host_name;             /* defaults to the CN of the host certificate */
  char *qemu_binary;
  char *accel;                 /* "auto", "kvm", "tcg" */
  guint keepalive_interval_ms; /* source → destination heartbeat */
  guint keepalive_timeout_ms;  /* peer silent this long: migration fails */
  guint shutdown_timeout_s;    /* ACPI shutdown before forcing */
  char **pools;                /* "NAME=DIR" from --pool; NULL-terminated, may be NULL */
} FerryAgentConfig;

struct _FerryAgent {
  FerryAgentConfig config;
  const char *accel;           /* resolved: "kvm" or "tcg" */
  char *listen_host;           /* config.listen, parsed (no brackets) */
  guint16 listen_port;
  gboolean pad_ram_for_tcg;    /* see FerryQemuLaunch.pad_ram_for_tcg_dirty_sync */
  FerryStore *store;
  FerryTls *tls;
  GHashTable *vms;             /* name → FerryVm* (owned) */
  GHashTable *jobs;            /* GINT64 id → FerryJob* (owned), active jobs only */
  GHashTable *pools;           /* name → FerryPool* (owned), fixed after startup */
  SoupServer *server;
  SoupSession *peer_session;
  GPtrArray *job_waiters;      /* api.c: GET …/job?wait_ms= held until the job ends */
};

FerryAgent *ferry_agent_new (const FerryAgentConfig *config, GError **error);
void ferry_agent_free (FerryAgent *agent);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryAgent, ferry_agent_free)

/* Reattaches to QEMUs started before a restart and resolves jobs that
 * were in flight (agent.c). */
gboolean ferry_agent_recover (FerryAgent *agent, GError **error);
gboolean ferry_agent_listen (FerryAgent *agent, GError **error);
/* A VM's job ended: requests waiting for it are answered now (api.c). */
void ferry_api_job_ended (FerryAgent *agent, const char *vm_name);
/* A job recorded an event: requests following its events are answered
 * now (api.c). */
void ferry_api_job_event_added (FerryAgent *agent, const char *vm_name);
/* Drops waiting requests unanswered (agent shutdown). */
void ferry_api_drop_waiters (FerryAgent *agent);

/* ---- VMs (vm.c) ----------------------------------------------------------- */

typedef enum {
  FERRY_VM_SHUTOFF,
  FERRY_VM_STARTING,
  FERRY_VM_RUNNING,
  FERRY_VM_PAUSED,
  FERRY_VM_INCOMING,       /* destination QEMU waiting for migration state */
  FERRY_VM_MIGRATED,       /* source QEMU after a completed migration, paused */
  FERRY_VM_SHUTTING_DOWN,
} FerryVmState;

const char *ferry_vm_state_to_string (FerryVmState state);
FerryVmState ferry_vm_state_from_string (const char *name);

struct _FerryVm {
  FerryAgent *agent;
  char *name;
  FerryVmSpec *spec;
  gboolean persistent;
  FerryVmState state;
  GPid pid;
  FerryQmp *qmp;
  char *qemu_status;        /* last RunState from QEMU */
  char *dir;                /* state_dir/vms/NAME */
  char *qmp_socket;
  char *pid_file;
  char *console_log;
  /* QEMU's own messages (-D): it writes its errors there, not to a
   * terminal, once daemonized. The previous run's is kept as .1. */
  char *qemu_log;
  /* The last lines QEMU wrote before it last exited (NULL = none):
   * why it exited, when it says so. */
  char *qemu_last_words;
  /* Its QEMU last exited while the guest ran: no shutdown, guest's or
   * ferry's, came before (a crash, or a kill from outside). */
  gboolean exited_while_running;
  /* Bytes of qemu_log written before the current migration began: its
   * exit reason reads only past them (earlier errors, of a migration
   * that failed before, are not why it exited now). */
  gsize qemu_log_mark;
  FerryJob *job;            /* active migration, or NULL */
  guint shutdown_timer;
  JsonObject *last_dirty_rate;  /* last measurement (dirtyrate.c) */
  /* Monotonic time of this QEMU's last dirty-bitmap sync (a migration's
   * pass, reported by QEMU's MIGRATION_PASS event); 0 = none since it
   * started. The bitmap starts with every page dirty, and only a sync
   * clears it: a migration's set-up after one that did not complete
   * syncs only what the guest dirtied since (bench/live's trace: 63 828
   * pages and 3.1 s after a cancelled one, all 262 144 and 11 s on a
   * fresh QEMU). */
  gint64 last_dirty_sync_us;
  gulong event_handler;
  gulong closed_handler;
};

FerryVm *ferry_vm_lookup (FerryAgent *agent, const char *name, GError **error);
/* Defines a VM from a spec (persisted). */
FerryVm *ferry_vm_define (FerryAgent *agent, const FerryVmSpec *spec, gboolean persistent,
                          GError **error);
gboolean ferry_vm_undefine (FerryVm *vm, GError **error);
/* Forgets a VM without checks (used by destination cleanup). */
void ferry_vm_forget (FerryVm *vm);

typedef struct {
  gboolean incoming;
  gboolean paused;
} FerryVmStartOptions;

void ferry_vm_start_async (FerryVm *vm, const FerryVmStartOptions *options,
                           GCancellable *cancellable, GAsyncReadyCallback callback,
                           gpointer user_data);
gboolean ferry_vm_start_finish (FerryVm *vm, GAsyncResult *result, GError **error);

/* ACPI power-down, force after timeout_s (0 = never force). Returns at once. */
gboolean ferry_vm_shutdown (FerryVm *vm, guint timeout_s, GError **error);
/* Stops QEMU now (quit, then SIGKILL if the monitor is gone). */
gboolean ferry_vm_destroy (FerryVm *vm, GError **error);
/* Kills the QEMU process without asking (it must be ours). */
void ferry_vm_kill (FerryVm *vm);
/* "VERB: QEMU's last words" or VERB alone when QEMU said nothing (for
 * an error message about its exit). */
char *ferry_vm_exit_reason (FerryVm *vm, const char *verb);
/* From now on, only what QEMU writes counts for its exit reason. */
void ferry_vm_mark_log (FerryVm *vm);
/* Reconnects to a QEMU started by an earlier agent process. */
void ferry_vm_reattach_async (FerryVm *vm, GAsyncReadyCallback callback, gpointer user_data);
gboolean ferry_vm_reattach_finish (FerryVm *vm, GAsyncResult *result, GError **error);

/* Persists and applies a state change. */
void ferry_vm_set_state (FerryVm *vm, FerryVmState state);
gboolean ferry_vm_is_active (FerryVm *vm);
JsonObject *ferry_vm_to_json (FerryVm *vm, gboolean with_spec);

/* ---- dirty rate (dirtyrate.c) --------------------------------------------- */

#define FERRY_DIRTYRATE_MIN_PERIOD_S 1
#define FERRY_DIRTYRATE_MAX_PERIOD_S 60

/* Measures with QEMU's page sampling over period_s; completes with
 * {"dirty_rate_mib_s", "period_s", "sample_pages", "mode", "measured_at_us"},
 * also kept as vm->last_dirty_rate. */
void ferry_dirtyrate_measure_async (FerryVm *vm, gint64 period_s, GAsyncReadyCallback callback,
                                    gpointer user_data);
JsonObject *ferry_dirtyrate_measure_finish (GAsyncResult *result, GError **error);

/* ---- jobs (job.c) --------------------------------------------------------- */

typedef enum {
  FERRY_JOB_BEGIN,          /* source: checks done, job recorded */
  FERRY_JOB_PREPARING,      /* source: asking the destination to prepare; destination: starting QEMU */
  FERRY_JOB_PREPARED,       /* destination: QEMU waits for the stream; disks copied and verified */
  FERRY_JOB_COPYING,        /* both: disks are copied (cold migration with storage) */
  FERRY_JOB_PERFORMING,     /* source: QEMU is sending state */
  FERRY_JOB_POSTCOPY,       /* both: the guest runs on the destination, pages still arrive */
  FERRY_JOB_FINISHING,      /* source: asked destination to finish; destination: resuming the VM */
  FERRY_JOB_CONFIRMING,     /* source: destination runs the VM; stopping the source copy */
  FERRY_JOB_CANCELLING,     /* either: rolling back */
  FERRY_JOB_PRECOPY,        /* source, warm: the guest runs; its disks go over in passes */
  FERRY_JOB_CUTOVER,        /* source, warm: the guest shuts down; the last changes go over */
  FERRY_JOB_COMPLETED,
  FERRY_JOB_FAILED,
  FERRY_JOB_CANCELLED,
} FerryJobState;

const char *ferry_job_state_to_string (FerryJobState state);
FerryJobState ferry_job_state_from_string (const char *name);
gboolean ferry_job_state_is_terminal (FerryJobState state);
extern const char *const ferry_job_terminal_states[];

typedef enum {
  FERRY_JOB_ROLE_SOURCE,
  FERRY_JOB_ROLE_DESTINATION,
} FerryJobRole;

typedef enum {
  FERRY_COMPRESS_NONE,
  FERRY_COMPRESS_ZLIB,
  FERRY_COMPRESS_ZSTD,
} FerryCompress;

typedef enum {
  FERRY_TIMEOUT_ABORT,        /* roll back: the source keeps running */
  FERRY_TIMEOUT_POSTCOPY,     /* switch to post-copy */
} FerryTimeoutAction;

typedef enum {
  FERRY_STRATEGY_AUTO,        /* measure, predict, choose (strategy.c) */
  FERRY_STRATEGY_MANUAL,      /* exactly the options given */
} FerryStrategy;

#define FERRY_MAX_STORAGE_MAP 16
#define FERRY_MAX_PARALLEL_DISKS 8

typedef struct {
  gboolean live;
  gboolean persistent;
  gboolean undefine_source;
  gboolean tls;
  gint64 bandwidth_mib;       /* MiB/s; 0 = unlimited (we set a huge max-bandwidth) */
  gint64 max_downtime_ms;
  FerryStrategy strategy;
  gint64 parallel_connections;/* multifd channels; 0 or 1 = one stream */
  FerryCompress compress;     /* multifd compression */
  gboolean xbzrle;
  gboolean auto_converge;
  gboolean postcopy;          /* post-copy allowed (capability on both ends) */
  gint64 postcopy_after_s;    /* switch after this much pre-copy; 0 = not on a timer */
  /* Strategy auto's switch point: when QEMU reports this pass
   * (MIGRATION_PASS, its dirty-sync count): 1 = set-up's sync is done,
   * 2 = the first pass is done; 0 = none. Set by the planner only. */
  gint64 postcopy_at_pass;
  /* Strategy auto's pre-copy: QEMU's downtime limit to start with, below
   * max_downtime_ms when the plan says a pass or two more buys a shorter
   * stop; raised toward max_downtime_ms when passes shrink slowly.
   * 0 = max_downtime_ms. Set by the planner only. */
  gint64 downtime_start_ms;
  gint64 completion_timeout_per_gib_s;
  gint64 progress_timeout_s;
  FerryTimeoutAction timeout_action;
  /* offline migration */
  gboolean copy_storage;      /* copy the VM's pool volumes to the destination */
  gboolean start;             /* start the VM on the destination afterwards */
  gboolean delete_source_disks; /* after the destination confirmed (needs undefine_source) */
  gboolean force_stop;        /* a running VM that ignores ACPI is powered off */
  gint64 parallel_disks;      /* disks copied at once */
  guint n_storage_map;        /* SRCPOOL=DSTPOOL pairs; unmapped pools keep their name */
  char storage_map_from[FERRY_MAX_STORAGE_MAP][FERRY_SPEC_MAX_NAME + 1];
  char storage_map_to[FERRY_MAX_STORAGE_MAP][FERRY_SPEC_MAX_NAME + 1];
  /* warm migration (mode "warm"; implies copy_storage and start) */
  gboolean warm;
  gint64 precopy_interval_s;  /* between passes */
  gint64 cutover_at;          /* unix seconds; 0 = when asked (ferry migrate cutover) */
} FerryMigrateOptions;

#define FERRY_WARM_DEFAULT_INTERVAL_S 3600
#define FERRY_WARM_MIN_INTERVAL_S 5

/* migrate-options.c: defaults, validation, JSON. */
void ferry_migrate_options_init (FerryMigrateOptions *options);
/* Parses and validates the body of POST /v1/vms/NAME/migrate (untrusted);
 * errors name the field. */
gboolean ferry_migrate_options_parse (JsonObject *request, char **dest, FerryMigrateOptions *options,
                                      GError **error);
/* Cross-field rules (multifd and post-copy exclude each other, …). */
gboolean ferry_migrate_options_validate (const FerryMigrateOptions *options, GError **error);
JsonObject *ferry_migrate_options_to_json (const FerryMigrateOptions *options);
const char *ferry_compress_to_string (FerryCompress compress);
gboolean ferry_migrate_options_multifd (const FerryMigrateOptions *options);
/* Strategy auto's post-copy settings: one stream, post-copy switched at
 * pass switch_at_pass (1: as soon as set-up is done, asked for together
 * with migrate; 2: when QEMU reports the first pass done;
 * ferry_choose_postcopy_switch), a timeout switches rather than aborts.
 * For a plan that chose post-copy, and for a multifd plan whose guest
 * sped up (mig-src.c restarts it as one stream: QEMU cannot switch
 * multifd channels to post-copy). Clears multifd, compression and
 * auto-converge; the rest stays. */
void ferry_migrate_options_postcopy (FerryMigrateOptions *options, gint64 switch_at_pass);
/* The options a job was stored with (lenient: a restarted agent takes
 * what it finds; missing members keep their defaults). */
void ferry_migrate_options_from_stored (const char *options_json, FerryMigrateOptions *options);
/* ISO 8601 (UTC) of a unix time, for messages. */
char *ferry_format_unix_time (gint64 unix_s);
/* Refuses a time (unix seconds) in the past, naming field. */
gboolean ferry_check_future (const char *field, gint64 unix_s, GError **error);
/* The destination pool of a source pool under the storage map. */
const char *ferry_migrate_options_map_pool (const FerryMigrateOptions *options, const char *pool);


struct _FerryJob {
  FerryAgent *agent;
  gint64 id;
  char *uuid;
  char *vm_name;
  FerryJobRole role;
  FerryMigrateOptions options;
  FerryJobState state;
  char *peer_url;
  char *error;
  JsonObject *stats;         /* last query-migrate, plus ferry's own fields */
  gint64 started_us;         /* monotonic */
  gint64 created_wall_us;
  gboolean abort_requested;
  /* source */
  char *incoming_uri;
  char *tls_hostname;
  guint poll_timer;
  guint keepalive_timer;
  gint64 peer_last_seen_us;  /* monotonic */
  gboolean rollback_waits_for_storage; /* the mirrors' teardown is under way */
  gboolean rollback_guest_settled;     /* resumed (or left paused) after a rollback */
  gboolean keepalive_in_flight;
  gint64 guest_stopped_us;   /* wall clock of the source's STOP at switchover */
  gint64 perform_started_us; /* monotonic */
  gint64 best_remaining;     /* least "remaining" seen: progress watchdog */
  gint64 progress_at_us;     /* monotonic time best_remaining last shrank */
  gboolean postcopy_requested;
  gboolean setup_reported;   /* QEMU's set-up length said (report_setup_stall) */
  gint64 throttle_percent;   /* auto-converge's last throttle said (report_throttle) */
  double revised_total_s;    /* strategy auto's prediction after QEMU's set-up; 0 = none */
  gboolean postcopy_dest_running; /* destination confirmed it resumed the guest */
  gboolean stream_completed;      /* QEMU reported "completed" */
  gboolean restored_check_logged; /* restarted in post-copy: asking the destination */
  double progress_percent;   /* never decreases (job.c, mig-src.c) */
  double eta_s;              /* < 0: unknown */
  gint64 last_pass;          /* dirty-sync-count at the last poll */
  gint64 last_pass_remaining;/* "remaining" when that pass began */
  gint64 downtime_limit_ms;  /* QEMU's downtime limit now (options.downtime_start_ms, raised) */
  /* Strategy auto cancelled a multifd stream to start again as one
   * stream with post-copy (mig-src.c): why, until QEMU's stream ended. */
  char *restart_reason;
  gboolean restart_releasing; /* asking the destination to drop the first stream's QEMU */
  double copy_progress_floor; /* the second stream's copy starts where the first one's progress got to */
  guint postcopy_timer;
  guint recover_timer;       /* source: next post-copy recovery attempt */
  guint recover_attempts;
  gboolean recover_in_flight;
  guint postcopy_watch;      /* destination: pauses a silent post-copy */
  /* destination */
  char *incoming_status;     /* from MIGRATION events */
  gboolean reused_definition;/* an inactive definition of this VM existed */
  GTask *pending_finish;     /* finish waiting for the stream to complete */
  GTask *pending_recover;    /* recover waiting for postcopy-paused */
  guint lease_timer;
  gint64 lease_renewed_us;
  /* either side of a disk copy (mig-cold-src.c, mig-cold-dst.c) */
  gpointer cold;
  GDestroyNotify cold_free;
  /* live migration with storage: source mirrors (mig-storage.c) */
  gpointer storage;
  GDestroyNotify storage_free;
  /* destination: volumes created for a live migration with storage */
  char **storage_volumes;
  guint16 nbd_port;
};

/* A job outlives no callback: callbacks hold a reference by id and find
 * the job again (NULL when it ended meanwhile). */
typedef struct {
  FerryAgent *agent;
  gint64 job_id;
} FerryJobRef;
FerryJobRef *ferry_job_ref_new (FerryJob *job);
/* An in-memory job again for a stored one, after an agent restart. */
FerryJob *ferry_job_restore (FerryAgent *agent, FerryStoreJob *stored, const FerryMigrateOptions *options);
/* Persists job->stats now (they are otherwise saved at transitions). */
void ferry_job_save_stats (FerryJob *job);
FerryJob *ferry_job_ref_get (const FerryJobRef *ref);
/* The VM a job moves (NULL if it was forgotten meanwhile). */
FerryVm *ferry_job_vm (FerryJob *job);

/* Creates and persists a job in state initial. */
FerryJob *ferry_job_new (FerryAgent *agent, const char *uuid, const char *vm_name,
                         FerryJobRole role, const FerryMigrateOptions *options,
                         const char *peer_url, FerryJobState initial, GError **error);
/* The transition function: checks old → new, persists, logs, records an
 * event. Returns FALSE (and changes nothing) for a transition not allowed. */
gboolean ferry_job_transition (FerryJob *job, FerryJobState new_state, const char *reason);
/* Appends to the job's event log (persisted). */
void ferry_job_event (FerryJob *job, const char *level, const char *format, ...) G_GNUC_PRINTF (3, 4);
void ferry_job_set_stats (FerryJob *job, JsonObject *stats);
/* Raises the job's progress (it never goes back) and sets the ETA. */
void ferry_job_set_progress (FerryJob *job, double percent, double eta_s);
/* Ends a job: terminal transition, detaches it from its VM, frees it. */
void ferry_job_finish (FerryJob *job, FerryJobState terminal, const char *reason);
FerryJob *ferry_job_lookup_uuid (FerryAgent *agent, const char *uuid, FerryJobRole role);
/* JSON for `job info` from a live or stored job. */
JsonObject *ferry_job_info_json (FerryAgent *agent, FerryStoreJob *stored, gboolean with_events);

/* ---- migration (mig-src.c, mig-dst.c) ------------------------------------- */

FerryJob *mig_src_begin (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options,
                         GError **error);
gboolean mig_src_abort (FerryVm *vm, GError **error);
/* Live controls of a running outgoing migration. */
gboolean mig_src_set_parameter (FerryVm *vm, const char *name, gint64 value, GError **error);
gboolean mig_src_start_postcopy (FerryVm *vm, const char *why, GError **error);
/* Resumes a post-copy whose link broke (also retried automatically). */
gboolean mig_src_recover_postcopy (FerryVm *vm, GError **error);
void mig_src_on_qmp_event (FerryJob *job, const char *name, JsonObject *data);
/* After an agent restart: resolve a source job that was in flight. */
void mig_src_recover (FerryAgent *agent, FerryStoreJob *stored);

/* API handlers of the destination side; each returns a reply object or NULL + error.
 * Prepare completes asynchronously (it starts QEMU). */
/* Validates a Prepare/offline request from a peer (untrusted input). */
gboolean mig_dst_parse_incoming_request (JsonObject *request, char **uuid, FerryVmSpec **spec,
                                         FerryMigrateOptions *options, char **source,
                                         GError **error);
void mig_dst_prepare_async (FerryAgent *agent, JsonObject *request, const char *listen_address,
                            GCancellable *cancellable,
                            GAsyncReadyCallback callback, gpointer user_data);
JsonObject *mig_dst_prepare_finish (GAsyncResult *result, GError **error);
JsonObject *mig_dst_status (FerryAgent *agent, const char *uuid, GError **error);
void mig_dst_finish_async (FerryAgent *agent, const char *uuid, gboolean postcopy,
                           GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data);
JsonObject *mig_dst_finish_finish (GAsyncResult *result, GError **error);
gboolean mig_dst_abort (FerryAgent *agent, const char *uuid, const char *reason, GError **error);
/* Post-copy recovery, destination side: pause if needed, listen again. */
void mig_dst_recover_async (FerryAgent *agent, const char *uuid, const char *listen_address,
                            GAsyncReadyCallback callback, gpointer user_data);
JsonObject *mig_dst_recover_finish (GAsyncResult *result, GError **error);
JsonObject *mig_dst_define_offline (FerryAgent *agent, JsonObject *request, GError **error);
void mig_dst_on_vm_gone (FerryJob *job);
void mig_dst_on_qmp_event (FerryJob *job, const char *name, JsonObject *data);
void mig_dst_recover (FerryAgent *agent, FerryStoreJob *stored);

/* mig-src.c's phases, for the storage mirror to hand back to: memory
 * migration, Finish, and the rollback every failure before Finish takes. */
void mig_src_perform (FerryJob *job);
void mig_src_finish (FerryJob *job);
void mig_src_rollback (FerryJob *job, const char *reason);
/* The rollback's disk mirrors have ended and their NBD clients are gone:
 * the destination may drop the disks it served. */
void mig_src_storage_released (FerryJob *job);

/* ---- live migration with storage (mig-storage.c, source side) -------------- */

/* After Prepare: mirrors every disk into the destination's NBD exports;
 * starts the memory migration (mig_src_perform) once all are ready.
 * FALSE when the job copies no storage. */
gboolean mig_storage_src_start (FerryJob *job, JsonObject *prepare_reply);
/* BLOCK_JOB_* events; TRUE when consumed. */
gboolean mig_storage_src_on_event (FerryJob *job, const char *name, JsonObject *data);
/* After the memory stream completed: ends the mirrors, then mig_src_finish.
 * FALSE when the job copies no storage. */
gboolean mig_storage_src_complete (FerryJob *job);
/* Rollback: cancels the mirrors (the source's disks were only read),
 * removes their NBD client nodes, then calls mig_src_storage_released.
 * FALSE when there is nothing to tear down (no storage copy, no QEMU, or
 * a teardown already under way): nothing will be called. */
gboolean mig_storage_src_cancel (FerryJob *job);
/* Every QMP event of a VM, whatever its job: a mirror no running job owns
 * (its job failed or ended, or it started after the cancel, or the agent
 * restarted) is cancelled, and once ended, dismissed with its node. */
void mig_storage_src_reap (FerryVm *vm, const char *name, JsonObject *data);
/* After an agent restart: the mirrors, target nodes and TLS objects of
 * storage migrations that no running job owns (their removal may have
 * been pending when the agent stopped) are cancelled and removed. Left
 * in QEMU, such a node fails the next migration at its switchover. */
void mig_storage_src_sweep (FerryVm *vm);
/* The disks of a live storage migration for the Prepare request (pool
 * volumes only), with *dest_spec the spec with pools mapped. */
JsonArray *mig_storage_src_disks (FerryVm *vm, const FerryMigrateOptions *options, JsonNode **dest_spec,
                                  GError **error);

/* ---- cold migration with disks (mig-cold-src.c, mig-cold-dst.c) ----------
 *
 * The source shuts the guest down, exports each volume read-only over NBD
 * with TLS and asks the destination to prepare; the destination checks its
 * pools, creates the volumes and pulls them with the copy engine
 * (nbd-copy.h), persisting each finished chunk; it then compares every
 * chunk's digest with the one the source computes from its own storage.
 * On finish it defines (and optionally starts) the VM; only then does the
 * source remove what it was asked to. */

FerryJob *mig_cold_src_begin (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options,
                              GError **error);
void mig_cold_src_on_vm_state (FerryJob *job, FerryVmState state);
gboolean mig_cold_src_abort (FerryJob *job, GError **error);
/* POST /v1/migrations/outgoing/UUID/digests from the destination. */
void mig_cold_src_digests_async (FerryAgent *agent, const char *uuid, JsonObject *request,
                                 GAsyncReadyCallback callback, gpointer user_data);
JsonObject *mig_cold_src_digests_finish (GAsyncResult *result, GError **error);
/* Digest computations not yet answered (a failure cancels them). */
guint mig_cold_src_digests_in_flight (FerryJob *job);
/* POST /v1/migrations/outgoing/UUID/nudge from the destination: its state
 * changed (a copy or pass ended, or it failed), so the source asks it now
 * rather than at its next poll. Only a hint: the poll stays the truth. */
gboolean mig_cold_src_nudge (FerryAgent *agent, const char *uuid, GError **error);
void mig_cold_src_recover (FerryAgent *agent, FerryStoreJob *stored);

/* ---- warm migration (mig-warm.c: the source's passes and cutover; the
 * destination copies each pass as mig-cold-dst.c copies a cold disk) ---- */
typedef struct _WarmSrc WarmSrc;
typedef struct {
  guint index;
  const char *path;
  const char *format;
  guint64 virtual_size;
} FerryWarmDisk;
WarmSrc *mig_warm_src_new (FerryJob *job, const FerryWarmDisk *disks, guint n_disks);
/* From the job's stats (a restarted agent); NULL when they hold none. */
WarmSrc *mig_warm_src_restore (FerryJob *job);
void mig_warm_src_free (WarmSrc *warm);
/* The destination created the volumes: pre-copy begins. */
void mig_warm_src_start (FerryJob *job);
/* A restarted agent: carry on from the persisted pass. */
void mig_warm_src_resume (FerryJob *job);
/* The destination's answer to a poll; TRUE when mig-cold-src.c has
 * nothing more to do with it. */
gboolean mig_warm_src_on_destination (FerryJob *job, const char *state, JsonObject *reply);
void mig_warm_src_on_qmp_event (FerryJob *job, const char *name, JsonObject *data, gint64 timestamp_us);
void mig_warm_src_on_vm_gone (FerryJob *job);
/* Undoes everything on the source, then ends the job as terminal. */
void mig_warm_src_roll_back (FerryJob *job, FerryJobState terminal, const char *reason);
/* A roll back that waited (a snapshot sequence, the source's digests)
 * goes on; nothing when none waits. */
void mig_warm_src_resume_roll_back (FerryJob *job);
/* ferry migrate cutover: at (unix s) or now (0). */
gboolean mig_warm_src_cutover (FerryJob *job, gint64 at, GError **error);
/* The NBD URI the source digests its snapshot of a disk at; NULL between passes. */
char *mig_warm_src_digest_uri (FerryJob *job, guint disk);
/* The destination runs the VM: the downtime is measured. */
void mig_warm_src_destination_running (FerryJob *job);
/* mig-cold-src.c, for mig-warm.c */
WarmSrc *mig_cold_src_warm (FerryJob *job);
void mig_cold_src_fail (FerryJob *job, FerryJobState terminal, const char *reason, gboolean tell_destination);
void mig_cold_src_finish (FerryJob *job);
/* How often the destination is asked how the copy goes (1 s by default). */
void mig_cold_src_poll_every (FerryJob *job, guint interval_ms);

/* POST /v1/migrations/offline with copy_storage; peer_address is where
 * the request came from (the source's exports listen there). */
JsonObject *mig_cold_dst_prepare (FerryAgent *agent, JsonObject *request, const char *peer_address,
                                  GError **error);
/* Defines (and starts) the VM; returns into task (consumed). A warm
 * migration answers once the VM runs. */
void mig_cold_dst_finish (FerryJob *job, GTask *task);
/* The body of POST …/pass, checked (untrusted: a peer's). */
#define FERRY_WARM_MAX_NAME 64
typedef struct {
  guint index;
  guint16 port;
  char export_name[FERRY_WARM_MAX_NAME + 1];
  char bitmap[FERRY_WARM_MAX_NAME + 1];      /* empty: copy everything allocated */
  gint64 dirty_bytes;                        /* what the bitmap marks, as the source counted; -1 = not said */
} FerryWarmPassDisk;
typedef struct {
  gint64 pass;
  gboolean final;
  guint n_disks;
  FerryWarmPassDisk disks[FERRY_SPEC_MAX_DISKS];
} FerryWarmPass;
gboolean mig_warm_pass_parse (JsonObject *request, FerryWarmPass *pass, GError **error);
/* POST /v1/migrations/incoming/UUID/pass (warm migration). */
JsonObject *mig_cold_dst_pass (FerryAgent *agent, const char *uuid, JsonObject *request, GError **error);
/* POST /v1/migrations/incoming/UUID/pass-coming: the next pass's body,
 * sent before its snapshot; the destination connects ahead. */
JsonObject *mig_cold_dst_pass_coming (FerryAgent *agent, const char *uuid, JsonObject *request, GError **error);
void mig_cold_dst_abort (FerryJob *job, const char *reason);
void mig_cold_dst_recover (FerryAgent *agent, FerryStoreJob *stored);
JsonObject *mig_cold_dst_status (FerryJob *job);

/* Live migration with storage, destination: checks the request's disks as
 * a cold copy does and creates the volumes (empty) before QEMU starts.
 * Returns their paths, for removal if the migration fails. */
char **mig_storage_dst_create_volumes (FerryAgent *agent, JsonObject *request, const FerryVmSpec *spec,
                                       GError **error);
void mig_storage_dst_remove_volumes (const char *const *paths);

/* ---- QMP argument builders (qemu-cmds.c) ---------------------------------- */

/* Every capability ferry uses, always set explicitly (true or false) so
 * nothing from an earlier migration of the same QEMU carries over. */
typedef struct {
  gboolean events;
  gboolean multifd;
  gboolean xbzrle;
  gboolean auto_converge;
  gboolean postcopy;
} FerryQmpCapabilities;

typedef struct {
  gint64 max_bandwidth_bytes;  /* always set: QEMU 7.2 defaults to 128 MiB/s */
  gint64 downtime_ms;          /* 0 = leave */
  const char *tls_creds;       /* NULL = TLS off */
  const char *tls_hostname;
  gint64 multifd_channels;     /* 0 = leave */
  const char *multifd_compression; /* NULL = leave */
  gint64 max_postcopy_bandwidth_bytes; /* 0 = unlimited */
} FerryQmpParameters;

JsonObject *ferry_qmp_args_migrate_capabilities (const FerryQmpCapabilities *capabilities);
JsonObject *ferry_qmp_args_migrate_parameters (const FerryQmpParameters *parameters);
/* One parameter changed while a migration runs (set-speed, set-max-downtime). */
JsonObject *ferry_qmp_args_migrate_parameter (const char *name, gint64 value);
JsonObject *ferry_qmp_args_tls_creds (const char *id, const char *dir, gboolean server);
JsonObject *ferry_qmp_args_migrate_incoming (const char *uri);
JsonObject *ferry_qmp_args_migrate (const char *uri);
/* Resumes a paused post-copy on a new connection (source side). */
JsonObject *ferry_qmp_args_migrate_resume (const char *uri);
/* Listens for the resumed post-copy stream (destination side). */
JsonObject *ferry_qmp_args_migrate_recover (const char *uri);
/* Shuts down every connection of the migration in progress (yank): a
 * cancelled multifd migration otherwise keeps its channels blocked in
 * writes to a dead link until it comes back or TCP gives up. */
JsonObject *ferry_qmp_args_yank_migration (void);
JsonObject *ferry_qmp_args_calc_dirty_rate (gint64 period_s, gint64 sample_pages);
/* Storage migration: the destination QEMU serves its new disks over NBD
 * (TLS), the source mirrors into them. */
JsonObject *ferry_qmp_args_nbd_server_start (const char *host, guint16 port, const char *tls_creds);
JsonObject *ferry_qmp_args_block_export_add (const char *id, const char *node_name, const char *export_name);
JsonObject *ferry_qmp_args_blockdev_add_nbd (const char *node_name, const char *host, guint16 port,
                                             const char *export_name, const char *tls_creds,
                                             const char *tls_hostname);
JsonObject *ferry_qmp_args_blockdev_mirror (const char *job_id, const char *device, const char *target,
                                            gboolean write_blocking, gint64 speed_bytes);
JsonObject *ferry_qmp_args_block_job_cancel (const char *job_id, gboolean force);
/* Warm migration: a point-in-time snapshot of each disk (a qcow2 node
 * backed by the disk, filled by a copy-before-write backup job) exported
 * read-only, with the dirty bitmap of the changes since the previous one. */
JsonObject *ferry_qmp_args_block_export_add_snapshot (const char *id, const char *node_name,
                                                      const char *export_name, const char *bitmap_node,
                                                      const char *bitmap);
JsonObject *ferry_qmp_args_block_export_del (const char *id);
JsonObject *ferry_qmp_args_blockdev_add_snapshot (const char *node_name, const char *filename,
                                                  const char *backing);
typedef struct {
  const char *node;           /* the disk's format node */
  const char *new_bitmap;     /* starts tracking changes from this instant; NULL = none */
  gboolean persistent;        /* stored in the image (qcow2 only) */
  const char *old_bitmap;     /* the previous one, frozen at this instant; NULL = none */
  const char *snapshot_node;
  const char *job_id;
} FerryQmpSnapshotDisk;
/* One transaction for every disk, so all snapshots and bitmaps share the
 * same instant. */
JsonObject *ferry_qmp_args_snapshot_transaction (const FerryQmpSnapshotDisk *disks, guint n_disks);
JsonObject *ferry_qmp_args_bitmap_remove (const char *node, const char *name);
/* set-action: a guest's shutdown pauses QEMU (pause) or ends it (poweroff). */
JsonObject *ferry_qmp_args_set_shutdown_action (gboolean pause);
/* {member: id}: blockdev-del (node-name), job-dismiss / block-export-del (id). */
JsonObject *ferry_qmp_args_id (const char *member, const char *id);

/* Runs QMP commands one after another; stops at the first error. Each step
 * is a command name and its arguments (consumed; may be NULL). Completes
 * with the last command's return value. */
typedef struct {
  const char *command;
  JsonObject *arguments;
  gboolean ignore_error;
} FerryQmpStep;
void ferry_qmp_run_steps_async (FerryQmp *qmp, FerryQmpStep *steps, guint n_steps,
                                GCancellable *cancellable, GAsyncReadyCallback callback,
                                gpointer user_data);
JsonNode *ferry_qmp_run_steps_finish (GAsyncResult *result, GError **error);

/* ---- planning (strategy.c) ------------------------------------------------- */

/* Measures (link to dest_url, dirty rate, resident RAM), predicts and, for
 * strategy auto, chooses settings. The plan is JSON (measured, precopy,
 * strategy, prediction, reason, options); *chosen gets the options. */
void ferry_plan_async (FerryVm *vm, const char *dest_url, const FerryMigrateOptions *options,
                       GAsyncReadyCallback callback, gpointer user_data);
JsonObject *ferry_plan_finish (GAsyncResult *result, FerryMigrateOptions *chosen, GError **error);

/* ---- peer agents (peer.c) ------------------------------------------------- */

/* Sends a JSON request to a peer agent; the reply is the parsed object.
 * Errors carry the peer's error code (FERRY_ERROR_*) and message; a peer
 * that cannot be reached gives FERRY_ERROR_UNAVAILABLE, and
 * *maybe_delivered tells whether the request may have reached it. */
void ferry_peer_request_async (FerryAgent *agent, const char *base_url, const char *method,
                               const char *path, JsonObject *body, guint timeout_s,
                               GCancellable *cancellable, GAsyncReadyCallback callback,
                               gpointer user_data);
/* The same for a POST the peer answers alike when it gets it twice
 * (a nudge, a digest request, a warm pass): it may go over a kept-alive
 * connection. libsoup opens a new connection for every other POST, as it
 * resends a request whose reused connection turns out closed; that is a
 * TLS handshake, 10-20 ms on a busy host. */
void ferry_peer_request_repeatable_async (FerryAgent *agent, const char *base_url, const char *method,
                                          const char *path, JsonObject *body, guint timeout_s,
                                          GCancellable *cancellable, GAsyncReadyCallback callback,
                                          gpointer user_data);
JsonObject *ferry_peer_request_finish (GAsyncResult *result, gboolean *maybe_delivered,
                                       GError **error);
/* POSTs `bytes` of incompressible data to the peer's /v1/probe; finish
 * with ferry_peer_request_finish (reply {"bytes": N}). */
void ferry_peer_probe_async (FerryAgent *agent, const char *base_url, gsize bytes,
                             GAsyncReadyCallback callback, gpointer user_data);
#define FERRY_PROBE_MAX_BODY (64 * 1024 * 1024)

/* ---- storage pools (pool.c) ----------------------------------------------- */

/* A pool is a directory of disk images on this host (--pool NAME=DIR;
 * "default" is STATE_DIR/pools/default unless given). A volume is a
 * regular file in it named by ferry_volume_name_is_valid(); other files
 * and symlinks are not volumes. Formats are always probed from the
 * content (qemu-img, synchronous, bounded output and time), never taken
 * from a name or a spec. */
typedef struct {
  char *name;
  char *path;                  /* absolute, canonical */
} FerryPool;

#define FERRY_POOL_MAX_VOLUMES 4096                       /* listed per pool */
#define FERRY_VOLUME_MIN_BYTES (G_GUINT64_CONSTANT (1) << 20)  /* 1 MiB */
#define FERRY_VOLUME_MAX_BYTES (G_GUINT64_CONSTANT (1) << 46)  /* 64 TiB */

/* Builds agent->pools from agent->config.pools, creating the default
 * pool's directory (ferry_agent_new). Errors name the --pool entry. */
gboolean ferry_pools_init (FerryAgent *agent, GError **error);
void ferry_pool_free (FerryPool *pool);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryPool, ferry_pool_free)

/* FERRY_ERROR_NOT_FOUND "pool 'x' does not exist on host H". */
FerryPool *ferry_pool_lookup (FerryAgent *agent, const char *name, GError **error);
/* pool->path/volume once the volume name is valid (no '/', no leading '.'). */
char *ferry_pool_volume_path (FerryPool *pool, const char *volume, GError **error);
/* Bytes of the pool's file system, and how many are free (statvfs). */
gboolean ferry_pool_space (FerryPool *pool, guint64 *capacity, guint64 *available, GError **error);

typedef struct {
  char *name;                  /* file name in the pool */
  char *format;                /* as probed: "qcow2", "raw", …; "unknown" in a listing */
  guint64 virtual_size;        /* what the guest sees */
  guint64 allocated_bytes;     /* what the file takes on the host (st_blocks) */
} FerryVolumeInfo;

void ferry_volume_info_free (FerryVolumeInfo *info);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryVolumeInfo, ferry_volume_info_free)

/* qemu-img info of any image file (also one a running QEMU holds). */
FerryVolumeInfo *ferry_volume_inspect (const char *path, GError **error);
/* The pool's volumes (FerryVolumeInfo*), sorted by name. An image
 * qemu-img cannot read is listed with format "unknown" rather than
 * hiding the rest; more than FERRY_POOL_MAX_VOLUMES is FERRY_ERROR_TOO_LARGE. */
GPtrArray *ferry_pool_list_volumes (FerryPool *pool, GError **error);
/* qemu-img create; format "qcow2" or "raw", size a multiple of 512 within
 * FERRY_VOLUME_MIN/MAX_BYTES. An existing name is FERRY_ERROR_CONFLICT
 * (the name is claimed with O_EXCL before qemu-img runs). */
gboolean ferry_volume_create (FerryPool *pool, const char *name, const char *format,
                              guint64 size_bytes, GError **error);
/* FERRY_ERROR_CONFLICT naming the VM when a defined VM uses the volume
 * (as a volume disk or by its path). */
gboolean ferry_volume_delete (FerryAgent *agent, FerryPool *pool, const char *name, GError **error);

/* The image file a disk refers to: disk->path, or its pool volume's path
 * (not checked to exist). */
char *ferry_disk_resolve_path (FerryAgent *agent, const FerryDiskSpec *disk, GError **error);
/* For every volume disk: the pool and the volume exist, the probed format
 * equals disk->format, and the image names no backing or data file; no
 * two disks resolve to one file. Errors name the field, e.g.
 * "disks[1].format: volume 'default/x.qcow2' claims qcow2 but its content is raw".
 * Path disks are otherwise used as given. Runs qemu-img once per volume. */
gboolean ferry_spec_check_disks (FerryAgent *agent, const FerryVmSpec *spec, GError **error);

/* API objects: {name, format, virtual_size, allocated_bytes}, and
 * {name, path, capacity_bytes, available_bytes, volumes (a count)} plus
 * "volume_list" when with_volumes. */
JsonObject *ferry_volume_info_to_json (const FerryVolumeInfo *info);
JsonObject *ferry_pool_to_json (FerryPool *pool, gboolean with_volumes, GError **error);

G_END_DECLS
