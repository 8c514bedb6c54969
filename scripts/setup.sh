#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine, run as root: the Debian packages the
# tests use as real peers, and a virtualenv with pyaoe installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(vblade aoetools tshark fuse3 libfuse3-3 libnbd-bin nbdkit qemu-utils
              e2fsprogs fio iproute2 netcat-openbsd procps python3-libnbd strace rsync gcc
              libc6-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections || true
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pyaoe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
echo "setup: ready (.venv)"
