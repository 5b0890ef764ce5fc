#!/usr/bin/env bash
# Memory per downstream connection: Gantry and nginx side by side in one run, each a reverse
# proxy in front of the same nginx upstream. CLIENTS clients (default 4000) connect to each;
# prints each proxy's RSS growth (nginx: master plus worker) divided by CLIENTS, in two states:
#
#   idle    every client sent one keep-alive request, read its answer, and holds the connection
#   silent  every client connected and sent nothing (measured well within header_timeout)
#
#   benches/connection_memory.sh                    # target/release/gantry (built if missing)
#   benches/connection_memory.sh /path/to/gantry    # another build, e.g. an older commit's
#   CLIENTS=10000 benches/connection_memory.sh
#
# Gantry: release build, one thread, the shipped defaults (edge protections on), no access log.
# pingora: benches/floor/bare_pingora.rs, the smallest ProxyHttp on Pingora's own defaults.
# nginx: one worker, no access log, upstream keep-alive. The RSS is read once all clients are
# in the state and the process has been quiet for a moment (two equal readings 0.5 s apart).
set -euo pipefail

CLIENTS=${CLIENTS:-4000}
. "$(dirname "$0")/binaries.sh" "$@" -- python3
ulimit -n $((CLIENTS * 3 + 1024))

work=$(mktemp -d -t gantry-connection-memory.XXXXXX)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for pid in "$work"/*/nginx.pid; do [ -f "$pid" ] && kill -QUIT "$(cat "$pid")" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); GW=$(free_port); PX=$(free_port); BP=$(free_port)
mkdir "$work/upstream" "$work/nginx"
wait_port() {
  local _
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listens on $1" >&2; exit 1
}

# nginx_conf DIR SERVER: one nginx worker with its files inside DIR and the server block SERVER.
nginx_conf() {
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $((CLIENTS * 3 + 1024));
events { worker_connections $((CLIENTS * 2 + 1024)); }
http {
$(for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1/${t}_temp;"; done)
  access_log off;
  keepalive_timeout 300s;
  client_header_timeout 300s;
$2
}
CONF
}
start_nginx() { "$NGINX" -p "$1/" -e "$1/error.log" -c "$1/nginx.conf"; }
nginx_conf "$work/upstream" "  server { listen 127.0.0.1:$UP; location / { return 200 \"ok\\n\"; } }"
start_nginx "$work/upstream"
wait_port "$UP"
nginx_conf "$work/nginx" "  upstream backend { server 127.0.0.1:$UP; keepalive 32; }
  server {
    listen 127.0.0.1:$PX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }"

cat > "$work/gantry.toml" <<CONF
[server]
listen = ["127.0.0.1:$GW"]
threads = 1
pid_file = "$work/gantry.pid"
upgrade_sock = "$work/upgrade.sock"
keepalive_timeout = "300s"
grace_period = "0s"
max_connections = $((CLIENTS * 2))

[log]
access = "off"

[clusters.upstream]
backends = ["127.0.0.1:$UP"]

[routes.plain]
paths = ["/"]
cluster = "upstream"
CONF
# start_proxies: a fresh Gantry and nginx proxy (so no state freed by an earlier measurement
# is reused by the next one), both answering.
start_proxies() {
  start_nginx "$work/nginx"
  RUST_LOG=warn "$GANTRY" -c "$work/gantry.toml" 2>"$work/gantry.log" &
  gantry_pid=$!
  "$BARE" "127.0.0.1:$BP" "127.0.0.1:$UP" 2>"$work/bare.log" &
  bare_pid=$!
  wait_port "$PX"; wait_port "$GW"; wait_port "$BP"
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
import asyncio, sys
mode, port, clients, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

async def client(held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    held.append(writer)
    if mode == "idle":
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(l.split(b":")[1]) for l in head.lower().split(b"\r\n")
                      if l.startswith(b"content-length:"))
        await reader.readexactly(length)

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
for mode in idle silent; do
  start_proxies
  for name in gantry pingora nginx; do
    case $name in
      gantry) port=$GW; pids=$gantry_pid ;;
      pingora) port=$BP; pids=$bare_pid ;;
      nginx) port=$PX; pids=$(nginx_pids) ;;
    esac
    # One request first, so that what every connection shares (the upstream connection,
    # lazily built state) is in the "before" figure.
    curl -fs -o /dev/null "http://127.0.0.1:$port/"
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
