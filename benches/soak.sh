#!/usr/bin/env bash
# Soak test of upstream resilience (issue 16): steady load for DURATION seconds (default 600)
# while the backends fail in every way the gateway must absorb, then a report.
#
#   benches/soak.sh                        # target/release/gantry (built if missing), 10 minutes
#   DURATION=120 RATE=300 benches/soak.sh  # shorter; the fault schedule scales with DURATION
#   KEEP=/tmp/soak benches/soak.sh         # keep the logs, samples and chart in /tmp/soak
#
# Setup: three Python backends (b1, b2, b3) on loopback, each told by a file whether to answer
# 200, answer 503 or hang (never answer); redis-server; Gantry with two threads, one route
# (GET, a Redis rate limit far above the load, `on_store_error = "allow"`, `timeout = "5s"`),
# one round-robin cluster with a retry policy (3 attempts, per-try timeout 1s, a retry budget of
# BUDGET percent, default 100: two of the three backends fail at once in the schedule, so up to
# two thirds of requests need a retry, above the default 20 %), outlier detection (3 failures,
# 10 s ejection, up to 67 % ejected: two of three) and an HTTP health check every 2 s that sees
# the same failures. The load is oha at RATE (default 400) GETs per second over 32 keep-alive
# connections.
#
# Fault schedule, as fractions of DURATION (the default timings in seconds in brackets):
#   0.10-0.20  b1 answers 503                 [60-120]
#   0.25-0.35  b2 hangs                       [150-210]
#   0.40-0.50  b3 killed, then restarted      [240-300]
#   0.55       redis-server restarted         [330]
#   0.60-0.65  b1 killed, b2 answers 503      [360-390]  (b3 alone is healthy)
#   0.70-0.80  b2 hangs and b3 answers 503    [420-480]  (b1 alone is healthy)
#   every 30 s the configuration is reloaded (SIGHUP; a header value changes, clusters stay)
# A healthy backend exists at every moment, so the goal is no client-visible error at all.
#
# Report: requests, client-visible errors by cause (status and problem type, from the access
# log), retries and ejections (from /metrics), RSS every 5 s, and soak.png (gnuplot) with RSS
# and requests per second over time. Needs oha, python3, redis-server, curl, gnuplot.
set -euo pipefail

DURATION=${DURATION:-600}
RATE=${RATE:-400}
BUDGET=${BUDGET:-100}
. "$(dirname "$0")/binaries.sh" "$@" -- oha python3 redis-server redis-cli curl gnuplot

work=${KEEP:-$(mktemp -d -t gantry-soak.XXXXXX)}
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/backend.py" <<'PY'
import http.server, os, socketserver, sys, time
port, mode_file = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        mode = open(mode_file).read().strip()  # health checks see the same failures
        if mode == "hang":
            time.sleep(3600)
        status = 503 if mode == "503" else 200
        body = (f"{os.getpid()} {mode}\n").encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", port), H).serve_forever()
PY

declare -A bport bpid
start_backend() { # NAME
  python3 "$work/backend.py" "${bport[$1]}" "$work/$1.mode" 2>>"$work/$1.log" &
  bpid[$1]=$!; pids+=($!)
  wait_port "${bport[$1]}"
  if [ -n "${started:-}" ]; then echo "$(elapsed) $1 restarted" >> "$work/events"; fi
}
mode() { echo "$2" > "$work/$1.mode"; echo "$(elapsed) $1 $2" >> "$work/events"; }
kill_backend() { kill -KILL "${bpid[$1]}" 2>/dev/null || true; echo "$(elapsed) $1 killed" >> "$work/events"; }
for b in b1 b2 b3; do bport[$b]=$(free_port); echo ok > "$work/$b.mode"; start_backend $b; done

rport=$(free_port)
redis-server --port "$rport" --save '' --appendonly no --daemonize no > "$work/redis.log" 2>&1 &
rpid=$!; pids+=($rpid)
wait_port "$rport"

port=$(free_port); admin=$(free_port)
write_conf() { # HEADER_VALUE
  cat > "$work/gantry.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
threads = 2
pid_file = "$work/gantry.pid"
upgrade_sock = "$work/upgrade.sock"
[log]
access = "$work/access.log"
[admin]
listen = "127.0.0.1:$admin"
[redis]
url = "redis://127.0.0.1:$rport"
[clusters.app]
backends = ["127.0.0.1:${bport[b1]}", "127.0.0.1:${bport[b2]}", "127.0.0.1:${bport[b3]}"]
[clusters.app.retry]
attempts = 3
per_try_timeout = "1s"
budget = { percent = $BUDGET, min_per_second = 10 }
[clusters.app.outlier]
consecutive_failures = 3
ejection_time = "10s"
max_ejected_percent = 67
[clusters.app.health_check]
path = "/healthz"
interval = "2s"
[routes.api]
paths = ["/"]
cluster = "app"
timeout = "5s"
[routes.api.plugins.rate-limit]
limits = [{ requests = 1000000, per = "1s" }]
policy = "redis"
on_store_error = "allow"
[routes.api.plugins.request-transform]
set_headers = { "x-soak-generation" = "$1" }
CONF
}
write_conf 0
"$GANTRY" -c "$work/gantry.toml" 2> "$work/gantry.log" &
gpid=$!; pids+=($gpid)
wait_port "$port"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$gpid/status"; }

