#!/usr/bin/env python3
"""Run a command; print "SECONDS PEAK_KIB TREE_PEAK_KIB" to the file named by --out.

PEAK_KIB is the peak resident set (VmHWM) of the command's own process, read from /proc
until it exits; TREE_PEAK_KIB the largest peak among it and its descendants (docker
subprocesses, a compressor child of tar). GNU time's %M cannot tell these apart.

usage: measure.py --out FILE -- CMD [ARG...]
"""
import os
import subprocess
import sys
import time


def hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for c in list(out):
        out += descendants(c)
    return out


def main():
    args = sys.argv[1:]
    out_file = args[args.index("--out") + 1]
    cmd = args[args.index("--") + 1:]
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    own = tree = 0
    while proc.poll() is None:
        own = max(own, hwm(proc.pid))
        tree = max([tree, own] + [hwm(c) for c in descendants(proc.pid)])
        time.sleep(0.02)
    secs = time.monotonic() - start
    with open(out_file, "w") as f:
        f.write(f"{secs:.2f} {own} {tree}\n")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
