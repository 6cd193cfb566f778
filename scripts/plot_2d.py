"""Decision boundary and the propagation of the hidden states of an H-DNN trained on a 2-D task.

    python scripts/plot_2d.py --out outputs/plot_2d
    python scripts/plot_2d.py --dataset double_circles --architecture H2 --layers 32 --t-end 4

Trains one model (Adam lr `--lr`, batch 125, `--epochs` epochs, α = 5e-4, head weight decay 1e-4, n = 4,
inputs at coordinates 0 and 3, N(0, 1) init), then writes:
- `<dataset>_<arch>_boundary.png`: the classifier's decision regions over the input plane, test points on top;
- `<dataset>_<arch>_propagation.png`: the test points' states y_j at five depths j, each projected on
  (the head's normal direction w/‖w‖, the leading principal direction of the states orthogonal to w), so
  the classes should end up split along the horizontal axis at j = N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import out_dir, start, toy2d_accuracy, toy2d_model, train_toy2d

from hamode.data.toy2d import make_dataset, train_test_split


@torch.no_grad()
def projections(model, x: torch.Tensor, depths: list[int]) -> list[torch.Tensor]:
    """States at the given layer boundaries in the (head normal, leading orthogonal PC) plane."""
    net = model.net
    ys = net.trajectory(model.embed(x))
    stride = 1 if net.continuous else net.substeps
    w = model.head.weight[0] / model.head.weight[0].norm()
    final = ys[-1] - (ys[-1] @ w)[:, None] * w
    _, _, V = torch.linalg.svd(final - final.mean(0), full_matrices=False)
    v = V[0] - (V[0] @ w) * w
    v = v / v.norm()
    return [torch.stack([ys[j * stride] @ w, ys[j * stride] @ v], -1) for j in depths]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/plot_2d")
    parser.add_argument("--dataset", default="swiss_roll")
    parser.add_argument("--architecture", default="H1_J1")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--t-end", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = make_dataset(args.dataset, 8000, seed=args.seed)
    (xtr, ytr), (xte, yte) = train_test_split(x, y, seed=args.seed)
    torch.manual_seed(args.seed)
    model = toy2d_model(args.architecture, args.layers, t_end=args.t_end)
    train_toy2d(model, xtr, ytr, args.epochs * (len(xtr) // 125), args.seed, lr=args.lr)
    acc = toy2d_accuracy(model, xte, yte)
    name = f"{args.dataset}_{args.architecture}"
    title = f"{args.architecture}, {args.layers} layers, T = {args.t_end}: test accuracy {acc:.1f} %"

    lo, hi = x.min(0).values - 0.3, x.max(0).values + 0.3
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 300), torch.linspace(lo[1], hi[1], 300), indexing="xy")
    with torch.no_grad():
        z = model(torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contourf(gx, gy, (z > 0).float(), levels=[-0.5, 0.5, 1.5], colors=["#f4c7c3", "#c6dbef"])
    ax.contour(gx, gy, z, levels=[0.0], colors="k", linewidths=0.8)
    ax.scatter(xte[:, 0], xte[:, 1], c=yte, s=2, cmap="coolwarm")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / f"{name}_boundary.png", dpi=120)
    plt.close(fig)

    depths = sorted({round(k * args.layers / 4) for k in range(5)})
    proj = projections(model, xte, depths)
    fig, axes = plt.subplots(1, len(depths), figsize=(3.2 * len(depths), 3.2))
    for ax, j, pts in zip(axes, depths, proj):
        ax.scatter(pts[:, 0], pts[:, 1], c=yte, s=1, cmap="coolwarm")
        ax.set_title(f"y_{j}", fontsize=9)
        ax.set_xlabel("head normal")
    axes[0].set_ylabel("leading orthogonal PC")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}_propagation.png", dpi=110)
    plt.close(fig)
    print(f"{title}\nwrote {out / (name + '_boundary.png')} and {out / (name + '_propagation.png')}")


if __name__ == "__main__":
    main()
