#!/usr/bin/env bash
# Build the lab base image (Debian bookworm, minbase + systemd) with debootstrap
# and `docker import` it. Does nothing when the image already exists, unless
# LAB_IMAGE_REBUILD=1.
set -euo pipefail
image=${LAB_IMAGE:-pgops-lab/bookworm-systemd:1}
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ${LAB_IMAGE_REBUILD:-0} != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "lab image $image present"
  exit 0
fi

root=$(mktemp -d /var/tmp/pgops-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "building lab image $image with debootstrap (a few minutes)"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,gnupg \
  bookworm "$root" "$mirror" >/dev/null

# A container needs no getty, no udev triggers, no time sync; mask them so
# systemd reaches multi-user.target quickly and quietly.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-timesyncd.service systemd-logind.service \
    sys-kernel-config.mount sys-kernel-debug.mount; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Keep images small and apt quiet: no docs, no recommends.
cat > "$root/etc/apt/apt.conf.d/90pgops-lab" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
cat > "$root/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
rm -rf "$root"/var/cache/apt/archives/*.deb
: > "$root/etc/machine-id"

tar -C "$root" -c . | docker import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=docker' \
  - "$image" >/dev/null
echo "lab image $image built"
