"""Do two results trees hold the same results? ``python benchmarks/same_results.py A B``

Compares every ``metrics.json`` of tree A with the file at the same path in B on its numeric values,
leaving out what measures the run rather than the result (times, memory, rates), and every tensor file
(``.pt``) byte for byte. Used to check that jobs run by ``teddy job-server`` give what fresh processes
give (docs/benchmarks.md). Exit 1 where anything differs or is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# a metric whose name holds one of these measures the run (wall seconds, peak memory, images/s)
RUN_MEASURES = ("wall_s", "_s", "seconds", "peak", "_mb", "per_s", "time")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(metric values equal, tensor files equal, differences in words)."""
    values = tensors = 0
    differences = []
    for left in sorted(a.rglob("*")):
        rel = left.relative_to(a)
        right = b / rel
        if not left.is_file() or not (left.name == "metrics.json" or left.suffix == ".pt"):
            continue
        if not right.is_file():
            differences.append(f"{rel}: missing in {b}")
        elif left.suffix == ".pt":
            same = digest(left) == digest(right)
            tensors += same
            differences += [] if same else [f"{rel}: bytes differ"]
        else:
            theirs = json.loads(right.read_text())
            for key, value in json.loads(left.read_text()).items():
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or any(m in key for m in RUN_MEASURES)
                ):
                    continue
                if theirs.get(key) == value:
                    values += 1
                else:
                    differences.append(f"{rel}: {key} {value!r} vs {theirs.get(key)!r}")
    return values, tensors, differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    values, tensors, differences = compare(args.a, args.b)
    for line in differences:
        print(line)
    print(f"{values} metric values and {tensors} tensor files equal; {len(differences)} differences")
    return 1 if differences or not values else 0


if __name__ == "__main__":
    sys.exit(main())
