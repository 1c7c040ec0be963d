#!/usr/bin/env bash
# Builds the ferry test guest: a Debian cloud kernel and a busybox initramfs
# running the ferry workload programs.  See guest/README.md.
#
#   build-guest.sh OUTDIR
#
# Produces OUTDIR/vmlinuz, OUTDIR/initramfs.img (gzip'd newc cpio),
# OUTDIR/disk-check (host program) and OUTDIR/manifest.txt.
#
# Nothing on the host is changed except, when run as root and needed,
# `apt-get update` (apt lists missing) and `apt-get install busybox-static`.
# No mounts, no loop devices, no device nodes: the kernel package is only
# unpacked with dpkg -x, and the cpio is built from a file list.
#
# A second run with unchanged inputs (this script, the guest sources, the
# kernel .deb name, the busybox version) does nothing and takes well under a
# second.  The kernel .deb is cached in $FERRY_GUEST_CACHE, or OUTDIR/cache.
set -euo pipefail

readonly META_PKG=linux-image-cloud-amd64
readonly BUSYBOX=/bin/busybox
# Loaded in this order (after their dependencies): virtio_pci first so the
# block, net and console drivers find their devices when they register.
# button + evdev: the ACPI power button reaches busybox acpid (ferry.acpi_poweroff)
readonly WANTED_MODULES=(virtio_pci virtio_blk virtio_net virtio_console button evdev)
readonly GUEST_PROGRAMS=(ferry-tick ferry-dirtier ferry-diskwriter)
readonly SOURCES=(init record.h guest-common.h ferry-tick.c ferry-dirtier.c
                  ferry-diskwriter.c disk-check.c)
readonly OUTPUTS=(vmlinuz initramfs.img disk-check manifest.txt)
readonly CFLAGS_COMMON=(-std=gnu11 -O2 -Wall -Wextra -D_GNU_SOURCE)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }
is_root() { [[ $(id -u) -eq 0 ]]; }

if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

