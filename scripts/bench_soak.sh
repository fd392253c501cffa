#!/usr/bin/env bash
# bench_soak.sh — the long run of issue 5 (scripts/bench.sh --soak runs
# this): SOAK_DURATION (10 min) of saves at 70% of the measured maximum
# save rate, with no error and flat memory.
#
# A three-node cluster of real processes on loopback (n1; n2, n3 --join n1),
# each with its own temporary data directory, default settings, and /metrics
# on a loopback --http port. All load goes to one follower, pinned there
# (--pin), as bench.sh's kado-3node: every save is forwarded to the leader,
# so the follower's forwarding path (connections, requests in flight) soaks
# as well as the leader's apply path and every node's replication; all
# three nodes hold the whole state, and all three are watched.
#   1. load: SOAK_SESSIONS sessions of SIZE bytes, each written once
#      (`bench --op load`, 64 clients), so the state has its final size
#      before anything is measured: the soak's saves overwrite these same
#      sessions (bench walks them in turn), so the session count stays put
#      and memory should too. Sessions live the nodes' --duration after
#      their last save (6 h by default; SOAK_SESSION_TTL sets it), far
#      longer than the run, so none expires and the leader's prune (every
#      minute) finds nothing: the state neither shrinks nor grows;
#   2. probe: the maximum durable save rate, 64 clients, SIZE bytes, over
#      the same sessions, for SOAK_PROBE (bench's ops/s; a snapshot that
#      happens to fall in the probe lowers it, which only lowers the soak
#      rate);
#   3. soak: saves paced at SOAK_PCT (70) percent of that rate (`bench
#      --rate`, a total over SOAK_CLIENTS clients, each on a fixed schedule,
#      latency counted from when a save was due), for SOAK_DURATION. Every
#      SOAK_SAMPLE seconds every node's VmRSS (with RssAnon, RssFile and
#      VmHWM) from /proc/PID/status, and from its /metrics the Go heap
#      (go_memstats_heap_inuse_bytes, heap_alloc), goroutines, sessions,
#      snapshots taken and the raft term, one line per sample on stderr
#      (samples are taken while the soak's load runs).
#      Snapshots (raft checks every 120-240 s and snapshots after 8192
#      entries; a node also snapshots as soon as the log applied since its
#      last snapshot outgrows 256 MiB or that snapshot's size, whichever is
#      larger) and save-file writes (every 15 s) come by themselves
#      and show as bumps; so does the first minute's growth of the table of
#      applied requests (60 s window).
# Memory rule: the steady phase starts after SOAK_WARMUP (default a tenth of
# the run: 60 s of 10 min). For each node, "start" is the median RssAnon of
# the first N steady samples and "end" the median of the last N (N = a
# tenth of the steady samples, at least 3; medians, so one sample taken
# during a snapshot moves neither). A node is flat when end <= start x (1 +
# SOAK_GROWTH_PCT/100), SOAK_GROWTH_PCT being 15; otherwise GROWING.
# RssAnon, the anonymous resident memory (Go heap, stacks, runtime), is
# judged rather than VmRSS: VmRSS also counts RssFile, mostly the pages of
# the raft log (raft.db, a memory-mapped BoltDB file) the node has touched.
# Those follow the log's length: it grows with every save (at 2000 saves/s
# about 100 MB a minute) until a snapshot compacts it (at most 256 MiB of
# log past the 4096 entries a snapshot leaves, at 100k sessions);
# BoltDB then reuses the freed pages, so RssFile should climb to the
# longest stretch between snapshots and stay there. They are clean file
# pages the kernel may drop. SOAK_MEMORY=rss judges VmRSS instead; both are
# printed.
# It prints the achieved rate against the target, errors, p50/p99/p99.9,
# RssAnon, VmRSS (with RssFile) and the Go heap per node at the steady
# start and end and their maxima, and a last line
#   soak: duration D, target R/s, achieved A/s, errors E, rss growth per node: X% Y% Z% (flat|GROWING)
# (nodes n1, n2, n3 in that order; the growth of the judged figure), and
# exits 1 when the soak had errors, memory is GROWING on any node, or a
# node died; everything it started is stopped on exit (the data
# directories are removed).
#
# Environment: SOAK_DURATION (10m; whole seconds or minutes, 10s..10m:
# bench's --duration bound), SOAK_PROBE (15s), SOAK_PCT (70), SOAK_SESSIONS
# (100000), SIZE (1024), SOAK_CLIENTS (64), SOAK_SAMPLE (10: seconds),
# SOAK_WARMUP (seconds; default a tenth of SOAK_DURATION), SOAK_GROWTH_PCT
# (15), SOAK_MEMORY (anon: judge RssAnon; rss: VmRSS), SOAK_LOAD_MAX (300:
# seconds the load may take), SOAK_SESSION_TTL (the nodes' --duration;
# default theirs, 6h), SOAK_CSV (a file to write the samples to, one row
# per node per sample), RESULTS (a file to keep the summary in, as JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1-} in
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "bench_soak.sh: unknown argument $1 (settings are environment variables, see --help)" >&2; exit 2 ;;
esac

