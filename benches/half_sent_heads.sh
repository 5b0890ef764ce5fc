#!/usr/bin/env bash
# Memory under half-sent heads: 300 clients each send an unfinished 1 MB header line (no
# blank line, no close) to Gantry and to nginx, started side by side in one run; prints each
# process's RSS (nginx: master plus worker) before and while the clients hold on.
#
#   benches/half_sent_heads.sh            # 300 clients, 1 MB each
#   CLIENTS=1000 BYTES=2000000 benches/half_sent_heads.sh
#
# Gantry: the release build, one thread, the defaults (max_request_header_size 64 KiB,
# header_timeout 10 s). nginx: one worker, large_client_header_buffers at its default (4 8k).
# Both proxy to a port nothing listens on: no request ever completes.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-300}
BYTES=${BYTES:-1000000}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "needs nginx (apt-get install nginx-light)"; exit 1; }
cargo build --release --quiet
GANTRY=${CARGO_TARGET_DIR:-target}/release/gantry

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
gport=$(free); nport=$(free); dead=$(free)

cat > "$work/gantry.toml" <<EOF
[server]
listen = ["127.0.0.1:$gport"]
threads = 1
pid_file = "$work/gantry.pid"
upgrade_sock = "$work/upgrade.sock"
[clusters.dead]
backends = ["127.0.0.1:$dead"]
[routes.all]
paths = ["/"]
cluster = "dead"
EOF
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$nport; location / { proxy_pass http://127.0.0.1:$dead; } }
}
EOF
RUST_LOG=error "$GANTRY" -c "$work/gantry.toml" 2>"$work/gantry.log" &
gpid=$!
"$NGINX" -c "$work/nginx.conf" -p "$work"
for port in $gport $nport; do
  until (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do sleep 0.1; done
done
npids() { echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')"; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }

echo "before: gantry $(rss_kib $gpid) KiB, nginx $(rss_kib $(npids)) KiB"
python3 - "$gport" "$nport" "$CLIENTS" "$BYTES" "$work/sent" <<'EOF' &
import socket, sys, time
gport, nport, clients, size = map(int, sys.argv[1:5])
held = []
chunk = b"a" * 65536
for port in (gport, nport):
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        held.append([s, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ", size])
# Send until every client has sent its bytes or its server stopped reading (or closed).
deadline = time.time() + 20
while time.time() < deadline and any(h[2] > 0 for h in held):
    for h in held:
        if h[2] <= 0:
            continue
        data = h[1] or chunk[: min(len(chunk), h[2])]
        try:
            n = h[0].send(data)
        except BlockingIOError:
            continue
        except OSError:
            h[2] = 0
            continue
        if h[1]:
            h[1] = b""
        else:
            h[2] -= n
    time.sleep(0.01)
open(sys.argv[5], "w").close()
time.sleep(60)  # hold every connection open until the script has measured
EOF
client=$!
until [ -f "$work/sent" ]; do sleep 0.2; done
echo "held:   gantry $(rss_kib $gpid) KiB, nginx $(rss_kib $(npids)) KiB ($CLIENTS clients each, $BYTES bytes offered)"
kill $client
