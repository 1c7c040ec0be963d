/* ferry agent — the QEMU command line for a VM spec.
 *
 * Pure function of its inputs so it can be unit-tested and so the source
 * and destination of a migration build identical device models.
 */
#pragma once

#include <glib.h>

#include "vmspec.h"

G_BEGIN_DECLS

typedef struct {
  const char *qemu_binary;
  const char *accel;          /* "kvm" or "tcg" */
  const char *qmp_socket;
  const char *pid_file;
  const char *console_log;
  const char *qemu_log;       /* -D: QEMU's own messages; NULL = none */
  gboolean incoming;          /* destination of a migration: -incoming defer */
  gboolean start_paused;      /* -S */
  /* QEMU before 9.0 loses guest writes during migration under TCG: the
   * fast path of its dirty-bitmap sync (RAM sizes that are multiples of
   * 256 KiB) clears dirty bits without re-arming the TCG TLB, so stores
   * through cached TLB entries go unrecorded and the destination gets
   * stale pages (upstream fix "physmem: ... dirty bits cleared", 2024).
   * 8 KiB more RAM puts the block on the slow, correct path. Both ends of
   * a migration must agree, which they do: the flag depends only on the
   * accelerator and the QEMU version. */
  gboolean pad_ram_for_tcg_dirty_sync;
} FerryQemuLaunch;

/* NULL-terminated argv, element 0 is the binary. Every disk needs a path:
 * the caller resolves volume disks first (ferry_disk_resolve_path). */
GStrv ferry_qemu_argv_build (const FerryVmSpec *spec, const FerryQemuLaunch *launch);

/* The environment QEMU runs with, as libvirt gives it: the agent's PATH
 * (or the system's) and the C locale, nothing else the agent inherited.
 * A hypervisor process must not pick up the agent's LD_PRELOAD, its
 * sanitizer or malloc debugging settings (MALLOC_PERTURB_, which meson
 * sets for tests), its proxies or its locale. */
GStrv ferry_qemu_environ (const char *const *agent_environ);

/* Resolves a machine alias ("q35", "pc") to the versioned machine type the
 * binary maps it to ("pc-q35-7.2"), so both ends of a migration use the
 * same one. Runs `qemu -machine help` once per binary and caches. */
char *ferry_qemu_resolve_machine (const char *qemu_binary, const char *machine, GError **error);

/* "kvm" when /dev/kvm is usable and we are not nested inside another
 * hypervisor (nested KVM can be far slower than TCG), else "tcg".
 * FERRY_ACCEL in the environment overrides. */
const char *ferry_qemu_detect_accel (void);

/* Does this QEMU need pad_ram_for_tcg_dirty_sync under TCG (version < 9)? */
gboolean ferry_qemu_has_tcg_dirty_sync_bug (const char *qemu_binary);

G_END_DECLS
