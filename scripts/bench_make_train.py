"""The main job's wall time (``make train``: ``hamode fit`` then ``hamode test --ckpt_path best``) of this checkout
against another checkout of hamode, one run after the other on the same machine.

    python scripts/bench_make_train.py --baseline <checkout> --out outputs/bench_make_train \\
        [--configs configs/mnist_conv_h2.yaml,configs/mnist_conv_h2_bf16.yaml] [--data-dir data]
    python scripts/bench_make_train.py --table-only --out outputs/bench_make_train   # redraw from the CSV

The baseline runs first, with the first config (its default job), then this checkout with every config. Each run
is the real command line in a fresh process (the checkout's own ``hamode`` code, this interpreter, the MNIST files
of ``--data-dir``), logging into ``<out>/runs``; the table gives the fit, test and total seconds, the test
accuracy the command printed, and each run's speed-up over the baseline (its total over this run's). Nothing else
should run on the machine meanwhile: the runs take minutes each and the ratio is only as good as the quiet.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, out_dir, start, write_csv, write_text

ROOT = Path(__file__).resolve().parent.parent
ACCURACY = re.compile(r"test accuracy: ([0-9.]+) %")


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def hamode_command(tree: Path, subcommand: str, config: Path, args: list[str], log: Path) -> float:
    """Run ``hamode <subcommand>`` of the checkout ``tree`` (its own packages first on the path); the seconds taken."""
    entry = "main" if (tree / "lightning_modules" / "main.py").exists() else "cli"  # older checkouts: cli.main
    code = f"import sys; sys.argv[0] = 'hamode'; from lightning_modules.{entry} import main; main()"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(
            [sys.executable, "-c", code, subcommand, "--config", str(config), *args],
            cwd=tree,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"hamode {subcommand} of {tree} exited {done.returncode}: see {log}")
    return seconds


def make_train(tree: Path, config: Path, data_dir: Path, runs: Path, label: str) -> tuple[float, float, float]:
    """fit + test of ``config`` in ``tree``: (fit seconds, test seconds, test accuracy %)."""
    args = [f"--data.data_dir={data_dir}", f"--trainer.logger.init_args.save_dir={runs / label}"]
    fit = hamode_command(tree, "fit", config, [*args, "--trainer.enable_progress_bar=false"], runs / f"{label}_fit.log")
    test = hamode_command(tree, "test", config, [*args, "--ckpt_path", "best"], runs / f"{label}_test.log")
    found = ACCURACY.findall((runs / f"{label}_test.log").read_text())
    if not found:
        raise SystemExit(f"no 'test accuracy' line in {runs / f'{label}_test.log'}")
    return fit, test, float(found[-1])


HEADERS = ["code", "config", "fit s", "test s", "total s", "test accuracy %", "speed-up over the baseline"]


def table(rows: list[list]) -> str:
    """The markdown page from the rows (seconds to the second, accuracy to 0.01 %, speed-ups to 0.01)."""
    shown = [
        [c, f, f"{fit:.0f}", f"{test:.0f}", f"{tot:.0f}", f"{acc:.2f}", f"{up:.2f}"]
        for c, f, fit, test, tot, acc, up in rows
    ]
    return f"`make train` (fit + test), one run after the other on this machine\n\n{markdown_table(HEADERS, shown)}\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a checkout of hamode to compare with")
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown page from <out>'s CSV")
    parser.add_argument("--out", default="outputs/bench_make_train")
    parser.add_argument("--configs", default="configs/mnist_conv_h2.yaml", help="comma-separated; the first is the job")
    parser.add_argument("--data-dir", default="data", help="the MNIST root every run reads (default data)")
    args = parser.parse_args(argv)
    if args.table_only:
        with open(Path(args.out) / "bench_make_train.csv") as f:
            rows = [[r[0], r[1], *map(float, r[2:])] for r in list(csv.reader(f))[1:]]
        write_text(Path(args.out) / "bench_make_train.md", table(rows))
        return
    if args.baseline is None:
        parser.error("--baseline is required (a checkout of hamode to compare with)")
    baseline = Path(args.baseline).resolve()
    if not (baseline / "hamode").is_dir() or not (baseline / "lightning_modules").is_dir():
        parser.error(f"--baseline {args.baseline}: not a checkout of hamode (no hamode/ and lightning_modules/)")
    configs = [Path(c) for c in args.configs.split(",") if c]
    missing = [str(c) for c in configs if not (ROOT / c).is_file()]
    if not configs or missing:
        parser.error(f"--configs: no such config in this checkout: {', '.join(missing) or args.configs!r}")
    if not (baseline / configs[0]).is_file():
        parser.error(f"--configs: the baseline has no {configs[0]}")
    data_dir = Path(args.data_dir).resolve()
    start(None if argv is None else ["scripts/bench_make_train.py", *argv])
    out = out_dir(args.out)
    runs = out_dir(str(out / "runs"))
    jobs = [(baseline, configs[0], "baseline")] + [(ROOT, c, f"this checkout, {c.stem}") for c in configs]
    rows = []
    for i, (tree, config, who) in enumerate(jobs):
        fit, test, acc = make_train(tree, tree / config, data_dir, runs, f"run{i}_{config.stem}")
        rows.append([f"{who} ({commit(tree)})", str(config), fit, test, fit + test, acc])
        print(f"{rows[-1][0]}, {config}: fit {fit:.0f} s, test {test:.0f} s, test accuracy {acc:.2f} %", flush=True)
    base_total = rows[0][4]
    for row in rows:
        row.append(base_total / row[4])
    print(table(rows))
    write_csv(out / "bench_make_train.csv", HEADERS, rows)
    write_text(out / "bench_make_train.md", table(rows))


if __name__ == "__main__":
    main()
