"""L4DC's gradient study: do backward sensitivities vanish during training?

    python scripts/gradient_study.py --out outputs/gradient_study

Double moons (the papers' 2-D set), Adam lr 0.05, batch 125, 960 iterations (30 epochs of 4000 points), α = 5e-4,
logistic head with weight decay 1e-4. Models: 64-layer H1_J1 with time-varying weights, 64-layer H1_J1
with time-invariant weights (forward Euler, h = 0.05, T = 3.2; N(0, 1) weights), the time-varying H1_J1
with the implicit symplectic rules (implicit_midpoint, gauss_legendre4), 64-layer H2 (symplectic Euler),
and a 32-layer plain tanh MLP (y_{j+1} = tanh(W_j y_j + b_j), N(0, 1) weights). Every 20 iterations:
‖∂y_N/∂y_ℓ‖₂ (mean, and min, over a fixed probe batch) for ℓ = 1, 11, ..., 61 (ℓ = 1, 11, 21, 31 for the
MLP). Writes a log-scale plot with the line at 1, the curves as CSV, and a table with the test accuracies,
the smallest norms and the cost: seconds per training iteration and, for the implicit rules, solver
iterations per step. ``--models`` picks a subset.

It trains with the plain loop of ``_common.train_toy2d`` because it measures the sensitivities before every
recorded optimizer step, on the exact weights of that step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, toy2d_accuracy, train_toy2d, write_csv

from hamode.data.toy2d import make_dataset, train_test_split
from hamode.diagnostics import backward_sensitivity, sensitivity_norms
from hamode.models import Toy2DClassifier


class PlainMLP(nn.Module):
    """The baseline: zero-padded input, ``depth`` tanh layers of width ``dim``, logistic head."""

    def __init__(self, dim: int = 4, depth: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        for layer in self.layers:
            nn.init.normal_(layer.weight)
            nn.init.normal_(layer.bias)
        self.head = nn.Linear(dim, 1)

    def embed(self, x):
        return F.pad(x, (0, self.dim - x.shape[-1]))

    def run(self, y, tap=None):
        if tap is not None:
            y = tap(0, y)
        for j, layer in enumerate(self.layers):
            y = torch.tanh(layer(y))
            if tap is not None:
                y = tap(j + 1, y)
        return y

    def forward(self, x):
        return self.head(self.run(self.embed(x))).squeeze(-1)

    def regularization(self, alpha):
        return self.head.weight.new_zeros(())


def mlp_sensitivity(model: PlainMLP, y0, layers):
    taps = {}

    def tap(j, y):
        if j in layers:
            e = torch.zeros_like(y, requires_grad=True)
            taps[j] = e
            return y + e
        return y

    yN = model.run(y0.detach(), tap)
    rows = []
    for i in range(yN.shape[-1]):
        grads = torch.autograd.grad(yN[..., i].sum(), [taps[j] for j in layers], retain_graph=True)
        rows.append(torch.stack(grads))
    return torch.stack(rows, dim=-2)


MODELS = ["h1_time_varying", "h1_time_invariant", "h1_implicit_midpoint", "h1_gauss_legendre4", "h2", "mlp32"]


def build(name: str):
    if name == "mlp32":
        return PlainMLP(4, 32), [1, 11, 21, 31]
    common = dict(dim=4, n_layers=64, h=0.05, init="normal")
    if name == "h1_time_varying":
        return Toy2DClassifier("H1_J1", integrator="euler", **common), list(range(1, 64, 10))
    if name in ("h1_implicit_midpoint", "h1_gauss_legendre4"):
        return Toy2DClassifier("H1_J1", integrator=name[3:], **common), list(range(1, 64, 10))
    if name == "h1_time_invariant":
        return Toy2DClassifier("H1_J1", integrator="euler", weights="constant", **common), list(range(1, 64, 10))
    return Toy2DClassifier("H2", integrator="symplectic_euler", **common), list(range(1, 64, 10))


def run(name: str, data, iterations: int, every: int, seed: int):
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    model, layers = build(name)
    probe = xtr[:64]
    curve, lows = [], []
    solver = {"iterations": 0, "steps": 0}
    spent = [0.0]

    def record(it: int) -> None:
        net = getattr(model, "net", None)
        if net is not None and net.integrator.implicit and net.stats:  # the previous iteration's forward
            solver["iterations"] += net.stats["iterations"]
            solver["steps"] += net.stats["steps"]
        if it % every == 0 or it == iterations - 1:
            t = time.perf_counter()
            y0 = model.embed(probe).detach()
            S = mlp_sensitivity(model, y0, layers) if name == "mlp32" else backward_sensitivity(model.net, y0, layers)
            norms = sensitivity_norms(S)
            curve.append([it, *norms["norm_mean"].tolist()])
            lows.append(float(norms["norm_min"].min()))
            spent[0] += time.perf_counter() - t

    seconds = train_toy2d(model, xtr, ytr, iterations, seed, before_step=record)
    acc = toy2d_accuracy(model, xte, yte)
    per_step = solver["iterations"] / solver["steps"] if solver["steps"] else float("nan")
    return layers, curve, acc, min(lows), (seconds - spent[0]) / iterations, per_step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/gradient_study")
    parser.add_argument("--iterations", type=int, default=960)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out's CSVs, train nothing")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; valid: {', '.join(MODELS)}")
    if args.plot_only:
        import csv

        with open(Path(args.out) / "gradient_study.csv") as f:
            accuracy = {row["model"]: float(row["test acc %"]) for row in csv.DictReader(f)}
        plot(Path(args.out), [n for n in names if n in accuracy], accuracy)
        return
    start()
    out = out_dir(args.out)
    x, y = make_dataset("double_moons", 8000, seed=args.seed)
    data = train_test_split(x, y, seed=args.seed)
    results = {}
    for name in names:
        layers, curve, acc, low, sec, per_step = run(name, data, args.iterations, args.every, args.seed)
        results[name] = (layers, curve, acc, low, sec, per_step)
        write_csv(out / f"{name}.csv", ["iteration", *[f"l={ell}" for ell in layers]], curve)
        flat = [v for row in curve for v in row[1:]]
        print(f"{name}: test acc {acc:.1f}%, ‖∂y_N/∂y_l‖ in [{min(flat):.3g}, {max(flat):.3g}]", flush=True)
    rows = []
    for name in names:
        layers, curve, acc, low, sec, per_step = results[name]
        flat = [v for row in curve for v in row[1:]]
        rows.append([name, acc, min(flat), max(flat), min(curve[-1][1:]), low, sec, per_step])
    headers = [
        "model",
        "test acc %",
        "min ‖∂y_N/∂y_l‖ over training (probe mean)",
        "max",
        "min at the end",
        "min over training and probe samples",
        "s / training iteration",
        "solver iterations / step",
    ]
    report = markdown_table(headers, rows)
    write_csv(out / "gradient_study.csv", headers, rows)
    (out / "gradient_study.md").write_text(report + "\n")
    print(report)
    plot(out, names, {name: results[name][2] for name in names})


def plot(out: Path, names: list[str], accuracy: dict[str, float]) -> None:
    """gradient_study.png from the per-model CSVs: one panel per model, each with its own (log) y-range, since
    the H-DNNs' norms stay within [1, 40] while the MLP's fall to 1e-14; legends below the panels."""
    import csv

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.9), squeeze=False)
    for ax, name in zip(axes[0], names):
        with open(out / f"{name}.csv") as f:
            rows = list(csv.reader(f))
        header, curve = rows[0], [[float(v) for v in row] for row in rows[1:]]
        its = [row[0] for row in curve]
        for i, column in enumerate(header[1:]):
            ax.plot(its, [row[1 + i] for row in curve], label=column.replace("l=", "ℓ = "), lw=1.2)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="1 (TAC's lower bound)")
        ax.set_yscale("log")
        ax.set_title(f"{name}\n(test {accuracy[name]:.1f} %)" if name in accuracy else name, fontsize=9)
        ax.set_xlabel("training iteration")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    axes[0][0].set_ylabel("‖∂y_N/∂y_ℓ‖₂ (probe mean, no unit)")
    fig.tight_layout()
    fig.savefig(out / "gradient_study.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
