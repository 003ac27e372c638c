#!/usr/bin/env bash
# The lab images, each built only when missing:
#   pgops-lab/bookworm-systemd:2   Debian bookworm, minbase + systemd and
#                                  OpenSSH's server, from debootstrap (docker
#                                  import); the `default` Molecule scenario
#                                  installs everything on it.
#   pgops-lab/bookworm-packages:<hash> (and :latest)
#                                  the same with every package the roles install
#                                  (site.yml --tags packages run in a container of
#                                  it, then committed); the hash covers the files
#                                  that decide what gets installed, so a change
#                                  there builds a new one. The cluster scenario
#                                  and the benchmarks start from it.
# LAB_IMAGE_REBUILD=1 rebuilds the base image.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${LAB_IMAGE:-pgops-lab/bookworm-systemd:2}
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ${LAB_IMAGE_REBUILD:-0} != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "lab image $image present"
else
  root=$(mktemp -d /var/tmp/pgops-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "building lab image $image with debootstrap (a few minutes)"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,gnupg,openssh-server \
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
fi

# The package image.
# What decides the packages: the roles' install tasks and package lists, the
# Patroni pin, and this script. A stale image is only slower (a converge installs what it
# lacks), never wrong.
inputs=$(ls roles/*/tasks/install.yml roles/*/vars/main.yml roles/patroni/defaults/main.yml lab/image-inventory.yml lab/image.sh \
  | sort)
hash=$( (echo "$image"; cat $inputs) | sha256sum | cut -c1-12)
packages=pgops-lab/bookworm-packages:$hash
if docker image inspect "$packages" >/dev/null 2>&1; then
  echo "lab image $packages present"
else
  echo "building lab image $packages (every role's packages)"
  docker rm -f pgops-image-build >/dev/null 2>&1 || true
  docker run -d --name pgops-image-build --hostname pgops-image-build --cap-add SYS_ADMIN \
    --cgroupns host --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
    "$image" /sbin/init >/dev/null
  trap 'docker rm -f pgops-image-build >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 30); do
    state=$(docker exec pgops-image-build systemctl is-system-running --wait 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 1
  done
  ANSIBLE_CONFIG=$PWD/ansible.cfg .venv/bin/ansible-playbook -i lab/image-inventory.yml site.yml --tags packages \
    >/var/tmp/pgops-image-build.log 2>&1 || { tail -40 /var/tmp/pgops-image-build.log; exit 1; }
  # Services the packages started with their defaults are the roles' to
  # configure; the package lists stay, so converges do not fetch them again.
  # Every host of both groups starts from this image: the monitoring
  # services stay off until a role enables them where they belong (no
  # Prometheus on a database member, no open exporter before its filter).
  docker exec pgops-image-build systemctl disable --now prometheus prometheus-alertmanager \
    prometheus-node-exporter prometheus-postgres-exporter mtail
  docker exec pgops-image-build apt-get clean
  docker stop pgops-image-build >/dev/null
  docker commit --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' pgops-image-build "$packages" >/dev/null
  docker rm pgops-image-build >/dev/null
  echo "lab image $packages built"
fi
docker tag "$packages" pgops-lab/bookworm-packages:latest