GUEST_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$GUEST_SRC/$(basename "${BASH_SOURCE[0]}")
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
CACHE=${FERRY_GUEST_CACHE:-$OUTDIR/cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
CC=${CC:-gcc}

# Tests may build the same OUTDIR concurrently: one builder at a time, the
# others then find it up to date.
exec 9>"$OUTDIR/.build.lock"
flock 9

APT_UPDATED=0
apt_update_once() {
    is_root || return 1
    ((APT_UPDATED == 0)) || return 1
    APT_UPDATED=1
    log "apt lists missing or stale: running apt-get update"
    apt-get update -qq >&2
}

# --- kernel package resolution ---------------------------------------------

# apt-cache is slow here (~0.8 s, no binary cache), too slow for the cached
# path, so its answer is remembered until the apt lists change.
apt_lists_signature() {
    local lists=(/var/lib/apt/lists/*_Packages*)
    [[ -e ${lists[0]} ]] || { echo none; return; }
    stat -c '%n %s %Y' "${lists[@]}" | sha256sum | cut -d' ' -f1
}

# Prints "PACKAGE VERSION" of the kernel the metapackage depends on.
query_kernel_package() {
    local show pkg version
    show=$(apt-cache show --no-all-versions "$META_PKG" 2>/dev/null) || return 0
    pkg=$(sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\).*/\1/p' <<<"$show" | head -n1)
    [[ -n $pkg ]] || return 0
    version=$(sed -n "s/^Depends:.*$pkg (= \\([^)]*\\)).*/\\1/p" <<<"$show" | head -n1)
    if [[ -z $version ]]; then
        version=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
                  sed -n 's/^Version: //p' | head -n1)
    fi
    [[ -n $version ]] && echo "$pkg $version"
    return 0
}

resolve_kernel_package() {
    local memo=$CACHE/kernel-package signature answer cached
    signature=$(apt_lists_signature)
    if [[ -f $memo ]]; then
        local memo_signature memo_pkg memo_version
        read -r memo_signature memo_pkg memo_version <"$memo" || true
        if [[ $memo_signature == "$signature" && -n $memo_version ]]; then
            KERNEL_PKG=$memo_pkg KERNEL_VERSION=$memo_version
            return
        fi
    fi
    answer=$(query_kernel_package)
    if [[ -z $answer ]] && apt_update_once; then
        signature=$(apt_lists_signature)
        answer=$(query_kernel_package)
    fi
    if [[ -n $answer ]]; then
        read -r KERNEL_PKG KERNEL_VERSION <<<"$answer"
        echo "$signature $answer" >"$memo.$$" && mv "$memo.$$" "$memo"
        return
    fi
    # Offline and no apt lists: use the newest kernel already in the cache.
    cached=$(find "$CACHE" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*_amd64.deb' \
             -printf '%f\n' | sort -V | tail -n1)
    [[ -n $cached ]] ||
        die "cannot resolve $META_PKG (no apt lists; run apt-get update as root)" \
            "and no cached kernel .deb in $CACHE"
    KERNEL_PKG=${cached%%_*}
    KERNEL_VERSION=${cached#*_}
    KERNEL_VERSION=${KERNEL_VERSION%_amd64.deb}
    log "apt knows no $META_PKG; using cached $cached"
}

deb_file_name() {
    # apt-get download escapes the epoch colon.
    echo "${KERNEL_PKG}_${KERNEL_VERSION//:/%3a}_amd64.deb"
}

# Returns 1 (after showing apt's complaint) if the download fails.
fetch_kernel_deb() {
    local deb=$CACHE/$DEB_NAME dl
    [[ -f $deb ]] && return 0
    log "downloading $KERNEL_PKG=$KERNEL_VERSION into $CACHE"
    # Download into a private directory so an interrupted download never
    # leaves a truncated .deb that looks cached.
    dl=$(mktemp -d "$CACHE/.download.XXXXXX")
    if ! (cd "$dl" && apt-get download -q "$KERNEL_PKG=$KERNEL_VERSION" >"$dl/log" 2>&1) ||
        [[ ! -f $dl/$DEB_NAME ]]; then
        tail -n3 "$dl/log" >&2
        rm -rf "$dl"
        return 1
    fi
    mv "$dl/$DEB_NAME" "$deb"
    rm -rf "$dl"
}

# --- busybox ----------------------------------------------------------------

busybox_version() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' busybox-static 2>/dev/null |
        awk '$1 == "ii" { print $2 }'
}

ensure_busybox() {
    BUSYBOX_VERSION=$(busybox_version)
    if [[ -z $BUSYBOX_VERSION || ! -x $BUSYBOX ]]; then
        is_root || die "busybox-static is not installed; run: apt-get install busybox-static"
        log "installing busybox-static"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2; then
            apt_update_once || die "apt-get install busybox-static failed"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2 ||
                die "apt-get install busybox-static failed"
        fi
        BUSYBOX_VERSION=$(busybox_version)
        [[ -n $BUSYBOX_VERSION && -x $BUSYBOX ]] || die "busybox-static install did not provide $BUSYBOX"
    fi
}

# --- cache check --------------------------------------------------------------

input_hash() {
    {
        echo "deb=$DEB_NAME"
        echo "busybox=$BUSYBOX_VERSION"
        cat "$SELF"
        local f
        for f in "${SOURCES[@]}"; do
            echo "== $f"
            cat "$GUEST_SRC/$f"
        done
    } | sha256sum | cut -d' ' -f1
}

outputs_up_to_date() {
    local f
    [[ -f $OUTDIR/inputs.sha256 && $(<"$OUTDIR/inputs.sha256") == "$INPUT_HASH" ]] || return 1
    for f in "${OUTPUTS[@]}"; do
        [[ -s $OUTDIR/$f ]] || return 1
    done
}

# --- module dependency order -------------------------------------------------

declare -A MODULE_PATH MODULE_DEPS MODULE_SEEN
MODULE_ORDER=()

module_name() {
    local base=${1##*/}
    echo "${base%%.ko*}"
}

read_modules_dep() {
    local dep_file=$1 line target deps dep names
    while IFS= read -r line; do
        target=${line%%:*}
        deps=${line#*:}
        names=
        for dep in $deps; do
            dep=${dep##*/}
            names+=" ${dep%%.ko*}"
        done
        dep=${target##*/}
        MODULE_PATH[${dep%%.ko*}]=$target
        MODULE_DEPS[${dep%%.ko*}]=$names
    done <"$dep_file"
}

# Depth-first: every module after all it depends on.
visit_module() {
    local name=$1 dep
    [[ -z ${MODULE_SEEN[$name]:-} ]] || return 0
    MODULE_SEEN[$name]=1
    [[ -n ${MODULE_PATH[$name]:-} ]] || die "module $name not found in modules.dep"
    for dep in ${MODULE_DEPS[$name]}; do
        visit_module "$dep"
    done
    MODULE_ORDER+=("$name")
}

# --- build ---------------------------------------------------------------------

build_outputs() {
    local work=$1
    local kroot=$work/kernel root=$work/root deb=$CACHE/$DEB_NAME
    local moddir kver modbase name src dst applet

    log "unpacking $DEB_NAME"
    dpkg -x "$deb" "$kroot"
    moddir=$(find "$kroot/lib/modules" "$kroot/usr/lib/modules" -mindepth 1 -maxdepth 1 \
             -type d 2>/dev/null | head -n1 || true)
    [[ -n $moddir ]] || die "no lib/modules in $DEB_NAME"
    kver=${moddir##*/}
    modbase=${moddir%/lib/modules/*}
    [[ -f $kroot/boot/vmlinuz-$kver ]] || die "no boot/vmlinuz-$kver in $DEB_NAME"

    # Debian generates modules.dep at install time; the .deb has none.
    if [[ ! -s $moddir/modules.dep ]]; then
        "$BUSYBOX" depmod -b "$modbase" "$kver" ||
            die "depmod failed for $kver"
    fi
    read_modules_dep "$moddir/modules.dep"
    for name in "${WANTED_MODULES[@]}"; do
        visit_module "$name"
    done

    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lib/modules/ferry}
    for name in "${MODULE_ORDER[@]}"; do
        src=$moddir/${MODULE_PATH[$name]}
        dst=$root/lib/modules/ferry/$name.ko
        # busybox insmod can't decompress: store modules plain.
        case "$src" in
            *.ko) cp "$src" "$dst" ;;
            *.ko.xz) xz -dc "$src" >"$dst" ;;
            *.ko.zst) zstd -qdc "$src" >"$dst" ;;
            *.ko.gz) gzip -dc "$src" >"$dst" ;;
            *) die "unsupported module file $src" ;;
        esac
        echo "$name" >>"$root/lib/modules/ferry/load-order"
    done

    cp "$BUSYBOX" "$root/bin/busybox"
    while IFS= read -r applet; do
        # Skip busybox itself and top-level names such as linuxrc.
        [[ $applet == */* && $applet != bin/busybox && ! -e $root/$applet ]] || continue
        mkdir -p "$root/${applet%/*}"
        ln -s /bin/busybox "$root/$applet"
    done < <("$BUSYBOX" --list-full)
    install -m 0755 "$GUEST_SRC/init" "$root/init"

    for name in "${GUEST_PROGRAMS[@]}"; do
        "$CC" "${CFLAGS_COMMON[@]}" -static -s -o "$root/usr/bin/$name" \
            "$GUEST_SRC/$name.c" ||
            die "compiling $name failed (static glibc: apt-get install libc6-dev)"
    done
    "$CC" "${CFLAGS_COMMON[@]}" -o "$work/disk-check" "$GUEST_SRC/disk-check.c"

    log "packing initramfs"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
         cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
        gzip -9 -n >"$work/initramfs.img"
    cp "$kroot/boot/vmlinuz-$kver" "$work/vmlinuz"

    {
        echo "kernel_package=$KERNEL_PKG"
        echo "kernel_package_version=$KERNEL_VERSION"
        echo "kernel_release=$kver"
        echo "busybox_version=$BUSYBOX_VERSION"
        echo "modules=${MODULE_ORDER[*]}"
        echo "initramfs_bytes=$(stat -c %s "$work/initramfs.img")"
        echo "input_hash=$INPUT_HASH"
    } >"$work/manifest.txt"
}

main() {
    local f
    ensure_busybox
    resolve_kernel_package
    DEB_NAME=$(deb_file_name)
    INPUT_HASH=$(input_hash)
    if outputs_up_to_date; then
        log "up to date in $OUTDIR"
        return
    fi

    if ! fetch_kernel_deb; then
        # Stale lists name a kernel the mirror no longer has: refresh them
        # and resolve again.
        apt_update_once || die "apt-get download $KERNEL_PKG=$KERNEL_VERSION failed"
        rm -f "$CACHE/kernel-package"
        resolve_kernel_package
        DEB_NAME=$(deb_file_name)
        INPUT_HASH=$(input_hash)
        if outputs_up_to_date; then
            log "up to date in $OUTDIR"
            return
        fi
        fetch_kernel_deb || die "apt-get download $KERNEL_PKG=$KERNEL_VERSION failed"
    fi
    WORK_DIR=$(mktemp -d "$OUTDIR/.work.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
    build_outputs "$WORK_DIR"

    # Invalidate first, publish each output atomically, record the inputs
    # last: an interrupted run never looks up to date.
    rm -f "$OUTDIR/inputs.sha256"
    for f in "${OUTPUTS[@]}"; do
        mv -f "$WORK_DIR/$f" "$OUTDIR/$f"
    done
    echo "$INPUT_HASH" >"$OUTDIR/inputs.sha256"
    log "built $OUTDIR ($(grep -E '^(kernel_release|initramfs_bytes)=' "$OUTDIR/manifest.txt" | tr '\n' ' '))"
}

main
