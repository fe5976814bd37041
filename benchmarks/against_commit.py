"""Run one benchmark on the working tree and on an earlier commit, alternating, in one invocation.

    PYTHONPATH=. .venv/bin/python benchmarks/against_commit.py ff79f31 step_overhead.py \
        --rounds 3 -- --no-peers --sizes 100,1000

The earlier commit is checked out into a temporary git worktree; each round runs the benchmark
there and here, one after the other, with the same Python and the same arguments, so that both
see the same machine load. Each run's output is printed under a heading; quote the medians of
the rounds and their ratio. The benchmark script is taken from each tree (its own version).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_in(tree: Path, script: str, args: list[str]) -> str:
    """The benchmark's output, run from `tree` with `tree` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / script), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"(exit code {done.returncode})\n{done.stdout}\n{done.stderr[-2000:]}"
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("commit", help="the earlier commit (any git revision)")
    parser.add_argument("script", help="a benchmark in benchmarks/, e.g. step_overhead.py")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # after --: the benchmark's options
    options = parser.parse_args(argv[:split])
    args = argv[split + 1 :]
    with tempfile.TemporaryDirectory(prefix="tapeagents-base-") as scratch:
        base = Path(scratch) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(base), options.commit],
            cwd=ROOT,
            check=True,
        )
        try:
            for round_ in range(1, options.rounds + 1):
                for label, tree in ((f"commit {options.commit}", base), ("working tree", ROOT)):
                    print(f"===== round {round_}: {label}", flush=True)
                    print(run_in(tree, options.script, args), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT)


if __name__ == "__main__":
    main()
