#!/usr/bin/env bash
# Quickstart: builds centinela and products-api, runs centinela with 3
# supervised products-api instances (SQLite, no external server) behind the
# gateway, prints the URLs to try, and stops everything on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins
data=$(realpath -m "${QUICKSTART_DATA:-data/quickstart}")
mkdir -p "$data"

# GET a URL on 127.0.0.1 and print the status code, with bash alone (no curl
# needed on a fresh machine).
status_of() { # port path
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    read -r -t 2 line <&3 || { exec 3>&-; return 1; }
    exec 3>&-
    echo "$line" | cut -d' ' -f2
}

pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# centinela runs the three products-api instances itself ([service]) and
# puts each one behind the gateway once its readiness probe passes.
# A webhook receiver that prints alerts to this terminal: centinela's
# built-in rules (an upstream with no healthy server, a crash-looping
# service) page it.
target/release/centinela alerts receive --listen 127.0.0.1:9902 &
pids+=($!)

cat >"$data/centinela.toml" <<TOML
[admin]
listen = "127.0.0.1:9901"

[[listener]]
name = "web"
listen = "127.0.0.1:8080"

[[route]]
upstream = "products"

[upstream.products]
balance = "round_robin"
retry = { attempts = 3 }
timeouts = { connect = "500ms", response = "10s" }

[service.products]
command = "$PWD/target/release/products-api"
args = ["--listen", "127.0.0.1:{port}", "--db", "products.db"]
workdir = "."
instances = 3
ports = "8001-8004"   # one spare: rolling restarts start each replacement first
upstream = "products"
readiness = { http = "/health", interval = "100ms" }
liveness = { http = "/health", interval = "2s", timeout = "1s", failures = 3 }
logs = { dir = "logs", max_size = "10MB", keep = 5 }

[notify.terminal]
webhook = "http://127.0.0.1:9902/"

[[slo]]
name = "products-availability"
upstream = "products"
objective = 99.9
latency = "500ms"
TOML

target/release/centinela check --config "$data/centinela.toml"
target/release/centinela run --config "$data/centinela.toml" 2>"$data/centinela.log" &
gw=$!
pids+=($gw)

# Wait for the gateway to be ready (every route has a healthy server).
for _ in $(seq 1 100); do
    if [ "$(status_of 9901 /-/ready 2>/dev/null)" = 200 ]; then break; fi
    if ! kill -0 "$gw" 2>/dev/null; then cat "$data/centinela.log"; exit 1; fi
    sleep 0.1
done

cat <<TXT

centinela is running: gateway on :8080 in front of 3 products-api instances (:8001-8004 pool)
that it runs and keeps alive itself.

Dashboard: http://127.0.0.1:9901/   (traffic, errors, latency, saturation, alerts, SLOs; live)

  curl -i http://127.0.0.1:8080/products
  curl -i -X POST http://127.0.0.1:8080/products -H 'content-type: application/json' \\
       -d '{"name":"Solar panel","price":199.0,"stock":12}'
  curl -i http://127.0.0.1:8080/products/1          # see x-served-by rotate between instances

Admin:
  curl http://127.0.0.1:9901/-/health               # liveness
  curl http://127.0.0.1:9901/-/ready                # every route has a healthy server
  curl http://127.0.0.1:9901/-/upstreams            # live state of every server
  curl http://127.0.0.1:9901/-/health/detailed      # everything, 503 when something is wrong
  curl http://127.0.0.1:9901/metrics                # Prometheus metrics
  target/release/centinela alerts --admin 127.0.0.1:9901   # alert rules and their states
  target/release/centinela status --admin 127.0.0.1:9901   # the supervised instances

Try a failure: kill -9 \$(pgrep -f 'products-api --listen 127.0.0.1:8002')
and keep curling: no request fails, and centinela restarts it in well under a second.
Deploy without dropping a request (one instance at a time, each drained):
  target/release/centinela restart products --admin 127.0.0.1:9901
Page yourself: target/release/centinela stop products --admin 127.0.0.1:9901
and within ~20 s "[FIRING] upstream-down.products" prints here; start it again for "[RESOLVED]".
Reload the config (e.g. change instances = 3 to 4): kill -HUP $gw
Logs: $data/centinela.log, $data/logs/      Stop: Ctrl-C
TXT

if [ "${QUICKSTART_SMOKE:-}" = 1 ]; then
    # Non-interactive check used by CI: one request through the gateway.
    [ "$(status_of 8080 /products)" = 200 ] || { echo "quickstart smoke test: FAILED"; cat "$data/centinela.log"; exit 1; }
    target/release/centinela status --admin 127.0.0.1:9901
    [ "$(status_of 9901 /)" = 200 ] || { echo "quickstart smoke test: no dashboard"; exit 1; }
    target/release/centinela restart products --admin 127.0.0.1:9901 || { echo "quickstart smoke test: restart FAILED"; cat "$data/centinela.log"; exit 1; }
    [ "$(status_of 8080 /products)" = 200 ] || { echo "quickstart smoke test: FAILED after restart"; exit 1; }
    echo "quickstart smoke test: OK"
    exit 0
fi
wait "$gw"
