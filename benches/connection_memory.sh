#!/usr/bin/env bash
# Memory per downstream connection: Gantry and nginx side by side in one run, each a reverse
# proxy in front of the same nginx upstream. CLIENTS clients (default 4000) connect to each;
# prints each proxy's RSS growth (nginx: master plus worker) divided by CLIENTS, in two states:
#
#   idle    every client sent one keep-alive request, read its answer, and holds the connection
#   silent  every client connected and sent nothing (measured well within header_timeout)
#   tls     over TLS (ECDSA P-256, HTTP/1.1): one keep-alive request answered, then held
#   h2c     HTTP/2 prior knowledge: preface, SETTINGS, one GET answered, then held
#   h2tls   HTTP/2 over TLS (ALPN h2): the same
#
# The bare Pingora proxy has no TLS or h2c listener, so it is measured in the first two only.
#
#   benches/connection_memory.sh                    # target/release/gantry (built if missing)
#   benches/connection_memory.sh /path/to/gantry    # another build, e.g. an older commit's
#   CLIENTS=10000 benches/connection_memory.sh
#   MODES="idle h2c" benches/connection_memory.sh   # some of the states
#
# Gantry: release build, one thread, the shipped defaults (edge protections on), no access log.
# pingora: benches/floor/bare_pingora.rs, the smallest ProxyHttp on Pingora's own defaults.
# nginx: one worker, no access log, upstream keep-alive. The RSS is read once all clients are
# in the state and the process has been quiet for a moment (two equal readings 0.5 s apart).
set -euo pipefail

CLIENTS=${CLIENTS:-4000}
MODES=${MODES:-idle silent tls h2c h2tls}
. "$(dirname "$0")/binaries.sh" "$@" -- python3 openssl
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((CLIENTS + 1024)) ] || { echo "CLIENTS=$CLIENTS needs more open files than the limit of $(ulimit -n)" >&2; exit 1; }

work=$(mktemp -d -t gantry-connection-memory.XXXXXX)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill -QUIT "$(cat "$pid")" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
UP=$(free_port); GW=$(free_port); PX=$(free_port); BP=$(free_port)
GW_TLS=$(free_port); PX_TLS=$(free_port); PX_H2C=$(free_port)
mkdir "$work/upstream" "$work/nginx"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# nginx_conf with room for every client and nothing timed out while they wait.
nginx_conf_held() {
  nginx_conf "$1" "  keepalive_timeout 300s;
  client_header_timeout 300s;
$2" "worker_rlimit_nofile $(ulimit -n);
events { worker_connections $((CLIENTS * 2 + 1024)); }"
}
start_nginx() { "$NGINX" -p "$1/" -e "$1/error.log" -c "$1/nginx.conf"; }
nginx_conf_held "$work/upstream" "  server { listen 127.0.0.1:$UP; location / { return 200 \"ok\\n\"; } }"
start_nginx "$work/upstream"
wait_port "$UP"
nginx_conf_held "$work/nginx" "  upstream backend { server 127.0.0.1:$UP; keepalive 32; }
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  server {
    listen 127.0.0.1:$PX;
    listen 127.0.0.1:$PX_TLS ssl http2;
    listen 127.0.0.1:$PX_H2C http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }"

gantry_conf "$work/gantry.toml" "$GW" "$GW_TLS" "127.0.0.1:$UP" "keepalive_timeout = \"300s\"
max_connections = $((CLIENTS * 2))"
# start_proxies: a fresh Gantry and nginx proxy (so no state freed by an earlier measurement
# is reused by the next one), both answering.
start_proxies() {
  start_nginx "$work/nginx"
  RUST_LOG=warn "$GANTRY" -c "$work/gantry.toml" 2>"$work/gantry.log" &
  gantry_pid=$!
  "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" 2>"$work/bare.log" &
  bare_pid=$!
  wait_port "$PX"; wait_port "$GW"; wait_port "$BP"; wait_port "$GW_TLS"; wait_port "$PX_TLS"
}
stop_proxies() {
  kill -QUIT "$(cat "$work/nginx/nginx.pid")"
  kill -TERM "$gantry_pid" "$bare_pid"; wait "$gantry_pid" "$bare_pid" 2>/dev/null || true
  while [ -f "$work/nginx/nginx.pid" ]; do sleep 0.1; done
}
nginx_pids() { echo "$(cat "$work/nginx/nginx.pid") $(pgrep -P "$(cat "$work/nginx/nginx.pid")" | tr '\n' ' ')"; }
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo "$t"; }
# settled PIDS...: the RSS once two readings 0.5 s apart agree (at most 20 tries).
settled() {
  local last now i
  last=$(rss_kib "$@")
  for i in $(seq 20); do sleep 0.5; now=$(rss_kib "$@"); [ "$now" = "$last" ] && break; last=$now; done
  echo "$now"
}

