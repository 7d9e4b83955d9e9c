#!/usr/bin/env bash
# deploy/docker/build-base.sh — a Debian bookworm base image with Python 3.11, built locally.
#
# Where no public container registry can be reached, the images of this project are built
# FROM a base that mmdebstrap or debootstrap makes from Debian's packages (the same mirror as
# the host's apt) and `docker import` loads:
#
#   deploy/docker/build-base.sh [--force]        -> image $BASE_IMAGE (default artifact-search-base:bookworm)
#
# The base holds python3 (3.11), python3-venv and ca-certificates; apt lists, caches,
# documentation and translations are removed. An existing image is reused unless --force.
#
# Environment: BASE_IMAGE, DEBIAN_SUITE [bookworm], DEBIAN_MIRROR [the host's first Debian
# source], BASE_PACKAGES [python3,python3-venv,ca-certificates], DOCKER [docker],
# BOOTSTRAP_TOOL [mmdebstrap when installed, else debootstrap].
# Needs root, mmdebstrap or debootstrap, and a running Docker engine.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-artifact-search-base:bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
BASE_PACKAGES="${BASE_PACKAGES:-python3,python3-venv,ca-certificates}"
DOCKER="${DOCKER:-docker}"
info() { printf '[build-base] %s\n' "$*" >&2; }
die() { printf '[build-base] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" != "--force" ]] && "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  info "$BASE_IMAGE present: reused (--force rebuilds it)"
  exit 0
fi
[[ $EUID -eq 0 ]] || die "building a root file system needs root"
command -v mmdebstrap >/dev/null 2>&1 || command -v debootstrap >/dev/null 2>&1 \
  || die "mmdebstrap or debootstrap is needed (Debian: apt-get install mmdebstrap)"

# the host's own Debian mirror: a deb822 'URIs:' line or a one-line 'deb URI suite' entry
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk '/^URIs:/ {u=$2} /^Suites:/ && u != "" && $0 ~ /bookworm|stable/ && u !~ /security/ {print u; exit}' "$f"
  done | head -n1
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $2 !~ /^\[/ && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list
  fi
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror | head -n1)}"
[[ -n "$MIRROR" ]] || die "no Debian mirror found in /etc/apt: set DEBIAN_MIRROR"

ROOT="$(mktemp -d /var/tmp/artifact-search-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
# mmdebstrap (apt: parallel downloads, one unpack) takes about half of debootstrap's time
tool=debootstrap
[[ "${BOOTSTRAP_TOOL:-}" != debootstrap ]] && command -v mmdebstrap >/dev/null 2>&1 && tool=mmdebstrap
info "$tool --variant=minbase $DEBIAN_SUITE (+ $BASE_PACKAGES) into $ROOT"
t0=$(date +%s)
opts=()
# merged /usr by mmdebstrap's own hook, not by the usrmerge package (which pulls in perl)
[[ $tool == mmdebstrap && -d /usr/share/mmdebstrap/hooks/merged-usr ]] \
  && opts+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
if ! "$tool" "${opts[@]}" --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$ROOT/rootfs" \
    "$MIRROR" >"$ROOT/bootstrap.log" 2>&1; then
  tail -n 30 "$ROOT/bootstrap.log" >&2
  die "$tool failed (log above)"
fi
info "$tool took $(( $(date +%s) - t0 ))s"
r="$ROOT/rootfs"
rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* \
  "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
  "$r"/var/log/* "$r"/tmp/* "$r"/usr/lib/python3.11/test
"$r"/usr/bin/python3 --version >/dev/null 2>&1 || chroot "$r" python3 --version >/dev/null \
  || die "the base has no working python3"
info "importing as $BASE_IMAGE"
tar --numeric-owner -C "$r" -c . \
  | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
info "$BASE_IMAGE: $("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
