#!/usr/bin/env bash
# Benchmark comparison: runs the `mqtter bench` scenarios against MQTTER, Mosquitto and rumqttd on loopback, alternating brokers, and prints the figures side by side.
#
# Usage: benches/compare.sh
#
# Environment (all optional):
#   BROKERS       brokers to measure (default "mqtter mqtter-async mosquitto rumqttd");
#                 mqtter-async is MQTTER with `durability = "async"`, measured on the QoS 1
#                 and IM scenarios only
#   SCENARIOS     scenarios; each runs against every broker in turn before the next one
#                 (default: every plain-MQTT scenario, then the IM ones, which run against
#                 MQTTER only; `conns` always gets freshly started brokers, which are
#                 restarted after it; the sustain-* scenarios run last, against brokers
#                 restarted with their default queue limits)
#   ROUNDS        rounds (default 3); each round starts fresh brokers and rotates their order;
#                 the table shows the median over rounds
#   BENCH_ARGS    extra arguments for `mqtter bench`, e.g. "--quick" or "--connections 5000"
#   TIMEOUT_SECS  bound for one scenario (default 60)
#   MQTTER_BIN    the mqtter binary (default: target/release/mqtter, built by this script)
#   BENCH_BIN     binary whose `bench` subcommand generates the load (default: $MQTTER_BIN)
#   SKIP_BUILD=1  do not run `cargo build --release`
#   OUT_DIR       where the JSON results, logs and summary go
#                 (default: target/bench-compare/<timestamp>)
#
# Only loopback addresses are used. Every process this script starts is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROKERS="${BROKERS:-mqtter mqtter-async mosquitto rumqttd}"
SCENARIOS="${SCENARIOS:-conns pairs-qos0 pairs-qos1 pairs-qos0-rate pairs-qos1-rate fanout-qos0 fanout-qos1 fanin-qos0 fanin-qos1 im-direct im-direct-ref im-group im-group-ref im-reconnect sustain-pairs2-qos0 sustain-pairs2-qos1 sustain-pairs10-qos0 sustain-pairs10-qos1 sustain-fanout8-qos0 sustain-fanout8-qos1}"
ROUNDS="${ROUNDS:-3}"
BENCH_ARGS="${BENCH_ARGS:-}"
TIMEOUT_SECS="${TIMEOUT_SECS:-60}"
MQTTER_BIN="${MQTTER_BIN:-$ROOT/target/release/mqtter}"
BENCH_BIN="${BENCH_BIN:-$MQTTER_BIN}"
SKIP_BUILD="${SKIP_BUILD:-0}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench-compare/$(date +%Y%m%d-%H%M%S)}"
RUMQTTD_VERSION="0.20.0"

TMP="$(mktemp -d /tmp/mqtter-compare.XXXXXX)"
declare -A PID=()
declare -A PORT=()
DEFAULT_QUEUES=0
# 1 while brokers are started for `conns` (MQTTER then starts without the IM accounts).
CONNS_PHASE=0

log() { printf '%s\n' "$*" >&2; }

stop_brokers() {
  local b
  for b in "${!PID[@]}"; do
    if kill -0 "${PID[$b]}" 2>/dev/null; then
      kill "${PID[$b]}" 2>/dev/null || true
      # Give it a moment, then insist.
      for _ in $(seq 1 50); do
        kill -0 "${PID[$b]}" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "${PID[$b]}" 2>/dev/null || true
    fi
    wait "${PID[$b]}" 2>/dev/null || true
    unset 'PID[$b]'
  done
}

