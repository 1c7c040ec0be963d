/* ferry — VM specification: what a VM is, independent of any host.
 *
 * A spec arrives as YAML or JSON from users (untrusted), is stored by the
 * agent as canonical JSON, and travels between agents during migration.
 * Parse errors name the field by path ("disks[1].format") and the reason.
 */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* Bounds on everything the input controls. */
#define FERRY_SPEC_MAX_BYTES      (256 * 1024)
#define FERRY_SPEC_MAX_NAME       64
#define FERRY_SPEC_MAX_VCPUS      64
#define FERRY_SPEC_MIN_MEMORY_MIB 16
#define FERRY_SPEC_MAX_MEMORY_MIB (1024 * 1024)
#define FERRY_SPEC_MAX_DISKS      16
#define FERRY_SPEC_MAX_NICS       8
#define FERRY_SPEC_MAX_PATH       4096
#define FERRY_SPEC_MAX_CMDLINE    4096
#define FERRY_SPEC_MAX_VOLUME_NAME 128
/* The pool a volume disk names when it gives none. */
#define FERRY_DEFAULT_POOL        "default"

typedef enum {
  FERRY_DISK_FORMAT_RAW,
  FERRY_DISK_FORMAT_QCOW2,
} FerryDiskFormat;

typedef enum {
  FERRY_DISK_BUS_VIRTIO,
  FERRY_DISK_BUS_IDE,
} FerryDiskBus;

/* A disk is either a file (path) or a volume of an agent's storage pool
 * (pool + volume); exactly one of path and volume is set, and pool is set
 * whenever volume is. Only the agent knows where a pool lives, so a
 * volume disk is resolved to a path there (ferry_disk_resolve_path). */
typedef struct {
  char *path;            /* absolute path to the image, or NULL */
  char *pool;            /* pool name (FERRY_DEFAULT_POOL unless given), or NULL */
  char *volume;          /* volume name within the pool, or NULL */
  FerryDiskFormat format;
  FerryDiskBus bus;
  gboolean readonly;
  char *cache;           /* "none" (default), "writeback", "writethrough" */
} FerryDiskSpec;

typedef enum {
  FERRY_NIC_NETWORK_USER,   /* QEMU user-mode networking */
  FERRY_NIC_NETWORK_NONE,   /* device present, no backend traffic */
  FERRY_NIC_NETWORK_TAP,    /* existing tap device (ifname) */
} FerryNicNetwork;

typedef struct {
  char *model;           /* "virtio-net-pci" (default), "e1000" */
  char *mac;             /* "52:54:00:xx:xx:xx"; generated when absent */
  FerryNicNetwork network;
  char *ifname;          /* tap only */
} FerryNicSpec;

typedef enum {
  FERRY_SERIAL_LOG,      /* serial console to the agent's console log */
  FERRY_SERIAL_NONE,
} FerrySerialMode;

typedef struct {
  char *name;            /* [A-Za-z0-9][A-Za-z0-9_.-]*, ≤ FERRY_SPEC_MAX_NAME */
  char *uuid;            /* generated when absent */
  guint vcpus;
  guint64 memory_mib;
  char *machine;         /* e.g. "pc-q35-7.2"; default "q35" resolved by agent */
  char *cpu_model;       /* default "qemu64" (migratable everywhere) */
  /* Direct kernel boot, or firmware boot when kernel is NULL. */
  char *kernel;
  char *initrd;
  char *cmdline;
  char *firmware;        /* "bios" (default) or "uefi" */
  GPtrArray *disks;      /* of FerryDiskSpec* */
  GPtrArray *nics;       /* of FerryNicSpec* */
  FerrySerialMode serial;
} FerryVmSpec;

/* A new spec holds the defaults (1 vCPU, 512 MiB, q35, qemu64, bios,
 * serial log, no disks, no NICs); name and uuid are NULL. */
FerryVmSpec *ferry_vm_spec_new (void);
void ferry_vm_spec_free (FerryVmSpec *spec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryVmSpec, ferry_vm_spec_free)

/* For building specs in code: defaults filled, path/mac NULL. Add them to
 * spec->disks / spec->nics, which own their elements. */
FerryDiskSpec *ferry_disk_spec_new (void);
void ferry_disk_spec_free (FerryDiskSpec *disk);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryDiskSpec, ferry_disk_spec_free)

FerryNicSpec *ferry_nic_spec_new (void);
void ferry_nic_spec_free (FerryNicSpec *nic);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (FerryNicSpec, ferry_nic_spec_free)

/* Parses YAML or JSON (JSON is YAML; the parser accepts both). Fills in
 * defaults. Errors: FERRY_ERROR_INVALID_ARGUMENT naming the field, or
 * FERRY_ERROR_TOO_LARGE when over FERRY_SPEC_MAX_BYTES. */
FerryVmSpec *ferry_vm_spec_parse (const char *data, gsize length, GError **error);

/* From an already-parsed JSON tree (API bodies, store rows). */
FerryVmSpec *ferry_vm_spec_from_json (JsonNode *node, GError **error);

/* Canonical JSON (all defaults explicit). Round-trips through _from_json. */
JsonNode *ferry_vm_spec_to_json (const FerryVmSpec *spec);
char *ferry_vm_spec_to_json_string (const FerryVmSpec *spec);

FerryVmSpec *ferry_vm_spec_copy (const FerryVmSpec *spec);

/* Field-by-field equality (NULL equals only NULL). */
gboolean ferry_vm_spec_equal (const FerryVmSpec *a, const FerryVmSpec *b);

gboolean ferry_vm_name_is_valid (const char *name);
/* Pool names follow the VM-name rule. Volume names too, but up to
 * FERRY_SPEC_MAX_VOLUME_NAME characters: a letter or digit first (so
 * never "." or ".."), then letters, digits, '_', '.', '-' (never '/'). */
gboolean ferry_volume_name_is_valid (const char *name);
const char *ferry_disk_format_to_string (FerryDiskFormat format);
const char *ferry_disk_bus_to_string (FerryDiskBus bus);
const char *ferry_nic_network_to_string (FerryNicNetwork network);
const char *ferry_serial_mode_to_string (FerrySerialMode mode);

G_END_DECLS
