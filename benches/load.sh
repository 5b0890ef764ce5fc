#!/usr/bin/env bash
# Load test: Gantry vs nginx as reverse proxies in front of the same upstream, on this machine,
# then the cost of Gantry's authentication plugins against Gantry's plain route.
#
#   benches/load.sh                 # 3 alternating rounds of 10 s each, 50 connections
#   ROUNDS=5 DURATION=20s CONNS=100 benches/load.sh
#   REDIS_POOL_SIZE=4 PLUGINS_ONLY=1 benches/load.sh   # tune [redis] pool_size; skip nginx
#   REDIS_UNIX=1 benches/load.sh                        # reach Redis over a Unix socket
#   CACHE_ONLY=1 benches/load.sh                        # only the cached-hit comparison
#   LOG_ONLY=1 ROUNDS=5 benches/load.sh                 # only the access log's cost
#   PROXY_ONLY=1 CONNS=1000 benches/load.sh             # only Gantry against nginx
#   RESILIENCE_ONLY=1 ROUNDS=5 benches/load.sh          # only the balancers and resilience
#   TRACING_ONLY=1 ROUNDS=5 benches/load.sh             # only tracing's cost
#   GANTRY=/tmp/gantry-abc123 benches/load.sh           # that binary, not a fresh release build
#
# Upstream: nginx, one worker, answering a small body. Both proxies write an access log to a
# file (nginx combined, buffered; Gantry JSON). A second Gantry without the log measures its
# cost: both Gantrys are loaded at the same time on the same core, so the machine's changes of
# speed (large here: from one 10 s run to the next, +-20%) hit both alike, and the ratio of
# their throughputs is the log's cost. Proxies: nginx (one worker, upstream
# keepalive, request id and X-Forwarded-For set) and Gantry (one thread, health checks on,
# request ids on). The proxy under test is pinned to CPU 0; the upstream and wrk share CPU 1,
# so the proxy is the bottleneck. Prints req/s and p50/p99 latency per run, then the medians
# and the ratio Gantry/nginx. Then the same Gantry serves /jwt (jwt-auth, RS256, one token
# reused as clients do), /key (key-auth), /limited (rate-limit, local, never hit) and
# /redis-limited (rate-limit, policy redis, never hit, against a local redis-server on CPU 1),
# compared with its plain route. Last, cached hits: nginx's proxy_cache against Gantry's cache
# plugin on /cached (the upstream is asked once; every measured request is a hit).
# With RESILIENCE_ONLY, the same Gantry's plain route (round robin, the retries shorthand)
# against /least (balancer = "least_request"), /ewma ("peak_ewma") and /resilient (round robin
# with a [retry] table, [outlier] detection, max_requests and a route timeout, none triggered),
# each a cluster of the same upstream, in alternating rounds.
# With TRACING_ONLY, the plain route of the main Gantry (no [tracing]) against a second Gantry,
# the same config plus [tracing] (default batching) whose collector is the upstream nginx
# (`location = /v1/traces`, answers 200): its plain route (the global sample_ratio = 0.0), /t5
# (route ratio 0.05) and /t100 (1.0, every request exported); and a third, the same as the
# second but with its collector hung (a Python listener that accepts connections and never
# reads or answers), on /t100: requests must not wait on it. Every run is on the same CPU 0 with
# the same connections and duration, the order rotated each round; afterwards the span counters
# of both traced Gantrys (from their [admin] /metrics) show what was exported and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/harness.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
PATH_UNDER_TEST=${PATH_UNDER_TEST:-/bench}
REDIS_POOL_SIZE=${REDIS_POOL_SIZE:-16}
PLUGINS_ONLY=${PLUGINS_ONLY:-}
REDIS_UNIX=${REDIS_UNIX:-}
CACHE_ONLY=${CACHE_ONLY:-}
LOG_ONLY=${LOG_ONLY:-}
PROXY_ONLY=${PROXY_ONLY:-}
RESILIENCE_ONLY=${RESILIENCE_ONLY:-}
TRACING_ONLY=${TRACING_ONLY:-}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "install ${need[*]} first: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${GANTRY:-}" ]; then
  cargo build --release --quiet
  GANTRY=target/release/gantry
fi