cleanup() {
  stop_brokers
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- peers -----------------------------------------------------------------------------

install_peers() {
  if [[ " $BROKERS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
    log "installing mosquitto (Debian package)"
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto >/dev/null
  fi
  if [[ " $BROKERS " == *" rumqttd "* ]]; then
    RUMQTTD_BIN="$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")"
    if ! [[ -x "$RUMQTTD_BIN" ]] || ! "$RUMQTTD_BIN" --version 2>/dev/null | grep -q " $RUMQTTD_VERSION\$"; then
      log "installing rumqttd $RUMQTTD_VERSION with cargo install (outside the workspace)"
      local build
      build="$(mktemp -d /tmp/rumqttd-build.XXXXXX)"
      # --locked pins metrics 0.22.1, which recent compilers reject; then fall back to
      # the newest compatible dependencies.
      if ! (cd "$HOME" && CARGO_TARGET_DIR="$build" cargo install rumqttd --version "$RUMQTTD_VERSION" --locked); then
        (cd "$HOME" && CARGO_TARGET_DIR="$build" cargo install rumqttd --version "$RUMQTTD_VERSION")
      fi
      rm -rf "$build"
      RUMQTTD_BIN="$HOME/.cargo/bin/rumqttd"
    fi
  fi
  if ! command -v python3 >/dev/null; then
    log "installing python3 (for the summary table)"
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y python3 >/dev/null
  fi
}

build_mqtter() {
  if [[ "$SKIP_BUILD" == 1 ]]; then
    return
  fi
  if [[ " $BROKERS " == *" mqtter"* || "$BENCH_BIN" == "$ROOT/target/release/mqtter" ]]; then
    log "building mqtter (release)"
    (cd "$ROOT" && cargo build --release --bin mqtter)
  fi
}

# ---- brokers ---------------------------------------------------------------------------

# Sets FREE_PORT to a loopback port below the ephemeral range that nothing listens on.
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 10000))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      FREE_PORT="$p"
      return 0
    fi
  done
  log "no free loopback port found"
  return 1
}

wait_port() {
  local name="$1" port="$2" pid="$3"
  for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during startup; its log:"
      cat "$TMP/$name.log" >&2 || true
      return 1
    fi
    if [[ "$name" == mqtter* ]]; then
      # MQTTER binds before it loads the definitions; it says when it serves.
      if grep -q "mqtter listening" "$TMP/$name.log" 2>/dev/null; then
        return 0
      fi
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "$name did not listen on 127.0.0.1:$port within 60 s"
  return 1
}

# Whether scenario $2 runs against broker $1: the IM world is MQTTER's alone, and
# mqtter-async differs from mqtter only where acknowledgements wait for durability.
applies() {
  local b="$1" s="$2"
  case "$b:$s" in
    mqtter:*) return 0 ;;
    mqtter-async:im-*-ref) return 1 ;;
    mqtter-async:*qos1* | mqtter-async:im-*) return 0 ;;
    mqtter-async:*) return 1 ;;
    *:im-*) return 1 ;;
    *) return 0 ;;
  esac
}

start_broker() {
  local b="$1" port
  free_port
  port="$FREE_PORT"
  case "$b" in
    mosquitto)
      # Equivalent limits: no connection cap, 100 QoS 1 messages in flight per client,
      # unbounded queues (no QoS 1 drops), TCP_NODELAY, no persistence. For the sustain-*
      # scenarios, its default queue (max_queued_messages 1000).
      local queued=0
      [[ "$DEFAULT_QUEUES" == 1 ]] && queued=1000
      cat >"$TMP/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