# to_secs VALUE: 90, 90s or 2m -> seconds ("" when malformed)
to_secs() {
  case $1 in
    *m) [[ ${1%m} =~ ^[1-9][0-9]*$ ]] && echo $((${1%m} * 60)) ;;
    *s) [[ ${1%s} =~ ^[1-9][0-9]*$ ]] && echo "${1%s}" ;;
    *) [[ $1 =~ ^[1-9][0-9]*$ ]] && echo "$1" ;;
  esac
  return 0
}
DUR=$(to_secs "${SOAK_DURATION:-10m}")
PROBE=$(to_secs "${SOAK_PROBE:-15s}")
SAMPLE=$(to_secs "${SOAK_SAMPLE:-10}")
if [ -z "$DUR" ] || [ "$DUR" -lt 10 ] || [ "$DUR" -gt 600 ]; then
  echo "bench_soak.sh: SOAK_DURATION=${SOAK_DURATION:-}: want 10s..10m (whole seconds or minutes)" >&2; exit 2
fi
if [ -z "$PROBE" ] || [ "$PROBE" -gt 120 ]; then
  echo "bench_soak.sh: SOAK_PROBE=${SOAK_PROBE:-}: want 1s..120s" >&2; exit 2
fi
if [ -z "$SAMPLE" ] || [ "$SAMPLE" -gt 60 ]; then
  echo "bench_soak.sh: SOAK_SAMPLE=${SOAK_SAMPLE:-}: want 1..60 seconds" >&2; exit 2
