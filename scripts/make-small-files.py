#!/usr/bin/env python3
"""Make a deterministic tree shaped like an uploads folder, a maildir or a PHP/Node
application: many small files (0-300 bytes) in a few hundred folders, plus symlinks.

usage: make-small-files.py DIR [--files N] [--dirs D] [--links N]
Defaults: 600,000 files, 500 folders, 60,000 symlinks (the shape issue "Scale" measures).
DIR must not exist yet; a marker file `.complete` is written last.
"""
import argparse
import os
import random
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=600_000)
    ap.add_argument("--dirs", type=int, default=500)
    ap.add_argument("--links", type=int, default=60_000)
    a = ap.parse_args()
    if os.path.exists(a.dir):
        sys.exit(f"{a.dir} exists: remove it first")
    rng = random.Random(20261128)
    blob = bytes(rng.getrandbits(8) for _ in range(4096))
    folders = [os.path.join(a.dir, f"d{i // 50:03d}", f"s{i:04d}") for i in range(a.dirs)]
    for f in folders:
        os.makedirs(f)
    names = []
    for i in range(a.files):
        folder = folders[i % a.dirs]
        name = os.path.join(folder, f"f{i:07d}.dat")
        size = rng.randint(0, 300)
        start = rng.randint(0, len(blob) - size)
        with open(name, "wb") as fh:
            fh.write(blob[start:start + size])
        names.append(name)
    for i in range(a.links):
        target = names[rng.randrange(len(names))]
        link = os.path.join(folders[i % a.dirs], f"l{i:07d}.lnk")
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
    open(os.path.join(a.dir, ".complete"), "w").close()


if __name__ == "__main__":
    main()
