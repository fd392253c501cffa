#!/usr/bin/env bash
# Docker end-to-end test of the three-node cluster (scripts/compose.yml):
# build the static binary and the FROM-scratch image, compose up under a
# unique project name on free loopback ports, wait until all three nodes are
# healthy, write through one node and read through another, `docker kill` the
# leader while a client keeps writing through a survivor, check that writes
# continue within a bound and that no acknowledged write is lost, restart the
# killed node and check it catches up, then compose down -v.
#
#   scripts/e2e-docker.sh
#
# Knobs: E2E_TIMEOUT (300 s, the whole run), E2E_HEALTH_TIMEOUT (90 s),
# E2E_FAILOVER_BOUND (10 s: a write through a survivor must succeed this soon
# after the kill, and the longest stretch without an acknowledged write),
# E2E_PAUSE=1 (also `docker pause` the leader: the hung-machine case),
# E2E_KEEP=1 (leave the containers up for inspection),
# KADOSESSION_SRC (build another source tree), KADOSESSION_IMAGE.
#
# Prints PASS/FAIL lines; exits non-zero on any failure. When no Docker engine
# answers it prints one "skipped" line and exits 0.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if ! timeout 20 docker info >/dev/null 2>&1; then
  echo "e2e-docker: skipped: no Docker engine answers"
  exit 0
fi
if timeout 20 docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif timeout 20 docker-compose version >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "FAIL e2e-docker: a Docker engine answers but neither 'docker compose' nor 'docker-compose' works"
  exit 1
fi
command -v python3 >/dev/null || { echo "FAIL e2e-docker: python3 is needed for the Kado JSON client (scripts/kado.py)"; exit 1; }

compose() { timeout 120 "${compose_cmd[@]}" -p "$E2E_PROJECT" -f "$scripts_dir/compose.yml" "$@"; }

# ---------------------------------------------------------------- outer run
# The outer run owns the clean-up; the test itself runs under `timeout` so a
# hang anywhere still ends in compose down -v.
if [ "${1:-}" != __inner ]; then
  export E2E_PROJECT=kadoe2e$$x$RANDOM
  read -r p1 p2 p3 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
  export KADO_N1_PORT=$p1 KADO_N2_PORT=$p2 KADO_N3_PORT=$p3
  export KADOSESSION_IMAGE=${KADOSESSION_IMAGE:-kadosession:local}
  E2E_WORK=$(mktemp -d /tmp/kado-e2e.XXXXXX)
  export E2E_WORK
  cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
      echo "---- container logs (last 25 lines each) ----"
      compose logs --no-color --tail 25 2>&1 || true
    fi
    # A paused container (E2E_PAUSE) cannot be stopped: unpause first.
    for c in $(compose ps -q 2>/dev/null); do docker unpause "$c" >/dev/null 2>&1 || true; done
    if [ "${E2E_KEEP:-}" = 1 ]; then
      echo "e2e-docker: E2E_KEEP=1: left running; remove with: ${compose_cmd[*]} -p $E2E_PROJECT -f $scripts_dir/compose.yml down -v"
    else
      compose down -v --remove-orphans >/dev/null 2>&1 || echo "e2e-docker: warning: compose down -v failed for project $E2E_PROJECT" >&2
    fi
    rm -rf "$E2E_WORK"
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  echo "e2e-docker: project $E2E_PROJECT, ${compose_cmd[*]}, host ports n1=$p1 n2=$p2 n3=$p3"
  rc=0
  timeout -k 10 "${E2E_TIMEOUT:-300}" "$0" __inner || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAIL e2e-docker: did not finish within ${E2E_TIMEOUT:-300}s"
  elif [ "$rc" -eq 0 ]; then
    echo "PASS e2e-docker"
  else
    echo "FAIL e2e-docker"
  fi
  exit "$rc"
fi

# ---------------------------------------------------------------- the test
kado=$scripts_dir/kado.py
declare -A hostport=([n1]=$KADO_N1_PORT [n2]=$KADO_N2_PORT [n3]=$KADO_N3_PORT)
addr() { echo "127.0.0.1:${hostport[$1]}"; }
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; exit 1; }
declare -A cids=()
cid() {
  [ -n "${cids[$1]:-}" ] || cids[$1]=$(compose ps -q "$1")
  echo "${cids[$1]}"
}

# json_field JSON KEY: prints top-level KEY of a JSON object ("" if absent).
json_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

# wait_healthy_containers SECONDS SERVICE…: every service's container healthy.
wait_healthy_containers() {
  local secs=$1 s st deadline=$((SECONDS + $1)) all
  shift
  while :; do
    all=1
    for s in "$@"; do
      st=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$s")" 2>/dev/null || echo missing)
      [ "$st" = healthy ] || all=0
    done
    [ "$all" = 1 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      for s in "$@"; do
        echo "  $s: $(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(cid "$s")" 2>&1)," \
          "last check: $(docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$(cid "$s")" 2>&1 | grep -v '^$' | tail -n 1)"
      done
      return 1
    fi
    sleep 1
  done
}

