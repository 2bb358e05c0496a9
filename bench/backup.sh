#!/usr/bin/env bash
# centinela's PostgreSQL backups against pgBackRest (Debian package, 2.45),
# on the same cluster in the same run: `pgbench -i -s SCALE` (30: about
# 450 MB), both with zstd level 3 and encryption on (age for centinela,
# aes-256-cbc for pgBackRest), both archiving every WAL segment through
# the same archive_command, one after the other.
#
#   bench/backup.sh            (SCALE=30 by default; SCALE=70 is about 1 GB;
#                               KEEP_WORK=1 keeps the work directory to look into)
#
# Reports, centinela ÷ pgBackRest:
#   full backup: wall time, bytes stored, peak RSS
#   incremental after `pgbench -T 20`: wall time, bytes stored
#   restore (latest) and PITR restore (to a time inside the pgbench run):
#     wall time from the restore command to a promoted server, the median
#     of three
#   wal-push ÷ archive-push: mean time per segment (the same segments)
#
# Bounded: one cluster on a loopback port and a Unix socket in the work
# directory, a 20 s pgbench run, everything removed at the end. Not a test:
# it never runs in CI. Runs as root (PostgreSQL and pgBackRest then run as
# the postgres user) or as a user who can run initdb.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-30}

need=()
command -v pgbackrest >/dev/null || need+=(pgbackrest)
command -v age-keygen >/dev/null || need+=(age)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
export PATH="$PGBIN:$PATH"

cargo build --release --bin centinela -q
work=$(mktemp -d /tmp/centinela-bench-backup.XXXXXX)
chmod 755 "$work"
cp target/release/centinela "$work/centinela"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$work"
    as_pg=(runuser -u postgres --)
