"""Continuous vs discrete depth: the same piecewise-constant H-DNN trained as an N-layer net (one step per
layer) and as an ODE (dopri5 at a tolerance; rk4 with growing substeps), then every trained net evaluated
under every discretisation (refining a discretely trained net at test time).

    python scripts/ablation_continuous_discrete.py --out outputs/ablation_continuous_discrete
    python scripts/ablation_continuous_discrete.py --architecture H2 --dataset double_moons --epochs 10

Default: H1_J1 (forward Euler when discrete) on the swiss roll, n = 4, 16 layers, T = 1.2, N(0, 1) init,
Adam lr 0.01, batch 125, `--epochs` epochs (60), α = 5e-4, head weight decay 1e-4, `--seeds` seeds (3).
Training variants: the architecture's own integrator with 1 substep ("discrete"); rk4 with 1 and 4
substeps; torchdiffeq dopri5 at rtol = atol = 1e-3 and 1e-5 (continuous; inner layer boundaries given as
jump_t). Columns: test accuracy, training time, right-hand-side evaluations per forward (dopri5: of the
last forward), then the test accuracy of each trained net under: the discrete rule with 1, 2, 4, 8, 16
substeps, and dopri5 at 1e-7 (the ODE's solution, to plotting accuracy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, toy2d_accuracy, toy2d_model, train_toy2d, write_csv

import hamode
from hamode.data.toy2d import make_dataset, train_test_split

EVAL_SUBSTEPS = [1, 2, 4, 8, 16]


def variants(default: str) -> list[tuple[str, str, int, dict | None]]:
    """(label, integrator, substeps, solver options)."""
    return [
        (f"discrete ({default})", default, 1, None),
        ("rk4", "rk4", 1, None),
        ("rk4 x4 substeps", "rk4", 4, None),
        ("dopri5 1e-3", "torchdiffeq:dopri5", 1, {"rtol": 1e-3, "atol": 1e-3}),
        ("dopri5 1e-5", "torchdiffeq:dopri5", 1, {"rtol": 1e-5, "atol": 1e-5}),
    ]


def set_discretisation(net, integrator: str, substeps: int, options: dict | None) -> None:
    net.solver_options = options
    net.set_integrator(integrator, substeps=substeps)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/ablation_continuous_discrete")
    parser.add_argument("--dataset", default="swiss_roll")
    parser.add_argument("--architecture", default="H1_J1")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--t-end", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    default = hamode.make_field(args.architecture, dim=4, n_layers=1).default_integrator
    evals = [(f"{default} x{s}", default, s, None) for s in EVAL_SUBSTEPS]
    evals.append(("dopri5 1e-7", "torchdiffeq:dopri5", 1, {"rtol": 1e-7, "atol": 1e-7}))
    runs = []
    for label, integrator, substeps, options in variants(default):
        for seed in range(args.seeds):
            x, y = make_dataset(args.dataset, 8000, seed=seed)
            (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=seed)
            torch.manual_seed(seed)
            model = toy2d_model(
                args.architecture,
                args.layers,
                t_end=args.t_end,
                integrator=integrator,
                substeps=substeps,
                solver_options=options,
            )
            seconds = train_toy2d(model, xtr, ytr, args.epochs * (len(xtr) // 125), seed, lr=args.lr)
            acc = toy2d_accuracy(model, xte, yte)
            nfe = model.net.function_evaluations()
            cross = []
            for _, e_int, e_sub, e_opt in evals:
                set_discretisation(model.net, e_int, e_sub, e_opt)
                cross.append(toy2d_accuracy(model, xte, yte))
            runs.append([label, seed, acc, seconds, nfe, *cross])
            print(runs[-1], flush=True)
    eval_labels = [e[0] for e in evals]
    run_headers = ["trained with", "seed", "test acc %", "train s", "RHS evals/forward", *eval_labels]
    write_csv(out / "runs.csv", run_headers, runs)
    rows = []
    for label, *_ in variants(default):
        mine = [r for r in runs if r[0] == label]
        cols = list(zip(*[r[2:] for r in mine]))
        rows.append([label, *(statistics.fmean(c) for c in cols)])
    headers = ["trained with", "test acc %", "train s", "RHS evals/forward", *[f"eval {e}" for e in eval_labels]]
    write_csv(out / "ablation.csv", headers, rows)
    text = (
        f"{args.architecture} on {args.dataset}, {args.layers} layers, T = {args.t_end}, {args.epochs} epochs, "
        f"lr {args.lr}; mean over {args.seeds} seeds (per-seed rows in runs.csv)\n\n"
        + markdown_table(headers, rows)
        + "\n"
    )
    (out / "ablation.md").write_text(text)
    plot(out, rows, eval_labels)
    print(text)


def plot(out: Path, rows: list, eval_labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(eval_labels))
    for row in rows:
        ax.plot(xs, row[4:], marker="o", label=f"trained: {row[0]}")
    ax.set_xticks(list(xs), eval_labels, rotation=20)
    ax.set_ylabel("test accuracy %")
    ax.set_xlabel("evaluated with")
    ax.set_title("Refining the discretisation at test time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
