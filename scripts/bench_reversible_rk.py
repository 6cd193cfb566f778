"""Reversible Runge-Kutta at depth: saved-for-backward memory, time per training step and gradients against the
base rule with backpropagation, measured in one run.

    python scripts/bench_reversible_rk.py --out outputs/bench_reversible_rk
    python scripts/bench_reversible_rk.py --quick                      # smaller depths, a quick look
    python scripts/bench_reversible_rk.py --accuracy                   # also train (hamode compare, see below)
    python scripts/bench_reversible_rk.py --accuracy-only              # only the training part

Cells: H1_J1 on a 2-D task's state (batch 125, n = 4) at depth 64, 256, 1024, and a ConvH1_J1 stage on an MNIST
-sized state (batch 32, 16 channels, 28 x 28) at depth 8, 32, 128; T = 0.1 x depth. In each cell one training step
(forward, mean-square loss, backward) of: the base rule with backprop (the baseline), its reversible version with
backprop (keeps every state: memory linear in depth) and with ``gradient="reversible"`` (keeps the final pair:
memory flat in depth). Reported: the bytes autograd saves for backward (``SavedBytes``, parameters excluded), the
median time over interleaved repetitions and its ratio to the baseline of the same cell, and the relative gap
between the reversible mode's gradients and backprop's of the same rule (float32 here; the tests check 1e-10 in
float64). Fused engine, one torch thread per process by default (``--threads``).

With ``--accuracy`` it also trains through the Lightning Trainer (``hamode compare``, commands printed): H1_J1 on
the swiss roll at depth 64 under euler, reversible_euler, rk4, reversible_rk4 (3 seeds, 30 epochs), and the ConvH1
CNN of ``configs/mnist_conv_h1.yaml`` under euler and reversible_euler (1 seed, 1 epoch), reversible gradients for
the reversible rules (every core; the runs are kept in ``--runs``, so a rerun of the same command trains nothing),
into accuracy.md. Writes bench_reversible_rk.{md,csv} and saved_bytes.png into
``--out``; the gradient gaps are measured in float32 (the timings' dtype) and float64.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, write_csv, write_text

import hamode
from hamode.diagnostics import SavedBytes

ROOT = Path(__file__).resolve().parents[1]
HEADERS = [
    "cell",
    "depth",
    "variant",
    "saved MiB",
    "ms per step",
    "x base rule (backprop)",
    "gradient gap, float32",
    "gradient gap, float64",
]
PAIRS = [("euler", "reversible_euler"), ("rk4", "reversible_rk4")]


def cells(quick: bool):
    dense = [16, 64] if quick else [64, 256, 1024]
    image = [4, 8] if quick else [8, 32, 128]
    for depth in dense:
        yield "H1_J1, (125, 4)", depth, "H1_J1", 4, (125, 4)
    for depth in image:
        yield "ConvH1_J1, (32, 16, 28, 28)", depth, "ConvH1_J1", 16, (32, 16, 28, 28)


def step_fn(net, y0: torch.Tensor):
    def run():
        y = y0.clone().requires_grad_(True)
        net(y).square().mean().backward()
        return y.grad

    return run


def gradients(net, y0: torch.Tensor) -> list[torch.Tensor]:
    y = y0.clone().requires_grad_(True)
    return list(torch.autograd.grad(net(y).square().mean(), [y, *net.field.parameters()]))


def _gap(field, rule: str, t_end: float, y0: torch.Tensor) -> float:
    """Largest relative gap between the reversible mode's gradients (input and every parameter) and backprop's."""
    g_bp = gradients(hamode.HamiltonianNet(field, t_end, rule), y0)
    g_rev = gradients(hamode.HamiltonianNet(field, t_end, rule, gradient="reversible"), y0)
    return max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(g_rev, g_bp))


def measure(args) -> list[list]:
    rows = []
    for label, depth, arch, dim, shape in cells(args.quick):
        torch.manual_seed(0)
        field = hamode.make_field(arch, dim=dim, n_layers=depth)
        y0 = torch.randn(*shape)
        for base, reversible in PAIRS:
            if arch.startswith("Conv") and base == "rk4" and not args.quick and depth > 32:
                continue  # rk4 on the deepest image stage: 8 evaluations per step, minutes per cell
            t_end = 0.1 * depth
            variants = {
                f"{base}, backprop": hamode.HamiltonianNet(field, t_end, base),
                f"{reversible}, backprop": hamode.HamiltonianNet(field, t_end, reversible),
                f"{reversible}, reversible": hamode.HamiltonianNet(field, t_end, reversible, gradient="reversible"),
            }
            saved = {}
            for name, net in variants.items():
                with SavedBytes(exclude=field.parameters()) as counter:
                    out = net(y0.clone().requires_grad_(True))
                out.square().mean().backward()
                saved[name] = counter.bytes / 2**20
            times: dict[str, list[float]] = {name: [] for name in variants}
            runs = {name: step_fn(net, y0) for name, net in variants.items()}
            for fn in runs.values():
                fn()  # warm-up
            for r in range(args.repeats):  # interleaved and rotated: drift hits every variant alike
                order = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
                for name in order:
                    t = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - t)
            ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
            gap = _gap(field, reversible, t_end, y0)
            gap64 = _gap(copy.deepcopy(field).double(), reversible, t_end, y0.double())
            baseline = ms[f"{base}, backprop"]
            for name in variants:
                rows.append(
                    [
                        label,
                        depth,
                        name,
                        saved[name],
                        ms[name],
                        ms[name] / baseline,
                        f"{gap:.1e}" if name.endswith("reversible") else "",
                        f"{gap64:.1e}" if name.endswith("reversible") else "",
                    ]
                )
            print(markdown_table(HEADERS, rows[-3:]).split("\n", 2)[2], flush=True)
    return rows


def plot(out: Path, rows: list[list]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 3.8), squeeze=False)
    for ax, label in zip(axes[0], labels):
        variants = list(dict.fromkeys(r[2] for r in rows if r[0] == label))
        for variant in variants:
            pts = [(r[1], r[3]) for r in rows if r[0] == label and r[2] == variant]
            ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("saved for backward (MiB)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(out / "saved_bytes.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


ACCURACY_TASKS = [
    (
        "H1_J1, swiss roll, 64 layers, 30 epochs",
        "swiss_roll_depth64",
        "configs/swiss_roll_h1.yaml",
        ["--model.net.init_args.n_layers=64", "--model.net.init_args.h=0.025", "--model.lr=0.01"],
        ["--trainer.max_epochs=30", "--seeds", "3"],
        ["euler", "reversible_euler", "rk4", "reversible_rk4"],
    ),
    (
        "ConvH1 CNN (configs/mnist_conv_h1.yaml), MNIST, 1 epoch",
        "mnist_conv_h1",
        "configs/mnist_conv_h1.yaml",
        [],
        ["--trainer.max_epochs=1", "--seeds", "1"],
        ["euler", "reversible_euler"],
    ),
]


def accuracy(runs: Path) -> str:
    """Train each task under each rule through ``hamode compare`` (runs kept in ``runs``) and tabulate the test
    accuracy (mean ± std over seeds) and the training time per run."""
    import csv

    from lightning_modules.compare import main as compare

    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    rows, commands = [], []
    for label, folder, config, net_args, budget, rules in ACCURACY_TASKS:
        for rule in rules:
            gradient = "reversible" if rule.startswith("reversible") else "backprop"
            args = ["--config", str(ROOT / config), "--integrators", rule, "--out", str(runs / folder)]
            args += [*net_args, f"--model.net.init_args.gradient={gradient}", *budget, *quiet]
            commands.append("hamode compare " + " ".join(args))
            compare(args)
            with open(runs / folder / "results.csv") as f:
                found = [r for r in csv.DictReader(f) if r["discretisation"] == rule]
            accs = [float(r["test_acc"]) for r in found]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            seconds = statistics.fmean(float(r["train_seconds"]) for r in found)
            rows.append([label, rule, gradient, f"{statistics.fmean(accs):.2f} ± {spread:.2f}", len(accs), seconds])
    headers = ["task", "rule", "gradient", "test acc % (mean ± std)", "seeds", "train s per run"]
    listed = "\n".join(f"    {c}" for c in commands)
    return f"{markdown_table(headers, rows)}\n\nCommands (2 threads, runs in `{runs}`):\n\n{listed}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_reversible_rk")
    parser.add_argument("--quick", action="store_true", help="depths 16, 64 (2-D) and 4, 8 (image)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--accuracy", action="store_true", help="also train through hamode compare (slow)")
    parser.add_argument("--accuracy-only", action="store_true", help="only the --accuracy part (keeps the timings)")
    parser.add_argument("--runs", default="outputs/bench_reversible_rk_runs", help="where --accuracy keeps its runs")
    args = parser.parse_args(argv)
    start(None if argv is None else ["scripts/bench_reversible_rk.py", *argv])
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    out = out_dir(args.out)
    if args.accuracy_only:
        torch.set_num_threads(os.cpu_count() or 1)
        write_text(out / "accuracy.md", accuracy(Path(args.runs)) + "\n")
        print((out / "accuracy.md").read_text())
        return
    rows = measure(args)
    table = markdown_table(HEADERS, rows)
    header = (
        f"One training step, torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} "
        "interleaved repetitions; ratios to the base rule with backprop in the same cell"
    )
    write_csv(out / "bench_reversible_rk.csv", HEADERS, rows)
    text = f"{header}\n\n{table}\n"
    write_text(out / "bench_reversible_rk.md", text)
    if args.accuracy:  # training uses every core (the timings above used --threads)
        torch.set_num_threads(os.cpu_count() or 1)
        write_text(out / "accuracy.md", accuracy(Path(args.runs)) + "\n")
    plot(out, rows)
    print(text)


if __name__ == "__main__":
    main()