fi
run() { "${as_pg[@]}" env PATH="$PATH" "$@"; }
cleanup() {
    for d in "$work"/data "$work"/r-*; do
        [ -f "$d/postmaster.pid" ] && run pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Wall seconds and peak RSS (KiB, the largest process) of a command.
measure() {
    run /usr/bin/python3 -c '
import resource, subprocess, sys, time
t = time.time()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.time() - t
if r.returncode:
    sys.exit("failed: " + " ".join(sys.argv[1:]))
print("%.2f %d" % (dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
' "$@"
}
bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }

P=$(port)
sock="$work/sock"
run mkdir -p "$sock" "$work/pgbr-repo" "$work/pgbr-log" "$work/pgbr-lock" "$work/pgbr-spool" "$work/repo"
run initdb -D "$work/data" -U postgres --auth=trust -N >/dev/null
run age-keygen -o "$work/key" 2>"$work/key.pub"
recipient=$(sed -n 's/^Public key: //p' "$work/key.pub")
cat > "$work/centinela.toml" <<EOF
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "app"
[upstream.app]
servers = ["127.0.0.1:1"]

[repo.local]
path = "$work/repo"

[backup.bench]
kind = "postgres"
connect = "host=127.0.0.1 port=$P user=postgres dbname=postgres"
wal = "archive"
schedule = "0 3 * * *"
repos = ["local"]
encrypt_to = ["$recipient"]
compression = { zstd = 3 }

[runtime]
state_dir = "$work/state"
EOF
cat > "$work/pgbackrest.conf" <<EOF
[global]
repo1-path=$work/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 24 /dev/urandom | base64)
compress-type=zst
compress-level=3
repo1-retention-full=2
log-level-console=warn
log-level-file=off
log-path=$work/pgbr-log
lock-path=$work/pgbr-lock
spool-path=$work/pgbr-spool
start-fast=y

[bench]
pg1-path=$work/data
pg1-port=$P
pg1-socket-path=$sock
EOF
# Both tools archive every segment; each one's time per segment is logged.
# (pgBackRest checks that archive_command names it: the script does.)
cat > "$work/archive-centinela-pgbackrest.sh" <<EOF
#!/bin/sh
t0=\$(date +%s%N)
$work/centinela wal-push bench "\$1" --config $work/centinela.toml || exit 1
t1=\$(date +%s%N)
pgbackrest --config=$work/pgbackrest.conf --stanza=bench archive-push "\$1" || exit 1
t2=\$(date +%s%N)
echo "\$((t1-t0)) \$((t2-t1))" >> $work/push-times
EOF
chmod 755 "$work/archive-centinela-pgbackrest.sh"
cat >> "$work/data/postgresql.conf" <<EOF
port = $P
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
wal_level = replica
archive_mode = on
archive_command = '$work/archive-centinela-pgbackrest.sh %p'
max_wal_size = 1GB
EOF
run pg_ctl -D "$work/data" -l "$work/pg.log" -w start >/dev/null
psql() { command psql -X -q -At -h 127.0.0.1 -p "$P" -U postgres -d postgres "$@"; }
run pgbackrest --config="$work/pgbackrest.conf" --stanza=bench stanza-create
echo "pgbench -i -s $SCALE ..." >&2
pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$P" -U postgres postgres >/dev/null 2>&1
psql -c "CHECKPOINT" >/dev/null
size=$(psql -c "SELECT pg_database_size('postgres')")

# Full backups.
echo "full backups ..." >&2
c0=$(bytes "$work/repo/chunks" "$work/repo/snapshots")
read -r c_full c_rss < <(measure "$work/centinela" backup run bench --config "$work/centinela.toml")
c_full_b=$(( $(bytes "$work/repo/chunks" "$work/repo/snapshots") - c0 ))
p0=$(bytes "$work/pgbr-repo/backup")
read -r p_full p_rss < <(measure pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --type=full backup)
p_full_b=$(( $(bytes "$work/pgbr-repo/backup") - p0 ))

# Changes, with a time in the middle for PITR.
echo "pgbench -T 20 ..." >&2
pgbench -T 10 -c 2 -h 127.0.0.1 -p "$P" -U postgres postgres >/dev/null 2>&1
target=$(psql -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
target_rows=$(psql -c "SELECT count(*) FROM pgbench_history")
sleep 0.2
pgbench -T 10 -c 2 -h 127.0.0.1 -p "$P" -U postgres postgres >/dev/null 2>&1
final_rows=$(psql -c "SELECT count(*) FROM pgbench_history")

echo "incremental backups ..." >&2
c0=$(bytes "$work/repo/chunks" "$work/repo/snapshots")
read -r c_inc _ < <(measure "$work/centinela" backup run bench --config "$work/centinela.toml")
c_inc_b=$(( $(bytes "$work/repo/chunks" "$work/repo/snapshots") - c0 ))
p0=$(bytes "$work/pgbr-repo/backup")
read -r p_inc _ < <(measure pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --type=incr backup)
p_inc_b=$(( $(bytes "$work/pgbr-repo/backup") - p0 ))
psql -c "SELECT pg_switch_wal()" >/dev/null
# Every segment archived before the restores.
for _ in $(seq 1 100); do
    [ "$(psql -c "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn()) OR last_archived_wal IS NULL FROM pg_stat_archiver")" = t ] && break
    sleep 0.1
done
run pg_ctl -D "$work/data" -m fast -w stop >/dev/null

# Restores: from the command to a promoted server answering.
restore_run() { # name, then the restore command
    local name=$1; shift
    local d="$work/r-$name" rp
    rp=$(port)
    local t0 t1
    t0=$(date +%s.%N)
    run "$@" >/dev/null
    run sh -c "printf '%s\n' \"port = $rp\" \"unix_socket_directories = '$sock'\" \"archive_mode = off\" >> $d/postgresql.auto.conf"
    run pg_ctl -D "$d" -l "$work/$name.log" -w start >/dev/null
    until [ "$(command psql -X -At -h 127.0.0.1 -p "$rp" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.05; done
    t1=$(date +%s.%N)
    local rows
    rows=$(command psql -X -At -h 127.0.0.1 -p "$rp" -U postgres -d postgres -c 'SELECT count(*) FROM pgbench_history')
    run pg_ctl -D "$d" -m immediate stop >/dev/null
    rm -rf "$d"
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') $rows"
}
echo "restores ..." >&2
ident="$work/key"
# Three of each, alternating, and the median: a restore's time is mostly
# PostgreSQL's start and replay, which varies from one run to the next.
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
cr=(); pr=(); cp=(); pp=()
for _ in 1 2 3; do
    read -r t c_rows < <(restore_run c-latest "$work/centinela" restore bench --latest --target "$work/r-c-latest" --identity "$ident" --config "$work/centinela.toml"); cr+=("$t")
    read -r t p_rows < <(restore_run p-latest pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --pg1-path="$work/r-p-latest" restore); pr+=("$t")
    read -r t c_prows < <(restore_run c-pitr "$work/centinela" restore bench --to "$target" --target "$work/r-c-pitr" --identity "$ident" --config "$work/centinela.toml"); cp+=("$t")
    read -r t p_prows < <(restore_run p-pitr pgbackrest --config="$work/pgbackrest.conf" --stanza=bench --pg1-path="$work/r-p-pitr" --type=time "--target=$(echo "$target" | sed 's/T/ /; s/Z$/+00/')" --target-action=promote restore); pp+=("$t")
done
c_rest=$(median "${cr[@]}"); p_rest=$(median "${pr[@]}"); c_pitr=$(median "${cp[@]}"); p_pitr=$(median "${pp[@]}")
echo "restore times: centinela ${cr[*]} / pgBackRest ${pr[*]}; PITR: centinela ${cp[*]} / pgBackRest ${pp[*]}" >&2
for pair in "$c_rows $p_rows $final_rows latest" "$c_prows $p_prows $target_rows PITR"; do
    set -- $pair
    [ "$1" = "$3" ] && [ "$2" = "$3" ] || echo "warning: $4 restore rows: centinela $1, pgBackRest $2, expected $3" >&2
done

read -r c_push p_push n_push < <(awk '{c+=$1; p+=$2; n++} END {printf "%.1f %.1f %d\n", c/n/1e6, p/n/1e6, n}' "$work/push-times")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v a="$1" 'BEGIN {printf "%.1f", a / 1048576}'; }

cat <<EOF

PostgreSQL $(postgres --version | awk '{print $3}'), a cluster of $(mib "$size") MiB (pgbench -s $SCALE), $(nproc) cores, $(date -u +%F)
| measurement | centinela | pgBackRest 2.45 | ratio |
| --- | --- | --- | --- |
| full backup, time | ${c_full} s | ${p_full} s | $(ratio "$c_full" "$p_full")× |
| full backup, bytes stored | $(mib "$c_full_b") MiB | $(mib "$p_full_b") MiB | $(ratio "$c_full_b" "$p_full_b")× |
| incremental after pgbench -T 20, time | ${c_inc} s | ${p_inc} s | $(ratio "$c_inc" "$p_inc")× |
| incremental, bytes stored | $(mib "$c_inc_b") MiB | $(mib "$p_inc_b") MiB | $(ratio "$c_inc_b" "$p_inc_b")× |
| restore latest to a promoted server (median of 3) | ${c_rest} s | ${p_rest} s | $(ratio "$c_rest" "$p_rest")× |
| PITR restore to a promoted server (median of 3) | ${c_pitr} s | ${p_pitr} s | $(ratio "$c_pitr" "$p_pitr")× |
| WAL segment push (mean of $n_push) | ${c_push} ms | ${p_push} ms | $(ratio "$c_push" "$p_push")× |
| peak RSS, full backup | $((c_rss / 1024)) MiB | $((p_rss / 1024)) MiB | $(ratio "$c_rss" "$p_rss")× |
EOF
