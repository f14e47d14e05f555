#!/usr/bin/env python3
"""Summarise a py-spy raw (folded) profile: self time and inclusive time per function.

    py-spy record -p PID -f raw -o prof.folded ...; python benchmarks/folded.py prof.folded
"""

from __future__ import annotations

import collections
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path, top = argv[0], int(argv[1]) if len(argv) > 1 else 25
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            own[frames[-1]] += n
            for frame in set(frames):
                incl[frame] += n
    print(f"{total} samples")
    print("-- self --")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("-- inclusive --")
    for frame, n in incl.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
