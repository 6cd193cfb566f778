"""Preset of ``hamode compare``: one 2-D H-DNN trained under each integrator with the Lightning Trainer, same
budget and seeds, then every trained net evaluated under every integrator.

    python scripts/compare_integrators.py --out outputs/compare_integrators
    python scripts/compare_integrators.py --dataset double_moons --layers 8 --epochs 10 --seeds 1

It runs (and prints) ``hamode compare --config configs/swiss_roll_h1.yaml`` with H2 (dim 4, `--layers` layers,
T = 1.2, N(0, 1) init), Adam lr 0.01, batch 125, α = 5e-4, `--epochs` epochs (default 30), 8000 points (half
train, 10 % of that held out for validation, half test), `--seeds` seeds (default 3), dopri5 at rtol = atol =
1e-4. Outputs (see ``hamode compare --help``): results.csv, summary.md, cross_eval.csv/.png and
accuracy_vs_cost.png in `--out`; every run's checkpoints and logs below it. Resumable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.compare import main as compare

ROOT = Path(__file__).resolve().parents[1]
INTEGRATORS = ["euler", "midpoint", "rk4", "symplectic_euler", "leapfrog", "yoshida4", "torchdiffeq:dopri5"]


def preset(args: argparse.Namespace) -> list[str]:
    """The ``hamode compare`` arguments of this preset."""
    return [
        "--config",
        str(ROOT / "configs/swiss_roll_h1.yaml"),
        "--integrators",
        ",".join(args.integrators),
        # dopri5's tolerance, given only when an adaptive method is compared (compare refuses it otherwise)
        *(["--tolerances", "1e-4"] if any(n.startswith("torchdiffeq:") for n in args.integrators) else []),
        "--seeds",
        str(args.seeds),
        "--out",
        args.out,
        "--model.net.init_args.architecture=H2",
        f"--model.net.init_args.n_layers={args.layers}",
        "--model.net.init_args.t_end=1.2",
        "--model.net.init_args.h=null",
        "--model.net.init_args.init=normal",
        "--model.lr=0.01",
        "--model.alpha=5e-4",
        f"--data.init_args.dataset={args.dataset}",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/compare_integrators")
    parser.add_argument("--dataset", default="swiss_roll", choices=["swiss_roll", "double_circles", "double_moons"])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--integrators", nargs="+", default=INTEGRATORS)
    return compare(preset(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