max_inflight_messages 100
max_queued_messages $queued
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
      mosquitto -c "$TMP/mosquitto.conf" >"$TMP/$b.log" 2>&1 &
      ;;
    rumqttd)
      # No delay between accepted connections, limits well above what the scenarios use,
      # 100 QoS 1 messages in flight per client. (rumqttd 0.20 has no TCP_NODELAY setting.)
      cat >"$TMP/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 60010
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
EOF
      "$RUMQTTD_BIN" -q -c "$TMP/rumqttd.toml" >"$TMP/$b.log" 2>&1 &
      ;;
    mqtter | mqtter-async)
      # A fresh, empty data directory on every start, like the peers' disabled persistence.
      # The configuration carries the IM scenarios' accounts (`mqtter bench --im-setup`) and
      # queues as unbounded as the peers' (Mosquitto's max_queued_messages 0), so that a
      # subscriber behind on QoS 0 is not dropped messages the peers would keep.
      rm -rf "$TMP/$b-data"
      mkdir -p "$TMP/$b-data"
      # For `conns` it starts empty, like the peers: loading thousands of accounts first
      # leaves freed memory that the connections then reuse, hiding what they cost.
      local durability=sync config=()
      [[ "$b" == mqtter-async ]] && durability=async
      # For the sustain-* scenarios, its defaults (max_queued 1000, backpressure).
      [[ "$CONNS_PHASE" == 1 || "$DEFAULT_QUEUES" == 1 ]] || config=(--config "$TMP/im/mqtter.toml")
      "$MQTTER_BIN" serve "${config[@]}" --listen "127.0.0.1:$port" \
        --ws-listen off --allow-anonymous --data "$TMP/$b-data" --durability "$durability" \
        >"$TMP/$b.log" 2>&1 &
      ;;
    *)
      log "unknown broker $b (known: mqtter mqtter-async mosquitto rumqttd)"
      return 1
      ;;
  esac
  PID[$b]=$!
  PORT[$b]=$port
  wait_port "$b" "$port" "${PID[$b]}"
  log "started $b (pid ${PID[$b]}) on 127.0.0.1:$port"
}

start_all() {
  local b
  for b in "$@"; do
    start_broker "$b"
  done
  sleep 1
}

# Sum of user+system CPU ticks of the running brokers.
broker_ticks() {
  local total=0 b t
  for b in "${!PID[@]}"; do
    t="$(awk '{print $14 + $15}' "/proc/${PID[$b]}/stat" 2>/dev/null || echo 0)"
    total=$((total + t))
  done
  echo "$total"
}

# Waits (at most 30 s) until no broker is still busy with the previous scenario.
wait_idle() {
  local before after
  for _ in $(seq 1 60); do
    before="$(broker_ticks)"
    sleep 0.5
    after="$(broker_ticks)"
    if ((after - before <= 2)); then
      return 0
    fi
  done
  log "  brokers still busy after 30 s; going on"
}

# Percentage of CPU time the whole machine spent busy over one second (from /proc/stat).
machine_busy_pct() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 1
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local busy=0 total=0 i d
  for i in 1 2 3 4 5 6 7 8; do
    d=$((b[i] - a[i]))
    total=$((total + d))
    # idle (4) and iowait (5) are not busy.
    if ((i != 4 && i != 5)); then
      busy=$((busy + d))
    fi
  done
  if ((total > 0)); then
    echo $((100 * busy / total))
  else
    echo 0
  fi
}

# ---- run -------------------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
install_peers
build_mqtter
if ! [[ -x "$BENCH_BIN" ]]; then
  log "no load generator at $BENCH_BIN (set BENCH_BIN or MQTTER_BIN)"
  exit 1
fi
if [[ " $BROKERS " == *" mqtter"* ]] && ! [[ -x "$MQTTER_BIN" ]]; then
  log "no mqtter binary at $MQTTER_BIN"
  exit 1
fi
mkdir -p "$OUT_DIR"
# The IM scenarios' persons, friendships and group, for MQTTER's `rules_dir`.
# shellcheck disable=SC2086 # BENCH_ARGS is a list of words on purpose
"$BENCH_BIN" bench --im-setup "$TMP/im" $BENCH_ARGS 2>/dev/null
cat >>"$TMP/im/mqtter.toml" <<EOF

[limits]
max_queued = 10000000
EOF
cp "$TMP/im/mqtter.toml" "$OUT_DIR/mqtter.toml"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus: $(nproc)"
  echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
  echo "kernel: $(uname -r)"
  echo "open files limit: $(ulimit -n)"
  command -v mosquitto >/dev/null && echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1 || true)"
  [[ -n "${RUMQTTD_BIN:-}" ]] && echo "rumqttd: $("$RUMQTTD_BIN" --version 2>/dev/null || true)"
  echo "mqtter: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "bench args: $BENCH_ARGS"
  echo "rounds: $ROUNDS"
} >"$OUT_DIR/environment.txt"

