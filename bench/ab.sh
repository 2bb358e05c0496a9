#!/usr/bin/env bash
# Paired A/B of two centinela builds: this work tree against BASELINE (a git
# revision, default HEAD~1), in front of the same nginx origin, loaded at
# the same time on the same CPU so that the shared machine's noise falls on
# both. Each round gives one ratio of CPU µs per request (new ÷ baseline),
# and one of p99 latency.
#
#   BASELINE=<rev> bench/ab.sh [ROUNDS] [SECONDS]     (default 8 rounds of 5 s)
#   BASELINE=<rev> BASELINE_BIN=path/to/centinela bench/ab.sh   (reuse a build)
#   NEW_RUNTIME='trace_context = false' ... (extra [runtime] lines for one
#   side; OLD_RUNTIME for the other: the same binary with a setting on/off)
#   ACCESS_LOG=true ...   (both sides log every request, into files;
#   NEW_ACCESS_LOG / OLD_ACCESS_LOG for one side)
#   NEW_ROUTE='security_headers = false' ... (extra [[route]] lines for the
#   new side; OLD_ROUTE for the other)
#   PERF=/tmp/prof ... (one more round, profiled with perf: the top
#   symbols of each side in /tmp/prof.new.txt and /tmp/prof.old.txt)
#
# Bounded: ROUNDS × connection counts × SECONDS of wrk on loopback. Not a
# test: it never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${1:-8}
DUR=${2:-5}
CONNS=${CONNS:-"1 32 128"}
BASELINE=${BASELINE:-HEAD~1}

need=()
for t in nginx wrk; do command -v "$t" >/dev/null 2>&1 || need+=("$t"); done
apt_install "${need[@]}"

work=$(mktemp -d /tmp/centinela-ab.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    git worktree remove --force "$work/base" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

rev=$(git rev-parse --short "$BASELINE")
cargo build --release --bins -q
NEW=target/release/centinela
if [ -n "${BASELINE_BIN:-}" ]; then
    # A baseline binary built earlier (from $BASELINE, as the caller says).
    OLD=$BASELINE_BIN
else
    git worktree add -q --detach "$work/base" "$rev"
    (cd "$work/base" && CARGO_TARGET_DIR="$PWD/../target-base" cargo build --release -q --bin centinela)
    OLD=$work/target-base/release/centinela
fi

ORIGIN=$(port); A=$(port); B=$(port); AA=$(port); BA=$(port)
mkdir -p "$work/tmp"
cat >"$work/origin.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/origin.err warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $work/tmp/b; proxy_temp_path $work/tmp/p;
    fastcgi_temp_path $work/tmp/f; uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
    keepalive_requests 10000000;
    server { listen 127.0.0.1:$ORIGIN; location / { return 200 'hello from the origin\n'; } }
}
CONF
conf() { # port admin runtime-lines access_log route-lines
    cat <<CONF
[admin]
listen = "127.0.0.1:$2"
[[listener]]
name = "web"
listen = "127.0.0.1:$1"
[[route]]
upstream = "origin"
$5
[upstream.origin]
servers = ["127.0.0.1:$ORIGIN"]
limits = { max_in_flight = 100000, queue = 0 }
[runtime]
worker_threads = 1
access_log = $4
$3
CONF
}
conf "$A" "$AA" "${NEW_RUNTIME:-}" "${NEW_ACCESS_LOG:-${ACCESS_LOG:-false}}" "${NEW_ROUTE:-}" >"$work/new.toml"
conf "$B" "$BA" "${OLD_RUNTIME:-}" "${OLD_ACCESS_LOG:-${ACCESS_LOG:-false}}" "${OLD_ROUTE:-}" >"$work/old.toml"

LOADCPU=(); PROXYCPU=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
    LOADCPU=(taskset -c 0); PROXYCPU=(taskset -c 1)
