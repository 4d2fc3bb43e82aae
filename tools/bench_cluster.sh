#!/usr/bin/env bash
# End-to-end benchmarks of wsgate with tools/wsgate_load (Release build).
#
#   tools/bench_cluster.sh [--runs N] [--duration-s D] [--only REGEX] [--out DIR]
#   SUMMARY_ONLY=1 tools/bench_cluster.sh --out DIR    # tables of an earlier run again
#
# Every scenario runs against freshly started servers on free loopback ports
# (this script starts and stops them, and a redis-server for the cluster
# scenarios), N times (default 3), interleaved (run 1 of every scenario, then
# run 2, ...) so that single-node and cluster figures of one session see the
# same machine noise; then the medians are printed. Scenarios:
#
#   s_direct_20k     single node, local transport: 200 clients (100 pairs), 20k msg/s total
#   s_direct_max     single node: 200 clients, as fast as a window of 16 per client allows
#   s_bcast_1k       single node: 1000 clients, 1 sender, window of 16 broadcasts in flight
#   s_bcast_1k_r50   single node: 1000 clients, 1 sender at 50 broadcasts/s (latency at light load)
#   x_direct_20k     3 nodes + redis: 200 clients, every pair split over two nodes, 20k msg/s
#   x_direct_max     3 nodes + redis: 200 clients, window 16 per client
#   x_bcast_3k       3 nodes + redis: 3000 clients (1000 per node), 1 sender, window 16
#   x_bcast_3k_r50   3 nodes + redis: 3000 clients, 1 sender at 50 broadcasts/s
#   x_rebalance_idle 3 nodes + redis with DEFAULT rebalancing: 300 idle clients spread evenly;
#                    counts 4002 closes (there should be none)
#   storm_10k        single node: 10000 connections opened at once by 2 load processes
#   rss_idle_10k     single node: server VmRSS before/after 10000 idle connections (2 processes)
#   rss_idle_py      the same with tools/rss_idle.py, for comparison (if it exists)
#
# The cluster data-path scenarios run with --rebalance-max-moves-per-s 0, so
# that no pair is ever broken by a move. (Rebalancing used to shed clients
# while they were still connecting; x_rebalance_idle checks that it no
# longer does: it should count 0.)
#
# Besides each load generator's figures, every run records the CPU seconds
# the server processes (and redis-server) used during it, so that
# deliveries per server CPU-second can be compared on a noisy machine, and
# the 1-minute load average at its start.
#
# Everything is bounded: each process runs under `timeout`, every wait has
# a deadline, and the servers started here are stopped (by pid) on exit.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-perf}
WSGATE=${WSGATE:-$BUILD/wsgate}
LOAD=${LOAD:-$BUILD/wsgate_load}
RUNS=3
DUR=10
ONLY=.
OUT=""
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration-s) DUR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done
SUMMARY_ONLY=${SUMMARY_ONLY:-0}  # SUMMARY_ONLY=1 --out DIR: print the tables of an earlier run again
[ -n "$OUT" ] || OUT=$(mktemp -d /tmp/wsgate-bench.XXXXXX)
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
[ "$SUMMARY_ONLY" = 1 ] || : > "$RESULTS"
for b in "$WSGATE" "$LOAD"; do
  [ -x "$b" ] || { echo "missing $b: build with cmake -S $ROOT -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C $BUILD wsgate wsgate_load" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is required" >&2; exit 1; }

WARMUP=2
LOAD_TIMEOUT=$((DUR + 120))
# The load generator drives few connections hard from one address: lift the
# per-client and per-address limits it would otherwise hit by design.
COMMON_FLAGS=(--host 127.0.0.1 --port 0 --max-connections-per-ip 1000000 --max-connections 200000
  --max-open-connections-per-ip 200000 --client-max-messages-per-s 0 --client-max-bytes-per-s 0)

NODE_PIDS=()
NODE_ADDRS=()
REDIS_PID=""
REDIS_PORT=""
LOAD_PIDS=()
SCENARIO=none

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local p
  for p in "${LOAD_PIDS[@]}" "${NODE_PIDS[@]}" $REDIS_PID; do
    [ -n "$p" ] && kill -TERM "$p" 2>/dev/null
  done
  sleep 0.5
  for p in "${LOAD_PIDS[@]}" "${NODE_PIDS[@]}" $REDIS_PID; do
    [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cpu_ticks() {  # utime + stime of a pid, in clock ticks
  [ -r "/proc/$1/stat" ] || { echo 0; return; }
  sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
TICKS=$(getconf CLK_TCK)

status_kb() {  # status_kb PID FIELD -> kB
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null
}

settle_rss_kb() {  # VmRSS after it stops moving (bounded: 10 s)
  local last now i
  last=$(status_kb "$1" VmRSS)
  for i in $(seq 1 40); do
    sleep 0.25
    now=$(status_kb "$1" VmRSS)
    [ "$now" = "$last" ] && break
    last=$now
  done
  echo "$last"
}

# start_node NAME [flags...]: appends to NODE_PIDS / NODE_ADDRS
start_node() {
  local name=$1; shift
  local err=$OUT/$SCENARIO.$RUN_TAG.$name.err
  rm -f "$err"
  "$WSGATE" "${COMMON_FLAGS[@]}" --node-id "$name" "$@" 2> "$err" < /dev/null > /dev/null &
  local pid=$! i addr=""
  for i in $(seq 1 100); do
    addr=$(grep -m1 -oE 'listening on [0-9.]+:[0-9]+' "$err" 2>/dev/null | awk '{print $3}')
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "wsgate $name did not start:" >&2; cat "$err" >&2
    kill -KILL "$pid" 2>/dev/null
    return 1
  fi
  NODE_PIDS+=("$pid")
  NODE_ADDRS+=("$addr")
}

save_metrics() {  # save_metrics SCENARIO
  local a i=0
  for a in "${NODE_ADDRS[@]}"; do
    curl -s -m 5 "http://$a/metrics" > "$OUT/$1.$RUN_TAG.node$i.metrics" 2>/dev/null
    i=$((i + 1))
  done
}

stop_nodes() {
  local p i
  for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${NODE_PIDS[@]}"; do
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  NODE_PIDS=()
  NODE_ADDRS=()
}

start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --protected-mode yes \
    > "$OUT/$SCENARIO.$RUN_TAG.redis.log" 2>&1 < /dev/null &
  REDIS_PID=$!
  local i
  for i in $(seq 1 50); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server did not start" >&2
  return 1
}

stop_redis() {
  [ -n "$REDIS_PID" ] || return
  kill -TERM "$REDIS_PID" 2>/dev/null
  local i
  for i in $(seq 1 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$REDIS_PID" 2>/dev/null
  wait "$REDIS_PID" 2>/dev/null
  REDIS_PID=""
}

servers_cpu_ticks() {
  local p t=0
  for p in "${NODE_PIDS[@]}" $REDIS_PID; do t=$((t + $(cpu_ticks "$p"))); done
  echo $t
}

targets() { local IFS=,; echo "${NODE_ADDRS[*]}"; }

# record SCENARIO JSON [extra jq object]
record() {
  local load1 extra=${3:-"{}"}
  load1=$(cut -d' ' -f1 /proc/loadavg)
  echo "$2" | jq -c --arg sc "$1" --argjson run "$RUN" --argjson load1 "${LOAD1_AT_START:-$load1}" \
    ". + {scenario: \$sc, run: \$run, loadavg1: \$load1} + ($extra)" >> "$RESULTS"
}

# run_load SCENARIO [wsgate_load args...]: one load process against NODE_ADDRS
run_load() {
  local sc=$1; shift
  local logf=$OUT/$sc.$RUN_TAG.log t0 t1 res
  LOAD1_AT_START=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(servers_cpu_ticks)
  timeout -k 5 "$LOAD_TIMEOUT" "$LOAD" --targets "$(targets)" --timeout-s $((LOAD_TIMEOUT - 10)) "$@" > "$logf" 2>&1
  t1=$(servers_cpu_ticks)
  res=$(grep -m1 '^RESULT ' "$logf" | sed 's/^RESULT //')
  if [ -z "$res" ]; then
    echo "$sc run $RUN: no RESULT line; log:" >&2; tail -5 "$logf" >&2
    res='{"failed":true}'
  fi
  save_metrics "$sc"
  local cpu
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$TICKS" 'BEGIN {printf "%.2f", (b - a) / hz}')
  record "$sc" "$res" "{server_cpu_s: $cpu}"
  grep -v '^RESULT' "$logf" | sed "s/^/  [$sc #$RUN] /" >&2
}

# --- scenarios ---------------------------------------------------------------
single() {  # single SCENARIO [load args]
  SCENARIO=$1
  start_node A --transport local || return
  run_load "$@"
  stop_nodes
}

cluster() {  # cluster SCENARIO NODE_EXTRA_FLAGS -- [load args]
  local sc=$1 extra=$2; shift 2
  SCENARIO=$sc
  start_redis || return
  local n
  for n in A B C; do
    # shellcheck disable=SC2086
    start_node "$n" --transport redis --redis "127.0.0.1:$REDIS_PORT" $extra || { stop_nodes; stop_redis; return; }
  done
  sleep 1.5  # every node hears the others' first load reports
  run_load "$sc" "$@"
  stop_nodes
  stop_redis
}

NO_REBALANCE="--rebalance-max-moves-per-s 0"

# storm and RSS: several idle load processes at once
# idle_procs SCENARIO PROCS PER_PROC HOLD_S CONCURRENCY: starts them in the background (LOAD_PIDS)
idle_procs() {
  local sc=$1 procs=$2 per=$3 hold=$4 conc=$5 k
  LOAD_PIDS=()
  for k in $(seq 0 $((procs - 1))); do
    # Every process has its own user prefix and source addresses 127.0.(10*run+k+1).1-250.
    local third=$(( (RUN * 10 + k + 1) % 250 + 1 ))
    timeout -k 5 $((hold + 90)) "$LOAD" --mode idle --connections "$per" --targets "$(targets)" \
      --user-prefix "${sc}p${k}u" --source-ips "127.0.$third.1-127.0.$third.250" \
      --connect-concurrency "$conc" --connect-timeout-s 60 --hold-s "$hold" --timeout-s $((hold + 80)) \
      --samples-out "$OUT/$sc.$RUN_TAG.p$k.samples" > "$OUT/$sc.$RUN_TAG.p$k.log" 2>&1 &
    LOAD_PIDS+=("$!")
  done
}

wait_ready() {  # wait_ready SCENARIO PROCS: all printed READY (bounded 90 s)
  local i k ok
  for i in $(seq 1 900); do
    ok=0
    for k in $(seq 0 $(($2 - 1))); do grep -q '^READY' "$OUT/$1.$RUN_TAG.p$k.log" 2>/dev/null && ok=$((ok + 1)); done
    [ "$ok" -eq "$2" ] && return 0
    sleep 0.1
  done
  return 1
}

wait_load_procs() {  # each runs under timeout, so this is bounded
  local p
  for p in "${LOAD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  LOAD_PIDS=()
}

stop_load_procs() {
  local p
  for p in "${LOAD_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${LOAD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  LOAD_PIDS=()
}

# Merges the connect-time histograms (us count per line) of several processes.
merge_connect() {  # merge_connect SCENARIO PROCS -> json
  local files=() k
  for k in $(seq 0 $(($2 - 1))); do files+=("$OUT/$1.$RUN_TAG.p$k.samples"); done
  "$PY" - "${files[@]}" <<'EOF'
import json, sys
pairs = []
for f in sys.argv[1:]:
    try:
        for line in open(f):
            us, n = line.split()
            pairs.append((float(us), int(n)))
    except OSError:
        pass
pairs.sort()
total = sum(n for _, n in pairs)
def q(p):
    if not total:
        return 0
    rank, seen = max(1, -(-int(p * total * 1000) // 1000)), 0
    for us, n in pairs:
        seen += n
        if seen >= rank:
            return us
    return pairs[-1][0]
print(json.dumps({"connect_n": total, "connect_p50_us": q(0.5), "connect_p99_us": q(0.99),
                  "connect_max_us": pairs[-1][0] if pairs else 0}))
EOF
}

sum_results() {  # sum_results SCENARIO PROCS FIELD
  local k s=0 v
  for k in $(seq 0 $(($2 - 1))); do
    v=$(grep -m1 '^RESULT ' "$OUT/$1.$RUN_TAG.p$k.log" 2>/dev/null | sed 's/^RESULT //' | jq -r ".$3 // 0")
    s=$((s + ${v:-0}))
  done
  echo $s
}

storm() {
  local sc=storm_10k
  SCENARIO=$sc
  start_node A --transport local || return
  LOAD1_AT_START=$(cut -d' ' -f1 /proc/loadavg)
  idle_procs $sc 2 5000 1 0
  wait_ready $sc 2 || echo "$sc: load processes not ready in time" >&2
  wait_load_procs
  local merged ok fail
  merged=$(merge_connect $sc 2)
  ok=$(sum_results $sc 2 connect_ok)
  fail=$(sum_results $sc 2 connect_fail)
  record $sc "$merged" "{connect_ok: $ok, connect_fail: $fail}"
  grep -h '^connect:' "$OUT/$sc.$RUN_TAG".p*.log | sed "s/^/  [$sc #$RUN] /" >&2
  save_metrics $sc
  stop_nodes
}

rss_idle() {
  local sc=rss_idle_10k n=10000
  SCENARIO=$sc
  start_node A --transport local || return
  local pid=${NODE_PIDS[0]} addr=${NODE_ADDRS[0]}
  LOAD1_AT_START=$(cut -d' ' -f1 /proc/loadavg)
  curl -s -m 5 "http://$addr/health" > /dev/null  # first HTTP request: paths warmed up
  local before anon_before after anon_after conns i
  before=$(settle_rss_kb "$pid")
  anon_before=$(status_kb "$pid" RssAnon)
  idle_procs $sc 2 $((n / 2)) 120 1000
  wait_ready $sc 2 || echo "$sc: load processes not ready in time" >&2
  for i in $(seq 1 100); do
    conns=$(curl -s -m 5 "http://$addr/health" | jq -r '.connections // 0')
    [ "${conns:-0}" -ge "$n" ] && break
    sleep 0.1
  done
  after=$(settle_rss_kb "$pid")
  anon_after=$(status_kb "$pid" RssAnon)
  local ok=0  # RESULT lines come only at exit: count the READY lines
  for i in 0 1; do
    ok=$((ok + $(sed -nE 's/^READY open=([0-9]+).*/\1/p' "$OUT/$sc.$RUN_TAG.p$i.log" | head -1)))
  done
  stop_load_procs
  record $sc "{}" "{connections_open: $ok, server_reports: ${conns:-0}, rss_before_kb: $before, rss_after_kb: $after,
    rss_bytes_per_conn: (if $ok > 0 then (($after - $before) * 1024 / $ok | floor) else null end),
    rss_anon_bytes_per_conn: (if $ok > 0 then (($anon_after - $anon_before) * 1024 / $ok | floor) else null end)}"
  log "  [$sc #$RUN] $ok open (server says $conns); VmRSS ${before} kB -> ${after} kB"
  stop_nodes
}

rss_idle_py() {
  [ -f "$ROOT/tools/rss_idle.py" ] || return
  local sc=rss_idle_py res
  LOAD1_AT_START=$(cut -d' ' -f1 /proc/loadavg)
  res=$(timeout -k 5 300 "$PY" "$ROOT/tools/rss_idle.py" --bin "$WSGATE" --connections 10000 --json 2> "$OUT/$sc.$RUN_TAG.err" | tail -1)
  echo "$res" | jq -e . > /dev/null 2>&1 || res='{"failed":true}'
  record $sc "$res"
  log "  [$sc #$RUN] $res"
}

want() { echo "$1" | grep -qE "$ONLY"; }

log "results in $OUT (runs=$RUNS, duration=${DUR}s, nproc=$(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))"
[ "$SUMMARY_ONLY" = 1 ] && RUNS=0
for RUN in $(seq 1 "$RUNS"); do
  RUN_TAG=r$RUN
  log "=== run $RUN of $RUNS"
  D=(--duration-s "$DUR" --warmup-s "$WARMUP" --drain-s 5)
  want s_direct_20k && { log s_direct_20k; single s_direct_20k --mode direct --connections 200 --rate 20000 "${D[@]}"; }
  want x_direct_20k && { log x_direct_20k; cluster x_direct_20k "$NO_REBALANCE" --mode direct --connections 200 --rate 20000 "${D[@]}"; }
  want s_direct_max && { log s_direct_max; single s_direct_max --mode direct --connections 200 --rate 0 --window 16 "${D[@]}"; }
  want x_direct_max && { log x_direct_max; cluster x_direct_max "$NO_REBALANCE" --mode direct --connections 200 --rate 0 --window 16 "${D[@]}"; }
  want s_bcast_1k && { log s_bcast_1k; single s_bcast_1k --mode broadcast --connections 1000 --senders 1 --rate 0 --window 16 "${D[@]}"; }
  want s_bcast_1k_r50 && { log s_bcast_1k_r50; single s_bcast_1k_r50 --mode broadcast --connections 1000 --senders 1 --rate 50 "${D[@]}"; }
  want x_bcast_3k && { log x_bcast_3k; cluster x_bcast_3k "$NO_REBALANCE" --mode broadcast --connections 3000 --senders 1 --rate 0 --window 16 "${D[@]}"; }
  want x_bcast_3k_r50 && { log x_bcast_3k_r50; cluster x_bcast_3k_r50 "$NO_REBALANCE" --mode broadcast --connections 3000 --senders 1 --rate 50 "${D[@]}"; }
  want x_rebalance_idle && { log x_rebalance_idle; cluster x_rebalance_idle "" --mode idle --connections 300 --hold-s 4; }
  want storm_10k && { log storm_10k; storm; }
  want rss_idle_10k && { log rss_idle_10k; rss_idle; }
  want rss_idle_py && { log rss_idle_py; rss_idle_py; }
done

# --- summary -----------------------------------------------------------------
"$PY" - "$RESULTS" "$OUT" <<'EOF'
import glob, json, os, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
by = {}
for r in rows:
    if r.get("server_cpu_s"):
        r["_per_cpu"] = r.get("received", 0) / r["server_cpu_s"]
    r["_closes_4002"] = (r.get("close_codes") or {}).get("4002", 0)
    by.setdefault(r["scenario"], []).append(r)

def vals(sc, key):
    return [r[key] for r in by.get(sc, []) if isinstance(r.get(key), (int, float)) and not r.get("failed")]

def fmt(v):
    if v is None: return "-"
    if abs(v) >= 100: return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"

lines = ["| figure | median | runs | min .. max |", "| --- | --- | --- | --- |"]
def row(label, sc, key, unit=""):
    v = vals(sc, key)
    if not v:
        return
    lines.append(f"| {label} | {fmt(statistics.median(v))} {unit} | {len(v)} | {fmt(min(v))} .. {fmt(max(v))} |")

for sc, name in (("s_direct_20k", "single node, direct, 20k msg/s, 200 conns"),
                 ("x_direct_20k", "3 nodes + redis, cross-node direct, 20k msg/s, 200 conns")):
    row(f"{name}: delivered msg/s", sc, "delivered_per_s")
    row(f"{name}: msgs per server-side CPU-s", sc, "_per_cpu")
    for k in ("p50", "p90", "p99", "max"):
        row(f"{name}: latency {k}", sc, f"lat_{k}_us", "us")
    row(f"{name}: lost", sc, "lost")
for sc, name in (("s_direct_max", "single node, direct, max rate (window 16/client)"),
                 ("x_direct_max", "3 nodes + redis, cross-node direct, max rate (window 16/client)")):
    row(f"{name}: delivered msg/s", sc, "delivered_per_s")
    row(f"{name}: msgs per server-side CPU-s", sc, "_per_cpu")
    row(f"{name}: latency p50", sc, "lat_p50_us", "us")
    row(f"{name}: latency p99", sc, "lat_p99_us", "us")
    row(f"{name}: lost", sc, "lost")
for sc, name in (("s_bcast_1k", "single node, broadcast, 1000 conns, 1 sender, max (window 16)"),
                 ("x_bcast_3k", "3 nodes + redis, broadcast, 3000 conns, 1 sender, max (window 16)"),
                 ("s_bcast_1k_r50", "single node, broadcast, 1000 conns, 50 bcast/s"),
                 ("x_bcast_3k_r50", "3 nodes + redis, broadcast, 3000 conns, 50 bcast/s")):
    row(f"{name}: deliveries/s", sc, "delivered_per_s")
    row(f"{name}: deliveries per server-side CPU-s", sc, "_per_cpu")
    row(f"{name}: delivery latency p50", sc, "lat_p50_us", "us")
    row(f"{name}: delivery latency p99", sc, "lat_p99_us", "us")
    row(f"{name}: lost", sc, "lost")
row("3 nodes, DEFAULT rebalancing, 300 idle conns spread evenly: 4002 closes", "x_rebalance_idle", "_closes_4002")
row("connection storm, 10k at once (2 procs): connect p50", "storm_10k", "connect_p50_us", "us")
row("connection storm, 10k at once (2 procs): connect p99", "storm_10k", "connect_p99_us", "us")
row("connection storm, 10k at once (2 procs): connect max", "storm_10k", "connect_max_us", "us")
row("connection storm, 10k at once (2 procs): failed", "storm_10k", "connect_fail")
row("10k idle: server VmRSS per connection", "rss_idle_10k", "rss_bytes_per_conn", "B")
row("10k idle: server RssAnon per connection", "rss_idle_10k", "rss_anon_bytes_per_conn", "B")
row("10k idle: server VmRSS before", "rss_idle_10k", "rss_before_kb", "kB")
row("10k idle: server VmRSS after", "rss_idle_10k", "rss_after_kb", "kB")
row("tools/rss_idle.py 10k: VmRSS per connection", "rss_idle_py", "rss_bytes_per_connection", "B")
row("tools/rss_idle.py 10k: RssAnon per connection", "rss_idle_py", "rss_anon_bytes_per_connection", "B")
la = [r["loadavg1"] for r in rows if isinstance(r.get("loadavg1"), (int, float))]
if la:
    lines.append(f"| load average (1 min) at scenario starts | {statistics.median(la):.2f} | {len(la)} | {min(la):.2f} .. {max(la):.2f} |")
print("\n".join(lines))

# Same-session ratios, cluster / single node, per run (runs are interleaved).
print("\ncluster / single-node ratios (median of per-run ratios; runs interleaved):")
def ratio(xs, ss, key, label):
    rs = []
    for x in by.get(xs, []):
        for s in by.get(ss, []):
            if s["run"] == x["run"] and s.get(key) and isinstance(x.get(key), (int, float)):
                rs.append(x[key] / s[key])
    if rs:
        print(f"  {label}: {statistics.median(rs):.2f}x  (runs: {', '.join(f'{r:.2f}' for r in rs)})")
ratio("x_direct_20k", "s_direct_20k", "lat_p50_us", "direct 20k msg/s latency p50")
ratio("x_direct_20k", "s_direct_20k", "lat_p99_us", "direct 20k msg/s latency p99")
ratio("x_direct_max", "s_direct_max", "delivered_per_s", "direct max-rate throughput")
ratio("x_direct_max", "s_direct_max", "_per_cpu", "direct msgs per server-side CPU-s")
ratio("x_bcast_3k", "s_bcast_1k", "delivered_per_s", "broadcast deliveries/s (3000 vs 1000 conns)")
ratio("x_bcast_3k", "s_bcast_1k", "_per_cpu", "broadcast deliveries per server-side CPU-s")

# Anything odd the servers counted or logged.
print("\nserver counters that were not zero (summed over each scenario's nodes and runs):")
watch = ("slow_consumer_closes_total", "transport_publish_failed_total", "transport_publish_lost_total",
         "transport_stale_dropped_total", "recv_buffers_exhausted_total", "rebalance_closes_total",
         "messages_undeliverable_total", "heartbeat_timeouts_total", "protocol_error_closes_total",
         "messages_invalid_total")
found = {}
for f in glob.glob(os.path.join(out, "*.metrics")):
    sc = os.path.basename(f).split(".")[0]
    for line in open(f, errors="replace"):
        if line.startswith("#"):
            continue
        m = re.match(r"wsgate_(\w+)\{[^}]*\}\s+([0-9.e+]+)", line)
        if m and m.group(1) in watch and float(m.group(2)) != 0:
            found[(sc, m.group(1))] = found.get((sc, m.group(1)), 0) + float(m.group(2))
for (sc, k), v in sorted(found.items()):
    print(f"  {sc}: {k} = {v:.0f}")
if not found:
    print("  none")
print("\nserver log lines other than start-up/shut-down (top 3 kinds per scenario):")
kinds = {}
skip = re.compile(r"^wsgate (listening|limits|warning: (open-file|no auth)|shutdown|stopped)")
for f in glob.glob(os.path.join(out, "*.err")):
    sc = os.path.basename(f).split(".")[0]
    for line in open(f, errors="replace"):
        if skip.match(line):
            continue
        key = re.sub(r"\d+", "N", line.strip())[:140]
        kinds.setdefault(sc, {}).setdefault(key, 0)
        kinds[sc][key] += 1
for sc, ks in sorted(kinds.items()):
    for k, n in sorted(ks.items(), key=lambda kv: -kv[1])[:3]:
        print(f"  {sc}: {n} x {k}")
if not kinds:
    print("  none")
print(f"\nraw results: {sys.argv[1]}")
EOF
