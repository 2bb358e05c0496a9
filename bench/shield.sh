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
out=$(cargo bench -q -p centinela-shield --bench shield 2>/dev/null)
echo "$out"
# The floor under a first-sight ES256 check: one bare ECDSA P-256
# verification by OpenSSL on this machine, in the same run.
if command -v openssl >/dev/null; then
    ossl=$(openssl speed -seconds 3 ecdsap256 2>/dev/null | awk '/nistp256/ {print 1e6 / $NF}')
    ours=$(echo "$out" | awk '/jwt_verify_es256_new_token/ {print $2}')
    awk -v o="$ossl" -v c="$ours" 'BEGIN { printf "openssl_ecdsa_p256_verify: %.1f µs (bare signature check); ours whole ÷ openssl bare = %.2f×\n", o, c / o }'
fi
