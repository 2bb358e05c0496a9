#!/usr/bin/env bash
# Runs every test: unit, config, end-to-end (real sockets on 127.0.0.1 with
# ephemeral ports, real centinela and products-api processes).
# Tests that need Debian packages (PostgreSQL, Redis...) install them here
# when they are missing; today's tests need none.
set -euo pipefail
cd "$(dirname "$0")/.."

# Binaries the end-to-end tests start as real processes.
cargo build --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