work=$(mktemp -d)
# nginx's workers (user nobody when started as root) write its proxy_cache here.
mkdir -m 777 "$work/nginx-cache" && chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=$(free_port); NGX=$(free_port); GAN=$(free_port); REDIS=$(free_port); NOLOG=$(free_port)
TRC=$(free_port); HUNG=$(free_port); HUNG_COLLECTOR=$(free_port); TRC_ADMIN=$(free_port); HUNG_ADMIN=$(free_port)

cat > "$work/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log $work/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { return 200 "hello from the upstream\n"; }
    # The traced Gantry's OTLP collector (TRACING_ONLY): reads and discards each export.
    location = /v1/traces { client_max_body_size 16m; return 200 ""; }
  }
}
CONF

cat > "$work/proxy.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy.err warn;
events { worker_connections 4096; }
http {
  # Both proxies log every request to a file, as users run them.
  access_log $work/nginx-access.log combined buffer=64k flush=1s;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;
  server {
    listen 127.0.0.1:$NGX;
    location /cached {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 60s;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
      add_header X-Request-Id \$request_id;
    }
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
    }
  }
}
CONF

redis_url="redis://127.0.0.1:$REDIS"
[ -n "$REDIS_UNIX" ] && redis_url="unix://$work/redis.sock"
cat > "$work/gantry.toml" <<CONF
[server]
listen = ["127.0.0.1:$GAN"]
threads = 1
pid_file = "$work/gantry.pid"
upgrade_sock = "$work/gantry.sock"

[log]                        # on, as users run it (the nolog instance measures its cost)
access = "$work/access.log"
format = "json"

[clusters.backend]
backends = ["127.0.0.1:$UP"]
[clusters.backend.health_check]
type = "http"
path = "/"
interval = "1s"

[routes.bench]
paths = ["/"]
cluster = "backend"

$(resilience_routes "127.0.0.1:$UP")

[routes.cached]
paths = ["/cached"]
cluster = "backend"
[routes.cached.plugins.cache]
default_ttl = "60s"

[consumers.bench]
keys = ["bench-key-0123456789"]

[routes.jwt]
paths = ["/jwt"]
cluster = "backend"
[routes.jwt.plugins.jwt-auth]
algorithms = ["RS256"]
public_key_file = "$PWD/tests/fixtures/jwt/rsa1.pub"

[routes.key]
paths = ["/key"]
cluster = "backend"
[routes.key.plugins.key-auth]

[routes.limited]
paths = ["/limited"]
cluster = "backend"
[routes.limited.plugins.rate-limit]
limits = [{ requests = 100000000, per = "1s" }]   # never hit: the cost of counting

[redis]
url = "$redis_url"
pool_size = $REDIS_POOL_SIZE

[routes.redis_limited]
paths = ["/redis-limited"]
cluster = "backend"
[routes.redis_limited.plugins.rate-limit]
limits = [{ requests = 100000000, per = "1s" }]
policy = "redis"
on_store_error = "deny"                             # a Redis failure shows up as non-2xx
CONF

TOKEN=$(rs256_token)

taskset -c 1 "$NGINX" -c "$work/upstream.conf" -p "$work" & pids+=($!)
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --unixsocket "$work/redis.sock" --save "" --appendonly no --dir "$work" >/dev/null & pids+=($!)
taskset -c 0 "$NGINX" -c "$work/proxy.conf" -p "$work" & pids+=($!); nginx_master=$!
RUST_LOG=error taskset -c 0 "$GANTRY" -c "$work/gantry.toml" 2>"$work/gantry.err" & pids+=($!); gantry_pid=$!
# The same Gantry without the access log: what logging costs.
sed -e "s/127.0.0.1:$GAN/127.0.0.1:$NOLOG/" -e "s#$work/gantry.pid#$work/nolog.pid#" \
    -e "s#$work/gantry.sock#$work/nolog.sock#" -e "s#^access = .*#access = \"off\"#" \
    "$work/gantry.toml" > "$work/nolog.toml"
