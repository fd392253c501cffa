#!/usr/bin/env bash
# bench_http.sh — end to end over HTTP (issue 5), on this machine, in one
# run (scripts/bench.sh --http runs this).
#
# wrk (Debian's package; installed when missing) drives one small Go server
# (scripts/benchhttp, its own module) whose handler reads a counter from the
# session, increments it and saves it (/write), or only reads it (/read),
# with HTTP_CONNS connections and HTTP_COOKIES pre-created sessions whose
# cookies wrk's Lua script (scripts/benchhttp/cookies.lua) picks at random,
# behind each of these session layers in turn:
#   none               no session layer (an in-process atomic counter)
#   kado-memory        kadosession's middleware on MemoryStore
#   kado-single        kadosession's middleware, the Go client, one node
#   kado-3node         kadosession's middleware, the Go client, a three-node
#                      cluster (the client follows the leader; reads at the
#                      nodes' default, linearizable, through the leader)
#   kado-3node-fr      the same with client.Config{Reads: ReadFollower}:
#                      linearizable reads through a follower
#   scs-memstore       alexedwards/scs v2 + memstore
#   scs-redis-aof      scs v2 + redisstore (redigo) on Redis with
#                      appendonly yes + appendfsync always
# Every stack gets a warm-up run (HTTP_WARMUP, discarded), then /write and
# /read for HTTP_DURATION each. wrk, the server and the stores share this
# machine's cores, as in the issue's figures. It prints req/s, p50, p99 and
# the ratios, and the issue's goals as PASS/MISS, and stops everything it
# started.
#
# ROUNDS (1) repeats every stack's runs, each round in another order
# (rotated, and reversed every other round), and reports per stack the
# median of its rounds and, as each ratio, the median of the per-round
# ratios with their range (see scripts/bench.sh).
# Environment: HTTP_DURATION (10s), HTTP_WARMUP (2s), HTTP_CONNS (64), ROUNDS (1),
# HTTP_THREADS (2: wrk's threads), HTTP_COOKIES (1000), HTTP_STACKS (all of
# the above, space-separated), RESULTS (a file to keep the raw JSON lines in).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${HTTP_DURATION:-10s}
WARMUP=${HTTP_WARMUP:-2s}
CONNS=${HTTP_CONNS:-64}
THREADS=${HTTP_THREADS:-2}
COOKIES=${HTTP_COOKIES:-1000}
STACKS=${HTTP_STACKS:-none kado-memory kado-single kado-3node kado-3node-fr scs-memstore scs-redis-aof}
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9]$ ]] || { echo "bench_http.sh: ROUNDS=$ROUNDS: use 1..9" >&2; exit 2; }
for d in "$DURATION" "$WARMUP"; do
  [[ $d =~ ^[1-9][0-9]?s$ ]] || { echo "bench_http.sh: durations are whole seconds, 1s..99s (got $d)" >&2; exit 2; }
done

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
need=()
command -v wrk >/dev/null || need+=(wrk)
{ command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} from Debian's packages"
  timeout 300 $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kadosession-http.XXXXXX")
pids=()
srv=""
cleanup() {
  local p
  for p in $srv "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in $srv "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. scripts/lib.sh # free_port, now_ms, round_order (the working directory is the repo root)

echo "== building kadosession and scripts/benchhttp"
bin=$work/kadosession
CGO_ENABLED=0 timeout 300 go build -o "$bin" ./cmd/kadosession
(cd scripts/benchhttp && CGO_ENABLED=0 timeout 300 go build -o "$work/benchhttp" .)

rp=""
if [[ " $STACKS " == *" scs-redis-aof "* ]]; then
  echo "== starting Redis (appendonly yes, appendfsync always)"
  rp=$(free_port)
  mkdir -p "$work/redis"
  redis-server --bind 127.0.0.1 --port "$rp" --dir "$work/redis" --daemonize no --logfile "$work/redis.log" \
    --protected-mode yes --save '' --appendonly yes --appendfsync always &
  pids+=($!)
  for i in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$rp" ping 2>/dev/null)" = PONG ] && break
    [ "$i" = 100 ] && { echo "redis did not start" >&2; exit 1; }
    sleep 0.1
  done
fi

