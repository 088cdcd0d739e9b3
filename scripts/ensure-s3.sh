#!/usr/bin/env bash
# Make sure this machine has what the object-storage tests and benchmarks need:
#   - s3s-fs, an S3-compatible server on a folder (crates.io, pinned to a version this
#     toolchain builds), which checks access keys and keeps its state across restarts;
#     installed into target/tools/bin (the tests start their own instances on 127.0.0.1),
#   - boto3 (PyPI), the independent S3 client the tests and the benchmark compare with,
#   - prometheus-client (PyPI), whose parser is the reference the metrics tests read with.
# Idempotent and quick when both are there. Prints the s3s-fs path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS_VERSION=0.14.1
BOTO3_VERSION=1.43.11
PROMETHEUS_CLIENT_VERSION=0.26.0
TOOLS="$PWD/target/tools"
log() { printf 'ensure-s3: %s\n' "$*" >&2; }

if ! "$TOOLS/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    log "building s3s-fs $S3S_FS_VERSION (a few minutes, once)"
    cargo install --quiet --locked --root "$TOOLS" --features binary \
        --version "$S3S_FS_VERSION" s3s-fs >&2
fi
if ! python3 -c 'import boto3' 2>/dev/null; then
    log "installing boto3 $BOTO3_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "boto3==$BOTO3_VERSION" >&2
fi
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    log "installing prometheus-client $PROMETHEUS_CLIENT_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "prometheus-client==$PROMETHEUS_CLIENT_VERSION" >&2
fi
log "ready: $("$TOOLS/bin/s3s-fs" --version), boto3 $(python3 -c 'import boto3; print(boto3.__version__)')"
echo "$TOOLS/bin/s3s-fs"
