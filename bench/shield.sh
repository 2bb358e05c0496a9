#!/usr/bin/env bash
# The shield's per-request costs, measured alone (release build, one
# thread): an ES256 JWT verification, a rate-limit check among 1 million
# keys and the memory those keys take, and an IP list lookup among 100,000
# networks. The per-request
# cost inside the proxy is measured by bench/proxy.sh's paired runs.
#
#   bench/shield.sh
#
# Bounded: a few million operations, seconds. Not a test: it never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench -q -p centinela-shield --bench shield 2>/dev/null