read -r -a broker_list <<<"$BROKERS"
read -r -a scenario_list <<<"$SCENARIOS"
started_at=$SECONDS
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so that no broker always goes first.
  n=${#broker_list[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do
    order+=("${broker_list[$(((i + round - 1) % n))]}")
  done
  log "round $round/$ROUNDS: ${order[*]}"
  busy="$(machine_busy_pct)"
  echo "round $round: machine busy ${busy}% before start" >>"$OUT_DIR/environment.txt"
  if ((busy > 10)); then
    log "warning: the machine is ${busy}% busy with other work; figures will be noisy"
  fi
  [[ "${scenario_list[0]}" == conns ]] && CONNS_PHASE=1
  DEFAULT_QUEUES=0
  [[ "${scenario_list[0]}" == sustain-* ]] && DEFAULT_QUEUES=1
  start_all "${order[@]}"
  fresh=1
  for s in "${scenario_list[@]}"; do
    # `conns` reads the brokers' memory: it gets freshly started brokers, and the brokers
    # are restarted after it, so that 10k closed connections do not weigh on what follows.
    if [[ "$s" == conns && "$fresh" == 0 ]]; then
      stop_brokers
      CONNS_PHASE=1
      start_all "${order[@]}"
    fi
    # The sustained scenarios measure the brokers as configured by default: restarted once
    # with their default queue limits.
    if [[ "$s" == sustain-* && "$DEFAULT_QUEUES" == 0 ]]; then
      stop_brokers
      DEFAULT_QUEUES=1
      start_all "${order[@]}"
    fi
    fresh=0
    for b in "${order[@]}"; do
      applies "$b" "$s" || continue
      wait_idle
      json="$OUT_DIR/$b--$s--r$round.json"
      # shellcheck disable=SC2086 # BENCH_ARGS is a list of words on purpose
      if "$BENCH_BIN" bench --broker "127.0.0.1:${PORT[$b]}" --scenario "$s" \
        --broker-pid "${PID[$b]}" --timeout-secs "$TIMEOUT_SECS" --json "$json" $BENCH_ARGS \
        >>"$OUT_DIR/bench.log" 2>&1; then
        log "  $s on $b: $(tail -n 1 "$OUT_DIR/bench.log")"
      else
        log "  $s on $b: bench failed, see $OUT_DIR/bench.log"
      fi
      if ! kill -0 "${PID[$b]}" 2>/dev/null; then
        log "  $b has exited; its log:"
        tail -n 20 "$TMP/$b.log" >&2 || true
        cp "$TMP/$b.log" "$OUT_DIR/$b-r$round.log" 2>/dev/null || true
        start_broker "$b"
      fi
    done
    if [[ "$s" == conns ]]; then
      for b in "${order[@]}"; do
        cp "$TMP/$b.log" "$OUT_DIR/$b-r$round-conns.log" 2>/dev/null || true
      done
      stop_brokers
      CONNS_PHASE=0
      start_all "${order[@]}"
      fresh=1
    fi
  done
  for b in "${order[@]}"; do
    cp "$TMP/$b.log" "$OUT_DIR/$b-r$round.log" 2>/dev/null || true
  done
  stop_brokers
done
log "measured in $((SECONDS - started_at)) s; results in $OUT_DIR"

python3 - "$OUT_DIR" "$BROKERS" "$SCENARIOS" <<'PY' | tee "$OUT_DIR/summary.md"
import glob, json, os, statistics, sys

out_dir, brokers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
runs = {}
for path in glob.glob(os.path.join(out_dir, "*--*--r*.json")):
    broker, _, _ = os.path.basename(path).split("--")
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError):
        continue
    for r in records:
        runs.setdefault((broker, r["name"]), []).append(r)

