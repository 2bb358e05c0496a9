#!/usr/bin/env bash
# Side-by-side proxy benchmark: direct, centinela, HAProxy and nginx in the
# same run, same origin, same wrk load (loopback, keep-alive, bounded).
#
#   bench/proxy.sh [SECONDS_PER_RUN]      (default 10)
#   LOGS=1 bench/proxy.sh ...             (every proxy logs every request)
#
# With LOGS=1 each proxy writes an access line per request to a file, the
# way an operator would run it: nginx `access_log … buffer=64k`, HAProxy
# `option httplog` to stdout into a file, centinela `access_log = true`
# (stderr into a file); centinela's metrics are always on, and /metrics
# is scraped every second during the runs.
#
# The proxies run on CPU 1 and wrk and the origin on CPU 0 (when there are
# two cores and taskset), so that the load generator does not steal the
# proxy's core. Prints, per target and connection count (median of ROUNDS
# interleaved runs): requests/s, p50 and p99 latency,
# the proxy's CPU µs per request (user+sys from /proc ÷ requests) and its
# peak RSS; then paired runs (centinela and HAProxy, or nginx, under load at
# the same time, so that the machine's noise falls on both: one CPU ratio
# per round); then RSS with 1,000 idle keep-alive client connections, and
# centinela's peak RSS while 1 GiB is uploaded and downloaded through it.
# Then HTTPS (TLS=0 skips it): centinela (rustls) and nginx (OpenSSL)
# terminating TLS with the same ECDSA P-256 certificate in front of the
# same origin, paired: CPU per request on keep-alive connections (wrk), and
# full handshakes (openssl s_time -new, TLS 1.3): handshakes per second and
# CPU per handshake.
# Not a test: it never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DUR=${1:-10}
CONNS=${CONNS:-"1 32 128"}
# Rounds are interleaved (every target once per round) and summarised by
# their median, so that a slow minute of the shared machine does not land on
# one target only.
ROUNDS=${ROUNDS:-3}
# Paired rounds (centinela and another proxy loaded at the same time) per
# connection count and proxy, and their length in seconds.
PAIRED=${PAIRED:-5}
PAIRED_DUR=${PAIRED_DUR:-5}
LOGS=${LOGS:-0}
TLS=${TLS:-1}

need=()
for t in haproxy:haproxy nginx:nginx wrk:wrk curl:curl; do
    command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t##*:}")
done
apt_install "${need[@]}"
cargo build --release --bins -q
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d /tmp/centinela-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ "$LOGS" = 1 ]; then
    NGX_ACCESS="access_log $work/nginx-access.log combined buffer=64k;"
    HAP_GLOBAL_LOG="    log stdout format raw local0"
    HAP_LOG="    log global
    option httplog"
    CEN_ACCESS=true
else
    NGX_ACCESS=""; HAP_GLOBAL_LOG=""; HAP_LOG=""; CEN_ACCESS=false
fi
ORIGIN=$(port); CEN=$(port); CEN_ADMIN=$(port); HAP=$(port); NGX=$(port); BIG=$(port); UP=$(port)
CENS=$(port); NGXS=$(port); CENSH=$(port); NGXSH=$(port)
# The shield all on: 100,000 denied networks (none of them loopback), and
# an HS256 token that the shielded listener verifies on every request.
python3 - "$work" <<'PY'
import random, sys, hmac, hashlib, base64, json, time
w = sys.argv[1]; r = random.Random(7)
nets = []
for i in range(100000):
    a = r.randrange(1 << 24, 0xdf000000)
    if (a >> 24) == 127: a ^= 1 << 24
    n = 32 if i % 10 else 24
    a &= (0xffffffff << (32 - n)) & 0xffffffff
    nets.append("%d.%d.%d.%d/%d" % (a >> 24, a >> 16 & 255, a >> 8 & 255, a & 255, n))
open(w + "/blocked.txt", "w").write("\n".join(nets) + "\n")
open(w + "/blocked.geo", "w").write("".join("%s 1;\n" % n for n in nets))
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
secret = b"bench-secret-0123456789abcdef0123456789"
msg = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(secret, msg.encode(), hashlib.sha256).digest())
open(w + "/token", "w").write(msg + "." + sig)
open(w + "/jwt.secret", "w").write(secret.decode())
PY
chmod 600 "$work/jwt.secret"
TOKEN=$(cat "$work/token")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
chmod 644 "$work/tls.key"
mkdir -p "$work/tmp" "$work/www"
truncate -s 1G "$work/www/big"
chmod 755 "$work" "$work/www"; chmod 644 "$work/www/big"

