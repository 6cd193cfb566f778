"""Preset of ``hamode compare``: continuous vs discrete depth. The same piecewise-constant H-DNN trained as an
N-layer net (the architecture's rule with 1 and 4 substeps per layer, rk4 with 1 and 4) and as an ODE (dopri5
at rtol = atol = 1e-3 and 1e-5; inner layer boundaries are jump_t), then every trained net evaluated under the
discrete rule with 1, 2, 4, 8, 16 substeps and dopri5 at 1e-7 (the ODE's solution, to plotting accuracy):
refining a discretely trained net at test time.

    python scripts/ablation_continuous_discrete.py --out outputs/ablation_continuous_discrete
    python scripts/ablation_continuous_discrete.py --architecture H2 --dataset double_moons --epochs 10

Default: H1_J1 (forward Euler when discrete) on the swiss roll, n = 4, 16 layers, T = 1.2, N(0, 1) init,
Adam lr 0.01, batch 125, `--epochs` epochs (60), α = 5e-4, head weight decay 1e-4, `--seeds` seeds (3), all
through the Lightning Trainer (``hamode compare --config configs/swiss_roll_h1.yaml``, printed). Outputs: those
of ``hamode compare`` (results.csv, summary.md, cross_eval.csv/.png, accuracy_vs_cost.png) and ablation.png
(test accuracy of each trained net against the evaluation discretisation).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hamode
from lightning_modules.compare import main as compare

ROOT = Path(__file__).resolve().parents[1]
EVAL_SUBSTEPS = [1, 2, 4, 8, 16]


def preset(args: argparse.Namespace) -> tuple[list[str], str]:
    """The ``hamode compare`` arguments of this preset, and the architecture's discrete rule."""
    default = hamode.make_field(args.architecture, dim=4, n_layers=1).default_integrator
    return [
        "--config",
        str(ROOT / "configs/swiss_roll_h1.yaml"),
        "--integrators",
        f"{default},rk4,torchdiffeq:dopri5",
        "--substeps",
        "1,4",
        "--tolerances",
        "1e-3,1e-5",
        "--eval-integrators",
        f"{default},torchdiffeq:dopri5",
        "--eval-substeps",
        ",".join(map(str, EVAL_SUBSTEPS)),
        "--eval-tolerances",
        "1e-7",
        "--seeds",
        str(args.seeds),
        "--out",
        args.out,
        f"--model.net.init_args.architecture={args.architecture}",
        f"--model.net.init_args.n_layers={args.layers}",
        f"--model.net.init_args.t_end={args.t_end}",
        "--model.net.init_args.h=null",
        "--model.net.init_args.init=normal",
        f"--model.lr={args.lr}",
        "--model.alpha=5e-4",
        f"--data.init_args.dataset={args.dataset}",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ], default


def plot(out: Path) -> None:
    """ablation.png: mean test accuracy over seeds of each trained net under each evaluation discretisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "cross_eval.csv") as f:
        rows = list(csv.DictReader(f))
    trained = list(dict.fromkeys(r["trained"] for r in rows))
    evaluated = list(dict.fromkeys(r["evaluated"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    for t in trained:
        ys = [
            statistics.fmean(float(r["test_acc"]) for r in rows if r["trained"] == t and r["evaluated"] == e)
            for e in evaluated
        ]
        ax.plot(range(len(evaluated)), ys, marker="o", label=f"trained: {t}")
    ax.set_xticks(range(len(evaluated)), evaluated, rotation=20)
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.set_xlabel("evaluated with (substeps per layer; dopri5: rtol = atol)")
    ax.set_title("Refining the discretisation at test time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/ablation_continuous_discrete")
    parser.add_argument("--dataset", default="swiss_roll", choices=["swiss_roll", "double_circles", "double_moons"])
    parser.add_argument("--architecture", default="H1_J1", choices=hamode.list_architectures())
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--t-end", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot-only", action="store_true", help="redraw ablation.png from --out, train nothing")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(Path(args.out))
        return (Path(args.out) / "summary.md").read_text()
    compare_args, _ = preset(args)
    text = compare(compare_args)
    plot(Path(args.out))
    return text


if __name__ == "__main__":
    main()
