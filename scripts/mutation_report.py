"""Kill rate per mutated module from the last ``mutmut run`` (run from the repository root).

    python scripts/mutation_report.py [--equivalent docs/mutation-equivalent.txt]

Reads ``mutmut results --all true`` and prints, per module, the mutants killed (a test
failed or timed out), survived, and not covered by any selected test, and the kill rate of
the mutants not judged equivalent. ``--equivalent`` names a file of mutant names judged
equivalent (same observable behaviour), one per line, ``#`` starts a comment; the names
change when the code does, so re-judge the survivors after editing a module.
Exit code 1 when a module's rate is below ``--target`` (default 90%).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

# "    serving.core.batcher.xǁBatcherǁ_take__mutmut_12: survived"
LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+)$")
KILLED = {"killed", "timeout", "caught by type check"}


def module_of(mutant: str) -> str:
    """``serving.core.batcher.x_f__mutmut_1`` or ``...xǁCǁm__mutmut_1`` -> the module."""
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def read_equivalent(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {name for name in names if name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--equivalent", type=Path, help="file of mutants judged equivalent")
    parser.add_argument("--target", type=float, default=90.0, help="percent (default 90)")
    args = parser.parse_args()
    mutmut = Path(sys.executable).with_name("mutmut")
    done = subprocess.run(
        [str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True
    )
    equivalent = read_equivalent(args.equivalent)
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        name, status = match["name"], match["status"].strip()
        module = module_of(name)
        if name in equivalent:
            counts[module]["equivalent"] += 1
        elif status in KILLED:
            counts[module]["killed"] += 1
        else:
            counts[module][status] += 1
            survivors[module].append(f"{name}: {status}")
    if not counts:
        print("no mutation results: run `mutmut run` first")
        return 1
    print("| module | mutants | killed | equivalent | survived | no tests | kill rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    below = False
    for module in sorted(counts):
        c = counts[module]
        total = sum(c.values())
        judged = total - c["equivalent"]
        rate = 100.0 * c["killed"] / judged if judged else 100.0
        below |= rate < args.target
        print(
            f"| {module} | {total} | {c['killed']} | {c['equivalent']} | {c['survived']} | "
            f"{c['no tests']} | {rate:.1f}% |"
        )
    for module in sorted(survivors):
        print(f"\n{module}: not killed, not judged equivalent ({len(survivors[module])})")
        for entry in survivors[module]:
            print(f"  {entry}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
