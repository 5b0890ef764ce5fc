#!/usr/bin/env bash
# The edge comparison of issue 15: nginx, HAProxy, a bare Pingora proxy and Gantry (and pingap,
# when `pingap` is on PATH and PINGAP_CONF names its config for this harness) as reverse proxies
# in front of the same nginx upstream, in one run, in alternating order.
#
#   benches/edge.sh                                   # every scenario, 3 rounds of 8 s
#   SCENARIOS="small50 small1000" ROUNDS=5 DURATION=10s benches/edge.sh
#   benches/edge.sh /path/to/gantry                   # another Gantry build
#
# Scenarios (requests/s, p50 and p99 latency per proxy, medians over the rounds, ratio to nginx):
#   small50     small body, keep-alive, 50 connections (wrk)
#   small1000   the same with 1,000 connections
#   tls50       small body over TLS (each proxy terminates it; ECDSA P-256 certificate), 50 conns
#   large8      1 MiB responses, 8 connections
#   h2c         HTTP/2 prior knowledge, 10 connections x 10 streams (h2load)
#   h2tls       HTTP/2 over TLS (ALPN h2), 10 connections x 10 streams (h2load)
#   paced       a fixed 5,000 requests/s over 50 connections (oha -q, when oha is on PATH), far
#               below every proxy's saturation: p99 here is the proxy's latency, not a queue
#
# Every proxy runs one worker pinned to CPU 0, with no access log; the upstream (nginx, one
# worker) and the load generator share CPU 1. Gantry: release build, the shipped defaults (edge
# protections on), request ids on, no access log. The bare Pingora proxy has no TLS or h2c
# listener (benches/floor/bare_pingora.rs), so it is in the HTTP/1 rows only.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
SCENARIOS=${SCENARIOS:-small50 small1000 tls50 large8 h2c h2tls paced}
. "$(dirname "$0")/binaries.sh" "$@" -- wrk h2load haproxy openssl taskset python3
ulimit -n "$(ulimit -Hn)"   # as many as allowed: 1,000 clients need twice as many descriptors

work=$(mktemp -d -t gantry-edge.XXXXXX)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill -QUIT "$(cat "$pid")" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"
head -c 1048576 /dev/urandom > "$work/large"
chmod 755 "$work"; chmod 644 "$work/large"   # nginx workers (nobody) serve it

UP=$(free_port)
declare -A HTTP TLS H2C
for p in nginx haproxy pingora gantry; do HTTP[$p]=$(free_port); done
for p in nginx haproxy gantry; do TLS[$p]=$(free_port); done
for p in nginx haproxy; do H2C[$p]=$(free_port); done
H2C[gantry]=${HTTP[gantry]}   # Gantry's plain listener recognises the h2c preface

nginx_conf "$work/upstream" "  server {
    listen 127.0.0.1:$UP;
    location = /large { root $work; sendfile on; }
    location / { return 200 \"hello from the upstream\\n\"; }
  }"
nginx_conf "$work/nginx" "  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  server {
    listen 127.0.0.1:${HTTP[nginx]};
    listen 127.0.0.1:${TLS[nginx]} ssl http2;
    listen 127.0.0.1:${H2C[nginx]} http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id;
    }
  }"
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend edge
  bind 127.0.0.1:${HTTP[haproxy]}
  bind 127.0.0.1:${TLS[haproxy]} ssl crt $work/both.pem alpn h2,http/1.1
  bind 127.0.0.1:${H2C[haproxy]} proto h2
  option forwardfor
  unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  http-request set-header X-Request-Id %[unique-id]
  http-response set-header X-Request-Id %[unique-id]
  default_backend upstream
backend upstream
  http-reuse always
  server up 127.0.0.1:$UP
CONF
gantry_conf "$work/gantry.toml" "${HTTP[gantry]}" "${TLS[gantry]}" "127.0.0.1:$UP"

