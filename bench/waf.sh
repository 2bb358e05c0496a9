#!/usr/bin/env bash
# What the WAF adds to a request's CPU, through the proxy, at paranoia
# level 1 with the real OWASP CRS 4.28 (../shared/testdata/waf-crs-rules):
#
#   bench/waf.sh [SECONDS]        (default 5 s per run; ROUNDS=3, CONNS="1 8")
#
# Two requests, each as wrk sends it over keep-alive connections:
#   get   a typical API GET: a path, 3 query arguments and 10 headers;
#   post  a 2 KB JSON POST (an order of 14 items) with the same headers.
# Four proxies in front of one nginx origin that answers 200:
#   centinela without [waf], centinela with [waf] (block mode, PL1),
#   nginx without ModSecurity, nginx with ModSecurity v3 (Debian's
#   libnginx-mod-http-modsecurity) and the same CRS files at PL1.
# Prints the proxies' CPU µs per request (median of ROUNDS interleaved
# rounds; user + system time from /proc), and what the WAF adds: on − off,
# for centinela and for ModSecurity, measured in the same run. Every
# request must be answered 200: a refusal would not be a measurement.
#
# Runs bounded (wrk -d) against loopback only. Needs nginx, wrk and the
# ModSecurity module (installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DUR=${1:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"1 8"}
CRS=${CENTINELA_TESTDATA:-$(cd .. && pwd)/shared/testdata}/waf-crs-rules
[ -f "$CRS/crs-setup.conf.example" ] || { echo "the CRS is not at $CRS" >&2; exit 1; }

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ] || need+=(libnginx-mod-http-modsecurity)
apt_install "${need[@]}"
cargo build --release --bins -q
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d /tmp/centinela-wafbench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ORIGIN=$(port); COFF=$(port); CON=$(port); NOFF=$(port); NON=$(port)
mkdir -p "$work/tmp"

nginx_conf() { # name modules body
    cat >"$work/$1.conf" <<CONF
$2
worker_processes 1;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/tmp/$1_body;
    proxy_temp_path $work/tmp/$1_proxy;
    fastcgi_temp_path $work/tmp/$1_f; uwsgi_temp_path $work/tmp/$1_u; scgi_temp_path $work/tmp/$1_s;
    keepalive_requests 10000000;
    client_body_buffer_size 16k;
    $3
}
CONF
}
nginx_conf origin "" "server { listen 127.0.0.1:$ORIGIN; location / { return 200 'ok\n'; } }"
PROXY="location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ''; }"
UPSTREAM="upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }"
nginx_conf nginx-off "" "$UPSTREAM server { listen 127.0.0.1:$NOFF; $PROXY }"
# Debian's recommended ModSecurity settings with the engine on, as
# bench/waf/crs-regression runs it.
sed -e 's/^SecRuleEngine DetectionOnly/SecRuleEngine On/' \
    -e 's/^SecAuditEngine RelevantOnly/SecAuditEngine Off/' \
    -e "s|^SecAuditLog .*|SecAuditLog $work/audit.log|" \
    -e 's|^SecUnicodeMapFile unicode.mapping|SecUnicodeMapFile /etc/nginx/unicode.mapping|' \
    -e "s|^SecTmpDir .*|SecTmpDir $work/tmp|" -e "s|^SecDataDir .*|SecDataDir $work/tmp|" \
    /etc/nginx/modsecurity.conf >"$work/modsec.conf"
cat >>"$work/modsec.conf" <<CONF
SecAction "id:900000,phase:1,pass,nolog,setvar:tx.blocking_paranoia_level=1"
SecAction "id:900001,phase:1,pass,nolog,setvar:tx.detection_paranoia_level=1"
Include $CRS/crs-setup.conf.example
Include $CRS/rules/*.conf
CONF
nginx_conf nginx-on "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;" \
    "$UPSTREAM server { listen 127.0.0.1:$NON; modsecurity on; modsecurity_rules_file $work/modsec.conf; $PROXY }"

centinela_conf() { # name port extra
    cat >"$work/$1.toml" <<CONF
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "web"
listen = "127.0.0.1:$2"
[[route]]
upstream = "origin"
[upstream.origin]
servers = ["127.0.0.1:$ORIGIN"]
limits = { max_in_flight = 100000, queue = 0 }
[runtime]
worker_threads = 1
access_log = false
$3
CONF
}
centinela_conf centinela-off "$COFF" ""
centinela_conf centinela-on "$CON" "[waf]
rules = [\"$CRS/crs-setup.conf.example\", \"$CRS/rules/*.conf\"]
mode = \"block\"
paranoia = 1"

# The requests, as wrk scripts.
HEADERS='wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
wrk.headers["Accept"] = "application/json, text/plain, */*"
wrk.headers["Accept-Language"] = "es-ES,es;q=0.9,en;q=0.8"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br"
wrk.headers["Referer"] = "https://shop.example.com/catalogo?page=1"
wrk.headers["Cookie"] = "session=3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c; lang=es"
wrk.headers["Authorization"] = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"
wrk.headers["X-Request-Id"] = "4bf92f3577b34da6a3ce929d0e0e4736"
wrk.headers["Connection"] = "keep-alive"'
cat >"$work/get.lua" <<LUA
wrk.method = "GET"
wrk.path = "/api/products?q=zapatillas%20de%20running&page=2&sort=price_asc"
$HEADERS
LUA
BODY=$(python3 - <<'PY'
import json
items, i = [], 0
while len(json.dumps({"items": items, "coupon": "INVIERNO-10"})) < 1900:
    items.append({"sku": f"ZP-{i:04}", "name": f"Zapatilla \"Trail\" talla {36 + i % 10}",
                  "description": "Suela de goma, malla transpirable; ideal para montaña.", "qty": 1 + i % 3})
    i += 1
print(json.dumps({"items": items, "coupon": "INVIERNO-10"}, ensure_ascii=False))
PY
)
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.path = "/api/orders"
$HEADERS
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$BODY]==]
LUA

