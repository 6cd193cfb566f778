"""TAC's distributed H2: an 8-node ring of H2 subsystems ('sparse') against the same net with every node
connected ('full'), on the swiss roll and the double circles.

    python scripts/distributed_h2.py --out outputs/distributed_h2

Setting (TAC): n = 16, node i holds (p_i, q_i), K_p and K_q block-sparse on the ring with
self-loops, X = I, h = 0.5, symplectic Euler, `--layers` layers (16); inputs enter p_1 and q_5 (state
coordinates 0 and 12, as in the authors' code). Training: Adam lr `--lr`, batch 125, `--epochs` epochs,
α = 5e-4, logistic head with weight decay 1e-4, 8000 points half train / half test, `--seeds` seeds.

Locality check, on every trained layer: a symplectic-Euler layer is two half-steps, each two rounds of
messages between neighbours (node l forms σ(K q + b)_l from its neighbours, then Kᵀ sends it back). So
the Jacobian of the messages ∂σ(K_q q + b)/∂q must vanish outside the graph A, and that of each half-step
(∂p⁺/∂q, ∂q⁺/∂p⁺) outside A². The table reports, over all layers, the largest entry outside the pattern
(exactly 0 for 'sparse'; the 'full' net, measured against the same ring pattern, is the negative
control) and the fraction of the pattern that is nonzero.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, toy2d_accuracy, train_toy2d, write_csv

from hamode import HamiltonianNet, SparseSeparableField
from hamode.data.toy2d import make_dataset, train_test_split
from hamode.models import Toy2DClassifier

NODES = 8


def graph(kind: str) -> list[tuple[int, int]]:
    if kind == "sparse":
        return [(i, (i + 1) % NODES) for i in range(NODES)]
    return [(i, k) for i in range(NODES) for k in range(i + 1, NODES)]


def build(kind: str, layers: int, h: float) -> Toy2DClassifier:
    model = Toy2DClassifier("H2", dim=2 * NODES, n_layers=layers, h=h, positions=[0, 12])
    field = SparseSeparableField(2 * NODES, layers, graph=graph(kind), n_nodes=NODES, init="normal")
    model.net = HamiltonianNet(field, t_end=h * layers, integrator="symplectic_euler")
    return model


def layer_jacobians(f, w: dict, j: int, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Layer j at the state x: Jacobians of the messages σ(K_q q + b_q), σ(K_p p + b_p) and of the
    half-step velocities dp/dt(q), dq/dt(p)."""
    jac = torch.autograd.functional.jacobian
    p, q = f.split(x)
    Kp, bp, Kq, bq = w["Kp"][j], w["bp"][j], w["Kq"][j], w["bq"][j]
    return {
        "message": [jac(lambda q: torch.tanh(q @ Kq.T + bq), q), jac(lambda p: torch.tanh(p @ Kp.T + bp), p)],
        "half-step": [jac(lambda q: f.dp(0.0, q), q), jac(lambda p: f.dq(0.0, p), p)],
    }


def locality(field: SparseSeparableField, probe: torch.Tensor, A: torch.Tensor) -> dict[str, float]:
    """Largest Jacobian entry outside the ring's node pattern (messages: A, half-steps: A²), over all
    layers and probe points, and the share of allowed entries that are nonzero. For the 'full' net the
    same ring pattern is the negative control: its entries outside it are not zero."""
    A = A.to(torch.float64)
    one_hop, two_hop = A > 0, (A @ A) > 0
    node = torch.arange(NODES).repeat_interleave(field.dim // (2 * NODES))
    masks = {"message": one_hop[node][:, node], "half-step": two_hop[node][:, node]}
    outside = {"message": 0.0, "half-step": 0.0}
    filled = {"message": [], "half-step": []}
    w = field.weight_table()
    for j in range(field.n_layers):
        for x in probe:
            for name, jacs in layer_jacobians(field.layer(j), w, j, x).items():
                for M in jacs:
                    mask = masks[name]
                    outside[name] = max(outside[name], M[~mask].abs().max().item() if (~mask).any() else 0.0)
                    filled[name].append((M[mask] != 0).double().mean().item())
    return {
        "outside_message": outside["message"],
        "outside_half_step": outside["half-step"],
        "filled_message": statistics.fmean(filled["message"]),
        "filled_half_step": statistics.fmean(filled["half-step"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/distributed_h2")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--h", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["swiss_roll", "double_circles"])
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    ring = SparseSeparableField(2 * NODES, 1, graph=graph("sparse"), n_nodes=NODES).adjacency
    runs, rows = [], []
    for dataset in args.datasets:
        for kind in ("sparse", "full"):
            accs, secs, loc = [], [], None
            for seed in range(args.seeds):
                x, y = make_dataset(dataset, 8000, seed=seed)
                (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=seed)
                torch.manual_seed(seed)
                model = build(kind, args.layers, args.h)
                secs.append(train_toy2d(model, xtr, ytr, args.epochs * (len(xtr) // 125), seed, lr=args.lr))
                accs.append(toy2d_accuracy(model, xte, yte))
                if seed == 0:
                    loc = locality(model.net.field, model.embed(xte[:4]), ring)
                runs.append([dataset, kind, seed, accs[-1], secs[-1]])
                print(runs[-1], flush=True)
            n_params = sum(p.numel() for p in model.net.parameters())
            rows.append(
                [
                    dataset,
                    kind,
                    n_params,
                    f"{statistics.fmean(accs):.2f} ± {statistics.pstdev(accs):.2f}",
                    statistics.fmean(secs),
                    loc["outside_message"],
                    loc["outside_half_step"],
                    loc["filled_half_step"],
                ]
            )
    headers = [
        "dataset",
        "graph",
        "H-DNN parameters",
        "test acc %",
        "train s",
        "max |∂msg/∂q| outside ring A",
        "max |∂half-step| outside A²",
        "nonzero share inside A²",
    ]
    write_csv(out / "runs.csv", ["dataset", "graph", "seed", "test_acc", "seconds"], runs)
    write_csv(out / "distributed_h2.csv", headers, rows)
    text = (
        f"{args.layers} layers, h = {args.h}, {args.epochs} epochs, lr {args.lr}, {args.seeds} seeds; "
        "locality measured on the seed-0 net after training, 4 test points, every layer\n\n"
        + markdown_table(headers, rows)
        + "\n"
    )
    (out / "distributed_h2.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
