# Helpers the benches share (sourced by proxy.sh, ab.sh and waf.sh, not
# run). `wait_port` prints the logs in "$work" when nothing comes up.

# Installs the Debian packages named, if any.
apt_install() {
    [ $# -gt 0 ] || return 0
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Polls until something listens on port $1 (20 s at most).
wait_port() {
    for _ in $(seq 1 400); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1; logs:" >&2
    tail -n 5 "$work"/*.err "$work"/*.log >&2 2>/dev/null || true
    exit 1
}

# User + system CPU ticks of the processes given.
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