start_node() { # dir port id [join]
  local dir=$1 port=$2 id=$3 join=${4:-} extra=()
  [ -n "$join" ] && extra=(--join "$join")
  "$bin" serve --id "$id" --listen "127.0.0.1:$port" --data "$work/$dir" --log-level warn "${extra[@]}" \
    2>>"$work/$dir.log" &
  pids+=($!)
}
wait_nodes() { # port count
  local s n
  for _ in $(seq 1 150); do
    s=$(timeout 5 "$bin" status --cluster "127.0.0.1:$1" --json 2>/dev/null || true)
    n=$(python3 -c 'import json,sys
try: d=json.loads(sys.argv[1])
except Exception: print(0); sys.exit()
print(sum(n.get("state") in ("leader","follower") for n in d["nodes"]) if d.get("leader_id") else 0)' "$s")
    [ "$n" = "$2" ] && return 0
    sleep 0.2
  done
  echo "cluster at 127.0.0.1:$1 did not reach $2 nodes: $s" >&2
  exit 1
}
ks="" k1="" k2="" k3=""
if [[ " $STACKS " == *" kado-single "* ]]; then
  echo "== starting a single kadosession node"
  ks=$(free_port); start_node kado-single "$ks" s1
  wait_nodes "$ks" 1
fi
if [[ " $STACKS " == *" kado-3node "* || " $STACKS " == *" kado-3node-fr "* ]]; then
  echo "== starting a three-node kadosession cluster"
  k1=$(free_port); k2=$(free_port); k3=$(free_port)
  start_node kado-n1 "$k1" n1
  sleep 0.5
  start_node kado-n2 "$k2" n2 "127.0.0.1:$k1"
  start_node kado-n3 "$k3" n3 "127.0.0.1:$k1"
  wait_nodes "$k1" 3
fi

results=$work/results.jsonl
: >"$results"
# run_wrk NAME PATH DURATION: one wrk run; its JSON line (with name, path)
# goes to the results unless PATH is a warm-up.
run_wrk() {
  local name=$1 path=$2 dur=$3 out line
  out=$(COOKIES="$work/cookies-$name.txt" timeout $((${dur%s} + 60)) wrk -t "$THREADS" -c "$CONNS" -d "$dur" --latency \
    -s scripts/benchhttp/cookies.lua "http://127.0.0.1:$port$path" 2>&1) || { echo "wrk failed: $out" >&2; return 1; }
  line=$(sed -n 's/^JSON //p' <<<"$out")
  [ -n "$line" ] || { echo "wrk printed no figures: $out" >&2; return 1; }
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["name"]=sys.argv[2]; r["path"]=sys.argv[3]; print(json.dumps(r))' \
    "$line" "$name" "$path"
}

echo "== wrk: $THREADS threads, $CONNS connections, $COOKIES rotating session cookies, $DURATION per run, $ROUNDS round(s)"
read -r -a stacks <<<"$STACKS"
for round in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "   -- round $round of $ROUNDS"
  mapfile -t names < <(round_order "$round" "${stacks[@]}") # scripts/lib.sh
  for name in "${names[@]}"; do
    port=$(free_port)
    args=(--listen "127.0.0.1:$port" --precreate "$COOKIES" --cookies "$work/cookies-$name.txt")
    case $name in
      none|kado-memory|scs-memstore) args+=(--stack "$name") ;;
      kado-single) args+=(--stack kado-node --nodes "127.0.0.1:$ks") ;;
      kado-3node) args+=(--stack kado-node --nodes "127.0.0.1:$k1,127.0.0.1:$k2,127.0.0.1:$k3") ;;
      kado-3node-fr) args+=(--stack kado-node --reads follower --nodes "127.0.0.1:$k1,127.0.0.1:$k2,127.0.0.1:$k3") ;;
      scs-redis-aof) args+=(--stack scs-redis --redis "127.0.0.1:$rp") ;;
      *) echo "bench_http.sh: unknown stack $name" >&2; exit 2 ;;
    esac
    "$work/benchhttp" "${args[@]}" 2>>"$work/benchhttp-$name-$round.log" &
    srv=$!
    for i in $(seq 1 600); do
      grep -q "serving on" "$work/benchhttp-$name-$round.log" 2>/dev/null && break
      kill -0 "$srv" 2>/dev/null || { echo "benchhttp $name stopped:" >&2; cat "$work/benchhttp-$name-$round.log" >&2; exit 1; }
      [ "$i" = 600 ] && { echo "benchhttp $name did not start" >&2; exit 1; }
      sleep 0.1
    done
    run_wrk "$name" /write "$WARMUP" >/dev/null
    for path in /write /read; do
      printf '   %-14s %-7s ' "$name" "$path"
      r=$(run_wrk "$name" "$path" "$DURATION")
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["round"]=int(sys.argv[2]); print(json.dumps(r))' "$r" "$round" >>"$results"
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d  non-2xx %d" % (r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], r["non2xx"]))' "$r"
    done
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    srv=""
  done
