#!/usr/bin/env bash
# CPU instructions per proxied request: Gantry's plain route against nginx as a reverse proxy
# and against a bare Pingora proxy (benches/floor/bare_pingora.rs, the smallest ProxyHttp),
# counted by valgrind's callgrind, so the figure does not depend on the machine's speed or load.
#
#   benches/instructions.sh                         # target/release/gantry (built if missing)
#   benches/instructions.sh /path/to/other/gantry   # e.g. the binary of an older commit
#   REQUESTS=50000 CONNS=10 benches/instructions.sh
#   PROXIES="gantry nginx" benches/instructions.sh  # only some of the proxies and routes below
#   KEEP=/tmp/profiles benches/instructions.sh      # keep the callgrind files (callgrind_annotate)
#
# Upstream: nginx (not under valgrind), one worker, answering "ok" on an ephemeral loopback port.
# Each proxy runs under callgrind twice, serving REQUESTS (N, default 20000) and then 2N requests
# sent by h2load over HTTP/1.1 keep-alive (CONNS connections, default 10), and is stopped
# gracefully (Gantry SIGTERM, nginx SIGQUIT). Instructions per request are
# (Ir(2N) - Ir(N)) / N, in which start-up, the readiness probe and shutdown cancel out.
#
# Gantry: one thread, one cluster, no access log, no health check; its routes are measured one
# by one: gantry (the plain route, paths = ["/"]), gantry-jwt (jwt-auth, RS256, one token reused
# as clients do), gantry-key (key-auth), gantry-limited (rate-limit, local, never hit),
# gantry-redis (rate-limit, policy = "redis", never hit; a redis-server on a loopback port,
# started by the script and not under valgrind), gantry-cached (the cache plugin; every measured
# request is a hit), gantry-least (balancer = "least_request"), gantry-ewma (balancer =
# "peak_ewma"), gantry-resilient (round robin with a [retry] table, [outlier] detection,
# max_requests and a route timeout, none of them triggered).
# Traced (issue 17): gantry-trace0, gantry-trace5 and gantry-trace100 run a second Gantry config,
# the same tables plus [tracing] (global sample_ratio = 0.0, default batching: 512 spans or 2 s)
# and [admin] (to read the span counters), on / (the global 0.0: a trace context and a
# traceparent upstream, no spans), /t5 (route sample_ratio = 0.05) and /t100 (1.0: a server and a
# client span per request, all exported). The collector is the upstream nginx
# (`location = /v1/traces`, answers 200, logs each POST). After the load the script waits until
# the exporter has sent every queued span, so export (protobuf encoding, the POSTs) is inside the
# counted instructions; it prints the spans exported and dropped and the POSTs the collector got.
# nginx: daemon off, master_process off, one worker, no access log, upstream keepalive, and the
# headers Gantry adds by default (X-Forwarded-For/-Proto/-Host, X-Request-Id up and down).
# Needs valgrind, h2load (nghttp2-client), nginx, redis-server, curl, openssl and python3.
set -euo pipefail

REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-10}
. "$(dirname "$0")/binaries.sh" "$@" -- valgrind h2load curl python3 openssl redis-server redis-cli
[ "$REQUESTS" -ge "$CONNS" ] || { echo "REQUESTS must be at least CONNS" >&2; exit 1; }

