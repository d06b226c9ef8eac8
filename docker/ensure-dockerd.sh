#!/bin/sh
# A Docker engine for `make test-deploy`: the running one, or dockerd started here (Debian's docker.io,
# the vfs storage driver, which works inside containers and on any filesystem). Needs root.
set -eu
if docker info >/dev/null 2>&1; then
  exit 0
fi
for tool in dockerd docker-compose debootstrap; do
  command -v "$tool" >/dev/null || missing="${missing:-} $tool"
done
if [ -n "${missing:-}" ]; then
  echo "==> installing docker.io, docker-compose and debootstrap from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi
echo "==> starting dockerd (vfs storage); log in /tmp/voicepeer-dockerd.log"
nohup dockerd --storage-driver=vfs >/tmp/voicepeer-dockerd.log 2>&1 &
i=0
until docker info >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "dockerd did not start:" >&2; tail -20 /tmp/voicepeer-dockerd.log >&2; exit 1; }
  sleep 1
done