# What centinela adds to responses by default (security headers, the
# server's Server and X-Powered-By removed), done by the others too: equal
# work.
NGX_EDGE="add_header X-Content-Type-Options nosniff; add_header X-Frame-Options DENY; add_header Referrer-Policy strict-origin-when-cross-origin; proxy_hide_header X-Powered-By; proxy_hide_header Server;"
nginx_conf() { # name port body
    cat >"$work/$1.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $work/tmp/$1_body;
    proxy_temp_path $work/tmp/$1_proxy;
    fastcgi_temp_path $work/tmp/$1_f; uwsgi_temp_path $work/tmp/$1_u; scgi_temp_path $work/tmp/$1_s;
    keepalive_requests 10000000;
    $3
}
CONF
}
nginx_conf origin "$ORIGIN" "server { listen 127.0.0.1:$ORIGIN; location / { return 200 'hello from the origin\n'; } }
    server { listen 127.0.0.1:$BIG; root $work/www; sendfile on; }"
nginx_conf nginx "$NGX" "upstream origin { server 127.0.0.1:$ORIGIN; keepalive 512; }
    server { listen 127.0.0.1:$NGX; $NGX_ACCESS
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection '';
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id; $NGX_EDGE } }
    server { listen 127.0.0.1:$NGXS ssl; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on; $NGX_ACCESS
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection '';
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Request-Id \$request_id; add_header X-Request-Id \$request_id;
            add_header Strict-Transport-Security max-age=31536000; $NGX_EDGE } }
    limit_req_zone \$binary_remote_addr zone=perip:10m rate=100000000r/s;
    geo \$blocked { default 0; include $work/blocked.geo; }
    server { listen 127.0.0.1:$NGXSH ssl; ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on; $NGX_ACCESS
        limit_req zone=perip burst=1000000 nodelay;
        if (\$blocked) { return 403; }
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection '';
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Request-Id \$request_id; add_header X-Request-Id \$request_id;
            add_header Strict-Transport-Security max-age=31536000; $NGX_EDGE } }"
cat >"$work/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 5000
$HAP_GLOBAL_LOG
defaults
    mode http
$HAP_LOG
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    option forwardfor
frontend web
    bind 127.0.0.1:$HAP
    unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    http-after-response set-header X-Request-Id %[unique-id]
    http-response set-header X-Content-Type-Options nosniff
    http-response set-header X-Frame-Options DENY
    http-response set-header Referrer-Policy strict-origin-when-cross-origin
    http-response del-header X-Powered-By
    http-response del-header Server
    default_backend origin
backend origin
    http-reuse always
    server o1 127.0.0.1:$ORIGIN
CONF
cat >"$work/centinela.toml" <<CONF
[admin]
listen = "127.0.0.1:$CEN_ADMIN"
[[listener]]
name = "web"
listen = "127.0.0.1:$CEN"
[[listener]]
name = "secure"
listen = "127.0.0.1:$CENS"
tls = { cert = "$work/tls.crt", key = "$work/tls.key" }
[[listener]]
name = "shielded"
listen = "127.0.0.1:$CENSH"
tls = { cert = "$work/tls.crt", key = "$work/tls.key" }
[[rate_limit]]
name = "per-ip"
key = "client_ip"
limit = 100000000
window = "1m"
[ip_lists.blocked]
file = "$work/blocked.txt"
[jwt.bench]
algorithms = ["HS256"]
secret = "file:$work/jwt.secret"
[[route]]
listener = "shielded"
upstream = "origin"
rate_limit = ["per-ip"]
deny = ["@blocked"]
auth = "bench"
[[route]]
path_prefix = "/upload"
upstream = "upload"
max_body = "2GiB"
[[route]]
path_prefix = "/big"
upstream = "big"
[[route]]
upstream = "origin"
[upstream.origin]
servers = ["127.0.0.1:$ORIGIN"]
limits = { max_in_flight = 100000, queue = 0 }
[upstream.big]
servers = ["127.0.0.1:$BIG"]
timeouts = { response = "120s", request = "300s" }
[upstream.upload]
servers = ["127.0.0.1:$UP"]
timeouts = { response = "120s", request = "300s" }
[runtime]
worker_threads = 1
access_log = $CEN_ACCESS
CONF
# An upload sink: reads a Content-Length body fully, then answers 200.
cat >"$work/sink.py" <<'PY'
import socket, sys, threading
def serve(c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line: return
        n = 0
        while line not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"): n = int(line.split(b":")[1])
            line = f.readline()
        left = n
        while left:
            b = f.read(min(left, 1 << 16))
            if not b: return
            left -= len(b)
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d" % (len(str(n)), n))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY

# CPU pinning: proxies on CPU 1, load generator and origin on CPU 0.
LOADCPU=(); PROXYCPU=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    LOADCPU=(taskset -c 0); PROXYCPU=(taskset -c 1)
fi
"${LOADCPU[@]}" nginx -c "$work/origin.conf" & pids+=($!)
"${PROXYCPU[@]}" nginx -c "$work/nginx.conf" & pids+=($!); NGX_MASTER=$!
"${PROXYCPU[@]}" haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!); HAP_PID=$!
RUST_LOG=warn "${PROXYCPU[@]}" target/release/centinela run --config "$work/centinela.toml" 2>"$work/centinela.log" & pids+=($!); CEN_PID=$!
python3 "$work/sink.py" "$UP" & pids+=($!)
for p in $ORIGIN $NGX $HAP $CEN $BIG $UP $CENS $NGXS $CENSH $NGXSH; do wait_port "$p"; done