# status_json SERVICE: `kadosession status --json` through that node's host port.
status_json() { timeout 15 "$bin" status --cluster "$(addr "$1")" --json; }

"$scripts_dir/docker-build.sh" || fail "build: static binary and image"
pass "build: static binary and FROM-scratch image $KADOSESSION_IMAGE"

if ! out=$(compose up -d --no-build 2>&1); then
  printf '%s\n' "$out"
  fail "compose up"
fi
t0=$SECONDS
wait_healthy_containers "${E2E_HEALTH_TIMEOUT:-90}" n1 n2 n3 || fail "cluster: all three nodes healthy within ${E2E_HEALTH_TIMEOUT:-90}s"
pass "cluster: n1 n2 n3 healthy after $((SECONDS - t0))s"

st=$(status_json n1) || fail "status --json through n1"
leader=$(json_field "$st" leader_id)
case $leader in n1 | n2 | n3) ;; *) fail "status --json: leader_id is '$leader' (status: $st)" ;; esac
voters=$(python3 -c '
import json,sys
st = json.loads(sys.argv[1])
nodes = st.get("nodes")
if nodes is None: print("?")
else: print(",".join(sorted(n["id"] for n in nodes if n.get("voter", True))))' "$st")
if [ "$voters" = "?" ]; then
  echo "NOTE status --json has no \"nodes\" list yet; membership not checked"
elif [ "$voters" = "n1,n2,n3" ]; then
  pass "status: three voters n1,n2,n3, leader $leader"
else
  fail "status: voters are '$voters', want n1,n2,n3 (status: $st)"
fi

# Writes through one node, reads through each of the others.
python3 "$kado" "$(addr n2)" saves before 200 >/dev/null || fail "write 200 sessions through n2"
python3 "$kado" "$(addr n3)" checks before 200 >/dev/null || fail "read the 200 sessions written through n2 back through n3"
python3 "$kado" "$(addr n1)" checks before 200 >/dev/null || fail "read the 200 sessions written through n2 back through n1"
python3 "$kado" "$(addr n1)" save one '{"user":"alice","n":1}' >/dev/null || fail "write through n1"
python3 "$kado" "$(addr n3)" check one '{"user":"alice","n":1}' >/dev/null || fail "read through n3 what n1 wrote"
pass "replication: 200 sessions written through n2 read back through n3 and n1; a write through n1 read through n3"

# Kill the leader while a client writes through a survivor.
survivors=()
for s in n1 n2 n3; do [ "$s" = "$leader" ] || survivors+=("$s"); done
w=${survivors[0]} r=${survivors[1]}
acks=$E2E_WORK/acks
python3 "$kado" "$(addr "$w")" writer during 60 "$acks" >"$E2E_WORK/writer.out" 2>&1 &
writer_pid=$!
sleep 2
leader_cid=$(cid "$leader")
kill_at=$(date +%s.%N)
timeout 30 docker kill "$leader_cid" >/dev/null || fail "docker kill the leader ($leader)"
killed_at=$(date +%s.%N)
echo "  killed the leader $leader (docker kill took $(python3 -c "import sys; print('%.2f' % (float(sys.argv[2])-float(sys.argv[1])))" "$kill_at" "$killed_at")s); a client keeps writing through $w"
if python3 "$kado" --retry-for "${E2E_FAILOVER_BOUND:-10}" --timeout 2 "$(addr "$w")" save after-kill '{"k":1}' >/dev/null 2>"$E2E_WORK/retry.err"; then
  ok_at=$(date +%s.%N)
  read -r took after < <(python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print('%.2f %.2f' % (c-a, c-b))" "$kill_at" "$killed_at" "$ok_at")
  pass "failover: a write through $w succeeded ${took}s after docker kill $leader was issued, ${after}s after it returned (bound ${E2E_FAILOVER_BOUND:-10}s)"
else
  cat "$E2E_WORK/retry.err"
  fail "failover: no write through $w succeeded within ${E2E_FAILOVER_BOUND:-10}s of killing the leader $leader"
fi
sleep 2
touch "$acks.stop"
wait "$writer_pid" || { cat "$E2E_WORK/writer.out"; fail "writer through $w acknowledged nothing"; }
echo "  $(cat "$E2E_WORK/writer.out")"
gap=$(sed -n 's/.*longest gap between acks \([0-9.]*\)s.*/\1/p' "$E2E_WORK/writer.out")
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "${gap:-999}" "${E2E_FAILOVER_BOUND:-10}"; then
  pass "failover: the writer through $w saw at most ${gap}s without an acknowledged write (bound ${E2E_FAILOVER_BOUND:-10}s)"
else
  fail "failover: the writer through $w went ${gap:-?}s without an acknowledged write (bound ${E2E_FAILOVER_BOUND:-10}s)"
fi

st=$(status_json "$w") || fail "status --json through $w after the kill"
newleader=$(json_field "$st" leader_id)
if [ -n "$newleader" ] && [ "$newleader" != "$leader" ]; then
  pass "failover: new leader $newleader (was $leader)"
else
  fail "failover: leader_id is '$newleader' after killing $leader (status: $st)"
fi
python3 "$kado" "$(addr "$r")" checks before 200 >/dev/null || fail "earlier writes readable through $r after the kill"
python3 "$kado" "$(addr "$r")" check one '{"user":"alice","n":1}' >/dev/null || fail "earlier write 'one' readable through $r after the kill"
python3 "$kado" "$(addr "$r")" check after-kill '{"k":1}' >/dev/null || fail "the post-failover write readable through $r"
python3 "$kado" "$(addr "$r")" acked during "$acks" >/dev/null || fail "a write acknowledged around the kill is missing (read through $r)"
pass "durability: earlier writes and all $(wc -l <"$acks") writes acknowledged around the kill read back through $r"
python3 "$kado" "$(addr "$r")" save after-kill-2 '{"k":2}' >/dev/null || fail "write through $r after failover"
python3 "$kado" "$(addr "$w")" check after-kill-2 '{"k":2}' >/dev/null || fail "read through $w what $r wrote after failover"
pass "after failover: writes through $r are read through $w"

# The killed node, started again with the same command, catches up.
compose start "$leader" >/dev/null 2>&1 || fail "compose start $leader"
t0=$SECONDS
wait_healthy_containers 60 "$leader" || fail "restarted $leader healthy within 60s"
# sessions_of SERVICE: the session count that node reports for itself (in
# status --json: its entry in "nodes", or a top-level "sessions").
sessions_of() {
  python3 -c '
import json, sys
st = json.loads(sys.argv[1])
me = st.get("id") or sys.argv[2]
for n in st.get("nodes") or []:
    if n.get("id") == me and n.get("sessions") is not None:
        print(n["sessions"]); sys.exit(0)
print(st.get("sessions", ""))' "$(status_json "$1" 2>/dev/null || echo '{}')" "$1"
}
want=$(sessions_of "$w")
[ -n "$want" ] || fail "status --json through $w reports no session count"
deadline=$((SECONDS + 30))
while :; do
  got=$(sessions_of "$leader")
  [ -n "$want" ] && [ "$got" = "$want" ] && break
  [ "$SECONDS" -lt "$deadline" ] || fail "restarted $leader holds '$got' sessions, the cluster $want"
  sleep 0.5
done
python3 "$kado" "$(addr "$leader")" check after-kill-2 '{"k":2}' >/dev/null || fail "read through the restarted $leader"
pass "rejoin: $leader restarted, healthy after $((SECONDS - t0))s, holds all $want sessions"

# Optional (E2E_PAUSE=1): `docker pause` the leader (frozen, no FIN or RST:
# what a hung or cut-off machine looks like) while a client writes through a
# survivor; writes must continue within E2E_FAILOVER_BOUND; then unpause: the
# old leader steps down and catches up.
if [ "${E2E_PAUSE:-}" = 1 ]; then
  st=$(status_json "$w") || fail "status --json through $w before the pause"
  leader=$(json_field "$st" leader_id)
  survivors=()
  for s in n1 n2 n3; do [ "$s" = "$leader" ] || survivors+=("$s"); done
  w=${survivors[0]} r=${survivors[1]}
  acks=$E2E_WORK/acks-pause
  python3 "$kado" --timeout 30 "$(addr "$w")" writer paused 60 "$acks" >"$E2E_WORK/writer-pause.out" 2>&1 &
  writer_pid=$!
  sleep 2
  timeout 30 docker pause "$(cid "$leader")" >/dev/null || fail "docker pause the leader ($leader)"
  echo "  paused the leader $leader; a client keeps writing through $w"
  sleep "$(python3 -c "import sys; print(float(sys.argv[1]) + 3)" "${E2E_FAILOVER_BOUND:-10}")"
  touch "$acks.stop"
  wait "$writer_pid" || true
  timeout 30 docker unpause "$(cid "$leader")" >/dev/null || fail "docker unpause $leader"
  echo "  $(cat "$E2E_WORK/writer-pause.out")"
  gap=$(sed -n 's/.*longest gap between acks \([0-9.]*\)s.*/\1/p' "$E2E_WORK/writer-pause.out")
  if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "${gap:-999}" "${E2E_FAILOVER_BOUND:-10}"; then
    pass "pause: the writer through $w saw at most ${gap}s without an acknowledged write while the leader $leader was paused"
  else
    fail "pause: the writer through $w went ${gap:-?}s without an acknowledged write while the leader $leader was paused (bound ${E2E_FAILOVER_BOUND:-10}s)"
  fi
  python3 "$kado" "$(addr "$r")" acked paused "$acks" >/dev/null || fail "a write acknowledged around the pause is missing (read through $r)"
  wait_healthy_containers 60 "$leader" || fail "unpaused $leader healthy within 60s"
  python3 "$kado" --retry-for 20 "$(addr "$leader")" acked paused "$acks" >/dev/null 2>&1 || fail "writes acknowledged during the pause not readable through the unpaused $leader"
  pass "pause: all $(wc -l <"$acks") writes acknowledged around the pause read back through $r and through the unpaused $leader"
fi
