#!/usr/bin/env bash
# failover.sh [KILLS] — measures leader failover on a local three-node
# cluster of real processes: while the Go client writes (bench, 8 callers),
# kill -9 the leader KILLS times (default 10), restarting it each time, and
# report how long writes stopped each time; then 60 s of saturating writes
# with no kill, checking that no election happens.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-10}
load=${LOAD_SECONDS:-60}
work=$(mktemp -d)
bin=$work/kadosession
CGO_ENABLED=0 go build -o "$bin" ./cmd/kadosession
ports=(3101 3111 3121)
addrs="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
pids=()
start() { # start node i
  local i=$1 extra=()
  [ "$i" -gt 0 ] && extra=(--join "127.0.0.1:${ports[0]}")
  "$bin" serve --id "n$((i+1))" --listen "127.0.0.1:${ports[$i]}" --data "$work/d$i" \
    --log-level warn "${extra[@]}" 2>>"$work/n$i.log" &
  pids[$i]=$!
}
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for i in 0 1 2; do start "$i"; done
status() { timeout 5 "$bin" status --cluster "127.0.0.1:${ports[$1]}" --json 2>/dev/null || true; }
wait_formed() {
  for _ in $(seq 1 150); do
    for i in 0 1 2; do
      s=$(status "$i")
      [ -n "$s" ] && [ "$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(n["state"] in ("leader","follower") for n in d["nodes"]))' <<<"$s")" = 3 ] && return 0
    done
    sleep 0.2
  done
  echo "cluster did not form" >&2; exit 1
}
leader_index() { # index of the current leader, from any live node
  for i in 0 1 2; do
    s=$(status "$i"); [ -z "$s" ] && continue
    id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])' <<<"$s")
    [ -n "$id" ] && { echo $(( ${id#n} - 1 )); return 0; }
  done
  return 1
}
max_term() {
  for i in 0 1 2; do status "$i"; done | python3 -c '
import json,sys
t=0
for line in sys.stdin:
    line=line.strip()
    if line: t=max([t]+[n.get("term",0) for n in json.loads(line)["nodes"]])
print(t)'
}
wait_formed

echo "== $kills leader kills under write load"
"$bin" bench --cluster "$addrs" --op save --callers 8 --duration $((kills * 4 + 4))s --json >"$work/kills.json" &
bench=$!
sleep 2
for k in $(seq 1 "$kills"); do
  l=$(leader_index)
  kill -9 "${pids[$l]}"; wait "${pids[$l]}" 2>/dev/null || true
  sleep 2
  start "$l"
  sleep 2
done
wait $bench
cat "$work/kills.json" >&2
python3 - "$work/kills.json" "$kills" <<'PY'
import json,sys,statistics
r=json.load(open(sys.argv[1])); k=int(sys.argv[2])
g=sorted(r.get("gaps_ms") or [], reverse=True)[:k]
print(f"writes: {r['ops']} ok, {r['errors']} errors, {r['ops_per_sec']:.0f}/s")
if g:
    print(f"failover (longest {len(g)} write stops, ms): median {statistics.median(g):.0f}, worst {max(g):.0f}; all: {[round(x) for x in sorted(g)]}")
PY

echo "== ${load}s of saturating writes, no kill"
wait_formed
before=$(max_term)
"$bin" bench --cluster "$addrs" --op save --callers 64 --duration "${load}s"
after=$(max_term)
echo "terms: before $before, after $after: elections during load: $((after - before))"
