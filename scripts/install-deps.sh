#!/bin/bash
# Installs what ferry needs to build and test on Debian 12 (when root),
# or lists what is missing (otherwise). Safe to run repeatedly: does
# nothing when everything is present.
set -euo pipefail

packages=(
  gcc make pkg-config meson ninja-build python3
  libglib2.0-dev glib-networking libjson-glib-dev libsoup-3.0-dev libsqlite3-dev
  libgnutls28-dev libyaml-dev libnbd-dev libnbd-bin libxxhash-dev libzstd-dev
  qemu-system-x86 qemu-utils
  busybox-static cpio e2fsprogs
  iproute2 tcpdump
  clang libclang-rt-14-dev valgrind
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "ferry: missing packages: ${missing[*]}" >&2
  echo "ferry: run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "ferry: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Update the package lists when they are absent or a first attempt fails.
if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