fi
WARMUP=$(to_secs "${SOAK_WARMUP:-$(((DUR + 9) / 10))}")
PCT=${SOAK_PCT:-70}
N=${SOAK_SESSIONS:-100000}
SIZE=${SIZE:-1024}
CLIENTS=${SOAK_CLIENTS:-64}
GROWTH=${SOAK_GROWTH_PCT:-15}
LOAD_MAX=${SOAK_LOAD_MAX:-300}
TTL=${SOAK_SESSION_TTL:-}
JUDGE=${SOAK_MEMORY:-anon}
case $JUDGE in anon|rss) ;; *) echo "bench_soak.sh: SOAK_MEMORY=$JUDGE: want anon or rss" >&2; exit 2 ;; esac
for v in WARMUP PCT N SIZE CLIENTS GROWTH LOAD_MAX; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench_soak.sh: $v=${!v}: want a positive whole number" >&2; exit 2; }
done
[ "$PCT" -le 100 ] || { echo "bench_soak.sh: SOAK_PCT is at most 100" >&2; exit 2; }
[ "$N" -le 1000000 ] || { echo "bench_soak.sh: SOAK_SESSIONS is at most 1000000 (bench's --sessions bound)" >&2; exit 2; }
[ "$WARMUP" -lt "$DUR" ] || { echo "bench_soak.sh: SOAK_WARMUP ($WARMUP s) must be shorter than the run ($DUR s)" >&2; exit 2; }
[ "$LOAD_MAX" -le 600 ] || { echo "bench_soak.sh: SOAK_LOAD_MAX is at most 600" >&2; exit 2; }
for f in "${SOAK_CSV:-}" "${RESULTS:-}"; do
  [ -z "$f" ] || [ -d "$(dirname "$f")" ] || { echo "bench_soak.sh: no directory for $f" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kadosession-soak.XXXXXX")
declare -A pid=() port=() hport=()
benchpid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local p
  for p in $benchpid "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in $benchpid "${pid[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${SOAK_CSV:-}" ] && [ -s "$work/samples.csv" ]; then cp "$work/samples.csv" "$SOAK_CSV" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t_start=$SECONDS

. scripts/lib.sh # free_port, now_ms (the working directory is the repo root)
show_logs() { for f in "$work"/n[0-9].log; do echo "--- $f"; tail -5 "$f"; done >&2; }

echo "== building kadosession"
bin=$work/kadosession
CGO_ENABLED=0 timeout 300 go build -o "$bin" ./cmd/kadosession

start_node() { # id [join]
  local id=$1 join=${2:-} extra=()
  [ -n "$join" ] && extra+=(--join "$join")
  [ -n "$TTL" ] && extra+=(--duration "$TTL")
  "$bin" serve --id "$id" --listen "127.0.0.1:${port[$id]}" --http "127.0.0.1:${hport[$id]}" \
    --data "$work/$id" --log-level info "${extra[@]}" 2>>"$work/$id.log" &
  pid[$id]=$!
}
status_json() { timeout 10 "$bin" status --cluster "127.0.0.1:$1" --json 2>/dev/null || true; }
leader_of() { python3 -c 'import json,sys
try: print(json.loads(sys.argv[1]).get("leader_id",""))
except Exception: print("")' "$1"; }

for id in n1 n2 n3; do port[$id]=$(free_port); hport[$id]=$(free_port); done
echo "== starting a three-node cluster (n1; n2, n3 --join n1), /metrics on loopback"
start_node n1
sleep 0.5
start_node n2 "127.0.0.1:${port[n1]}"
start_node n3 "127.0.0.1:${port[n1]}"
for i in $(seq 1 150); do
  s=$(status_json "${port[n1]}")
  leader=$(leader_of "$s")
  if [ -n "$leader" ] && [ "$(python3 -c 'import json,sys; print(sum(n.get("state") in ("leader","follower") for n in json.loads(sys.argv[1])["nodes"]))' "$s")" = 3 ]; then break; fi
  [ "$i" = 150 ] && { echo "cluster did not form: $s" >&2; show_logs; exit 1; }
  sleep 0.2
done
follower=""
for id in n1 n2 n3; do [ "$id" != "$leader" ] && { follower=$id; break; }; done
target="127.0.0.1:${port[$follower]}"
echo "   leader $leader; load through follower $follower ($target, pinned)"

# bench_run NAME MAXSECS ARGS…: one bench run, JSON to $work/NAME.json,
# progress to $work/NAME.err; fails (showing the progress' tail) when bench does
bench_run() {
  local name=$1 max=$2; shift 2
  if ! timeout --kill-after=10 "$max" "$bin" bench --target "$target" --pin --size "$SIZE" --sessions "$N" --json "$@" \
      >"$work/$name.json" 2>"$work/$name.err"; then
    echo "bench ($name) failed:" >&2; tail -5 "$work/$name.err" >&2; show_logs; exit 1
  fi
}
summary() { # FILE: the one-line figures of a bench JSON
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%d saves in %.1f s: %.0f/s, p50 %.2f ms, p99 %.2f ms, max %.1f ms, %d errors%s" % (r["saves"], r["seconds"], r["ops_per_sec"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["errors"], ", INCOMPLETE" if r.get("incomplete") else ""))' "$1"
}

echo "== 1. load: $N sessions of $SIZE B, each once (64 clients, at most ${LOAD_MAX}s)"
bench_run load $((LOAD_MAX + 60)) --op load --clients 64 --duration "${LOAD_MAX}s"
echo "   $(summary "$work/load.json")"
if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("incomplete") else 1)' "$work/load.json"; then
  echo "   WARNING: the load did not write every session within ${LOAD_MAX}s; the soak's first pass adds the rest" >&2
fi

echo "== 2. probe: maximum save rate, 64 clients, $SIZE B, ${PROBE}s"
bench_run probe $((PROBE + 120)) --op save --clients 64 --duration "${PROBE}s"
echo "   $(summary "$work/probe.json")"
max_rate=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$work/probe.json")
rate=$((max_rate * PCT / 100))
[ "$rate" -ge 1 ] || { echo "probe measured $max_rate saves/s: nothing to soak at" >&2; exit 1; }

# sample T OPS ERRS: one row per node in samples.csv, one line on stderr
echo "t_s,node,alive,rss_kb,rss_anon_kb,rss_file_kb,hwm_kb,heap_inuse_bytes,heap_alloc_bytes,goroutines,sessions,snapshots,raft_term,bench_ops,bench_errors" >"$work/samples.csv"
last_t=0; last_ops=0
sample() {
  local t=$1 ops=$2 errs=$3 id line alive st m
  line=$(printf '%5ds saves %9d (%5.0f/s) err %d' "$t" "$ops" \
    "$(awk -v d=$((t - last_t)) -v o=$((ops - last_ops)) 'BEGIN{print (d > 0 ? o / d : 0)}')" "$errs")
  for id in n1 n2 n3; do
    alive=1; st="0 0 0 0"; m="0 0 0 0 0 0"
    # a node that exited is a zombie until reaped: kill -0 still succeeds
    if kill -0 "${pid[$id]}" 2>/dev/null && ! grep -qE '^State:[[:space:]]+[ZX]' "/proc/${pid[$id]}/status" 2>/dev/null; then
      st=$(awk '$1=="VmRSS:"{r=$2} $1=="RssAnon:"{a=$2} $1=="RssFile:"{f=$2} $1=="VmHWM:"{h=$2} END{print r+0, a+0, f+0, h+0}' "/proc/${pid[$id]}/status" 2>/dev/null || echo "0 0 0 0")
      m=$(curl -s --max-time 3 "http://127.0.0.1:${hport[$id]}/metrics" 2>/dev/null | awk '
        $1=="go_memstats_heap_inuse_bytes"{hi=$2} $1=="go_memstats_heap_alloc_bytes"{ha=$2}
        $1=="go_goroutines"{g=$2} $1=="kadosession_sessions"{s=$2}
        $1=="kadosession_snapshot_duration_seconds_count"{n=$2} $1=="kadosession_raft_term"{tm=$2}
        END{printf "%.0f %.0f %.0f %.0f %.0f %.0f\n", hi, ha, g, s, n, tm}') || m="0 0 0 0 0 0"
    else
      alive=0
    fi
    # shellcheck disable=SC2086
    set -- $st $m
    echo "$t,$id,$alive,$1,$2,$3,$4,$5,$6,$7,$8,$9,${10},$ops,$errs" >>"$work/samples.csv"
    if [ "$alive" = 1 ]; then
      line+=$(printf ' | %s rss %4d heap %4d MiB g %3d ses %d snap %d' "$id" $(($1 / 1024)) $(($5 / 1048576)) "$7" "$8" "$9")
    else
      line+=" | $id DEAD"
    fi
  done
  echo "soak $line" >&2
  last_t=$t; last_ops=$ops
}
# bench_progress: "OPS ERRORS" from bench's latest progress line
bench_progress() {
  { grep '^bench ' "$work/soak.err" 2>/dev/null || true; } | tail -1 |
    sed -nE 's/.* ([0-9]+) ops, .* ([0-9]+) errors$/\1 \2/p'
}

echo "== 3. soak: saves at $rate/s ($PCT% of $max_rate/s), $CLIENTS clients, $N sessions, ${DUR}s; a sample every ${SAMPLE}s (stderr)"
t0=$(now_ms)
timeout --kill-after=10 $((DUR + 120)) "$bin" bench --target "$target" --pin --op save --size "$SIZE" --sessions "$N" \
  --clients "$CLIENTS" --rate "$rate" --duration "${DUR}s" --json >"$work/soak.json" 2>"$work/soak.err" &
benchpid=$!
sample 0 0 0
next=$((t0 + SAMPLE * 1000))
deadline=$((t0 + (DUR + 150) * 1000))
ops=0; errs=0
while kill -0 "$benchpid" 2>/dev/null; do
  now=$(now_ms)
  if [ "$now" -ge "$deadline" ]; then
    echo "the soak's bench did not end within $((DUR + 150))s" >&2; exit 1
  fi
  if [ "$now" -ge "$next" ]; then
    p=$(bench_progress)
    [ -n "$p" ] && read -r ops errs <<<"$p"
    sample $(((now - t0) / 1000)) "$ops" "$errs"
    next=$((next + SAMPLE * 1000))
  fi
  sleep 0.2
done
soak_rc=0
wait "$benchpid" || soak_rc=$?
benchpid=""
if [ "$soak_rc" != 0 ] || ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$work/soak.json" 2>/dev/null; then
  echo "the soak's bench failed (exit $soak_rc):" >&2; tail -5 "$work/soak.err" >&2; show_logs; exit 1
fi
dead_end=""
for id in n1 n2 n3; do
  if ! kill -0 "${pid[$id]}" 2>/dev/null || grep -qE '^State:[[:space:]]+[ZX]' "/proc/${pid[$id]}/status" 2>/dev/null; then dead_end+="$id "; fi
done
leader_end=$(leader_of "$(status_json "${port[$follower]}")")
echo "   $(summary "$work/soak.json")"
echo "   leader at the start $leader, at the end ${leader_end:-unknown}"

echo
set +e
python3 - "$work" "$DUR" "$rate" "$max_rate" "$PCT" "$WARMUP" "$GROWTH" "$N" "$SIZE" "$CLIENTS" "$follower" "${RESULTS:-}" "$dead_end" "$JUDGE" <<'PY'
import csv, json, os, platform, statistics, sys
work, dur, rate, max_rate, pct, warmup, growth, n, size, clients, follower, results, dead_end, judge = sys.argv[1:15]
dur, rate, max_rate, warmup, growth = int(dur), int(rate), int(max_rate), int(warmup), float(growth)
soak = json.load(open(os.path.join(work, "soak.json")))
load = json.load(open(os.path.join(work, "load.json")))
probe = json.load(open(os.path.join(work, "probe.json")))
rows = list(csv.DictReader(open(os.path.join(work, "samples.csv"))))
nodes = ["n1", "n2", "n3"]
S = {nd: [r for r in rows if r["node"] == nd] for nd in nodes}
MiB = lambda kb: kb / 1024

def hms(s):
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

achieved = soak["saves"] / soak["seconds"] if soak["seconds"] else 0.0
print(f"kadosession soak (issue 5) — 3 nodes, load through follower {follower} (pinned), {n} sessions of {size} B, "
      f"{os.cpu_count()} CPUs, {platform.release()}")
print(f"load:  {load['saves']} sessions written once in {load['seconds']:.1f} s ({load['ops_per_sec']:.0f}/s), {load['errors']} errors")
print(f"probe: maximum {max_rate} saves/s (64 clients, {probe['seconds']:.0f} s, p50 {probe['p50_ms']:.2f} ms, "
      f"p99 {probe['p99_ms']:.2f} ms), {probe['errors']} errors")
print(f"soak:  {hms(dur)} at {rate}/s asked ({pct}% of the maximum), {clients} clients: {achieved:.0f}/s achieved "
      f"({100 * achieved / rate:.1f}% of the target), {soak['saves']} saves, {soak['errors']} errors")
print(f"       latency from when each save was due: p50 {soak['p50_ms']:.2f} ms, p90 {soak['p90_ms']:.2f} ms, "
      f"p99 {soak['p99_ms']:.2f} ms, p99.9 {soak['p999_ms']:.2f} ms, max {soak['max_ms']:.1f} ms")
gaps = soak.get("gaps_ms") or []
print(f"       stretches of 100 ms or more with no successful save: {len(gaps)}"
      + (f", longest {max(gaps):.0f} ms" if gaps else ""))
if soak.get("first_error"):
    print(f"       first error: {soak['first_error']}")
if achieved < 0.95 * rate:
    print(f"       WARNING: under 95% of the target rate: the cluster did not keep up at {pct}% of the probe's maximum"
          " (the latencies above are then mostly queueing behind the schedule); is anything else using the CPUs?")

# memory: medians of the first and last K steady samples
steady = {nd: [r for r in S[nd] if int(r["t_s"]) >= warmup] for nd in nodes}
ns = min(len(v) for v in steady.values())
k = min(max(3, ns // 10), ns // 2)
dead = [nd for nd in nodes if nd in dead_end.split() or any(r["alive"] != "1" for r in S[nd])]
def med(rs, f):
    return statistics.median(float(r[f]) for r in rs)
print()
if k < 1:
    print(f"memory: too few samples after the {warmup} s warm-up ({ns}) to judge: lengthen SOAK_DURATION or shorten SOAK_SAMPLE")
    verdict, growths = "n/a", {nd: None for nd in nodes}
else:
    first = {nd: steady[nd][:k] for nd in nodes}
    last = {nd: steady[nd][-k:] for nd in nodes}
    t_first = f"{first['n1'][0]['t_s']}-{first['n1'][-1]['t_s']} s"
    t_last = f"{last['n1'][0]['t_s']}-{last['n1'][-1]['t_s']} s"
    print(f"memory (MiB; steady phase from {warmup} s; 'start' = median of the samples at {t_first}, "
          f"'end' = median of those at {t_last}; {len(S['n1'])} samples in all)")
    hdr = f"{'':<34} {'n1':>9} {'n2':>9} {'n3':>9}"
    print(hdr)
    def row(label, vals, spec="9.1f"):
        print(f"{label:<34} " + " ".join("-".rjust(9) if v is None else format(v, spec) for v in vals))
    def block(title, f):
        row(f"{title} before the soak", [MiB(float(S[nd][0][f])) for nd in nodes])
        row("  steady start", [MiB(med(first[nd], f)) for nd in nodes])
        row("  end", [MiB(med(last[nd], f)) for nd in nodes])
        g = {nd: 100 * (med(last[nd], f) / med(first[nd], f) - 1) if med(first[nd], f) else None for nd in nodes}
        row("  growth, %", [g[nd] for nd in nodes], "+9.1f")
        row("  max (any sample)", [MiB(max(float(r[f]) for r in S[nd])) for nd in nodes])
        return g
    g_anon = block("RssAnon" + (" (judged)" if judge == "anon" else ""), "rss_anon_kb")
    g_rss = block("VmRSS" + (" (judged)" if judge == "rss" else ""), "rss_kb")
    row("  of which RssFile, start", [MiB(med(first[nd], "rss_file_kb")) for nd in nodes])
    row("  of which RssFile, end", [MiB(med(last[nd], "rss_file_kb")) for nd in nodes])
    row("VmHWM at the end (peak VmRSS)", [MiB(float(S[nd][-1]["hwm_kb"])) for nd in nodes])
    growths = g_anon if judge == "anon" else g_rss
    row("Go heap in use steady start", [med(first[nd], "heap_inuse_bytes") / 2**20 for nd in nodes])
    row("Go heap in use end", [med(last[nd], "heap_inuse_bytes") / 2**20 for nd in nodes])
    row("Go heap in use max", [max(float(r["heap_inuse_bytes"]) for r in S[nd]) / 2**20 for nd in nodes])
    row("goroutines steady start", [med(first[nd], "goroutines") for nd in nodes], "9.0f")
    row("goroutines end", [med(last[nd], "goroutines") for nd in nodes], "9.0f")
    row("sessions at the end", [float(S[nd][-1]["sessions"]) for nd in nodes], "9.0f")
    row("snapshots during the soak", [float(S[nd][-1]["snapshots"]) - float(S[nd][0]["snapshots"]) for nd in nodes], "9.0f")
    terms = sorted({r["raft_term"] for nd in nodes for r in S[nd] if r["alive"] == "1"}, key=float)
    print(f"raft term during the soak: {', '.join(terms)}" + (" (an election happened)" if len(terms) > 1 else " (no election)"))
    grow = [nd for nd in nodes if growths[nd] is None or growths[nd] > growth]
    verdict = "GROWING" if grow else "flat"
    print(f"rule: flat when a node's end {'RssAnon' if judge == 'anon' else 'VmRSS'} <= its steady start x {1 + growth / 100:g};"
          f" growing: {', '.join(grow) or 'none'}")
if dead:
    print(f"NODES DIED during the soak: {', '.join(dead)}")
ok = soak["errors"] == 0 and verdict == "flat" and not dead
if results:
    json.dump({"duration_s": dur, "target_rate": rate, "max_rate": max_rate, "achieved_rate": round(achieved, 1),
               "soak": soak, "probe": probe, "load": load, "judged": judge, "rss_growth_pct": growths, "verdict": verdict,
               "dead": dead, "ok": ok}, open(results, "w"), indent=1)
g = " ".join("n/a" if growths[nd] is None else f"{growths[nd]:+.1f}%" for nd in nodes)
print()
print(f"soak: duration {hms(dur)}, target {rate}/s, achieved {achieved:.0f}/s, errors {soak['errors']}, "
      f"rss growth per node: {g} ({verdict})")
sys.exit(0 if ok else 1)
PY
rc=$?
set -e
echo "(total $((SECONDS - t_start)) s)"
exit "$rc"