IDLE = [("conn_per_sec", "conn/s"), ("rss_per_conn_bytes", "RSS bytes/conn")]
MSG = [
    ("msgs_per_sec", "msgs/s"),
    ("p50_us", "p50 us"),
    ("p99_us", "p99 us"),
    ("p999_us", "p99.9 us"),
    ("lost", "lost"),
    ("broker_cpu_secs", "broker CPU s"),
]
RECONNECT = [
    ("seconds", "secs to sync.done"),
    ("msgs_per_sec", "msgs/s"),
    ("lost", "lost"),
    ("broker_cpu_secs", "broker CPU s"),
]

def figure(broker, scenario, key):
    vals = [r[key] for r in runs.get((broker, scenario), []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"

def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"

def errors(broker, scenario):
    return [r["error"] for r in runs.get((broker, scenario), []) if r.get("error")]

names = {"mqtter": "MQTTER", "mqtter-async": "MQTTER async", "mosquitto": "Mosquitto", "rumqttd": "rumqttd"}
shown = [b for b in ("mqtter", "mqtter-async", "mosquitto", "rumqttd") if b in brokers]
cols = ["scenario", "figure"] + [names[b] for b in shown] + ["MQTTER/Mosquitto", "MQTTER/rumqttd"]
rows = []
for s in scenarios:
    keys = IDLE if s == "conns" else RECONNECT if s == "im-reconnect" else MSG
    for key, label in keys:
        vals = {b: figure(b, s, key) for b in shown}
        m = vals.get("mqtter")
        rows.append([s, label] + [fmt(vals[b]) for b in shown]
                    + [ratio(m, vals.get("mosquitto")), ratio(m, vals.get("rumqttd"))])

print("Median over rounds. Ratio = MQTTER / peer: above 1 is better for msgs/s and conn/s,")
print("worse for latency, memory, CPU and losses.")
print()
print("| " + " | ".join(cols) + " |")
print("|" + "|".join("---" for _ in cols) + "|")
for row in rows:
    print("| " + " | ".join(row) + " |")

# The IM figures against MQTTER's own plain ones (the targets of docs/BENCHMARKS.md).
im = []
for b in ("mqtter", "mqtter-async"):
    if b not in shown:
        continue
    d, q1 = figure(b, "im-direct", "msgs_per_sec"), figure(b, "pairs-qos1", "msgs_per_sec")
    if q1 is None:
        q1 = figure("mqtter", "pairs-qos1", "msgs_per_sec")
    g, fo = figure(b, "im-group", "msgs_per_sec"), figure("mqtter", "fanout-qos1", "msgs_per_sec")
    # The references: the same connections and load in plain MQTT, on the same broker.
    dref = figure(b, "im-direct-ref", "msgs_per_sec") or figure("mqtter", "im-direct-ref", "msgs_per_sec")
    gref = figure(b, "im-group-ref", "msgs_per_sec") or figure("mqtter", "im-group-ref", "msgs_per_sec")
    if d is not None:
        im.append(f"| {names[b]} | im-direct / pairs-qos1 | {ratio(d, q1)} |")
        if dref is not None:
            im.append(f"| {names[b]} | im-direct / im-direct-ref | {ratio(d, dref)} |")
    if g is not None:
        im.append(f"| {names[b]} | im-group / fanout-qos1 | {ratio(g, fo)} |")
        if gref is not None:
            im.append(f"| {names[b]} | im-group / im-group-ref | {ratio(g, gref)} |")
if im:
    print()
    print("| broker | IM figure / plain figure | ratio |")
    print("|---|---|---|")
    print("\n".join(im))
problems = [(b, s, e) for b in brokers for s in scenarios for e in errors(b, s)]
if problems:
    print()
    print("Errors:")
    for b, s, e in problems:
        print(f"- {b} {s}: {e}")
PY