done
[ -n "${RESULTS:-}" ] && cp "$results" "$RESULTS"

echo
python3 - "$results" "$DURATION" "$CONNS" "$COOKIES" "$ROUNDS" <<'PY'
import sys, os, platform
sys.dont_write_bytecode = True  # no scripts/__pycache__ left behind
sys.path.insert(0, "scripts")  # scripts/rounds.py
from rounds import Rounds
path, duration, conns, cookies, rounds = sys.argv[1:6]
rounds = int(rounds)
R = Rounds(path, lambda r: (r["name"], r["path"]))
order = ["none", "kado-memory", "kado-single", "kado-3node", "kado-3node-fr", "scs-memstore", "scs-redis-aof"]
def get(n, p, f="rps"):
    return R.get((n, p), f)
def ratio(a, b, p):
    return R.ratio((a, p), (b, p), "rps")
def fmt(x, spec):
    if x is None:
        w = spec.split(".")[0]
        return "-".rjust(int(w) if w.isdigit() else 1)
    return format(x, spec)
print(f"HTTP end to end (issue 5) — wrk, {conns} connections, {cookies} rotating session cookies, {duration} per run, "
      f"{f'{rounds} rounds (each figure the median of its rounds), ' if rounds > 1 else ''}{os.cpu_count()} CPUs, {platform.release()}")
print("ratios: req/s over the same path's req/s of scs + redisstore (Redis AOF always), scs + memstore, and no session layer\n")
hdr = f"{'stack':<15} {'path':<7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>5} {'non2xx':>7}   {'×scs+redis':>10} {'×scs+mem':>9} {'×none':>6}"
print(hdr); print("-" * len(hdr))
for p in ("/write", "/read"):
    for n in order:
        if (n, p) not in R:
            continue
        v = get(n, p)
        print(f"{n:<15} {p:<7} {fmt(v, '9.0f')} {fmt(get(n, p, 'p50_ms'), '8.3f')} {fmt(get(n, p, 'p99_ms'), '8.3f')} "
              f"{get(n, p, 'errors'):5d} {get(n, p, 'non2xx'):7d}   {fmt(ratio(n, 'scs-redis-aof', p), '9.2f')}× "
              f"{fmt(ratio(n, 'scs-memstore', p), '8.2f')}× {fmt(ratio(n, 'none', p), '5.2f')}×")
    print()
goals = []
def goal(text, a, b, p, t):
    xs = R.ratios((a, p), (b, p), "rps")
    v = R.ratio((a, p), (b, p), "rps")
    goals.append((text, v, t, None if v is None else v >= t, xs))
goal("kado 3-node /write vs scs + Redis AOF always", "kado-3node", "scs-redis-aof", "/write", 1.0)
goal("kado 3-node /read vs scs + Redis AOF always", "kado-3node", "scs-redis-aof", "/read", 1.5)
goal("kado 3-node, follower reads, /write vs scs + Redis AOF always", "kado-3node-fr", "scs-redis-aof", "/write", 1.0)
goal("kado 3-node, follower reads, /read vs scs + Redis AOF always", "kado-3node-fr", "scs-redis-aof", "/read", 1.5)
goal("kado single node /write vs scs + Redis AOF always", "kado-single", "scs-redis-aof", "/write", 2.0)
goal("kado MemoryStore /write vs scs + memstore", "kado-memory", "scs-memstore", "/write", 2.0)
goal("kado MemoryStore /read vs scs + memstore", "kado-memory", "scs-memstore", "/read", 2.0)
goal("kado MemoryStore /write vs no session layer", "kado-memory", "none", "/write", 0.8)
goal("kado MemoryStore /read vs no session layer", "kado-memory", "none", "/read", 0.8)
print("goals (issue 5, HTTP)" + (f": each the median of {rounds} per-round ratios (their range in brackets)" if rounds > 1 else ""))
for text, v, t, ok, xs in goals:
    st = "n/a " if ok is None else ("PASS" if ok else "MISS")
    spread = f" [{min(xs):.2f}–{max(xs):.2f}]" if len(xs) > 1 else ""
    print(f"  {st}  {text}: {fmt(v, '.2f')}×{spread} (goal ≥ {t:g}×)")
bad = sum(r["errors"] + r["non2xx"] for r in R.results())
if bad:
    print(f"\nWARNING: {bad} failed or non-2xx requests in all: those runs measure errors too")
PY