fi
"${LOADCPU[@]}" nginx -c "$work/origin.conf" & pids+=($!)
# The access log at info (a build whose access lines go through the log
# filter needs it); the rest quiet.
LOGLEVEL=warn,access=info
RUST_LOG=$LOGLEVEL "${PROXYCPU[@]}" "$NEW" run --config "$work/new.toml" 2>"$work/new.log" & pids+=($!); NEW_PID=$!
RUST_LOG=$LOGLEVEL "${PROXYCPU[@]}" "$OLD" run --config "$work/old.toml" 2>"$work/old.log" & pids+=($!); OLD_PID=$!
for p in $ORIGIN $A $B; do wait_port "$p"; done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
for p in $A $B; do "${LOADCPU[@]}" wrk -t1 -c32 -d2s "http://127.0.0.1:$p/" >/dev/null; done

out="$work/ab.tsv"
: >"$out"
for c in $CONNS; do
    for round in $(seq 1 "$ROUNDS"); do
        a0=$(ticks $NEW_PID); b0=$(ticks $OLD_PID)
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" --latency "http://127.0.0.1:$A/" >"$work/a.out" & wa=$!
        "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" --latency "http://127.0.0.1:$B/" >"$work/b.out" & wb=$!
        wait $wa $wb
        a1=$(ticks $NEW_PID); b1=$(ticks $OLD_PID)
        na=$(grep -o '[0-9]* requests in' "$work/a.out" | cut -d' ' -f1)
        nb=$(grep -o '[0-9]* requests in' "$work/b.out" | cut -d' ' -f1)
        pa=$(awk '/^ +99%/{print $2}' "$work/a.out"); pb=$(awk '/^ +99%/{print $2}' "$work/b.out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" $((a1 - a0)) "$na" $((b1 - b0)) "$nb" "$pa" "$pb" >>"$out"
    done
done
if [ -n "${PERF:-}" ]; then
    # One more paired round at the last connection count, profiled: where
    # the two builds spend their cycles, symbol by symbol.
    c=${CONNS##* }
    perf record -q -F 999 -p "$NEW_PID" -o "$work/new.data" -- sleep "$DUR" 2>/dev/null & pa=$!
    perf record -q -F 999 -p "$OLD_PID" -o "$work/old.data" -- sleep "$DUR" 2>/dev/null & pb=$!
    "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" "http://127.0.0.1:$A/" >/dev/null & wa=$!
    "${LOADCPU[@]}" wrk -t1 -c"$c" -d"${DUR}s" "http://127.0.0.1:$B/" >/dev/null & wb=$!
    wait $wa $wb $pa $pb
    for side in new old; do
        perf report -q -i "$work/$side.data" --no-children --percent-limit 0.3 --sort symbol \
            >"$PERF.$side.txt" 2>/dev/null || true
    done
    echo "profiles: $PERF.new.txt $PERF.old.txt"
fi
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "This tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')) ÷ baseline $rev, $ROUNDS paired rounds of ${DUR}s, wrk -t1:"
python3 - "$out" "$HZ" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
hz = int(sys.argv[2])
us = lambda t, n: int(t) * 1e6 / hz / int(n)
def ms(v):
    x = float(v.rstrip("usm"))
    return x / 1000 if v.endswith("us") else x * 1000 if v.endswith("s") and not v.endswith("ms") else x
for c in sorted({r[0] for r in rows}, key=int):
    rs = [r for r in rows if r[0] == c]
    ratios = sorted(us(r[1], r[2]) / us(r[3], r[4]) for r in rs)
    new = statistics.median(us(r[1], r[2]) for r in rs)
    old = statistics.median(us(r[3], r[4]) for r in rs)
    p99 = sorted(ms(r[5]) / ms(r[6]) for r in rs)
    print(f"  {c:>4} conns: CPU µs/request {statistics.median(ratios):.3f}x [{ratios[0]:.3f}-{ratios[-1]:.3f}]  (new {new:.1f} µs, baseline {old:.1f} µs)"
          f"; p99 {statistics.median(p99):.2f}x [{p99[0]:.2f}-{p99[-1]:.2f}]")
PY