# hold MODE PORT: connects CLIENTS clients in MODE; touches $work/ready when they all are,
# then holds them until killed.
hold() {
  exec python3 - "$1" "$2" "$CLIENTS" "$work/ready" <<'PY'
import asyncio, ssl, sys
mode, port, clients, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# HTTP/2: the preface, an empty SETTINGS, and HEADERS (stream 1, END_STREAM|END_HEADERS) for
# GET http://bench/ in HPACK: :method GET (0x82), :scheme http/https (0x86/0x87), :path / (0x84),
# :authority "bench" (literal, indexed name 1).
def h2_request(scheme_byte):
    block = bytes([0x82, scheme_byte, 0x84, 0x41, 5]) + b"bench"
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            + len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + block)

def tls_context(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx

async def h1_exchange(reader, writer):
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.lower().split(b"\r\n")
                  if l.startswith(b"content-length:"))
    await reader.readexactly(length)

async def h2_exchange(reader, writer, scheme_byte):
    writer.write(h2_request(scheme_byte))
    while True:  # frames until stream 1 ends (END_STREAM on its HEADERS or DATA)
        header = await reader.readexactly(9)
        length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        await reader.readexactly(length)
        if kind == 4 and not flags & 1:  # the server's SETTINGS: acknowledge them
            writer.write(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        if stream == 1 and kind in (0, 1) and flags & 1:
            return

async def client(held):
    tls = mode in ("tls", "h2tls")
    context = tls_context("h2" if mode == "h2tls" else "http/1.1") if tls else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    held.append(writer)
    if mode in ("idle", "tls"):
        await h1_exchange(reader, writer)
    elif mode in ("h2c", "h2tls"):
        await h2_exchange(reader, writer, 0x87 if tls else 0x86)

async def main():
    held = []
    sem = asyncio.Semaphore(200)
    async def one():
        async with sem:
            await client(held)
    await asyncio.gather(*(one() for _ in range(clients)))
    open(ready, "w").close()
    await asyncio.sleep(3600)

asyncio.run(main())
PY
}

printf "%-7s %-7s %8s %12s %12s %12s\n" state proxy clients "before KiB" "held KiB" "per conn"
for mode in $MODES; do
  start_proxies
  names="gantry pingora nginx"
  case $mode in tls|h2c|h2tls) names="gantry nginx" ;; esac
  for name in $names; do
    case $name:$mode in
      gantry:tls|gantry:h2tls) port=$GW_TLS; pids=$gantry_pid ;;
      gantry:*) port=$GW; pids=$gantry_pid ;;
      pingora:*) port=$BP; pids=$bare_pid ;;
      nginx:tls|nginx:h2tls) port=$PX_TLS; pids=$(nginx_pids) ;;
      nginx:h2c) port=$PX_H2C; pids=$(nginx_pids) ;;
      nginx:*) port=$PX; pids=$(nginx_pids) ;;
    esac
    # One request first, so that what every connection shares (the upstream connection,
    # lazily built state) is in the "before" figure.
    case $mode in
      tls) curl -fsk -o /dev/null "https://127.0.0.1:$port/" ;;
      h2tls) curl -fsk --http2 -o /dev/null "https://127.0.0.1:$port/" ;;
      h2c) curl -fs --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$port/" ;;
      *) curl -fs -o /dev/null "http://127.0.0.1:$port/" ;;
    esac
    before=$(settled $pids)
    rm -f "$work/ready"
    hold "$mode" "$port" &
    holder=$!
    until [ -f "$work/ready" ]; do
      kill -0 "$holder" 2>/dev/null || { echo "the clients failed" >&2; exit 1; }
      sleep 0.2
    done
    held=$(settled $pids)
    kill "$holder"; wait "$holder" 2>/dev/null || true
    printf "%-7s %-7s %8s %12s %12s %12s\n" "$mode" "$name" "$CLIENTS" "$before" "$held" \
      "$(awk -v a="$before" -v b="$held" -v n="$CLIENTS" 'BEGIN {printf "%.1f KiB", (b - a) / n}')"
  done
  stop_proxies
done