work=$(mktemp -d -t gantry-instructions.XXXXXX)
pids=()   # started and not yet reaped
forget() { local p keep=(); for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

UP=$(free_port); GW=$(free_port); PX=$(free_port); BP=$(free_port); RD=$(free_port)
AD=$(free_port)   # the traced Gantry's admin listener

# running PID: the process exists and is not a zombie waiting to be reaped.
running() { [ -e "/proc/$1" ] && [ "$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# wait_ready PORT PID LOG: poll until PORT answers 200, for at most 120 s.
wait_ready() {
  local deadline=$((SECONDS + 120))
  until curl -fs -o /dev/null --max-time 10 "http://127.0.0.1:$1/"; do
    if ! running "$2" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "nothing serving on port $1; its log:" >&2; cat "$3" >&2; exit 1
    fi
    sleep 0.1
  done
}

# stop PID SIGNAL LOG: send SIGNAL and wait (at most 120 s) for the process to exit.
stop() {
  local deadline=$((SECONDS + 120))
  kill -"$2" "$1"
  while running "$1"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "process $1 did not exit on SIG$2; its log:" >&2; cat "$3" >&2; exit 1
    fi
    sleep 0.1
  done
  local status=0
  wait "$1" || status=$?
  forget "$1"
  [ "$status" -eq 0 ] || { echo "process $1 exited with status $status; its log:" >&2; cat "$3" >&2; exit 1; }
}

mkdir "$work/upstream" "$work/nginx" "$work/gantry"
# nginx_conf for a worker in the foreground (valgrind follows its one process).
nginx_conf_foreground() {
  nginx_conf "$1" "$2" "daemon off;
master_process off;
events { worker_connections 1024; }"
}

nginx_conf_foreground "$work/upstream" "  server {
    listen 127.0.0.1:$UP;
    location / { return 200 \"ok\\n\"; }
    # The traced Gantry's OTLP collector: reads and discards each export, logs it.
    location = /v1/traces {
      client_max_body_size 16m;
      access_log $work/upstream/traces.log;
      return 200 \"\";
    }
  }"

nginx_conf_foreground "$work/nginx" "  upstream backend { server 127.0.0.1:$UP; keepalive 32; }
  server {
    listen 127.0.0.1:$PX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
    }
  }"

gantry_conf "$work/gantry/gantry.toml" "$GW" "" "127.0.0.1:$UP"
cat >> "$work/gantry/gantry.toml" <<CONF

[redis]
url = "redis://127.0.0.1:$RD"
timeout = "1s"   # valgrind slows Gantry fifty-fold: no command may time out

[consumers.bench]
keys = ["bench-key-0123456789"]

[routes.jwt]
paths = ["/jwt"]
cluster = "upstream"
[routes.jwt.plugins.jwt-auth]
algorithms = ["RS256"]
public_key_file = "$PWD/tests/fixtures/jwt/rsa1.pub"

[routes.key]
paths = ["/key"]
cluster = "upstream"
[routes.key.plugins.key-auth]

[routes.limited]
paths = ["/limited"]
cluster = "upstream"
[routes.limited.plugins.rate-limit]
limits = [{ requests = 100000000, per = "1s" }]   # never hit: the cost of counting

[routes.redis]
paths = ["/redis"]
cluster = "upstream"
[routes.redis.plugins.rate-limit]
limits = [{ requests = 100000000, per = "1s" }]
policy = "redis"
on_store_error = "deny"   # a Redis failure is a 503, which the count of 2xx catches

[routes.cached]
paths = ["/cached"]
cluster = "upstream"
[routes.cached.plugins.cache]
default_ttl = "60s"

$(resilience_routes "127.0.0.1:$UP")
CONF

# The traced Gantry: the same tables, [tracing] and two routes with a sample ratio of their own.
cp "$work/gantry/gantry.toml" "$work/gantry/traced.toml"
traced_tables "$AD" "127.0.0.1:$UP" upstream >> "$work/gantry/traced.toml"

TOKEN=$(rs256_token)
"$GANTRY" -t -c "$work/gantry/gantry.toml" >/dev/null
"$GANTRY" -t -c "$work/gantry/traced.toml" >/dev/null

: > "$work/upstream/traces.log"
"$NGINX" -p "$work/upstream/" -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf" \
  >"$work/upstream/out.log" 2>&1 &
upstream_pid=$!; pids+=("$upstream_pid")
wait_ready "$UP" "$upstream_pid" "$work/upstream/error.log"
redis-server --port "$RD" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do redis-cli -p "$RD" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

# measure NAME PORT REQUESTS STOP_SIGNAL COMMAND...: run COMMAND under callgrind, send REQUESTS
# to $url_path (with the request headers in the array $client_headers) once it answers, stop
# it with STOP_SIGNAL; sets total to its instruction count (Ir).
measure() {
  local name=$1 port=$2 n=$3 sig=$4; shift 4
  local out="$work/$name.$n.callgrind" log="$work/$name.$n.log" pid client result
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$log" 2>&1 &
  pid=$!; pids+=("$pid")
  wait_ready "$port" "$pid" "$log"
  # In the background, so that a signal to this script interrupts the wait.
  h2load --h1 -n "$n" -c "$CONNS" -t 1 "${client_headers[@]}" "http://127.0.0.1:$port$url_path" \
    >"$work/h2load.out" 2>&1 &
  client=$!; pids+=("$client")
  wait "$client" || true
  forget "$client"
  result=$(<"$work/h2load.out")
  if [ "$(awk '/^requests:/ {print $8}' <<<"$result")" != "$n" ] ||
     [ "$(awk '/^status codes:/ {print $3}' <<<"$result")" != "$n" ]; then
    echo "$name: not all $n requests got a 2xx:" >&2; echo "$result" >&2; exit 1
  fi
  if [ -n "$traced" ]; then settle "$name" "$n" "$log"; fi
  stop "$pid" "$sig" "$log"
  total=$(awk '/^summary:/ {print $2}' "$out")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/"; fi
  [ -n "$total" ] || { echo "$name: no callgrind summary in $out" >&2; exit 1; }
}

# span_counter NAME: the traced Gantry's counter NAME (the sum over its labels).
span_counter() {
  curl -fs --max-time 30 "http://127.0.0.1:$AD/metrics" |
    awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}

# settle NAME N LOG: wait until the traced Gantry's exporter has nothing left (the exported and
# dropped counts stay the same over more than one batch interval), then record the counts.
declare -A exported dropped posts
settle() {
  local before after=-1 deadline=$((SECONDS + 300))
  before=$(( $(span_counter gantry_tracing_spans_exported_total) + $(span_counter gantry_tracing_spans_dropped_total) ))
  while [ "$before" != "$after" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "$1: spans still being exported after 300 s" >&2; cat "$3" >&2; exit 1; }
    [ "$after" = -1 ] || before=$after
    sleep 3   # more than the batch interval (2 s)
    after=$(( $(span_counter gantry_tracing_spans_exported_total) + $(span_counter gantry_tracing_spans_dropped_total) ))
  done
  exported[$1.$2]=$(span_counter gantry_tracing_spans_exported_total)
  dropped[$1.$2]=$(span_counter gantry_tracing_spans_dropped_total)
  posts[$1.$2]=$(( $(wc -l < "$work/upstream/traces.log") - posts_before ))
}

declare -A ir1 ir2 per
PROXIES=${PROXIES:-gantry gantry-jwt gantry-key gantry-limited gantry-redis gantry-cached pingora nginx}
for name in $PROXIES; do
  url_path=/; client_headers=(); traced=
  case $name in
    gantry-trace0) traced=1 ;;
    gantry-trace5) traced=1; url_path=/t5 ;;
    gantry-trace100) traced=1; url_path=/t100 ;;
    gantry-jwt) url_path=/jwt; client_headers=(-H "authorization: Bearer $TOKEN") ;;
    gantry-key) url_path=/key; client_headers=(-H "x-api-key: bench-key-0123456789") ;;
    gantry-limited) url_path=/limited ;;
    gantry-redis) url_path=/redis ;;
    gantry-cached) url_path=/cached ;;
    gantry-least) url_path=/least ;;
    gantry-ewma) url_path=/ewma ;;
    gantry-resilient) url_path=/resilient ;;
  esac
  for n in "$REQUESTS" $((2 * REQUESTS)); do
    case $name in
      gantry-trace*) posts_before=$(wc -l < "$work/upstream/traces.log")
        measure "$name" "$GW" "$n" TERM "$GANTRY" -c "$work/gantry/traced.toml" ;;
      gantry*) measure "$name" "$GW" "$n" TERM "$GANTRY" -c "$work/gantry/gantry.toml" ;;
      pingora) measure pingora "$BP" "$n" TERM "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" ;;
      nginx) measure nginx "$PX" "$n" QUIT "$NGINX" -p "$work/nginx/" \
               -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" ;;
    esac
    if [ "$n" -eq "$REQUESTS" ]; then ir1[$name]=$total; else ir2[$name]=$total; fi
  done
  per[$name]=$(( (ir2[$name] - ir1[$name]) / REQUESTS ))
