#!/usr/bin/env bash
# Builds the static kadosession binary and the FROM-scratch image (default tag
# kadosession:local; KADOSESSION_IMAGE to change it). Nothing is pulled: the
# image is FROM scratch and the classic builder is used (no BuildKit front end).
#
#   scripts/docker-build.sh && docker-compose -f scripts/compose.yml up -d
set -euo pipefail
. "$(dirname "$0")/lib.sh"
image=${KADOSESSION_IMAGE:-kadosession:local}

build_binary
if command -v file >/dev/null 2>&1 && file "$bin" | grep -q 'dynamically linked'; then
  echo "docker-build: $bin is dynamically linked; it would not start FROM scratch" >&2
  exit 1
fi
# The image's only directories: /data (the volume, owned by the node's uid)
# and /tmp.
mkdir -p "$build_dir/rootfs/data" "$build_dir/rootfs/tmp"
chmod 0700 "$build_dir/rootfs/data"
chmod 1777 "$build_dir/rootfs/tmp"

# The peer token scripts/compose.yml hands each node (a file secret, bind
# mounted: readable by the node's uid, hence 0644 in this private build
# directory). Kept across builds: a running cluster's nodes must share it.
if [ ! -s "$build_dir/peer-token" ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$build_dir/peer-token"
  echo "docker-build: made a peer token in $build_dir/peer-token"
fi
chmod 0644 "$build_dir/peer-token"

echo "docker-build: docker build -> $image"
old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
if ! out=$(DOCKER_BUILDKIT=0 timeout 300 docker build -t "$image" -f "$scripts_dir/Dockerfile" "$scripts_dir" 2>&1); then
  printf '%s\n' "$out" >&2
  echo "docker-build: docker build failed" >&2
  exit 1
fi
# The image this tag named before, now untagged, is removed (if nothing uses it).
new_id=$(docker image inspect -f '{{.Id}}' "$image")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "docker-build: built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
