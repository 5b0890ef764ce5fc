# Sourced by benches/binaries.sh: the helpers the benchmark scripts share. `work` is the
# calling script's temporary directory.

# free_port: a loopback port nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: wait (at most 60 s) until something accepts connections on PORT; else print
# the logs in $work and exit.
wait_port() {
  local _
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listens on $1" >&2; cat "$work"/*.log "$work"/*/error.log >&2 2>/dev/null; exit 1
}

# nginx_conf DIR HTTP [MAIN]: DIR/nginx.conf for one nginx worker with its pid, error log and
# temporary files inside DIR, no access log and unlimited keep-alive requests; HTTP is added to
# the http block, MAIN (default: 8,192 worker connections) to the main context.
nginx_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
${3:-"events { worker_connections 8192; }"}
http {
$(for t in client_body proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $1/${t}_temp;"; done)
  access_log off;
  keepalive_requests 1000000;
$2
}
CONF
}

# gantry_conf FILE PORT TLS_PORT UPSTREAM [SERVER]: a Gantry config in FILE (pid file and
# upgrade socket beside it) with one thread listening on PORT (and with TLS on TLS_PORT, the
# certificate in $work, unless TLS_PORT is empty), no access log, and one route to the cluster
# "upstream" of the backend UPSTREAM; SERVER is added to [server]. Callers append their own
# tables to FILE.
gantry_conf() {
  local dir
  dir=$(dirname "$1")
  cat > "$1" <<CONF
[server]
listen = ["127.0.0.1:$2"]
threads = 1
pid_file = "$dir/gantry.pid"
upgrade_sock = "$dir/upgrade.sock"
grace_period = "0s"
${5:-}
CONF
  if [ -n "$3" ]; then
    cat >> "$1" <<CONF
[[server.tls]]
listen = "127.0.0.1:$3"
certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }]
http2 = true
CONF
  fi
  cat >> "$1" <<CONF

[log]
access = "off"

[clusters.upstream]
backends = ["$4"]

[routes.plain]
paths = ["/"]
cluster = "upstream"
CONF
}

# rs256_token: an RS256 JWT for subject "bench", valid for a day, signed with the test-only key
# of tests/fixtures/jwt.
rs256_token() {
  local head body sig
  head=$(printf '{"alg":"RS256","typ":"JWT"}' | _b64url)
  body=$(printf '{"sub":"bench","exp":%d}' $(( $(date +%s) + 86400 )) | _b64url)
  sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -sign tests/fixtures/jwt/rsa1.key | _b64url)
  echo "$head.$body.$sig"
}
_b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# traced_tables ADMIN COLLECTOR CLUSTER: TOML for [admin] on ADMIN, [tracing] exporting to the
# collector at COLLECTOR (host:port) with the global sample_ratio 0.0, and the routes /t5 (route
# ratio 0.05) and /t100 (1.0) of cluster CLUSTER (the traced variants of instructions.sh and
# load.sh's TRACING_ONLY).
traced_tables() {
  cat <<CONF

[admin]
listen = "127.0.0.1:$1"

[tracing]
otlp_endpoint = "http://$2/v1/traces"
sample_ratio = 0.0

[routes.t5]
paths = ["/t5"]
cluster = "$3"
tracing = { sample_ratio = 0.05 }

[routes.t100]
paths = ["/t100"]
cluster = "$3"
tracing = { sample_ratio = 1.0 }
CONF
}

# resilience_routes UPSTREAM: TOML for three clusters of the backend UPSTREAM and their routes:
# /least (balancer = "least_request"), /ewma ("peak_ewma") and /resilient (round robin with a
# [retry] table, [outlier] detection, max_requests and a route timeout, none of them triggered).
resilience_routes() {
  cat <<CONF
[clusters.least]
balancer = "least_request"
backends = ["$1"]
[routes.least]
paths = ["/least"]
cluster = "least"

[clusters.ewma]
balancer = "peak_ewma"
backends = ["$1"]
[routes.ewma]
paths = ["/ewma"]
cluster = "ewma"

[clusters.resilient]
backends = ["$1"]
max_requests = 100000
[clusters.resilient.retry]
[clusters.resilient.outlier]
[routes.resilient]
paths = ["/resilient"]
cluster = "resilient"
timeout = "30s"
CONF
}
