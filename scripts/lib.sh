# Shared by the scripts in this directory (sourced, not run).
# shellcheck shell=bash

scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$scripts_dir/.." && pwd)
build_dir=$scripts_dir/.build
bin=$build_dir/kadosession
export PATH="$PATH:/usr/local/go/bin"

# free_port prints a TCP port on loopback that is free at the moment.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# now_ms prints the time in milliseconds since the epoch.
now_ms() { date +%s%3N; }

# build_binary builds the static binary into scripts/.build/kadosession.
# KADOSESSION_SRC names another source tree to build (default: this repo);
# KADOSESSION_SKIP_BUILD=1 uses the binary already there.
build_binary() {
  local src=${KADOSESSION_SRC:-$repo_root}
  mkdir -p "$build_dir"
  if [ "${KADOSESSION_SKIP_BUILD:-}" = 1 ] && [ -x "$bin" ]; then
    echo "build: using existing $bin (KADOSESSION_SKIP_BUILD=1)"
    return 0
  fi
  echo "build: CGO_ENABLED=0 go build ./cmd/kadosession (from $src) -> ${bin#"$repo_root"/}"
  (cd "$src" && CGO_ENABLED=0 timeout 300 go build -trimpath -o "$bin.tmp.$$" ./cmd/kadosession) || {
    rm -f "$bin.tmp.$$"
    echo "build: go build failed" >&2
    return 1
  }
  mv -f "$bin.tmp.$$" "$bin"
}

# wait_healthy ADDR SECONDS: polls `kadosession health` until it succeeds;
# returns 1 (having printed the last answer) when time runs out.
wait_healthy() {
  local addr=$1 secs=$2 out deadline
  deadline=$((SECONDS + secs))
  while :; do
    if out=$(timeout 5 "$bin" health --cluster "$addr" 2>&1); then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "  $addr not healthy after ${secs}s: $out" >&2
      return 1
    fi
    sleep 0.3
  done
}

# round_order ROUND ITEM...: the items, one a line, in their order for
# round ROUND (from 1) of a repeated benchmark: rotated by ROUND-1 and, in
# even rounds, reversed, so that no item is always measured first (on a
# cold cache), last, or right after the same other one.
round_order() {
  local round=$1 k
  shift
  local items=("$@")
  local rot=$(((round - 1) % ${#items[@]}))
  items=("${items[@]:rot}" "${items[@]:0:rot}")
  if ((round % 2 == 0)); then
    for ((k = ${#items[@]} - 1; k >= 0; k--)); do echo "${items[k]}"; done
  else
    printf '%s\n' "${items[@]}"
  fi
}
