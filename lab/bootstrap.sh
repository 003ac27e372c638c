#!/usr/bin/env bash
# Installs what the lab and the tests need on a Debian 12 controller, each
# step only when missing: Debian packages, a running Docker engine, the Python
# venv (rebuilt when requirements.txt changes) and the lab base image.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker.io debootstrap python3-venv make curl git ca-certificates openssl stunnel4 graphviz openssh-client)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The lab's SSH key: Ansible reaches the Molecule scenarios' hosts over SSH,
# as it reaches production's; their containers mount the public half as
# root's authorized_keys.
if [[ ! -f lab/.state/ssh/id_ed25519 ]]; then
  mkdir -p -m 700 lab/.state/ssh
  ssh-keygen -q -t ed25519 -N '' -C pgops-lab -f lab/.state/ssh/id_ed25519
fi

if ! docker info >/dev/null 2>&1; then
  if [[ -d /run/systemd/system ]]; then
    systemctl start docker
  else
    echo "starting dockerd"
    nohup dockerd >/var/log/pgops-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/pgops-dockerd.log" >&2; exit 1; }
fi

want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]]; then
  echo "building the Python venv"
  python3 -m venv .venv
  { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -r requirements.txt; } \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$want" > .venv/.requirements.sha256
fi

# promtool (Debian's prometheus package) for the alert rules' unit tests, taken
# from the package without installing it: no Prometheus server on the controller.
if [[ ! -x .venv/bin/promtool ]]; then
  echo "extracting promtool from Debian's prometheus package"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; })
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  install -m 755 "$tmp/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi

bash lab/image.sh