# The processes whose CPU and memory count for a target.
proc_pids() {
    case $1 in
        centinela) echo "$CEN_PID" ;;
        haproxy) echo "$HAP_PID" ;;
        nginx) echo "$NGX_MASTER $(pgrep -P "$NGX_MASTER" | tr '\n' ' ')" ;;
        direct) echo "" ;;
    esac
}
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/^'"$2"':/{print $2}' "/proc/$p/status"))); done; echo $t; }
sum_status() { local key=$1; shift; local t=0; for p in "$@"; do t=$((t + $(awk -v k="$key:" '$1==k{print $2}' "/proc/$p/status"))); done; echo $t; }
port_of() { case $1 in direct) echo $ORIGIN;; centinela) echo $CEN;; haproxy) echo $HAP;; nginx) echo $NGX;; esac; }
HZ=$(getconf CLK_TCK)

if [ "$LOGS" = 1 ]; then
    # A scraper, as Prometheus would be (every second here, 15 s there).
    ( while sleep 1; do curl -fsS -o /dev/null "http://127.0.0.1:$CEN_ADMIN/metrics" || true; done ) &
    pids+=($!)
fi

results="$work/results.tsv"
: >"$results"
# Warm up pools and caches.
for target in direct centinela haproxy nginx; do
    "${LOADCPU[@]}" wrk -t1 -c32 -d2s "http://127.0.0.1:$(port_of $target)/" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNS; do
    for target in direct centinela haproxy nginx; do
        ps=$(proc_pids $target)
        before=0; [ -n "$ps" ] && before=$(cpu_ticks $ps)
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" --latency "http://127.0.0.1:$(port_of $target)/" >"$work/wrk.out"
        after=0; [ -n "$ps" ] && after=$(cpu_ticks $ps)
        hwm=0; [ -n "$ps" ] && hwm=$(sum_status VmHWM $ps)
        python3 - "$target" "$c" "$((after - before))" "$HZ" "$hwm" "$work/wrk.out" "$round" >>"$results" <<'PY'
import re, sys
target, conns, ticks, hz, hwm, path, rnd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
out = open(path).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        sys.exit(f"cannot read a latency from {v!r} in the wrk output of {target} c={conns}:\n{out}")
    x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x
