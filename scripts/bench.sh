#!/usr/bin/env bash
# bench.sh — kadosession side by side with Redis (issue 5), on this machine,
# in one run, with the same load generator (`kadosession bench`).
#
# Starts, on loopback ports, each with its own temporary directory:
#   redis-nopersist    redis-server --save '' --appendonly no
#   redis-aof-always   redis-server --appendonly yes --appendfsync always
#   kado-single        one kadosession node
#   kado-3node         three kadosession nodes (n2, n3 --join n1); the load
#                      goes to a follower, pinned there (--pin): every save is
#                      forwarded to the leader, every restore is served by the
#                      follower at the default (linearizable) consistency;
#                      at 64 clients also kado-3node/leader: the same
#                      cluster through the default Go client, which learns
#                      the leader from the follower and sends it every
#                      request (reads at the leader: what an app gets)
# then runs {save, restore} x {1, 64 clients} x 1 KiB against each for
# DURATION, ROUNDS times. Every client has one request in flight. The kadosession Go
# client carries them over 4 pipelined connections per node, so Redis is
# driven the same way (--conns 4: 4 shared, pipelined connections), and,
# for reference at 64 clients, also with one connection per client (as
# redis-benchmark and go-redis's pool do; rows marked /conn). It prints
# ops/s, p50 and p99 with every kadosession figure as a ratio to the matching Redis figure (save: Redis AOF always; restore: Redis
# without persistence), the issue's goals as PASS/MISS, where a save's
# time goes (from the nodes' /metrics around each save run: saves per
# batch, batches per second, and the mean time of a log store append on the
# leader and on a follower), and writes the same figures as an SVG bar
# chart (docs/bench.svg). Everything started is stopped on exit.
#
# ROUNDS (1) repeats the whole matrix, each round visiting the targets of a
# cell in another order, and reports per cell the median of the rounds'
# figures and, as each ratio, the median of the per-round ratios (each
# taken from runs minutes apart at most, on a machine whose speed drifts)
# with their range: on a noisy machine, ROUNDS=3 tells a real difference
# from a slow minute.
# Environment: DURATION (5s), ROUNDS (1), SIZE (1024), SESSIONS (10000), REDIS_CONNS
# (4: the shared connections of the Redis baseline), SVG
# (docs/bench.svg; empty: none), RESULTS (a file to keep the raw JSON lines
# in), REDIS_BENCHMARK=1 (also print redis-benchmark's own figures, to show
# what the Go load generator costs).
# --scale: the Scale section of issue 5 (scripts/bench_scale.sh: memory,
#   p99 during snapshots, restart and join times; SCALE_* variables there).
# --http: the end-to-end HTTP comparison with wrk (scripts/bench_http.sh).
# --soak: the long run of issue 5 (scripts/bench_soak.sh: SOAK_DURATION, 10 min,
#   of saves at 70% of the measured maximum rate through a follower of a
#   three-node cluster, every node's RSS and Go heap sampled; fails on any
#   error or growing memory; SOAK_* variables there).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-1}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-10000}
REDIS_CONNS=${REDIS_CONNS:-4}
SVG=${SVG-docs/bench.svg}
for a in "$@"; do
  case $a in
    --scale) shift; exec bash "$(dirname "$0")/bench_scale.sh" "$@" ;;
    --http) shift; exec bash "$(dirname "$0")/bench_http.sh" "$@" ;;
    --soak) shift; exec bash "$(dirname "$0")/bench_soak.sh" "$@" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
case $DURATION in
  [1-9]s|[1-5][0-9]s|60s) ;;
  *) echo "bench.sh: DURATION=$DURATION: use whole seconds, 1s..60s" >&2; exit 2 ;;
esac
secs=${DURATION%s}
[[ $ROUNDS =~ ^[1-9]$ ]] || { echo "bench.sh: ROUNDS=$ROUNDS: use 1..9" >&2; exit 2; }