oha -z "${DURATION}s" -q "$RATE" -c 32 --no-tui --output-format json \
  "http://127.0.0.1:$port/soak" > "$work/oha.json" 2> "$work/oha.log" &
ohapid=$!; pids+=($ohapid)

at() { python3 -c "print(int($1 * $DURATION))"; }
schedule=(
  "$(at 0.10) mode b1 503"      "$(at 0.20) mode b1 ok"
  "$(at 0.25) mode b2 hang"     "$(at 0.35) mode b2 ok"
  "$(at 0.40) kill_backend b3"  "$(at 0.50) start_backend b3"
  "$(at 0.55) restart_redis"
  "$(at 0.60) kill_backend b1"  "$(at 0.60) mode b2 503"
  "$(at 0.65) start_backend b1" "$(at 0.65) mode b2 ok"
  "$(at 0.70) mode b2 hang"     "$(at 0.70) mode b3 503"
  "$(at 0.80) mode b2 ok"       "$(at 0.80) mode b3 ok"
)
restart_redis() {
  kill -KILL "$rpid"; wait "$rpid" 2>/dev/null || true
  redis-server --port "$rport" --save '' --appendonly no --daemonize no >> "$work/redis.log" 2>&1 &
  rpid=$!; pids+=($rpid)
  echo "$(elapsed) redis restarted" >> "$work/events"
}
: > "$work/events"; : > "$work/rss"
next=0; generation=0; last_sample=-5; last_reload=0
while kill -0 "$ohapid" 2>/dev/null; do
  now=$(elapsed)
  while [ "$next" -lt "${#schedule[@]}" ]; do
    read -r when action <<< "${schedule[$next]}"
    [ "$now" -ge "$when" ] || break
    $action
    next=$((next + 1))
  done
  if [ $((now - last_reload)) -ge 30 ]; then
    generation=$((generation + 1)); write_conf "$generation"; kill -HUP "$gpid"
    echo "$now reload $generation" >> "$work/events"; last_reload=$now
  fi
  if [ $((now - last_sample)) -ge 5 ]; then
    echo "$now $(rss_kib) $(wc -l < "$work/access.log" 2>/dev/null || echo 0)" >> "$work/rss"
    last_sample=$now
  fi
  sleep 0.2
done
wait "$ohapid" || true
sleep 1   # the access log writer flushes

metrics=$(curl -s "http://127.0.0.1:$admin/metrics")
python3 - "$work" "$DURATION" <<'PY' > "$work/report.txt"
import collections, datetime, json, sys
work, duration = sys.argv[1], int(sys.argv[2])
errors_at = collections.Counter()
first_time = None
oha = json.load(open(f"{work}/oha.json"))
statuses = collections.Counter()
causes = collections.Counter()
attempts = collections.Counter()
for line in open(f"{work}/access.log"):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    statuses[r["status"]] += 1
    attempts[r.get("attempts", 0)] += 1
    t = datetime.datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
    first_time = first_time if first_time is not None else t
    if r["status"] != 200:
        causes[(r["status"], r.get("error") or "upstream answer")] += 1
        errors_at[int(t - first_time) // 5 * 5] += 1
with open(f"{work}/errors", "w") as out:
    for t in range(0, duration + 5, 5):
        out.write(f"{t} {errors_at[t] / 5}\n")
print(f"duration {duration} s, oha: {oha['summary']['requestsPerSec']:.0f} req/s")
print("client side (oha) statuses:", dict(oha.get("statusCodeDistribution", {})))
print("client side (oha) errors:", dict(oha.get("errorDistribution", {})))
print("gateway requests:", sum(statuses.values()), "by status:", dict(statuses))
print("client-visible errors by cause:", {f"{s} {c}": n for (s, c), n in causes.items()} or "none")
print("attempts per request:", dict(sorted(attempts.items())))
rss = [l.split() for l in open(f"{work}/rss")]
kib = [int(r[1]) for r in rss if len(r) > 1 and r[1]]
q = len(kib) // 4 or 1
print(f"RSS KiB: first {kib[0]}, max {max(kib)}, last {kib[-1]}; "
      f"mean of first quarter {sum(kib[:q]) // q}, of last quarter {sum(kib[-q:]) // q}")
PY
echo "$metrics" | grep -E '^gantry_upstream_(retries|ejections|overloaded)_total' >> "$work/report.txt" || true
echo "$metrics" | grep -E '^gantry_config_reloads_total' >> "$work/report.txt" || true
{ echo "events:"; cat "$work/events"; } >> "$work/report.txt"

awk 'NR > 1 { printf "%s %s %.1f\n", $1, $2 / 1024, ($3 - prev) / ($1 - t) } { prev = $3; t = $1 }' \
  "$work/rss" > "$work/series"
gnuplot <<GP
set terminal png size 1000,500
set output "$work/soak.png"
set xlabel "seconds"
set ylabel "RSS (MiB)"
set y2label "requests/s"
set y2tics
set ytics nomirror
set yrange [0:*]
set y2range [0:*]
set title "gantry soak: RSS and requests per second while backends fail"
plot "$work/series" using 1:2 with lines title "RSS MiB" axes x1y1, \
     "$work/series" using 1:3 with lines title "req/s (access log)" axes x1y2, \
     "$work/errors" using 1:2 with impulses lw 3 title "client-visible errors/s" axes x1y2
GP
cat "$work/report.txt"
echo "chart: $work/soak.png"