LOADCPU=(); PROXYCPU=()
if [ "$(nproc)" -ge 2 ]; then LOADCPU=(taskset -c 0); PROXYCPU=(taskset -c 1); fi
"${LOADCPU[@]}" nginx -c "$work/origin.conf" & pids+=($!)
"${PROXYCPU[@]}" nginx -c "$work/nginx-off.conf" & pids+=($!); NOFF_PID=$!
"${PROXYCPU[@]}" nginx -c "$work/nginx-on.conf" & pids+=($!); NON_PID=$!
RUST_LOG=warn "${PROXYCPU[@]}" target/release/centinela run --config "$work/centinela-off.toml" 2>"$work/coff.log" & pids+=($!); COFF_PID=$!
RUST_LOG=warn "${PROXYCPU[@]}" target/release/centinela run --config "$work/centinela-on.toml" 2>"$work/con.log" & pids+=($!); CON_PID=$!
for p in $ORIGIN $COFF $CON $NOFF $NON; do wait_port "$p"; done

proc_pids() {
    case $1 in
        centinela-off) echo "$COFF_PID" ;;
        centinela-on) echo "$CON_PID" ;;
        nginx-off) echo "$NOFF_PID $(pgrep -P "$NOFF_PID" | tr '\n' ' ')" ;;
        nginx-on) echo "$NON_PID $(pgrep -P "$NON_PID" | tr '\n' ' ')" ;;
    esac
}
port_of() { case $1 in centinela-off) echo $COFF;; centinela-on) echo $CON;; nginx-off) echo $NOFF;; nginx-on) echo $NON;; esac; }
HZ=$(getconf CLK_TCK)
TARGETS="centinela-off centinela-on nginx-off nginx-on"

# Every proxy answers both requests with 200 before anything is measured.
for t in $TARGETS; do
    for kind in get post; do
        "${LOADCPU[@]}" wrk -t1 -c1 -d1s -s "$work/$kind.lua" "http://127.0.0.1:$(port_of "$t")" >"$work/check.out"
        if grep -q "Non-2xx" "$work/check.out"; then
            echo "$t refuses the $kind request; it cannot be measured:" >&2
            cat "$work/check.out" >&2
            exit 1
        fi
    done
done

results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for kind in get post; do
    for c in $CONNS; do
      for t in $TARGETS; do
        ps=$(proc_pids "$t")
        before=$(cpu_ticks $ps)
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" -s "$work/$kind.lua" "http://127.0.0.1:$(port_of "$t")" >"$work/wrk.out"
        after=$(cpu_ticks $ps)
        python3 - "$kind" "$t" "$c" "$((after - before))" "$HZ" "$work/wrk.out" >>"$results" <<'PY'
import re, sys
kind, target, conns, ticks, hz, path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
out = open(path).read()
reqs = int(re.search(r"(\d+) requests in", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if bad:
    sys.exit(f"{target} refused {bad.group(1)} {kind} requests:\n{out}")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(f"{kind}\t{target}\t{conns}\t{rps:.0f}\t{ticks * 1e6 / hz / reqs:.1f}")
PY
      done
    done
  done
done

python3 - "$results" "$ROUNDS" "$DUR" <<'PY'
import sys, statistics, collections
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
cpu, rps = collections.defaultdict(list), collections.defaultdict(list)
for kind, target, conns, r, c in rows:
    cpu[kind, target, conns].append(float(c)); rps[kind, target, conns].append(float(r))
med = lambda xs: statistics.median(xs)
print(f"CPU µs per request through each proxy, median of {sys.argv[2]} interleaved rounds of {sys.argv[3]} s (OWASP CRS 4.28, PL1):\n")
print("| request | conns | centinela off | centinela + WAF | nginx off | nginx + ModSecurity | added by centinela's WAF | added by ModSecurity | ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for kind in ("get", "post"):
    for conns in sorted({k[2] for k in cpu if k[0] == kind}, key=int):
        g = lambda t: med(cpu[kind, t, conns])
        add_c = g("centinela-on") - g("centinela-off")
        add_m = g("nginx-on") - g("nginx-off")
        name = "API GET" if kind == "get" else "2 KB JSON POST"
        print(f"| {name} | {conns} | {g('centinela-off'):.1f} | {g('centinela-on'):.1f} | {g('nginx-off'):.1f} | {g('nginx-on'):.1f} | "
              f"**{add_c:.0f}** | {add_m:.0f} | {add_c / add_m:.2f}x |")
print()
for kind in ("get", "post"):
    for conns in sorted({k[2] for k in cpu if k[0] == kind}, key=int):
        print(f"req/s {kind:4} c={conns}: " + ", ".join(f"{t} {med(rps[kind, t, conns]):.0f}" for t in
              ("centinela-off", "centinela-on", "nginx-off", "nginx-on")))
PY
echo
echo "Versions: $(target/release/centinela --version), $(nginx -v 2>&1 | cut -d' ' -f3), ModSecurity $(dpkg-query -W -f '${Version}' libmodsecurity3 2>/dev/null || echo '?'), wrk -t1${PROXYCPU:+, proxies pinned to CPU 1, wrk and origin to CPU 0}"