RUST_LOG=error taskset -c 0 "$GANTRY" -c "$work/nolog.toml" 2>"$work/nolog.err" & pids+=($!); nolog_pid=$!
declare -A cpu_pid=() gantry_port=([gantry]=$GAN)
serving=("$UP" "$NGX" "$GAN" "$NOLOG")
if [ -n "$TRACING_ONLY" ]; then
  # traced_conf NAME PORT ADMIN COLLECTOR: the main Gantry's config with [tracing] (global
  # ratio 0.0, the collector at COLLECTOR), [admin] on ADMIN and the routes /t5 and /t100.
  traced_conf() {
    sed -e "s/127.0.0.1:$GAN/127.0.0.1:$2/" -e "s#$work/gantry.pid#$work/$1.pid#" \
        -e "s#$work/gantry.sock#$work/$1.sock#" -e "s#$work/access.log#$work/$1-access.log#" \
        "$work/gantry.toml" > "$work/$1.toml"
    traced_tables "$3" "$4" backend >> "$work/$1.toml"
  }
  # The hung collector: accepts every connection, never reads, never answers.
  taskset -c 1 python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True:
    held.append(s.accept()[0])
' "$HUNG_COLLECTOR" & pids+=($!)
  traced_conf traced "$TRC" "$TRC_ADMIN" "127.0.0.1:$UP"
  traced_conf hung "$HUNG" "$HUNG_ADMIN" "127.0.0.1:$HUNG_COLLECTOR"
  RUST_LOG=error taskset -c 0 "$GANTRY" -c "$work/traced.toml" 2>"$work/traced.err" & pids+=($!); cpu_pid[traced]=$!
  RUST_LOG=error taskset -c 0 "$GANTRY" -c "$work/hung.toml" 2>"$work/hung.err" & pids+=($!); cpu_pid[hung]=$!
  gantry_port[traced]=$TRC; gantry_port[hung]=$HUNG
  serving+=("$TRC" "$HUNG")
fi

