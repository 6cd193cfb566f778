"""Convolutional H-DNNs on MNIST: models side by side at the same budget, and ConvH2 at growing depth.

    python scripts/mnist_conv_study.py --out outputs/mnist_conv_study                  # both parts
    python scripts/mnist_conv_study.py --part side --epochs 2
    python scripts/mnist_conv_study.py --part depth --depths 8 32 128 --depth-steps 500

Part ``side`` (``--train-batches`` and ``--side-test`` shrink it for a quick look): every model trains through
``HDNNClassifier`` and the Lightning Trainer for ``--epochs`` epochs on the same data (``configs/mnist_conv_h2.yaml``'s
data module, optimizer and schedule; the per-pixel H2 with its own config's optimizer and schedule): the per-pixel
H2 of the papers' setting (``configs/mnist_h2.yaml``), the
Hamiltonian CNN of ``configs/mnist_conv_h2.yaml`` under symplectic Euler and under leapfrog, the ConvH1_J1 CNN of
``configs/mnist_conv_h1.yaml`` (forward Euler), and ``hamode.models.ResidualCNN`` (a plain ResNet with the same
stem, transitions, widths and depth; no Hamiltonian structure). Test accuracy of the final weights on the 10k
test images, training seconds per epoch, parameters.

Part ``depth``: one ConvH2 stage of N layers (symplectic Euler, C = 16 channels at 14x14 after a stride-2 stem,
fixed T = ``--t-end``, h = T / N) trains ``--depth-steps`` steps (AdamW, OneCycle to ``--depth-lr``) at each
depth; reported: test accuracy on
``--depth-test`` images, min over boundaries j < N and probe images of ‖∂y_N/∂y_j‖₂ (matrix-free Lanczos
estimate, which converges from below: a value >= 1 is conservative), the bytes autograd saves for backward
(``SavedBytes``) and the time of one training step under backprop and reversible gradients.

Writes ``side_by_side.{md,csv,png}`` and ``depth.{md,csv,png}`` into ``--out``. Times depend on the machine;
compare them only within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, median_time, out_dir, positive_int, start, write_csv, write_text

ROOT = Path(__file__).resolve().parents[1]
SIDE_HEADERS = ["model", "integrator", "test acc %", "train s / epoch", "parameters", "epochs"]
DEPTH_HEADERS = [
    "layers N",
    "h",
    "test acc %",
    "min ‖∂y_N/∂y_j‖ (j < N)",
    "max ‖∂y_N/∂y_j‖",
    "saved MiB backprop",
    "saved MiB reversible",
    "s / step backprop",
    "s / step reversible",
]


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def _system_args(cfg: dict) -> dict:
    return {k: v for k, v in cfg["model"].items() if k != "net"}


def _build(spec: dict) -> torch.nn.Module:
    import importlib

    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    hits = sum((model(x[k : k + batch]).argmax(-1) == y[k : k + batch]).sum().item() for k in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def _trainer(**kw):
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def _fit(net: torch.nn.Module, system: dict, data: dict, data_dir: str, **trainer_kw) -> tuple[float, object]:
    """Train ``net`` with HDNNClassifier; returns (training seconds, the data module)."""
    import lightning as L

    from lightning_modules import HDNNClassifier, MNISTDataModule

    model = HDNNClassifier(net=net, **system)
    dm = MNISTDataModule(**{**data, "data_dir": data_dir})
    trainer = _trainer(limit_val_batches=0, **trainer_kw)
    L.seed_everything(0, verbose=False)
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - t, dm


def _save(stem: Path, headers: list[str], rows: list[list], header: str) -> str:
    """Write ``stem.md`` (the command, then the table) and ``stem.csv`` after every row; returns the table."""
    table = markdown_table(headers, rows)
    write_text(stem.with_suffix(".md"), f"{header}\n\n{table}\n")
    write_csv(stem.with_suffix(".csv"), headers, rows)
    return table


def side_by_side(args, folder: Path) -> None:
    import lightning as L

    conv, conv_h1, pixel = _config("mnist_conv_h2.yaml"), _config("mnist_conv_h1.yaml"), _config("mnist_h2.yaml")
    conv_net = conv["model"]["net"]
    stage_args = conv_net["init_args"]
    resnet = {
        "class_path": "hamode.models.ResidualCNN",
        "init_args": {k: stage_args[k] for k in ("channels", "layers", "h", "transition", "norm") if k in stage_args},
    }
    leapfrog = {**conv_net, "init_args": {**stage_args, "integrator": "leapfrog"}}
    cases = [
        ("per-pixel H2 (configs/mnist_h2.yaml)", pixel["model"]["net"], _system_args(pixel)),
        ("ConvH2 CNN (configs/mnist_conv_h2.yaml)", conv_net, _system_args(conv)),
        ("ConvH2 CNN, leapfrog", leapfrog, _system_args(conv)),
        ("ConvH1_J1 CNN (configs/mnist_conv_h1.yaml)", conv_h1["model"]["net"], _system_args(conv_h1)),
        ("ResidualCNN (plain ResNet, same widths and depth)", resnet, _system_args(conv)),
    ]
    data = conv["data"]["init_args"]
    rows = []
    for label, spec, system in cases:
        if args.models and not any(m.lower() in label.lower() for m in args.models):
            continue
        L.seed_everything(0, verbose=False)
        net = _build(spec)
        limit = {"limit_train_batches": args.train_batches} if args.train_batches else {}
        seconds, dm = _fit(net, system, data, args.data_dir, max_epochs=args.epochs, **limit)
        dm.setup("test")
        acc = _accuracy(net, dm.test_set[0][: args.side_test], dm.test_set[1][: args.side_test])
        integrator = spec["init_args"].get("integrator") or "-"
        params = sum(p.numel() for p in net.parameters())
        rows.append([label, integrator, acc, seconds / args.epochs, params, args.epochs])
        print(f"[side] {label}: {acc:.2f} %, {seconds / args.epochs:.1f} s/epoch, {params} parameters", flush=True)
        table = _save(folder / "side_by_side", SIDE_HEADERS, rows, args.header)
    print(table)
    _plot_side(rows, folder / "side_by_side.png")


def _axes(size: tuple[float, float]):
    """A figure and its axes from matplotlib's file backend (imported here: only plotting needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _finish(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_side(rows, path: Path) -> None:
    fig, ax = _axes((7, 4.5))
    for label, integrator, acc, sec, params, _ in rows:
        ax.scatter(sec, acc, s=30 + params / 1000)
        ax.annotate(
            f"{label.split(' (')[0]} [{integrator}]", (sec, acc), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel("training seconds per epoch")
    ax.set_ylabel("test accuracy %")
    ax.set_title("MNIST, same epochs (marker area ~ parameters)")
    _finish(fig, path)


def depth_study(args, folder: Path) -> None:
    import lightning as L

    from hamode.diagnostics import SavedBytes, layer_sensitivity
    from hamode.models import HamiltonianCNN, hamiltonian_inputs

    conv = _config("mnist_conv_h2.yaml")
    system = {**_system_args(conv), "lr_schedule": "onecycle", "lr": args.depth_lr}
    data = {**conv["data"]["init_args"], "batch_size": args.depth_batch}
    rows, curves = [], {}
    for depth in args.depths:
        h = args.t_end / depth

        def make(gradient: str = "backprop", depth=depth, h=h) -> HamiltonianCNN:
            L.seed_everything(0, verbose=False)
            return HamiltonianCNN(
                channels=[16], layers=[depth], h=h, stem_stride=2, integrator="symplectic_euler", gradient=gradient
            )

        net = make()
        seconds, dm = _fit(net, system, data, args.data_dir, max_steps=args.depth_steps)
        dm.setup("test")
        xte, yte = dm.test_set
        acc = _accuracy(net, xte[: args.depth_test], yte[: args.depth_test])
        net.eval()
        ((hnet, y0),) = hamiltonian_inputs(net, xte[: args.probe])
        boundaries = sorted({0, depth // 4, depth // 2, (3 * depth) // 4, depth - 1})
        found = layer_sensitivity(hnet, y0, boundaries, max_iter=args.lanczos)
        norms = found["norm"].flatten(1)
        curves[depth] = (boundaries, norms.amin(1).tolist())
        # memory and time of one training step of the whole CNN, backprop vs reversible (same weights)
        x, y = dm.train_set[0][: args.depth_batch], dm.train_set[1][: args.depth_batch]
        cells = []
        for gradient in ("backprop", "reversible"):
            model = make(gradient)
            model.load_state_dict(net.state_dict())
            model.train()

            def step(model=model, x=x, y=y):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()

            with SavedBytes(exclude=model.parameters()) as saved:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            cells.append((saved.bytes / 2**20, median_time(step, repeats=args.repeats)))
        (mem_bp, time_bp), (mem_rev, time_rev) = cells
        rows.append([depth, h, acc, float(norms.amin()), float(norms.amax()), mem_bp, mem_rev, time_bp, time_rev])
        print(f"[depth] N = {depth}: {acc:.2f} %, min norm {float(norms.amin()):.6f}, {seconds:.0f} s", flush=True)
        table = _save(folder / "depth", DEPTH_HEADERS, rows, args.header)
    print(table)
    _plot_depth(curves, folder / "depth.png")


def _plot_depth(curves, path: Path) -> None:
    fig, ax = _axes((6.5, 4))
    for depth, (boundaries, mins) in curves.items():
        ax.plot([j / depth for j in boundaries], mins, marker="o", label=f"N = {depth}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("boundary j / N")
    ax.set_ylabel("min over probe images of ‖∂y_N/∂y_j‖₂")
    ax.set_title("ConvH2 (symplectic Euler), MNIST, fixed T")
    ax.legend()
    _finish(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/mnist_conv_study")
    parser.add_argument("--part", choices=["side", "depth", "both"], default="both")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=positive_int, default=2, help="side: epochs of every model")
    parser.add_argument("--models", nargs="+", default=None, help="side: only the models whose label contains one")
    parser.add_argument("--train-batches", type=positive_int, default=None, help="side: batches per epoch (all)")
    parser.add_argument("--side-test", type=positive_int, default=10000, help="side: test images evaluated")
    parser.add_argument("--depths", nargs="+", type=positive_int, default=[8, 32, 128])
    parser.add_argument("--t-end", type=float, default=4.0, help="depth: the fixed final time T")
    parser.add_argument("--depth-steps", type=positive_int, default=500, help="depth: training steps per depth")
    parser.add_argument("--depth-batch", type=positive_int, default=64)
    parser.add_argument("--depth-lr", type=float, default=0.01, help="depth: peak OneCycle learning rate")
    parser.add_argument("--depth-test", type=positive_int, default=2000, help="depth: test images evaluated")
    parser.add_argument("--probe", type=positive_int, default=4, help="depth: probe images of the norm estimate")
    parser.add_argument("--lanczos", type=positive_int, default=20, help="depth: Lanczos iterations per boundary")
    parser.add_argument("--repeats", type=positive_int, default=3, help="depth: timing repeats")
    args = parser.parse_args(argv)
    if not args.t_end > 0:
        parser.error(f"--t-end must be > 0, got {args.t_end}")
    if not args.depth_lr > 0:
        parser.error(f"--depth-lr must be > 0, got {args.depth_lr}")
    start(None if argv is None else ["scripts/mnist_conv_study.py", *argv])
    args.header = f"`python {' '.join(sys.argv if argv is None else ['scripts/mnist_conv_study.py', *argv])}`"
    args.header += f" (torch threads {torch.get_num_threads()})"
    folder = out_dir(args.out)
    from lightning_modules.cli import quiet_lightning

    quiet_lightning()  # no tips in the log
    if args.part in ("side", "both"):
        side_by_side(args, folder)
    if args.part in ("depth", "both"):
        depth_study(args, folder)


if __name__ == "__main__":
    main()
