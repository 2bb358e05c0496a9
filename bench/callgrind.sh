#!/usr/bin/env bash
# Instructions a request on the request path, counted by callgrind: the
# steadier figure on a shared machine, where CPU time varies by tens of
# percent. Each centinela binary given runs under callgrind with one worker
# thread in front of an nginx origin on two ports (two servers, round
# robin); one keep-alive client sends 500, then (in a second run) 2,500
# GETs; instructions a request = (total₂₅₀₀ − total₅₀₀) ÷ 2,000, which
# leaves start-up and shutdown out.
#
#   bench/callgrind.sh target/release/centinela /path/to/baseline/centinela
#
# Bounded: 3,000 requests per binary on loopback. Not a test: it never
# runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need=()
for t in valgrind nginx; do command -v "$t" >/dev/null 2>&1 || need+=("$t"); done
apt_install "${need[@]}"

work=$(mktemp -d /tmp/centinela-cg.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

o1=$(port)
o2=$(port)
cat >"$work/origin.conf" <<NG
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$o1; listen 127.0.0.1:$o2; location / { return 200 "ok"; } } }
NG
nginx -c "$work/origin.conf" &
pids+=($!)
wait_port "$o1"

# count BIN N: total instructions of BIN serving N keep-alive GETs.
count() {
    local bin=$1 n=$2 web admin
    web=$(port)
    admin=$(port)
    cat >"$work/c.toml" <<CF
[admin]
listen = "127.0.0.1:$admin"
[[listener]]
name = "web"
listen = "127.0.0.1:$web"
[[route]]
upstream = "o"
[upstream.o]
servers = ["127.0.0.1:$o1", "127.0.0.1:$o2"]
[runtime]
access_log = false
worker_threads = 1
CF
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" run --config "$work/c.toml" \
        >"$work/c.log" 2>&1 &
    local c=$!
    wait_port "$web"
    python3 - "$web" "$n" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/x")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
    kill -INT "$c"
    wait "$c" || true
    grep -m1 "^summary:" "$work/cg.out" | awk '{print $2}'
}

for bin in "$@"; do
    a=$(count "$bin" 500)
    b=$(count "$bin" 2500)
    echo "$bin: $(((b - a) / 2000)) instructions a request"
done
