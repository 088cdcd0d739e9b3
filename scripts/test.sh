#!/usr/bin/env bash
# The whole test suite: makes sure of a Docker engine, Compose v2 and the test image, and of
# the S3-compatible server (s3s-fs) and boto3 of the object-storage tests, and runs
# the unit and end-to-end tests. Under CI=true a missing engine fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-engine.sh
bash scripts/ensure-s3.sh >/dev/null
cargo test --release --locked --features fault-injection -- --test-threads="${NUWAX_TEST_THREADS:-4}" "$@"
