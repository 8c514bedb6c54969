#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine, run as root: the Debian packages the
# tests use as real peers, and a virtualenv with pyaoe installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(vblade aoetools tshark fuse3 libfuse3-3 libnbd-bin nbdkit qemu-utils
              e2fsprogs fio iproute2 netcat-openbsd procps python3-libnbd strace systemd
              qemu-system-x86 busybox-static rsync gcc libc6-dev python3 python3-venv
              python3-dev)

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

# Debian's distribution kernel, unpacked for the qemu guests of the kernel tests (the other
# machine: the kernel's aoe initiator, /dev/nbdX). Not installed: only unpacked.
KERNEL_DIR=${PYAOE_KERNEL_DIR:-/var/cache/pyaoe/kernel}
if ! compgen -G "$KERNEL_DIR/boot/vmlinuz-*" >/dev/null; then
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$kpkg" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  echo "setup: unpacking $kpkg into $KERNEL_DIR"
  kdl=$(mktemp -d)
  (cd "$kdl" && apt-get download -q "$kpkg" 2>/dev/null)
  mkdir -p "$KERNEL_DIR.tmp"
  dpkg-deb -x "$kdl"/*.deb "$KERNEL_DIR.tmp"
  rm -rf "$kdl" "$KERNEL_DIR"
  mv "$KERNEL_DIR.tmp" "$KERNEL_DIR"
fi

# The venv is made from the distribution's interpreter unless PYTHON names another: Debian's
# is linked statically and built with profile-guided and link-time optimisation, and takes
# 15-17 % less CPU than a shared-library build such as pyenv's default (start-up and copies;
# docs/performance.md). A venv made from another interpreter is made again.
PY=${PYTHON:-/usr/bin/python3}
[ -n "${PYTHON:-}" ] || [ -x "$PY" ] || PY=python3
PY=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ -x .venv/bin/python ] && ! grep -qx "executable = $PY" .venv/pyvenv.cfg 2>/dev/null; then
  echo "setup: remaking .venv with $PY"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pyaoe-installed
# Reinstalled when the packaging or a compiled accelerator's source changed (the editable
# install builds src/aoe/*/_*.c in place; gcc and libc6-dev come from apt above).
newer=$(find pyproject.toml setup.py src/aoe -newer "$stamp" \( -name pyproject.toml \
        -o -name setup.py -o -name '_*.c' -o -name '_*.h' \) 2>/dev/null | head -1 || true)
if [ ! -f "$stamp" ] || [ -n "$newer" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
echo "setup: ready (.venv)"
