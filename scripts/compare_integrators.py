"""One architecture trained under each integrator, same budget and seeds; then every trained model
evaluated under every other integrator.

    python scripts/compare_integrators.py --out outputs/compare_integrators
    python scripts/compare_integrators.py --dataset double_moons --layers 8 --epochs 10

Default: H2 (dim 4, 16 layers, T = 1.2, N(0, 1) init, inputs at coordinates 0 and 3) on the swiss roll,
Adam lr `--lr` (0.01), batch 125, α = 5e-4, `--epochs` epochs (default 30), 8000 points half train / half
test, `--seeds` seeds (default 3); the 2-D recipe of scripts/reproduce_l4dc_table1.py. The first table is
the mean over seeds (per-seed rows in compare_integrators.csv); the cross-evaluation uses seed 0.
Columns: test accuracy, training time, right-hand-side evaluations per forward, min over layers of
‖∂y_N/∂y_j‖₂ (probe mean), symplecticity defect of ∂y_N/∂y_0 (probe max), energy error per layer
(mean over layers of |H_j(y_{j+1}) - H_j(y_j)|, zero for the exact flow inside a layer).
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

from hamode.data.toy2d import make_dataset, train_test_split
from hamode.diagnostics import backward_sensitivity, sensitivity_norms, symplecticity_defect

INTEGRATORS = ["euler", "midpoint", "rk4", "symplectic_euler", "leapfrog", "yoshida4", "torchdiffeq:dopri5"]


def train(model, data, epochs: int, seed: int, lr: float) -> float:
    (xtr, ytr), _ = data
    return train_toy2d(model, xtr, ytr, epochs * (len(xtr) // 125), seed, lr=lr)


@torch.no_grad()
def energy_error_per_layer(net, y0) -> float:
    ys = net.trajectory(y0)
    stride = 1 if net.continuous else net.substeps
    errs = []
    for j in range(net.n_layers):
        f = net.field.layer(j, grid=net.grid)
        t0 = net.grid.start(j)
        errs.append((f.hamiltonian(t0, ys[(j + 1) * stride]) - f.hamiltonian(t0, ys[j * stride])).abs().mean())
    return float(torch.stack(errs).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/compare_integrators")
    parser.add_argument("--dataset", default="swiss_roll")
    parser.add_argument("--architecture", default="H2")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--t-end", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--integrators", nargs="+", default=INTEGRATORS)
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    rows, models = [], {}
    for name in args.integrators:
        for seed in range(args.seeds):
            x, y = make_dataset(args.dataset, 8000, seed=seed)
            data = train_test_split(x, y, seed=seed)
            torch.manual_seed(seed)
            opts = {"rtol": 1e-4, "atol": 1e-5} if name.startswith("torchdiffeq:") else None
            model = toy2d_model(
                args.architecture,
                args.layers,
                t_end=args.t_end,
                integrator=name,
                solver_options=opts,
            )
            seconds = train(model, data, args.epochs, seed, args.lr)
            xte, yte = data[1]
            acc = toy2d_accuracy(model, xte, yte)
            probe = model.embed(xte[:32])
            net = model.net
            net(probe)
            nfe = net.function_evaluations()
            S = backward_sensitivity(net, probe)
            min_norm = float(sensitivity_norms(S)["norm_mean"][:-1].min())
            defect = float(symplecticity_defect(S[0], net.field.J).max())
            energy = energy_error_per_layer(net, probe)
            rows.append([name, seed, acc, seconds, nfe, min_norm, defect, energy])
            models[(name, seed)] = (model, data)
            print(rows[-1], flush=True)
    headers = [
        "integrator",
        "seed",
        "test acc %",
        "train s",
        "RHS evals/forward",
        "min_j ‖∂y_N/∂y_j‖",
        "symplecticity defect",
        "energy error/layer",
    ]
    write_csv(out / "compare_integrators.csv", headers, rows)
    means = []
    for name in args.integrators:
        cols = list(zip(*[r[2:] for r in rows if r[0] == name]))
        accs = cols[0]
        spread = statistics.pstdev(accs) if len(accs) > 1 else 0.0
        means.append([name, f"{statistics.fmean(accs):.1f} ± {spread:.1f}", *(statistics.fmean(c) for c in cols[1:])])
    mean_headers = [headers[0], *headers[2:]]
    # cross-evaluation: trained under A (rows), evaluated under B (columns), seed 0
    cross = []
    for a in args.integrators:
        model, data = models[(a, 0)]
        xte, yte = data[1]
        row = [a]
        for b in args.integrators:
            model.net.set_integrator(b)
            row.append(toy2d_accuracy(model, xte, yte))
        model.net.set_integrator(a)
        cross.append(row)
    write_csv(out / "cross_evaluation.csv", ["trained \\ evaluated", *args.integrators], cross)
    report = (
        f"{args.architecture} on {args.dataset}, {args.layers} layers, T = {args.t_end}, {args.epochs} epochs, "
        f"lr {args.lr}, mean over {args.seeds} seeds\n\n"
        + markdown_table(mean_headers, means)
        + "\n\nCross-evaluation (test accuracy %, rows: trained with, "
        "columns: evaluated with)\n\n" + markdown_table(["trained \\ evaluated", *args.integrators], cross)
    )
    (out / "compare_integrators.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