reqs = int(re.search(r"(\d+) requests in", out).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
cpu = ticks * 1e6 / hz / reqs if target != "direct" else float("nan")
bad = (int(errs.group(1)) if errs else 0)
print(f"{target}\t{conns}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{cpu:.1f}\t{hwm/1024:.1f}\t{bad}\t{rnd}")
PY
    done
  done
done

# Paired runs: wrk loads centinela and one other proxy at the same time,
# both on the same CPU, so that a slow minute of this shared machine falls
# on both. Each round gives one ratio of CPU µs per request.
paired="$work/paired.tsv"
: >"$paired"
for c in $CONNS; do
  for other in haproxy nginx; do
    for round in $(seq 1 "$PAIRED"); do
        a_ps=$(proc_pids centinela); b_ps=$(proc_pids $other)
        a0=$(cpu_ticks $a_ps); b0=$(cpu_ticks $b_ps)
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "http://127.0.0.1:$CEN/" >"$work/pa.out" &
        wa=$!
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "http://127.0.0.1:$(port_of $other)/" >"$work/pb.out" &
        wb=$!
        wait $wa $wb
        a1=$(cpu_ticks $a_ps); b1=$(cpu_ticks $b_ps)
        na=$(grep -o '[0-9]* requests in' "$work/pa.out" | cut -d' ' -f1)
        nb=$(grep -o '[0-9]* requests in' "$work/pb.out" | cut -d' ' -f1)
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$other" $((a1 - a0)) "$na" $((b1 - b0)) "$nb" >>"$paired"
    done
  done
done

# HTTPS, paired: keep-alive requests (wrk), then full handshakes (s_time).
tls_paired="$work/tls.tsv"
: >"$tls_paired"
if [ "$TLS" = 1 ]; then
    for target in centinela nginx; do
        p=$CENS; [ $target = nginx ] && p=$NGXS
        "${LOADCPU[@]}" wrk -t1 -c32 -d2s "https://127.0.0.1:$p/" >/dev/null
    done
    for c in $CONNS; do
        for round in $(seq 1 "$PAIRED"); do
            a_ps=$(proc_pids centinela); b_ps=$(proc_pids nginx)
            a0=$(cpu_ticks $a_ps); b0=$(cpu_ticks $b_ps)
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "https://127.0.0.1:$CENS/" >"$work/pa.out" & wa=$!
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "https://127.0.0.1:$NGXS/" >"$work/pb.out" & wb=$!
            wait $wa $wb
            a1=$(cpu_ticks $a_ps); b1=$(cpu_ticks $b_ps)
            na=$(grep -o '[0-9]* requests in' "$work/pa.out" | cut -d' ' -f1)
            nb=$(grep -o '[0-9]* requests in' "$work/pb.out" | cut -d' ' -f1)
            printf 'keepalive\t%s\t%s\t%s\t%s\t%s\n' "$c" $((a1 - a0)) "$na" $((b1 - b0)) "$nb" >>"$tls_paired"
        done
    done
    for round in $(seq 1 "$PAIRED"); do
        a_ps=$(proc_pids centinela); b_ps=$(proc_pids nginx)
        a0=$(cpu_ticks $a_ps); b0=$(cpu_ticks $b_ps)
        "${LOADCPU[@]}" openssl s_time -connect "127.0.0.1:$CENS" -new -time "$PAIRED_DUR" >"$work/sa.out" 2>&1 & wa=$!
        "${LOADCPU[@]}" openssl s_time -connect "127.0.0.1:$NGXS" -new -time "$PAIRED_DUR" >"$work/sb.out" 2>&1 & wb=$!
        wait $wa $wb
        a1=$(cpu_ticks $a_ps); b1=$(cpu_ticks $b_ps)
        na=$(grep -o '^[0-9]* connections in' "$work/sa.out" | head -1 | cut -d' ' -f1)
        nb=$(grep -o '^[0-9]* connections in' "$work/sb.out" | head -1 | cut -d' ' -f1)
        printf 'handshake\t1\t%s\t%s\t%s\t%s\n' $((a1 - a0)) "${na:-0}" $((b1 - b0)) "${nb:-0}" >>"$tls_paired"
    done
    # The shield all on, paired with nginx doing TLS, limit_req and a geo
    # deny list of the same networks (nginx has no JWT); then the same
    # centinela alone, its shielded listener against its plain TLS one.
    auth=(-H "Authorization: Bearer $TOKEN")
    got=$(curl -sk -o /dev/null -w '%{http_code}' "${auth[@]}" "https://127.0.0.1:$CENSH/")
    [ "$got" = 200 ] || { echo "the shielded listener answered $got" >&2; exit 1; }
    for c in 32 128; do
        for round in $(seq 1 "$PAIRED"); do
            a_ps=$(proc_pids centinela); b_ps=$(proc_pids nginx)
            a0=$(cpu_ticks $a_ps); b0=$(cpu_ticks $b_ps)
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "${auth[@]}" "https://127.0.0.1:$CENSH/" >"$work/pa.out" & wa=$!
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "https://127.0.0.1:$NGXSH/" >"$work/pb.out" & wb=$!
            wait $wa $wb
            a1=$(cpu_ticks $a_ps); b1=$(cpu_ticks $b_ps)
            na=$(grep -o '[0-9]* requests in' "$work/pa.out" | cut -d' ' -f1)
            nb=$(grep -o '[0-9]* requests in' "$work/pb.out" | cut -d' ' -f1)
            ! grep -q "Non-2xx" "$work/pa.out" "$work/pb.out" || { echo "refusals in the shield run" >&2; cat "$work/pa.out" "$work/pb.out" >&2; exit 1; }
            printf 'shield\t%s\t%s\t%s\t%s\t%s\n' "$c" $((a1 - a0)) "$na" $((b1 - b0)) "$nb" >>"$tls_paired"
            ps=$(proc_pids centinela)
            t0=$(cpu_ticks $ps)
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "${auth[@]}" "https://127.0.0.1:$CENSH/" >"$work/pa.out"
            t1=$(cpu_ticks $ps)
            "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${PAIRED_DUR}s" "https://127.0.0.1:$CENS/" >"$work/pb.out"
            t2=$(cpu_ticks $ps)
            na=$(grep -o '[0-9]* requests in' "$work/pa.out" | cut -d' ' -f1)
            nb=$(grep -o '[0-9]* requests in' "$work/pb.out" | cut -d' ' -f1)
            printf 'shieldcost\t%s\t%s\t%s\t%s\t%s\n' "$c" $((t1 - t0)) "$na" $((t2 - t1)) "$nb" >>"$tls_paired"
        done
    done
fi

# RSS with 1,000 idle keep-alive client connections.
idle_rss() {
    python3 - "$(port_of "$1")" <<'PY' &
import socket, sys, time
port = int(sys.argv[1]); socks = []
for i in range(1000):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"origin"):
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
    socks.append(s)
open("/tmp/centinela-bench-idle-ready", "w").write("1")
time.sleep(5)
PY
    local py=$!
    for _ in $(seq 1 300); do [ -f /tmp/centinela-bench-idle-ready ] && break; sleep 0.05; done
    sleep 0.5
    sum_status VmRSS $(proc_pids "$1")
    rm -f /tmp/centinela-bench-idle-ready
    wait $py
}
declare -A IDLE
for target in centinela haproxy nginx; do IDLE[$target]=$(idle_rss $target); done

