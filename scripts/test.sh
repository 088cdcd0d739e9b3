#!/usr/bin/env bash
# The whole test suite: makes sure of a Docker engine, Compose v2 and the test image, then runs
# the unit and end-to-end tests. Under CI=true a missing engine fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-engine.sh
cargo test --release --locked -- --test-threads="${NUWAX_TEST_THREADS:-4}" "$@"
