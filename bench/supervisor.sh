#!/usr/bin/env bash
# Recovery times of supervised instances under load: two products-api
# instances behind centinela (release builds, every supervisor setting at
# its default but `liveness = { http = "/health" }`), wrk with 4
# connections, and one instance
#   - killed with kill -9 (a crash),
#   - frozen with SIGSTOP, with a spare port in the pool (hang),
#   - frozen with SIGSTOP, without a spare port (hang, same port).
# For each: the time from the signal until the instance runs again under a
# new pid and is ready (polled on /-/services every 10 ms), and the
# requests wrk saw fail (non-2xx and socket errors) in its whole run.
#
#   bench/supervisor.sh [ROUNDS]      (default 3 per scenario)
#
# Bounded: ROUNDS × 3 runs of wrk for 10 s on loopback. Not a test: it
# never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${1:-3}

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
apt_install "${need[@]}"
cargo build --release --bins -q

work=$(mktemp -d /tmp/centinela-supbench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A run of N free consecutive loopback ports; prints the first.
free_range() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
for _ in range(200):
    base = random.randrange(20000, 40000)
    socks = []
    try:
        for p in range(base, base + n):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
EOF
}

# The pid and state of instance 0 on the admin API, as "PID STATE".
instance0() {
    curl -s "http://127.0.0.1:$1/-/services" | python3 -c '
import json, sys
try:
    i = [x for x in json.load(sys.stdin)["services"][0]["instances"] if x["index"] == 0 and x["pid"]]
    print(i[-1]["pid"], i[-1]["state"]) if i else print("- -")
except Exception:
    print("- -")'
}

# run SCENARIO SIGNAL POOL_SIZE: prints "seconds failed total".
run() {
    local name=$1 sig=$2 pool=$3
    local base web admin
    base=$(free_range "$pool")
    web=$(port)
    admin=$(port)
    mkdir -p "$work/$name"
    cat >"$work/$name/centinela.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin"
[[listener]]
name = "web"
listen = "127.0.0.1:$web"
[[route]]
upstream = "products"
[upstream.products]
[service.products]
command = "$PWD/target/release/products-api"
args = ["--listen", "127.0.0.1:{port}", "--db", "products.db"]
instances = 2
ports = "$base-$((base + pool - 1))"
upstream = "products"
liveness = { http = "/health" }
[runtime]
access_log = false
EOF
    target/release/centinela run --config "$work/$name/centinela.toml" \
        >"$work/$name.log" 2>"$work/$name.err" &
    local gw=$!
    pids+=("$gw")
    wait_port "$admin"
    for _ in $(seq 1 400); do
        [ "$(curl -s "http://127.0.0.1:$admin/-/services" | grep -o '"ready"' | wc -l)" = 2 ] && break
        sleep 0.05
    done
    # --timeout 10s: a request held by the frozen instance waits until
    # liveness fails (3-4 s), then is retried; wrk would count it a failure
    # at its default 2 s.
    wrk -t1 -c4 -d10s --timeout 10s "http://127.0.0.1:$web/products?limit=5" >"$work/$name.wrk" 2>&1 &
    local load=$!
    sleep 2
    local old t0 now state pid
    read -r old state <<<"$(instance0 "$admin")"
    t0=$(date +%s.%N)
    kill "-$sig" "$old"
    local took=timeout
    for _ in $(seq 1 2000); do
        read -r pid state <<<"$(instance0 "$admin")"
        if [ "$pid" != - ] && [ "$pid" != "$old" ] && [ "$state" = ready ]; then
            now=$(date +%s.%N)
            took=$(python3 -c "print(f'{$now - $t0:.2f}')")
            break
        fi
        sleep 0.01
    done
    wait "$load"
    kill "$gw"
    wait "$gw" 2>/dev/null || true
    local total failed
    total=$(awk '/requests in/ {print $1}' "$work/$name.wrk")
    failed=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$work/$name.wrk")
    echo "$took $failed $total"
}

printf '%-34s %-8s %-28s %s\n' scenario round "ready again after (s)" "failed / requests"
for r in $(seq 1 "$ROUNDS"); do
    for s in "crash:KILL:2:kill -9" "hang-spare:STOP:3:SIGSTOP, spare port" "hang-same:STOP:2:SIGSTOP, no spare port"; do
        IFS=: read -r name sig pool label <<<"$s"
        read -r took failed total <<<"$(run "$name-$r" "$sig" "$pool")"
        printf '%-34s %-8s %-28s %s\n' "$label" "$r" "$took" "$failed / $total"
    done
done
