#!/usr/bin/env bash
# Proves the README's two commands on a fresh Debian 12: builds a minimal root with mmdebstrap (--variant=apt,
# nothing but apt and essential packages), copies a clean clone of HEAD into it, and runs `bash scripts/run.sh` then
# `bash scripts/test.sh` inside it, as root, with only Debian's and PyPI's registries reachable (as on a user's
# machine). Too slow for CI (the build and the whole test suite, ~40 min on 2 cores); run it before resolving an issue.
#   usage: sudo bash scripts/fresh_check.sh [run|test|both|configure]   (default both; FRESH_ROOT=DIR keeps the root)
# `configure` only installs the packages and configures the build: a quick check of scripts/setup.sh (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-both}"
case "$what" in run|test|both|configure) ;; *) echo "usage: $0 [run|test|both|configure]" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "fresh_check: needs root (mmdebstrap, chroot)" >&2; exit 2; }
command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null; }

root="${FRESH_ROOT:-$(mktemp -d /tmp/oar-fresh.XXXXXX)}"
cleanup() {
  for m in run/netns proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  [ -n "${FRESH_ROOT:-}" ] || rm -rf "$root"
}
trap cleanup EXIT
log() { echo "fresh_check: $*"; }

t0=$(date +%s)
log "building a minimal Debian 12 root in $root"
rm -rf "$root" && mkdir -p "$root"
mmdebstrap --quiet --variant=apt --include=ca-certificates bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
log "root ready in $(( $(date +%s) - t0 )) s; packages: $(chroot "$root" dpkg-query -W | wc -l)"

# A clean clone of what is committed: nothing from this work tree's build folders or untracked files.
commit=$(git rev-parse HEAD)
git clone --quiet --no-local . "$root/root/oar"
git -C "$root/root/oar" -c advice.detachedHead=false checkout --quiet "$commit"
cp /etc/resolv.conf "$root/etc/resolv.conf"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
# This machine's own certificate authorities (a TLS-inspecting proxy's, say), so that the root reaches PyPI as
# this machine does; a user's machine has its own network setup.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

run_in_root() {  # command line, run in the clone as a login shell would
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb bash -c "cd /root/oar && $1"
}
status=0
if [ "$what" = configure ]; then
  log "scripts/setup.sh, then CMake configure"
  run_in_root "bash scripts/setup.sh && cmake -S . -B build -G Ninja >/dev/null" || status=1
  what=none
fi
if [ "$what" = run ] || [ "$what" = both ]; then
  t=$(date +%s)
  log "README command 1: bash scripts/run.sh"
  if run_in_root "bash scripts/run.sh"; then log "run.sh passed in $(( $(date +%s) - t )) s"
  else status=1; log "run.sh FAILED after $(( $(date +%s) - t )) s"; fi
fi
if { [ "$what" = test ] || [ "$what" = both ]; } && [ $status -eq 0 ]; then
  t=$(date +%s)
  log "README command 2: bash scripts/test.sh"
  if run_in_root "bash scripts/test.sh"; then log "test.sh passed in $(( $(date +%s) - t )) s"
  else status=1; log "test.sh FAILED after $(( $(date +%s) - t )) s"; fi
fi
log "commit ${commit:0:7}: $([ $status -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - t0 )) s"
exit $status
