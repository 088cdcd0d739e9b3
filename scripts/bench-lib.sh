# Shared by the benchmarks: `measure LABEL CMD…` runs CMD with cold page caches under
# scripts/measure.py, appends "LABEL SECONDS PEAK_KIB TREE_PEAK_KIB" to $results, and keeps
# CMD's stdout in $work/stdout.txt. Needs $repo, $work and $results set.
measure() {
    local label=$1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    python3 "$repo/scripts/measure.py" --out "$work/time.txt" -- "$@" >"$work/stdout.txt" 2>"$work/stderr.txt" || {
        echo "$label failed:" >&2
        cat "$work/stderr.txt" >&2
        exit 1
    }
    echo "$label $(cat "$work/time.txt")" | tee -a "$results" >&2
}