# Redis from Debian's packages when missing.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server from Debian's packages"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  timeout 300 $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 $sudo apt-get install -y -qq redis-server >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kadosession-bench.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. scripts/lib.sh # free_port, now_ms, round_order (the working directory is the repo root)

echo "== building kadosession"
bin=$work/kadosession
CGO_ENABLED=0 timeout 300 go build -o "$bin" ./cmd/kadosession

echo "== starting Redis twice"
start_redis() { # name port flags…
  local name=$1 port=$2; shift 2
  mkdir -p "$work/$name"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$work/$name" --daemonize no \
    --logfile "$work/$name.log" --protected-mode yes "$@" &
  pids+=($!)
}
rp1=$(free_port); start_redis redis-nopersist "$rp1" --save '' --appendonly no
rp2=$(free_port); start_redis redis-aof-always "$rp2" --save '' --appendonly yes --appendfsync always
for p in "$rp1" "$rp2"; do
  for i in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null)" = PONG ] && break
    [ "$i" = 100 ] && { echo "redis on $p did not start" >&2; exit 1; }
    sleep 0.1
  done
done

echo "== starting kadosession: a single node and a three-node cluster"
declare -A metrics_port # node id -> its admin HTTP port (/metrics)
start_node() { # dir port id [join]
  local dir=$1 port=$2 id=$3 join=${4:-} extra=() hp
  [ -n "$join" ] && extra=(--join "$join")
  hp=$(free_port); metrics_port[$id]=$hp
  "$bin" serve --id "$id" --listen "127.0.0.1:$port" --http "127.0.0.1:$hp" --data "$work/$dir" --log-level warn "${extra[@]}" \
    2>>"$work/$dir.log" &
  pids+=($!)
}
ks=$(free_port); start_node kado-single "$ks" s1
k1=$(free_port); k2=$(free_port); k3=$(free_port)
start_node kado-n1 "$k1" n1
sleep 0.5
start_node kado-n2 "$k2" n2 "127.0.0.1:$k1"
start_node kado-n3 "$k3" n3 "127.0.0.1:$k1"