for port in "${serving[@]}"; do
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$port$PATH_UNDER_TEST" && break
    sleep 0.1
  done
  curl -fs -o /dev/null "http://127.0.0.1:$port$PATH_UNDER_TEST" || { echo "port $port not serving" >&2; cat "$work"/*.err >&2; exit 1; }
done

nginx_worker=$(pgrep -P "$nginx_master" | head -1)
cpu_pid+=([nginx]=$nginx_worker [gantry]=$gantry_pid [nolog]=$nolog_pid)
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk prints latency with units; normalise to milliseconds.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

run() { # name port [path [header]] -> "rps p50 p99 cpu_us_per_request"
  local out before after path=${3:-$PATH_UNDER_TEST}
  local -a hdr=()
  [ -n "${4:-}" ] && hdr=(-H "$4")
  before=$(cpu_ticks "${cpu_pid[$1]}")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "http://127.0.0.1:$2$path")
  after=$(cpu_ticks "${cpu_pid[$1]}")
  local rps p50 p99 errs total cpu
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  [ -n "$errs" ] && echo "  $1: $errs" >&2
  total=$(echo "$out" | awk '/requests in/ {print $1}')
  cpu=$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$total" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  echo "$rps $p50 $p99 $cpu"
}

# Warm both (pools, caches) before measuring.
taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NGX$PATH_UNDER_TEST" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$GAN$PATH_UNDER_TEST" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NOLOG$PATH_UNDER_TEST" >/dev/null
if [ -n "$TRACING_ONLY" ]; then
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$TRC/t100" >/dev/null
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$HUNG/t100" >/dev/null
fi

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# paired TITLE PATH A:PORT B:PORT: alternating rounds of A and B on PATH (A first in odd rounds,
# B first in even ones, so a drift in the machine's speed favours neither); prints each run,
# then the medians and the ratio B/A, and sets A_2..A_5 and B_2..B_5 (req/s, p50, p99, cpu).
paired() {
  local title=$1 path=$2 a=${3%%:*} b=${4%%:*} results="$work/results.$RANDOM"
  printf "%-7s %-6s %12s %9s %9s %11s\n" round "$title" "req/s" "p50 ms" "p99 ms" "cpu us/req"
  for r in $(seq "$ROUNDS"); do
    local order=("$3" "$4")
    [ $((r % 2)) -eq 0 ] && order=("$4" "$3")
    for pair in "${order[@]}"; do
      local name=${pair%%:*} port=${pair##*:} rps p50 p99 cpu
      read -r rps p50 p99 cpu < <(run "$name" "$port" "$path")
      printf "%-7s %-6s %12s %9s %9s %11s\n" "$r" "$name" "$rps" "$p50" "$p99" "$cpu"
      echo "$name $rps $p50 $p99 $cpu" >> "$results"
    done
  done
  for name in "$a" "$b"; do
    for col in 2 3 4 5; do
      eval "${name}_$col=$(awk -v n="$name" -v c="$col" '$1==n {print $c}' "$results" | median)"
    done
    eval "printf 'median  %-6s %12.0f %9.3f %9.3f %11.2f\n' $name \$${name}_2 \$${name}_3 \$${name}_4 \$${name}_5"
  done
  eval "awk -v a=\$${a}_2 -v b=\$${b}_2 -v a3=\$${a}_3 -v b3=\$${b}_3 -v a4=\$${a}_4 -v b4=\$${b}_4 -v a5=\$${a}_5 -v b5=\$${b}_5" \
    "'BEGIN { printf \"ratio $b/$a: req/s %.2f   p50 %.2f   p99 %.2f   cpu/req %.2f (latency and cpu: lower is better)\\n\", b/a, b3/a3, b4/a4, b5/a5 }'"
}

# log_cost: Gantry with and without the access log, loaded at once (half the connections each,
# both on CPU 0); per round the requests each served and its CPU per request, then the median
# ratio of requests served.
log_cost() {
  printf "%-7s %12s %12s %11s %11s %7s\n" round "log req/s" "nolog req/s" "log us/req" "nolog us/req" ratio
  : > "$work/log_ratios"
  for r in $(seq "$ROUNDS"); do
    local a0 b0 a1 b1 bg nl nn
    a0=$(cpu_ticks "$gantry_pid"); b0=$(cpu_ticks "$nolog_pid")
    taskset -c 1 wrk -t1 -c$((CONNS / 2)) -d"$DURATION" "http://127.0.0.1:$GAN$PATH_UNDER_TEST" > "$work/log.out" & bg=$!
    taskset -c 1 wrk -t1 -c$((CONNS / 2)) -d"$DURATION" "http://127.0.0.1:$NOLOG$PATH_UNDER_TEST" > "$work/nolog.out"
    wait "$bg"
    a1=$(cpu_ticks "$gantry_pid"); b1=$(cpu_ticks "$nolog_pid")
    nl=$(awk '/requests in/ {print $1}' "$work/log.out"); nn=$(awk '/requests in/ {print $1}' "$work/nolog.out")
    awk -v r="$r" -v nl="$nl" -v nn="$nn" -v tl=$((a1 - a0)) -v tn=$((b1 - b0)) -v hz="$TICK" \
      -v rl="$(awk '/Requests\/sec/ {print $2}' "$work/log.out")" -v rn="$(awk '/Requests\/sec/ {print $2}' "$work/nolog.out")" \
      'BEGIN { printf "%-7s %12.0f %12.0f %11.2f %11.2f %7.3f\n", r, rl, rn, tl/hz*1e6/nl, tn/hz*1e6/nn, nl/nn }'
    awk -v nl="$nl" -v nn="$nn" 'BEGIN { print nl/nn }' >> "$work/log_ratios"
  done
  median < "$work/log_ratios" | awk '{ printf "access log (json, file): median ratio %.3f: costs %.1f%% of throughput\n", $1, (1 - $1) * 100 }'
}

if [ -z "$PLUGINS_ONLY$CACHE_ONLY$RESILIENCE_ONLY$TRACING_ONLY" ]; then
  [ -z "$LOG_ONLY" ] && paired server "$PATH_UNDER_TEST" "nginx:$NGX" "gantry:$GAN" && echo
  [ -n "$PROXY_ONLY" ] && exit 0
  log_cost
fi
[ -n "$LOG_ONLY" ] && exit 0

# Cached hits: nginx proxy_cache against Gantry's cache plugin.
if [ -z "$PLUGINS_ONLY$RESILIENCE_ONLY$TRACING_ONLY" ]; then
  for port in "$NGX" "$GAN"; do
    curl -fs -o /dev/null "http://127.0.0.1:$port/cached"
    hit=$(curl -fs -o /dev/null -D - "http://127.0.0.1:$port/cached" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status" {print $2}')
    [ "$hit" = "HIT" ] || { echo "port $port: /cached is not a cache hit ($hit)" >&2; exit 1; }
  done
  echo
  paired cached /cached "nginx:$NGX" "gantry:$GAN"
fi
[ -n "$CACHE_ONLY" ] && exit 0

# compare_routes SPEC...: each route of SPEC ("name|path|header|process", the process gantry
# unless named: a key of gantry_port), the first the reference, in ROUNDS rounds of one run
# each, the order rotated by one each round (so a drift of the machine's speed favours no
# route); prints each run, then the medians and each route's cost in throughput against the
# first.
compare_routes() {
  local results="$work/routes.$RANDOM" spec name path header proc rps p50 p99 cpu busy first= i
  local -a specs=("$@")
  printf "%-7s %-9s %12s %9s %9s %11s %6s\n" round route "req/s" "p50 ms" "p99 ms" "cpu us/req" "busy"
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $(($# - 1))); do
      spec=${specs[$(( (i + r - 1) % $# ))]}
      IFS='|' read -r name path header proc <<< "$spec"
      proc=${proc:-gantry}
      read -r rps p50 p99 cpu < <(run "$proc" "${gantry_port[$proc]}" "$path" "$header")
      # busy: the share of its core Gantry used; under 100% the other core (wrk, the upstream,
      # Redis) was the bottleneck, not Gantry.
      busy=$(awk -v c="$cpu" -v r="$rps" 'BEGIN {printf "%.0f%%", c * r / 1e4}')
      printf "%-7s %-9s %12s %9s %9s %11s %6s\n" "$r" "$name" "$rps" "$p50" "$p99" "$cpu" "$busy"
      echo "$name $rps $p50 $p99 $cpu" >> "$results"
    done
  done
  for spec in "$@"; do
    name=${spec%%|*}
    rps=$(awk -v n="$name" '$1==n {print $2}' "$results" | median)
    cpu=$(awk -v n="$name" '$1==n {print $5}' "$results" | median)
    p99=$(awk -v n="$name" '$1==n {print $4}' "$results" | median)
    [ -n "$first" ] || first=$rps
    awk -v n="$name" -v r="$rps" -v c="$cpu" -v f="$first" -v p="$p99" \
      'BEGIN { printf "median  %-9s %12.0f req/s  %8.2f cpu us/req  cost vs the first %5.1f%%  p99 %.3f ms\n", n, r, c, (1 - r/f) * 100, p }'
  done
}

# concurrent_cost SPEC...: for each SPEC ("name|path|process"), the plain route of the main
# Gantry and PATH of that Gantry process loaded at the same time (half the connections each,
# both processes on CPU 0), in ROUNDS rounds; per run each side's req/s, p99 and CPU per
# request, and the ratio of requests served; then each case's median ratio: its cost.
concurrent_cost() {
  local spec name path proc r bg a0 b0 a1 b1 out="$work/concurrent.$RANDOM"
  printf "%-6s %-9s %11s %11s %10s %10s %10s %10s %7s\n" round case "plain r/s" "case r/s" \
    "plain p99" "case p99" "plain us" "case us" ratio
  for r in $(seq "$ROUNDS"); do
    for spec in "$@"; do
      IFS='|' read -r name path proc <<< "$spec"
      a0=$(cpu_ticks "$gantry_pid"); b0=$(cpu_ticks "${cpu_pid[$proc]}")
      taskset -c 1 wrk -t1 -c$((CONNS / 2)) -d"$DURATION" --latency "http://127.0.0.1:$GAN$PATH_UNDER_TEST" > "$work/plain.out" & bg=$!
      taskset -c 1 wrk -t1 -c$((CONNS / 2)) -d"$DURATION" --latency "http://127.0.0.1:${gantry_port[$proc]}$path" > "$work/case.out"
      wait "$bg"
      a1=$(cpu_ticks "$gantry_pid"); b1=$(cpu_ticks "${cpu_pid[$proc]}")
      for f in plain case; do
        awk '/Non-2xx|Socket errors/ {print "  '"$name"' ('"$f"'): " $0}' "$work/$f.out" >&2
      done
      awk -v r="$r" -v n="$name" -v ta=$((a1 - a0)) -v tb=$((b1 - b0)) -v hz="$TICK" \
        -v na="$(awk '/requests in/ {print $1}' "$work/plain.out")" -v nb="$(awk '/requests in/ {print $1}' "$work/case.out")" \
        -v ra="$(awk '/Requests\/sec/ {print $2}' "$work/plain.out")" -v rb="$(awk '/Requests\/sec/ {print $2}' "$work/case.out")" \
        -v pa="$(awk '$1=="99%" {print $2}' "$work/plain.out" | to_ms)" -v pb="$(awk '$1=="99%" {print $2}' "$work/case.out" | to_ms)" \
        'BEGIN { printf "%-6s %-9s %11.0f %11.0f %10.3f %10.3f %10.2f %10.2f %7.3f\n", r, n, ra, rb, pa, pb, ta/hz*1e6/na, tb/hz*1e6/nb, nb/na
                 printf "%s %f %f %f %f %f\n", n, nb/na, pa, pb, ta/hz*1e6/na, tb/hz*1e6/nb > "/dev/stderr" }' 2>> "$out"
    done
  done
  for spec in "$@"; do
    name=${spec%%|*}
    awk -v n="$name" '$1==n {print $2}' "$out" | median | awk -v n="$name" \
      -v pa="$(awk -v n="$name" '$1==n {print $3}' "$out" | median)" -v pb="$(awk -v n="$name" '$1==n {print $4}' "$out" | median)" \
      -v ca="$(awk -v n="$name" '$1==n {print $5}' "$out" | median)" -v cb="$(awk -v n="$name" '$1==n {print $6}' "$out" | median)" \
      '{ printf "median  %-9s ratio to plain %.3f: costs %5.1f%% of throughput; p99 %.3f ms (plain %.3f); cpu us/req %.2f (plain %.2f)\n", n, $1, (1 - $1) * 100, pb, pa, cb, ca }'
  done
}

if [ -n "$TRACING_ONLY" ]; then
  for path in /bench /t5 /t100; do
    curl -fs -o /dev/null "http://127.0.0.1:$TRC$path" || { echo "traced $path failed" >&2; exit 1; }
  done
  compare_routes "plain|/bench||gantry" "trace0|/bench||traced" "trace5|/t5||traced" \
    "trace100|/t100||traced" "hung100|/t100||hung"
  echo
  # Then each traced case loaded at the same time as the plain route (as log_cost does), which
  # holds on this machine when its speed drifts during the rounds above.
  concurrent_cost "trace0|/bench|traced" "trace5|/t5|traced" "trace100|/t100|traced" "hung100|/t100|hung"
  sleep 3   # one more batch interval: what was queued is exported (or dropped)
  for proc in traced hung; do
    port=$TRC_ADMIN; [ "$proc" = hung ] && port=$HUNG_ADMIN
    echo "$proc: $(curl -fs "http://127.0.0.1:$port/metrics" | grep '^gantry_tracing_spans' | tr '\n' ' ')"
  done
  exit 0
fi

if [ -n "$RESILIENCE_ONLY" ]; then
  for path in /least /ewma /resilient; do
    curl -fs -o /dev/null "http://127.0.0.1:$GAN$path" || { echo "$path failed" >&2; exit 1; }
  done
  compare_routes "plain|/bench|" "least|/least|" "ewma|/ewma|" "resilient|/resilient|"
  exit 0
fi

# Plugins: Gantry's plain route against jwt-auth and key-auth routes, alternating.
curl -fs -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GAN/jwt" || { echo "jwt route refused the token" >&2; exit 1; }
curl -fs -o /dev/null -H "x-api-key: bench-key-0123456789" "http://127.0.0.1:$GAN/key" || { echo "key route refused the key" >&2; exit 1; }
curl -fs -o /dev/null "http://127.0.0.1:$GAN/redis-limited" || { echo "redis-limited route failed (is redis-server up?)" >&2; exit 1; }
echo
compare_routes "plain|/bench|" "jwt|/jwt|Authorization: Bearer $TOKEN" "key|/key|x-api-key: bench-key-0123456789" \
  "limit|/limited|" "redis|/redis-limited|"