# centinela's peak RSS while 1 GiB goes down and 1 GiB goes up through it.
curl -fsS -o /dev/null "http://127.0.0.1:$CEN/big"
up=$(curl -fsS -T "$work/www/big" -H 'expect:' "http://127.0.0.1:$CEN/upload/x")
STREAM_HWM=$(sum_status VmHWM $CEN_PID)

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "$LOGS" = 1 ]; then
    echo "Access logs on (LOGS=1): lines written, centinela $(grep -c ' access: ' "$work/centinela.log" || true)" \
        "(dropped: $(curl -fsS "http://127.0.0.1:$CEN_ADMIN/metrics" | awk '/^centinela_access_log_dropped_total/{print $2}'))," \
        "HAProxy $(grep -c ' HTTP/1.1"' "$work/haproxy.log" || true), nginx $(wc -l <"$work/nginx-access.log")"
fi
echo "Versions: $(target/release/centinela --version), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | cut -d' ' -f3), wrk -t1, ${DUR}s per run, median of $ROUNDS interleaved rounds${PROXYCPU:+, proxies pinned to CPU 1, wrk and origin to CPU 0}"
echo
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
keys = []
for r in rows:
    if (r[0], r[1]) not in keys:
        keys.append((r[0], r[1]))
order = {"direct": 0, "centinela": 1, "haproxy": 2, "nginx": 3}
keys.sort(key=lambda k: (order[k[0]], int(k[1])))
med = {}
print(f"| target | conns | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy peak RSS MiB | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for k in keys:
    rs = [r for r in rows if (r[0], r[1]) == k]
    m = lambda i: statistics.median(float(r[i]) for r in rs)
    med[k] = {"rps": m(2), "p50": m(3), "p99": m(4), "cpu": m(5)}
    cpu = "-" if k[0] == "direct" else f"{med[k]['cpu']:.1f}"
    rss = "-" if k[0] == "direct" else f"{max(float(r[6]) for r in rs):.1f}"
    bad = sum(int(r[7]) for r in rs)
    print(f"| {k[0]} | {k[1]} | {med[k]['rps']:.0f} | {med[k]['p50']:.3f} | {med[k]['p99']:.3f} | {cpu} | {rss} | {bad} |")
print()
print("Ratios, centinela ÷ other, of the medians (in brackets: the range of the per-round ratios):")
for c in sorted({k[1] for k in keys}, key=int):
    for other in ("haproxy", "nginx"):
        ce, o = med.get(("centinela", c)), med.get((other, c))
        if not (ce and o):
            continue
        per = []
        for rnd in sorted({r[8] for r in rows}):
            a = [r for r in rows if r[0] == "centinela" and r[1] == c and r[8] == rnd]
            b = [r for r in rows if r[0] == other and r[1] == c and r[8] == rnd]
            if a and b:
                per.append(float(a[0][5]) / float(b[0][5]))
        spread = f"[{min(per):.2f}-{max(per):.2f}]" if per else ""
        print(f"  {c:>4} conns vs {other:<7}: CPU {ce['cpu']/o['cpu']:.2f}x {spread:<12} p99 {ce['p99']/o['p99']:.2f}x   req/s {ce['rps']/o['rps']:.2f}x")
PY
python3 - "$paired" "$HZ" "$PAIRED_DUR" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
hz = int(sys.argv[2])
print()
print(f"Paired runs ({sys.argv[3]}s each; centinela and the other proxy loaded at the same time on the same CPU):")
print("CPU µs/request, centinela ÷ other, median of the rounds [range]:")
for c in sorted({r[0] for r in rows}, key=int):
    for other in ("haproxy", "nginx"):
        rs = [r for r in rows if r[0] == c and r[1] == other]
        if not rs:
            continue
        us = lambda t, n: int(t) * 1e6 / hz / int(n)
        ratios = [us(r[2], r[3]) / us(r[4], r[5]) for r in rs]
        cen = statistics.median(us(r[2], r[3]) for r in rs)
        oth = statistics.median(us(r[4], r[5]) for r in rs)
        print(f"  {c:>4} conns vs {other:<7}: {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]  (centinela {cen:.1f} µs, {other} {oth:.1f} µs)")
PY
if [ "$TLS" = 1 ]; then
python3 - "$tls_paired" "$HZ" "$PAIRED_DUR" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
hz = int(sys.argv[2]); dur = float(sys.argv[3])
print()
print(f"HTTPS, paired with nginx (OpenSSL) ({sys.argv[3]}s each, same certificate, same origin, same CPU):")
us = lambda t, n: int(t) * 1e6 / hz / max(int(n), 1)
for kind in ("keepalive", "handshake", "shield", "shieldcost"):
    for c in sorted({r[1] for r in rows if r[0] == kind}, key=int):
        rs = [r for r in rows if r[0] == kind and r[1] == c]
        ratios = [us(r[2], r[3]) / us(r[4], r[5]) for r in rs if int(r[3]) and int(r[5])]
        if not ratios:
            continue
        cen = statistics.median(us(r[2], r[3]) for r in rs)
        ngx = statistics.median(us(r[4], r[5]) for r in rs)
        if kind == "keepalive":
            print(f"  keep-alive, {c:>4} conns: CPU µs/request {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]  (centinela {cen:.1f} µs, nginx {ngx:.1f} µs)")
        elif kind == "shield":
            print(f"  shield on (TLS + rate limit + 100k-network deny list + JWT), {c:>4} conns, vs nginx (TLS + limit_req + geo deny list): CPU µs/request {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]  (centinela {cen:.1f} µs, nginx {ngx:.1f} µs)")
        elif kind == "shieldcost":
            print(f"  shield on ÷ plain TLS, same centinela, {c:>4} conns (alternating runs): {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]  ({cen:.1f} µs vs {ngx:.1f} µs: +{cen - ngx:.1f} µs)")
        else:
            ca = statistics.median(int(r[3]) / dur for r in rs); na = statistics.median(int(r[5]) / dur for r in rs)
            print(f"  full handshakes (TLS 1.3, s_time -new): CPU µs/handshake {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]  (centinela {cen:.0f} µs, nginx {ngx:.0f} µs); handshakes/s {ca/na:.2f}x (centinela {ca:.0f}/s, nginx {na:.0f}/s)")
PY
fi
echo
echo "RSS with 1,000 idle keep-alive connections: centinela $((IDLE[centinela]/1024)) MiB, haproxy $((IDLE[haproxy]/1024)) MiB, nginx $((IDLE[nginx]/1024)) MiB"
echo "centinela peak RSS after a 1 GiB download and a 1 GiB upload through it: $((STREAM_HWM/1024)) MiB (upload sink counted $up bytes)"
