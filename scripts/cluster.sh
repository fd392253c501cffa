#!/usr/bin/env bash
# A three-node kadosession cluster on this machine, as local processes:
#   n1 127.0.0.1:3001 (bootstraps), n2 127.0.0.1:3011 and n3 127.0.0.1:3021
#   (--join 127.0.0.1:3001). Data and logs under scripts/cluster-data/ (or
#   $KADO_CLUSTER_DIR): nX/ is a node's data directory, nX.log its log.
#
#   scripts/cluster.sh [start]       build, start the nodes not running, wait until healthy
#   scripts/cluster.sh start n2      start one node (same command line as always)
#   scripts/cluster.sh stop [nX]     SIGTERM (then SIGKILL after 20 s) every node, or one
#   scripts/cluster.sh kill nX       SIGKILL one node (failover drills)
#   scripts/cluster.sh status [--json]   kadosession status --cluster 127.0.0.1:3001
#   scripts/cluster.sh logs [nX]     tail the logs
#   scripts/cluster.sh clean         stop, then delete the data directories and logs
#
# Every step is bounded in time. Extra serve flags: KADO_SERVE_FLAGS="--log-level debug".
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dir=$(realpath -m "${KADO_CLUSTER_DIR:-$scripts_dir/cluster-data}")
nodes=(n1 n2 n3)
declare -A port=([n1]=3001 [n2]=3011 [n3]=3021)
seed=127.0.0.1:${port[n1]}

addr_of() { echo "127.0.0.1:${port[$1]}"; }
pidfile() { echo "$dir/$1.pid"; }

# pid_of N prints the pid of node N if it is running (and really is our
# kadosession serving that data directory, not a recycled pid).
pid_of() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--data $dir/$1 " || return 1
  echo "$pid"
}

# show_status [--json]: kadosession status through the first node that
# answers (n1 may be the one that is down); KADO_STATUS_ADDR to choose.
# Fails when no node answers, or the one that did knows no leader.
show_status() {
  local a addrs=${KADO_STATUS_ADDR:-"$(addr_of n1) $(addr_of n2) $(addr_of n3)"}
  local out rc
  for a in $addrs; do
    out=$(timeout 15 "$bin" status --cluster "$a" "$@") && { echo "$out"; return 0; }
    rc=$?
    # The node answered but the cluster has no leader (exit 1 after the table).
    if [ -n "$out" ]; then echo "$out"; return "$rc"; fi
  done
  echo "cluster: no node answered status ($addrs)" >&2
  return 1
}

check_node() {
  case " ${nodes[*]} " in *" $1 "*) ;; *) echo "cluster: unknown node '$1' (want n1, n2 or n3)" >&2; exit 2 ;; esac
}

start_node() {
  local n=$1 pid
  if pid=$(pid_of "$n"); then
    echo "  $n already running (pid $pid) on $(addr_of "$n")"
    return 0
  fi
  local args=(serve --id "$n" --listen "$(addr_of "$n")" --data "$dir/$n")
  [ "$n" = n1 ] || args+=(--join "$seed")
  # shellcheck disable=SC2206
  args+=(${KADO_SERVE_FLAGS:-})
  mkdir -p "$dir"
  echo "  $n: kadosession ${args[*]}  (log: ${dir#"$repo_root"/}/$n.log)"
  # setsid: the node outlives this script and its terminal.
  setsid "$bin" "${args[@]}" >>"$dir/$n.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$n")"
  started+=("$n")
}

stop_node() {
  local n=$1 sig=${2:-TERM} pid i
  if ! pid=$(pid_of "$n"); then
    rm -f "$(pidfile "$n")"
    echo "  $n not running"
    return 0
  fi
  kill -s "$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
    echo "  $n (pid $pid) still running 20 s after SIG$sig: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  else
    echo "  $n (pid $pid) stopped (SIG$sig)"
  fi
  rm -f "$(pidfile "$n")"
}

# On a failed start, show the logs of the nodes this invocation started and
# stop those that started on a fresh data directory (a cluster that did not
# form). A restarted node is left running: it may only be waiting for a quorum
# of its peers (start them too, or scripts/cluster.sh stop).
started=()
fresh_started=()
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "${#started[@]}" -gt 0 ]; then
    echo "cluster: start failed (logs in $dir)" >&2
    for n in "${started[@]}"; do
      echo "---- last lines of $n.log" >&2
      tail -n 15 "$dir/$n.log" >&2 || true
    done
    for n in "${fresh_started[@]}"; do stop_node "$n" TERM >&2; done
    for n in "${started[@]}"; do
      case " ${fresh_started[*]} " in *" $n "*) ;; *) echo "  $n left running (it had data: it may be waiting for its peers)" >&2 ;; esac
    done
  fi
  exit "$rc"
}

cmd=${1:-start}
[ $# -gt 0 ] && shift
case $cmd in
start)
  want=("$@")
  [ ${#want[@]} -gt 0 ] || want=("${nodes[@]}")
  for n in "${want[@]}"; do check_node "$n"; done
  build_binary
  trap on_exit EXIT
  echo "cluster: starting ${want[*]}"
  for n in "${want[@]}"; do
    fresh=0
    [ -e "$dir/$n/raft.db" ] || fresh=1
    start_node "$n"
    [ "$fresh" = 0 ] || fresh_started+=("$n")
    # A fresh n1 first, and healthy, so the others have a cluster to join. A
    # restarted n1 cannot be healthy alone (it needs a quorum): start them all.
    if [ "$n" = n1 ] && [ "$fresh" = 1 ]; then wait_healthy "$(addr_of n1)" 30; fi
  done
  for n in "${want[@]}"; do
    wait_healthy "$(addr_of "$n")" "${KADO_START_TIMEOUT:-60}"
  done
  started=()
  echo "cluster: ${want[*]} healthy"
  show_status 2>/dev/null || true
  echo "cluster: stop with: scripts/cluster.sh stop"
  ;;
stop)
  want=("$@")
  [ ${#want[@]} -gt 0 ] || want=("${nodes[@]}")
  for n in "${want[@]}"; do check_node "$n"; done
  echo "cluster: stopping ${want[*]} (SIGTERM)"
  for n in "${want[@]}"; do stop_node "$n" TERM; done
  ;;
kill)
  [ $# -eq 1 ] || { echo "usage: cluster.sh kill nX" >&2; exit 2; }
  check_node "$1"
  stop_node "$1" KILL
  ;;
status)
  [ -x "$bin" ] || build_binary
  for n in "${nodes[@]}"; do
    if pid=$(pid_of "$n"); then echo "# $n pid $pid on $(addr_of "$n")"; else echo "# $n not running"; fi
  done >&2
  show_status "$@"
  ;;
logs)
  want=("$@")
  [ ${#want[@]} -gt 0 ] || want=("${nodes[@]}")
  for n in "${want[@]}"; do check_node "$n"; echo "==== $n"; tail -n 40 "$dir/$n.log" 2>/dev/null || echo "(no log)"; done
  ;;
clean)
  for n in "${nodes[@]}"; do stop_node "$n" TERM; done
  rm -rf "$dir"
  echo "cluster: removed $dir"
  ;;
-h | --help | help)
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  ;;
*)
  echo "cluster: unknown command '$cmd' (start, stop, kill, status, logs, clean)" >&2
  exit 2
  ;;
esac