done

echo "gantry: $GANTRY"
echo "nginx:  $NGINX ($("$NGINX" -v 2>&1 | sed 's/.*\///'))"
echo "h2load --h1 -c $CONNS; N = $REQUESTS requests, 2N = $((2 * REQUESTS))"
printf "%-15s %9s %16s %16s %12s %10s\n" proxy requests "Ir(N)" "Ir(2N)" "instr/req" "vs nginx"
for name in $PROXIES; do
  printf "%-15s %9s %16s %16s %12s %10s\n" "$name" "$REQUESTS" "${ir1[$name]}" "${ir2[$name]}" \
    "${per[$name]}" "$(awk -v a="${per[$name]}" -v b="${per[nginx]:-0}" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}')"
done
for name in $PROXIES; do
  case $name in
    gantry-trace*)
      for n in "$REQUESTS" $((2 * REQUESTS)); do
        printf "%-15s %9s requests: %7s spans exported, %5s dropped, %5s POSTs to the collector\n" \
          "$name" "$n" "${exported[$name.$n]}" "${dropped[$name.$n]}" "${posts[$name.$n]}"
      done ;;
  esac
done
for name in $PROXIES; do
  case $name in
    gantry?*) if [ -n "${per[gantry]:-}" ]; then awk -v n="$name" -v a="${per[$name]}" -v b="${per[gantry]}" \
      'BEGIN {printf "%-15s %+8d instructions per request over gantry (%+.2f%%)\n", n, a - b, (a - b) * 100 / b}'; fi ;;
  esac
done
