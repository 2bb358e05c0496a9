#!/usr/bin/env bash
# Runs every test: unit, config, end-to-end (real sockets on 127.0.0.1 with
# ephemeral ports, real centinela and products-api processes).
# Tests that need Debian packages install them here when they are missing:
# prometheus (promtool checks /metrics, a real Prometheus scrapes it),
# python3-aiosmtpd (a real SMTP server receives alert mail), and chromium
# with chromium-driver (a headless browser drives the dashboard), and age
# (the reference age tool reads what the backup repository encrypts), and
# postgresql (throwaway servers that the backup tests back up and restore),
# and sslscan (what a TLS listener offers, seen from outside).
# From PyPI: moto[server] (a throwaway S3-compatible server for the offsite
# repo tests) and gunicorn (the seeds' own stack, supervised).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
/usr/bin/python3 -c "import aiosmtpd" >/dev/null 2>&1 || need+=(python3-aiosmtpd)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
command -v age >/dev/null && command -v age-keygen >/dev/null || need+=(age)
ls /usr/lib/postgresql/*/bin/pg_basebackup >/dev/null 2>&1 || need+=(postgresql)
command -v sslscan >/dev/null || need+=(sslscan)
/usr/bin/python3 -c "import yaml" >/dev/null 2>&1 || need+=(python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
    echo "Installing ${need[*]} for the tests" >&2
    sudo_=""
    [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! python3 -c "import gunicorn" >/dev/null 2>&1; then
    echo "Installing gunicorn (PyPI) for the tests" >&2
    python3 -m pip install -q --disable-pip-version-check gunicorn
fi
if ! python3 -c "import moto.server, boto3" >/dev/null 2>&1; then
    echo "Installing moto[server] (PyPI) for the tests" >&2
    python3 -m pip install -q --disable-pip-version-check 'moto[server]'
fi

# Binaries the end-to-end tests start as real processes.
cargo build --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