status_json() { timeout 5 "$bin" status --cluster "127.0.0.1:$1" --json 2>/dev/null || true; }
wait_nodes() { # port count: until the cluster seen from port has count nodes serving
  local s
  for _ in $(seq 1 150); do
    s=$(status_json "$1")
    if [ -n "$s" ] && [ "$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(n.get("state") in ("leader","follower") for n in d["nodes"]) if d.get("leader_id") else 0)' <<<"$s")" = "$2" ]; then
      return 0
    fi
    sleep 0.2
  done
  echo "cluster at 127.0.0.1:$1 did not reach $2 nodes; last status: $s" >&2
  for f in "$work"/*.log; do echo "--- $f"; tail -5 "$f"; done >&2
  exit 1
}
wait_nodes "$ks" 1
wait_nodes "$k1" 3
leader=$(status_json "$k1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
follower=""
for p in "$k1" "$k2" "$k3"; do
  id=$(status_json "$p" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(next((n["id"] for n in d["nodes"] if n["address"].endswith(":'"$p"'")), ""))')
  if [ -n "$id" ] && [ "$id" != "$leader" ]; then follower=$p; break; fi
done
[ -n "$follower" ] || { echo "no follower found (leader $leader)" >&2; exit 1; }
echo "   single node 127.0.0.1:$ks; cluster leader $leader, load through follower 127.0.0.1:$follower"
# Where a kadosession save's time goes: the log store appends (one per
# batch of saves, fsynced) read from the leader's and a follower's /metrics
# around each save run.
declare -A appenders=([kado-single]="s1" [kado-3node]="$leader")
for id in n1 n2 n3; do
  [ "$id" != "$leader" ] && { appenders[kado-3node]+=" $id"; break; }
done
scrape() { # id=port...: each node's log store and batch counters, as one JSON object ({} if unreadable)
  python3 - "$@" <<'PY' || echo '{}'
import json, sys, urllib.request
out = {}
for arg in sys.argv[1:]:
    node, port = arg.split("=")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out[node] = {k: float(v) for k, v in (l.split() for l in text.splitlines()
                 if l.startswith(("kadosession_log_store_duration_seconds_", "kadosession_commit_batch_size_"))
                 and l.split()[0].endswith(("_sum", "_count")))}
print(json.dumps(out))
PY
}

# target name -> bench arguments
declare -A targs=(
  [redis-nopersist]="--target redis://127.0.0.1:$rp1 --conns $REDIS_CONNS"
  [redis-aof-always]="--target redis://127.0.0.1:$rp2 --conns $REDIS_CONNS"
  [redis-nopersist/conn]="--target redis://127.0.0.1:$rp1"
  [redis-aof-always/conn]="--target redis://127.0.0.1:$rp2"
  [kado-single]="--target 127.0.0.1:$ks"
  [kado-3node]="--target 127.0.0.1:$follower --pin"
  [kado-3node/leader]="--target 127.0.0.1:$follower"
)
order=(redis-nopersist redis-aof-always kado-single kado-3node)
results=$work/results.jsonl
: >"$results"
echo "== matrix: {save, restore} x {1, 64 clients} x $SIZE B x $DURATION each, $SESSIONS sessions, $ROUNDS round(s)"
for round in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "   -- round $round of $ROUNDS"
  for op in save restore; do
    for c in 1 64; do
      cells=("${order[@]}")
      [ "$c" -gt 1 ] && cells+=(redis-nopersist/conn redis-aof-always/conn kado-3node/leader)
      mapfile -t cells < <(round_order "$round" "${cells[@]}") # scripts/lib.sh
      for t in "${cells[@]}"; do
        printf '   %-8s c=%-3s %-22s ' "$op" "$c" "$t"
        watch=() before='{}' after='{}'
        if [ "$op" = save ] && [ -n "${appenders[$t]:-}" ]; then
          for id in ${appenders[$t]}; do watch+=("$id=${metrics_port[$id]}"); done
          before=$(scrape "${watch[@]}")
        fi
        # shellcheck disable=SC2086
        if out=$(timeout $((secs + 300)) "$bin" bench ${targs[$t]} --op "$op" --clients "$c" --size "$SIZE" \
            --sessions "$SESSIONS" --duration "$DURATION" --json 2>>"$work/bench-progress.log"); then
          [ ${#watch[@]} -gt 0 ] && after=$(scrape "${watch[@]}")
          # With the metrics: the batches the leader cut (saves_per_batch,
          # batches_per_sec) and its log store appends' mean time
          # (append_ms), and a follower's (follower_append_ms).
          python3 -c '
import json, sys
r = json.loads(sys.argv[2]); r["name"] = sys.argv[1]; r["round"] = int(sys.argv[3])
b, a = json.loads(sys.argv[4]), json.loads(sys.argv[5])
nodes = [n for n in b if n in a]
if nodes:
    d = lambda n, k: a[n].get(k, 0) - b[n].get(k, 0)
    ms = lambda n: 1000 * d(n, "kadosession_log_store_duration_seconds_sum") / max(d(n, "kadosession_log_store_duration_seconds_count"), 1)
    batches = d(nodes[0], "kadosession_commit_batch_size_count")
    r["saves_per_batch"] = d(nodes[0], "kadosession_commit_batch_size_sum") / max(batches, 1)
    r["batches_per_sec"] = batches / r["seconds"]
    r["append_ms"] = ms(nodes[0])
    if len(nodes) > 1:
        r["follower_append_ms"] = ms(nodes[1])
print(json.dumps(r))' "$t" "$out" "$round" "$before" "$after" >>"$results"
          python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%9.0f ops/s  p50 %.3f ms  p99 %.3f ms  errors %d" % (r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["errors"]))' "$out"
        else
          echo "FAILED (see below)"
          tail -3 "$work/bench-progress.log" >&2
        fi
      done
    done
  done
done
[ -n "${RESULTS:-}" ] && cp "$results" "$RESULTS"

if [ "${REDIS_BENCHMARK:-0}" = 1 ] && command -v redis-benchmark >/dev/null; then
  echo "== reference: redis-benchmark itself (C, epoll), 1 KiB, 64 clients"
  for p in "$rp1" "$rp2"; do
    printf '   port %s: ' "$p"
    timeout 120 redis-benchmark -h 127.0.0.1 -p "$p" -t set,get -d "$SIZE" -c 64 -n 200000 -r "$SESSIONS" -q 2>/dev/null |
      tr '\r' '\n' | grep -E '^(SET|GET):' | grep -v 'rps=' | tr '\n' ' '
    echo
  done
fi

echo
python3 - "$results" "$SVG" "$DURATION" "$SIZE" "$REDIS_CONNS" "$ROUNDS" <<'PY'
import sys, os, platform, datetime, html
sys.dont_write_bytecode = True  # no scripts/__pycache__ left behind
sys.path.insert(0, "scripts")  # scripts/rounds.py
from rounds import Rounds

path, svg_path, duration, size, rconns, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
R = Rounds(path, lambda r: (r["name"], r["op"], r["clients"]))
order = ["redis-nopersist", "redis-aof-always", "kado-single", "kado-3node"]
label = {"redis-nopersist": "Redis, no persistence", "redis-aof-always": "Redis, AOF fsync always",
         "kado-single": "kadosession, 1 node", "kado-3node": "kadosession, 3 nodes via follower"}
base = {"save": "redis-aof-always", "restore": "redis-nopersist"}

def get(name, op, c, f):
    return R.get((name, op, c), f)

ratio = R.ratio

def fmt(x, spec):
    return "-" if x is None else format(x, spec)

print(f"kadosession vs Redis — {size} B values, {duration} per cell"
      f"{f', {rounds} rounds (each figure the median of its rounds)' if rounds > 1 else ''}, same load generator "
      f"(kadosession bench), {os.cpu_count()} CPUs, {platform.release()}")
print("ratios: kadosession / Redis AOF-always for saves, / Redis no-persistence for restores;")
print("        ops/s ratio > 1 is better, latency ratio < 1 is better")
if rounds > 1:
    print("ops/s, p50, p99: each the median of its rounds; ratios: the median of the per-round ratios (so not")
    print("        always the quotient of the medians shown)")
print(f"clients have one request in flight each; Redis rows: {rconns} shared pipelined connections, like the")
print("kadosession Go client's pool (the ratio base); /conn rows: one connection per client (reference);")
print("kado-3node pins every request to a follower (saves forwarded, reads served there); kado-3node/leader is")
print("the default Go client given the same follower's address: it learns the leader and sends it everything\n")
hdr = f"{'workload':<14} {'target':<22} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>5}   {'×ops/s':>7} {'×p50':>6} {'×p99':>6}"
print(hdr); print("-" * len(hdr))
for op in ("save", "restore"):
    for c in (1, 64):
        for name in order + ["kado-3node/leader", "redis-nopersist/conn", "redis-aof-always/conn"]:
            if (name, op, c) not in R:
                continue
            ops, p50, p99, err = (get(name, op, c, f) for f in ("ops_per_sec", "p50_ms", "p99_ms", "errors"))
            line = f"{op + ' c=' + str(c):<14} {name:<22} {fmt(ops, '9.0f')} {fmt(p50, '8.3f')} {fmt(p99, '8.3f')} {fmt(err, '5d')}"
            if name.startswith("kado"):
                me, b = (name, op, c), (base[op], op, c)
                line += (f"   {fmt(ratio(me, b, 'ops_per_sec'), '6.2f')}×"
                         f" {fmt(ratio(me, b, 'p50_ms'), '5.2f')}×"
                         f" {fmt(ratio(me, b, 'p99_ms'), '5.2f')}×")
            print(line)
        print()

goals = []
def goal(text, a, b, f, target, higher=True):
    xs = R.ratios(a, b, f)
    value = R.ratio(a, b, f)
    ok = None if value is None else (value >= target if higher else value <= target)
    goals.append((text, value, target, higher, ok, xs))

goal("durable save, 1 node, 64 clients: ops/s vs Redis AOF always",
     ("kado-single", "save", 64), ("redis-aof-always", "save", 64), "ops_per_sec", 1.0)
goal("durable save, 3 nodes via follower, 64 clients: ops/s vs Redis AOF always",
     ("kado-3node", "save", 64), ("redis-aof-always", "save", 64), "ops_per_sec", 0.5)
goal("restore, 3 nodes (linearizable, via follower), 64 clients: ops/s vs Redis no persistence",
     ("kado-3node", "restore", 64), ("redis-nopersist", "restore", 64), "ops_per_sec", 1.0)
goal("save, 3 nodes via follower, 1 client: p50 vs Redis AOF always p50",
     ("kado-3node", "save", 1), ("redis-aof-always", "save", 1), "p50_ms", 4.0, higher=False)
goal("restore, 3 nodes (linearizable), 64 clients, the default Go client (reads at the leader): ops/s vs Redis no persistence",
     ("kado-3node/leader", "restore", 64), ("redis-nopersist", "restore", 64), "ops_per_sec", 1.0)
for name in ("kado-single", "kado-3node"):
    goal(f"save throughput 64 clients vs 1 client ({name})",
         (name, "save", 64), (name, "save", 1), "ops_per_sec", 10.0)
print("goals (issue 5)" + (f": each the median of {rounds} per-round ratios (their range in brackets)" if rounds > 1 else ""))
for text, v, t, higher, ok, xs in goals:
    status = "n/a " if ok is None else ("PASS" if ok else "MISS")
    spread = f" [{min(xs):.2f}–{max(xs):.2f}]" if len(xs) > 1 else ""
    print(f"  {status}  {text}: {fmt(v, '.2f')}×{spread} (goal {'≥' if higher else '≤'} {t:g}×)")

# Where a kadosession save's time goes (each figure the median of its rounds).
def med(cell, f):
    rs = [r for r in R.results() if (r["name"], r["op"], r["clients"]) == cell and f in r]
    return sorted(x[f] for x in rs)[len(rs) // 2] if rs else None
rows = [(n, c) for n in ("kado-single", "kado-3node") for c in (1, 64) if med((n, "save", c), "append_ms") is not None]
if rows:
    print("\nsaves: each batch of saves is one raft log entry, appended (and fsynced) on the leader, then on")
    print("the followers; the figures come from the nodes' /metrics (kadosession_commit_batch_size,")
    print("kadosession_log_store_duration_seconds)")
    for n, c in rows:
        cell = (n, "save", c)
        fol = med(cell, "follower_append_ms")
        print(f"  {n:<12} c={c:<3} {fmt(med(cell, 'saves_per_batch'), '5.1f')} saves per batch, "
              f"{fmt(med(cell, 'batches_per_sec'), '6.0f')} batches/s, leader append {fmt(med(cell, 'append_ms'), '.2f')} ms"
              + (f", follower append {fol:.2f} ms" if fol is not None else ""))

if not svg_path:
    sys.exit(0)
# A grouped bar chart: one panel per workload (each with its own scale, as
# 1-client and 64-client figures differ by an order of magnitude), one bar
# per store, the ratio to the matching Redis figure under each kadosession bar.
colors = {"redis-nopersist": "#d9534f", "redis-aof-always": "#f0ad4e", "kado-single": "#337ab7", "kado-3node": "#5bc0de"}
panels = [("save", 1), ("save", 64), ("restore", 1), ("restore", 64)]
pw, ph, top, left, gap = 250, 260, 110, 50, 30
W = left + len(panels) * (pw + gap) + 10
H = top + ph + 130
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="24" text-anchor="middle" font-size="17" font-weight="bold">kadosession vs Redis: operations per second ({size} B sessions)</text>',
       f'<text x="{W/2}" y="44" text-anchor="middle" fill="#555">scripts/bench.sh, {datetime.date.today()}, {os.cpu_count()} CPUs, {duration} per bar{f" (median of {rounds} rounds)" if rounds > 1 else ""}, same Go load generator, '
       f'{rconns} pipelined connections per server, every client one request in flight</text>',
       f'<text x="{W/2}" y="62" text-anchor="middle" fill="#555">ratio under each kadosession bar: saves vs Redis AOF always, restores vs Redis without persistence (higher is better)</text>']
def nice(m):
    import math
    if m <= 0: return 1
    e = 10 ** math.floor(math.log10(m))
    for k in (1, 2, 2.5, 5, 10):
        if k * e >= m: return k * e
    return 10 * e
for i, (op, c) in enumerate(panels):
    x0 = left + i * (pw + gap)
    vals = [get(n, op, c, "ops_per_sec") or 0 for n in order]
    ymax = nice(max(vals) * 1.1)
    out.append(f'<text x="{x0 + pw/2}" y="{top - 22}" text-anchor="middle" font-size="14" font-weight="bold">{op}, {c} client{"s" if c > 1 else ""}</text>')
    for k in range(5):
        v = ymax * k / 4
        y = top + ph - ph * k / 4
        out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        lab = f"{v/1000:g}k" if v >= 1000 else f"{v:g}"
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#777" font-size="10">{lab}</text>')
    bw = pw / len(order) * 0.7
    for j, n in enumerate(order):
        v = vals[j]
        h = ph * v / ymax
        bx = x0 + pw / len(order) * (j + 0.15)
        out.append(f'<rect x="{bx:.1f}" y="{top + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colors[n]}"><title>{html.escape(label[n])}: {v:.0f} ops/s</title></rect>')
        out.append(f'<text x="{bx + bw/2:.1f}" y="{top + ph - h - 4:.1f}" text-anchor="middle" font-size="10">{v/1000:.1f}k</text>' if v >= 1000 else
                   f'<text x="{bx + bw/2:.1f}" y="{top + ph - h - 4:.1f}" text-anchor="middle" font-size="10">{v:.0f}</text>')
        if n.startswith("kado"):
            r = ratio((n, op, c), (base[op], op, c), "ops_per_sec")
            out.append(f'<text x="{bx + bw/2:.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11" font-weight="bold">{fmt(r, ".2f")}×</text>')
    out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
ly = top + ph + 50
for j, n in enumerate(order):
    lx = left + j * (W - left) / len(order)
    out.append(f'<rect x="{lx:.0f}" y="{ly}" width="14" height="14" fill="{colors[n]}"/>')
    out.append(f'<text x="{lx + 20:.0f}" y="{ly + 12}">{html.escape(label[n])}</text>')
gy = ly + 36
summary = "   ".join(f'{"PASS" if ok else ("MISS" if ok is not None else "n/a")}: {html.escape(t.split(":")[0])}' for t, v, tt, hi, ok, xs in goals[:4])
out.append(f'<text x="{left}" y="{gy}" fill="#333" font-size="11">goals — {summary}</text>')
out.append('</svg>')
os.makedirs(os.path.dirname(svg_path) or ".", exist_ok=True)
with open(svg_path + ".tmp", "w") as f:
    f.write("\n".join(out) + "\n")
os.replace(svg_path + ".tmp", svg_path)
print(f"\nwrote {svg_path}")
PY
