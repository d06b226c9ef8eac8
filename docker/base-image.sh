#!/bin/sh
# The base image the Dockerfiles start from (debian:bookworm-slim). Pulled when a registry answers;
# otherwise made here with debootstrap from the Debian mirror apt already uses, and imported under
# that name, so the same Dockerfiles build on a machine with no image registry.
set -eu
IMAGE=${1:-debian:bookworm-slim}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
if timeout 60 docker pull "$IMAGE" >/dev/null 2>&1; then
  echo "==> pulled $IMAGE"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "need debootstrap (apt-get install debootstrap)" >&2; exit 1; }
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d)
chmod 755 "$ROOT"  # it becomes the image's /: mktemp's 0700 would lock every non-root user out
trap 'rm -rf "$ROOT"' EXIT
echo "==> no registry: building $IMAGE with debootstrap from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >/dev/null
cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# What the official slim image leaves out: package lists, docs and the apt cache.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
tar -C "$ROOT" -c . | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$IMAGE" >/dev/null
echo "==> imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
