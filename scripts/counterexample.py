"""TAC Appendix III: exploding backward sensitivities even for slow dynamics.

    python scripts/counterexample.py --out outputs/counterexample

dy/dt = ε J tanh(y), J = [[0, -1], [1, 0]] (H2 with width 1, K_p = K_q = 1, b = 0, X = ε I), symplectic
Euler with h = 0.05, T = 20, y0 = [0.33627683, -0.48627683] normalised. Prints ‖∂y(T)/∂y(T - t)‖₂ and its
determinant at t = 0, 5, 10, 15, 20 next to the published values, and plots the curve for every t.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, write_csv

import hamode
from hamode.diagnostics import backward_sensitivity, sensitivity_norms, symplecticity_defect

PUBLISHED = {0: 1.0, 5: 1.9, 10: 3.5, 15: 4.7, 20: 6.6}


def counterexample_net(epsilon: float = 1.0, h: float = 0.05, T: float = 20.0, integrator: str = "symplectic_euler"):
    n_layers = round(T / h)
    field = hamode.SeparableField(
        2, n_layers, width=1, X=epsilon * torch.eye(1, dtype=torch.float64), weights="constant", dtype=torch.float64
    )
    with torch.no_grad():
        for name in ("Kp", "Kq"):
            getattr(field, name).fill_(1.0)
        for name in ("bp", "bq"):
            getattr(field, name).zero_()
    return hamode.HamiltonianNet(field, T, integrator)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/counterexample")
    parser.add_argument("--epsilon", type=float, default=1.0)
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    net = counterexample_net(args.epsilon)
    y0 = torch.tensor([[0.33627683, -0.48627683]], dtype=torch.float64)
    y0 = y0 / y0.norm()
    S = backward_sensitivity(net, y0)[:, 0]  # (N + 1, 2, 2): ∂y_N/∂y_j
    norms = sensitivity_norms(S[:, None])["norm"][:, 0]
    dets = torch.linalg.det(S)
    h, N = net.h, net.n_layers
    rows = []
    for t, published in PUBLISHED.items():
        j = N - round(t / h)  # boundary at time T - t
        rows.append([t, float(norms[j]), published, float(dets[j])])
    headers = ["t", "‖∂y(T)/∂y(T-t)‖₂ (hamode)", "published (TAC App. III)", "det"]
    write_csv(out / "counterexample.csv", headers, rows)
    defect = symplecticity_defect(S[0], net.field.J).item()
    report = markdown_table(headers, rows) + f"\n\nsymplecticity defect of ∂y(T)/∂y(0): {defect:.2e}\n"
    (out / "counterexample.md").write_text(report)
    print(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ts = [h * (N - j) for j in range(N + 1)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ts, norms.numpy(), label="‖∂y(T)/∂y(T−t)‖₂")
    ax.plot(ts, dets.numpy(), "--", label="det")
    ax.scatter(list(PUBLISHED), list(PUBLISHED.values()), color="k", zorder=3, label="TAC App. III")
    ax.set_xlabel("t")
    ax.legend()
    ax.set_title(f"dy/dt = εJ tanh(y), ε = {args.epsilon}, symplectic Euler, h = {h}")
    fig.tight_layout()
    fig.savefig(out / "counterexample.png", dpi=120)


if __name__ == "__main__":
    main()
