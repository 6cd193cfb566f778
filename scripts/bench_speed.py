"""Speed of one forward+backward (with the smoothness regulariser): hamode fused vs the autograd
reference, a plain autograd loop written the obvious way (the baseline), and torchdiffeq.

    python scripts/bench_speed.py --out outputs/bench_speed
    python scripts/bench_speed.py --quick          # depths 16 and 256 only, fewer repeats
    python scripts/bench_speed.py --device cuda --no-epoch --out outputs/bench_speed_cuda

Settings: batch 125, dim 4 and 8, depths 16/64/256/1024, for euler (H1_J1), symplectic_euler (H2),
leapfrog (H2), rk4 (H1_J1); torchdiffeq (fixed grid on the layers, perturb=True) for its fixed-step
methods (euler, rk4). Then the MNIST setting (state (100, 28, 28, 8), 4 and 16 layers) and, unless
--no-epoch, the wall time of one MNIST training epoch of configs/mnist_h2.yaml's model.
All ratios are measured in the same run on the same machine; the table goes to <out>/bench_speed.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, median_time, out_dir, start, write_csv

import hamode

ALPHA = 1e-3
METHODS = [("euler", "H1_J1"), ("symplectic_euler", "H2"), ("leapfrog", "H2"), ("rk4", "H1_J1")]


def plain_loop(method: str, field, h: float):
    """The baseline: the H-DNN written the obvious way, autograd through every op."""
    if method in ("euler", "rk4"):
        K, b, J = field.K, field.b, field.J

        def f(j, y):
            return (torch.tanh(y @ K[j].T + b[j]) @ K[j]) @ J.T

        def run(y):
            for j in range(K.shape[0]):
                if method == "euler":
                    y = y + h * f(j, y)
                else:
                    k1 = f(j, y)
                    k2 = f(j, y + h / 2 * k1)
                    k3 = f(j, y + h / 2 * k2)
                    k4 = f(j, y + h * k3)
                    y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            reg = ((K[1:] - K[:-1]) ** 2).sum() + ((b[1:] - b[:-1]) ** 2).sum()
            return y, ALPHA * h / 2 * reg

        return run
    Kp, bp, Kq, bq, X = field.Kp, field.bp, field.Kq, field.bq, field.X
    half = field.dim // 2

    def dp(j, q):
        return -(torch.tanh(q @ Kq[j].T + bq[j]) @ Kq[j]) @ X

    def dq(j, p):
        return (torch.tanh(p @ Kp[j].T + bp[j]) @ Kp[j]) @ X.T

    def run(y):
        p, q = y[:, :half], y[:, half:]
        for j in range(Kp.shape[0]):
            if method == "symplectic_euler":
                p = p + h * dp(j, q)
                q = q + h * dq(j, p)
            else:
                p = p + h / 2 * dp(j, q)
                q = q + h * dq(j, p)
                p = p + h / 2 * dp(j, q)
        reg = sum(((w[1:] - w[:-1]) ** 2).sum() for w in (Kp, bp, Kq, bq))
        return torch.cat([p, q], -1), ALPHA * h / 2 * reg

    return run


def torchdiffeq_run(method: str, field, net):
    import torchdiffeq

    grid = net.grid.time_grid(1, torch.float64, next(field.parameters()).device)

    def run(y):
        out = torchdiffeq.odeint(net.rhs, y, grid, method=method, options={"perturb": True})[-1]
        return out, net.regularization(ALPHA)

    return run


def timing(run, params, y0, repeats):
    def step():
        for p in params:
            p.grad = None
        out, reg = run(y0)
        (out.pow(2).mean() + reg).backward()
        if y0.is_cuda:
            torch.cuda.synchronize()

    return median_time(step, repeats=repeats, min_time=0.5)


def bench_small(depths, dims, repeats, device):
    rows = []
    for method, arch in METHODS:
        for dim in dims:
            for L in depths:
                torch.manual_seed(0)
                field = hamode.make_field(arch, dim=dim, n_layers=L, device=device)
                h = 0.05
                y0 = torch.randn(125, dim, device=device)
                params = list(field.parameters())
                fused = hamode.HamiltonianNet(field, L * h, method, fast=True)
                ref = hamode.HamiltonianNet(field, L * h, method, fast=False)
                rev = None
                if hamode.get_integrator(method).reversible:
                    rev = hamode.HamiltonianNet(field, L * h, method, fast=True, gradient="reversible")
                t = {
                    "fused": timing(lambda y, n=fused: (n(y), n.regularization(ALPHA)), params, y0, repeats),
                    "reference": timing(lambda y, n=ref: (n(y), n.regularization(ALPHA)), params, y0, repeats),
                    "plain": timing(plain_loop(method, field, h), params, y0, repeats),
                }
                if method in ("euler", "rk4"):
                    t["torchdiffeq"] = timing(torchdiffeq_run(method, field, ref), params, y0, repeats)
                if rev is not None:
                    t["reversible"] = timing(lambda y, n=rev: (n(y), n.regularization(ALPHA)), params, y0, repeats)
                tdq = t.get("torchdiffeq", float("nan"))
                trev = t.get("reversible", float("nan"))
                rows.append(
                    [
                        method,
                        arch,
                        dim,
                        L,
                        1e3 * t["fused"],
                        1e3 * trev,
                        1e3 * t["reference"],
                        1e3 * t["plain"],
                        1e3 * tdq,
                        t["fused"] / t["plain"],
                        t["fused"] / tdq,
                        trev / t["fused"],
                        1e6 * t["fused"] / L,
                    ]
                )
                print(rows[-1], flush=True)
    return rows


def bench_mnist(depths, repeats, device):
    rows = []
    for L in depths:
        torch.manual_seed(0)
        field = hamode.make_field("H2", dim=8, n_layers=L, device=device)
        y0 = torch.randn(100, 28, 28, 8, device=device)
        params = list(field.parameters())
        res = {}
        for name, fast in (("fused", True), ("reference", False)):
            net = hamode.HamiltonianNet(field, 0.5 * L, "symplectic_euler", fast=fast)
            res[name] = timing(lambda y, net=net: (net(y), net.regularization(ALPHA)), params, y0, repeats)
        flat_plain = plain_loop("symplectic_euler", field, 0.5)
        res["plain"] = timing(lambda y, run=flat_plain: run(y.reshape(-1, 8)), params, y0, repeats)
        nan = float("nan")
        rows.append(
            [
                "symplectic_euler",
                "H2",
                "(100,28,28,8)",
                L,
                1e3 * res["fused"],
                nan,
                1e3 * res["reference"],
                1e3 * res["plain"],
                nan,
                res["fused"] / res["plain"],
                nan,
                nan,
                1e6 * res["fused"] / L,
            ]
        )
        print(rows[-1], flush=True)
    return rows


def mnist_epoch_time(data_dir: str) -> tuple[float, float]:
    """Wall time of one training epoch of the default config's model and optimiser (fused vs reference)."""
    import time

    import torch.nn.functional as F

    from hamode.models import MNISTHDNN
    from lightning_modules import MNISTDataModule

    dm = MNISTDataModule(data_dir=data_dir, batch_size=100)
    dm.prepare_data()
    dm.setup("fit")
    out = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = MNISTHDNN("H2", channels=8, n_layers=4, h=0.5)
        model.net.fast = fast
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = dm.train_set
        t = time.perf_counter()
        for i in range(0, len(x) - 99, 100):
            loss = F.cross_entropy(model(x[i : i + 100]), y[i : i + 100]) + model.regularization(ALPHA)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(time.perf_counter() - t)
    return out[0], out[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_speed")
    parser.add_argument("--quick", action="store_true", help="depths 16 and 256, dim 4, fewer repeats")
    parser.add_argument("--no-epoch", action="store_true", help="skip the MNIST training-epoch timing")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the MNIST epoch timing runs on the CPU)")
    args = parser.parse_args(argv)
    start()
    out = out_dir(args.out)
    depths = [16, 256] if args.quick else [16, 64, 256, 1024]
    dims = [4] if args.quick else [4, 8]
    repeats = 3 if args.quick else 5
    headers = [
        "method",
        "field",
        "dim",
        "layers",
        "fused ms",
        "reversible ms",
        "reference ms",
        "plain loop ms",
        "torchdiffeq ms",
        "fused/plain",
        "fused/torchdiffeq",
        "reversible/fused",
        "fused us/layer",
    ]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    rows = bench_small(depths, dims, repeats, device) + bench_mnist([4, 16], max(2, repeats - 2), device)
    write_csv(out / "bench_speed.csv", headers, rows)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    text = [f"device: {where}, torch {torch.__version__}", "", markdown_table(headers, rows)]
    if not args.no_epoch:
        fused, ref = mnist_epoch_time(args.data_dir)
        text += [
            "",
            f"One MNIST training epoch (55k images, batch 100, H2, C=8, 4 layers): fused {fused:.1f} s, "
            f"reference {ref:.1f} s",
        ]
    report = "\n".join(text)
    (out / "bench_speed.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