"$NGINX" -p "$work/upstream/" -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf"
taskset -pc 1 "$(cat "$work/upstream/nginx.pid")" >/dev/null
for p in $(pgrep -P "$(cat "$work/upstream/nginx.pid")"); do taskset -pc 1 "$p" >/dev/null; done
taskset -c 0 "$NGINX" -p "$work/nginx/" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
taskset -c 0 haproxy -f "$work/haproxy.cfg" > "$work/haproxy.log" 2>&1 &
RUST_LOG=error taskset -c 0 "$BARE" "127.0.0.1:${HTTP[pingora]}" "127.0.0.1:$UP" 2> "$work/pingora.log" &
RUST_LOG=error taskset -c 0 "$GANTRY" -c "$work/gantry.toml" 2> "$work/gantry.log" &
PROXIES="nginx haproxy pingora gantry"
if command -v pingap >/dev/null 2>&1 && [ -n "${PINGAP_CONF:-}" ]; then
  # PINGAP_CONF: a pingap config proxying 127.0.0.1:PINGAP_PORT to UPSTREAM (substituted here).
  sed -e "s/UPSTREAM/127.0.0.1:$UP/g" "$PINGAP_CONF" > "$work/pingap.toml"
  HTTP[pingap]=${PINGAP_PORT:?PINGAP_PORT: the port of PINGAP_CONF\'s listener}
  taskset -c 0 pingap -c "$work/pingap.toml" > "$work/pingap.log" 2>&1 &
  PROXIES="$PROXIES pingap"
fi
wait_port "$UP"
for p in $PROXIES; do wait_port "${HTTP[$p]}"; done
for p in "${TLS[@]}"; do wait_port "$p"; done
for p in $PROXIES; do
  curl -fs -o /dev/null "http://127.0.0.1:${HTTP[$p]}/" || { echo "$p does not proxy" >&2; exit 1; }
done

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
# wrk_run URL CONNS -> "req/s p50 p99"
wrk_run() {
  local out
  out=$(taskset -c 1 wrk -t1 -c"$2" -d"$DURATION" --latency "$1")
  if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "  $1: $(echo "$out" | grep -E "Non-2xx|Socket errors")" >&2; fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="50%" {print $2}' | to_ms) $(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)"
}
# h2load_run URL -> "req/s p50 p99" (h2load gives no percentiles: its mean and mean+sd stand in)
h2load_run() {
  local out
  out=$(taskset -c 1 h2load -t1 -c10 -m10 -D "${DURATION%s}" --warm-up-time=1 "$1" 2>&1)
  echo "$out" | grep -q "0 failed, 0 errored" || echo "  $1: $(echo "$out" | grep -E "^requests:")" >&2
  echo "$out" | awk '/^finished in/ {gsub(",","",$4); rps=$4} /^time for request:/ {m=$5; s=$6}
    function ms(v) { if (v ~ /us$/) {sub(/us$/,"",v); return v/1000} if (v ~ /ms$/) {sub(/ms$/,"",v); return v+0} sub(/s$/,"",v); return v*1000 }
    END {printf "%s %.3f %.3f\n", rps, ms(m), ms(m) + ms(s)}'
}
# oha_run URL -> "req/s p50 p99" at a fixed rate
oha_run() {
  taskset -c 1 oha --no-tui -c 50 -q 5000 -z "$DURATION" --latency-correction --output-format json "$1" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["summary"]; p=d["latencyPercentiles"]; print(s["requestsPerSec"], p["p50"]*1000, p["p99"]*1000)'
}
url_for() { # SCENARIO PROXY -> URL, or nothing when the proxy has no listener for it
  case $1 in
    small50|small1000|paced) echo "http://127.0.0.1:${HTTP[$2]}/" ;;
    large8) echo "http://127.0.0.1:${HTTP[$2]}/large" ;;
    tls50|h2tls) [ -n "${TLS[$2]:-}" ] && echo "https://127.0.0.1:${TLS[$2]}/" ;;
    h2c) [ -n "${H2C[$2]:-}" ] && echo "http://127.0.0.1:${H2C[$2]}/" ;;
  esac
}
measure() { # SCENARIO URL
  case $1 in
    small50|tls50) wrk_run "$2" 50 ;;
    small1000) wrk_run "$2" 1000 ;;
    large8) wrk_run "$2" 8 ;;
    h2c|h2tls) h2load_run "$2" ;;
    paced) oha_run "$2" ;;
  esac
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: > "$work/results"
for scenario in $SCENARIOS; do
  if [ "$scenario" = paced ] && ! command -v oha >/dev/null; then
    echo "paced: skipped (oha is not on PATH: cargo install oha)"; continue
  fi
  echo "== $scenario"
  printf "%-6s %-8s %11s %9s %9s\n" round proxy "req/s" "p50 ms" "p99 ms"
  proxies=()
  for p in $PROXIES; do [ -n "$(url_for "$scenario" "$p")" ] && proxies+=("$p"); done
  for p in "${proxies[@]}"; do measure "$scenario" "$(url_for "$scenario" "$p")" > /dev/null; done   # warm-up
  for r in $(seq "$ROUNDS"); do
    order=("${proxies[@]}")
    # Each round starts with a different proxy, so a drift of the machine's speed favours none.
    order=("${order[@]:$(( (r - 1) % ${#order[@]} ))}" "${order[@]:0:$(( (r - 1) % ${#order[@]} ))}")
    for p in "${order[@]}"; do
      read -r rps p50 p99 < <(measure "$scenario" "$(url_for "$scenario" "$p")")
      printf "%-6s %-8s %11s %9s %9s\n" "$r" "$p" "$rps" "$p50" "$p99"
      echo "$scenario $p $rps $p50 $p99" >> "$work/results"
    done
  done
  for p in "${proxies[@]}"; do
    for col in 3 4 5; do
      eval "m$col=$(awk -v s="$scenario" -v p="$p" -v c="$col" '$1==s && $2==p {print $c}' "$work/results" | median)"
      [ "$p" = nginx ] && eval "n$col=\$m$col"
    done
    awk -v p="$p" -v r="$m3" -v a="$m4" -v b="$m5" -v nr="$n3" -v na="$n4" -v nb="$n5" 'BEGIN {
      printf "median %-8s %11.0f %9.3f %9.3f   vs nginx: req/s %.2fx  p50 %.2fx  p99 %.2fx\n", p, r, a, b, r/nr, a/na, b/nb }'
  done
  echo
done
