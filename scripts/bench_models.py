"""Training-step speed of hamode's models against the loops a user would otherwise write, in one process.

    python scripts/bench_models.py --out outputs/bench_models [--repeats 7] [--threads 1,2] [--device cpu]
        [--keep-freed-memory] [--data-dir data | --random-input]

One training step = forward, cross-entropy + the smoothness regulariser, backward, optimizer step. Every
baseline is written here, runs on the same weights (copied from the hamode model) and is checked to give the
same logits before anything is timed. Repetitions are interleaved (the order rotates each time, so drift and
the cost of running after another variant cancel out) and the median per variant is reported, with its ratio
to the model's reference variant. Models:

(a) ``cnn``: the default Hamiltonian CNN of ``make train`` (configs/mnist_conv_h2.yaml: ConvH2 16/32/64, 2 layers
    per stage, h = 0.5, symplectic Euler, batch-norm transitions, batch 128, AdamW): hamode (fused engine),
    hamode ``fast=False`` (autograd reference path), hamode ``gradient="reversible"``, a hand-written autograd loop
    of the same layer equations (the baseline, on the batch as given: NCHW), the same loop on the batch in the
    ``channels_last`` memory format (hamode's model runs its convolutions in it; ``make train``'s shifted batches
    carry its strides, so a loop fed by them runs in it too), and the ``ResidualCNN`` of the same frame. In reduced
    precision:
    hamode with ``conv_dtype="bfloat16"`` under ``torch.autocast(bfloat16)`` (what
    ``--model.net.init_args.conv_dtype=bfloat16 --trainer.precision=bf16-mixed`` runs) against the hand-written loops
    under the same autocast (every convolution in bf16).
(b) ``pixel_h1`` / ``pixel_h2``: L4DC's per-pixel MNIST net (conv 1 -> 8, H-DNN on every pixel, 4 layers, batch
    100; H1_J1 with forward Euler, H2 with symplectic Euler): hamode against the papers' layer equations written as
    the published code writes them (a loop over layers with ``F.linear``, the state transposed per call).
(c) ``deep2d_h1`` / ``deep2d_h2``: the 2-D classifier at depth 1024 (n = 4, batch 125; H1_J1 with forward Euler,
    H2 with symplectic Euler): hamode (backprop and reversible where the rule is reversible) against a plain
    autograd loop.

**Input.** The MNIST models (a) and (b) take a real batch: the first 128 (100) MNIST training images, normalised
as ``MNISTDataModule`` serves them, from ``data/`` (where ``make data`` puts them) or the folder ``--data-dir``
names (which must hold them); without the files in ``data/``, or with ``--random-input``, a standard normal batch,
and the table says which.

``--keep-freed-memory`` runs everything with glibc keeping freed memory for reuse (`hamode.memory`, what the
``hamode`` command sets); without it the allocator is the C library's default, as in a user's own script.

What reduced precision costs in structure is measured too (``symplecticity.md``): for a ConvH2 layer (float32
state) with the convolutions in the state's dtype and in bfloat16, the one-step Jacobian's symplecticity defect
``max |Mᵀ J M - J|`` and the relative drift of H over 1000 symplectic-Euler steps of constant weights.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    cpu_name,
    interleaved_medians,
    markdown_table,
    out_dir,
    positive_int,
    start,
    thread_counts,
    write_csv,
    write_text,
)

import hamode
from hamode.data.mnist import MNISTError, read_mnist
from hamode.memory import keep_freed_memory
from hamode.models import MNISTHDNN, HamiltonianCNN, ResidualCNN, Toy2DClassifier, channels_last
from lightning_modules.data import MNIST_MEAN, MNIST_STD  # the normalisation MNISTDataModule applies

ALPHA = 1e-4  # the smoothness regulariser's weight (the CNN config's)
CNN_ARGUMENTS = dict(channels=[16, 32, 64], layers=[2, 2, 2], h=0.5, integrator="symplectic_euler", norm="batch")
"""The default Hamiltonian CNN (configs/mnist_conv_h2.yaml's net)."""


DEFAULT_DATA_DIR = "data"


def mnist_batch(data_dir: str | Path | None, n: int) -> tuple[Tensor, Tensor] | None:
    """The first ``n`` MNIST training images ``(n, 1, 28, 28)``, normalised as the data module serves them, and
    their labels; ``None`` where ``data_dir`` is ``None`` or holds no verified MNIST files."""
    if data_dir is None:
        return None
    try:
        (images, labels), _ = read_mnist(data_dir)
    except MNISTError:
        return None
    x = torch.from_numpy(images[:n].copy()).to(torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1), torch.from_numpy(labels[:n].astype("int64"))


def image_input(data_dir: str | Path | None, n: int) -> tuple[Tensor, Tensor, str]:
    """``(x, y, what x is)`` for an MNIST model: a real batch where ``data_dir`` has MNIST, else a random one."""
    batch = mnist_batch(data_dir, n)
    if batch is not None:
        return *batch, f"input: MNIST training images 0-{n - 1}"
    where = "" if data_dir is None else f" (no MNIST in {data_dir})"
    return torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)), f"input: standard normal{where}"


# ---------------------------------------------------------------- the hand-written baselines
class HandCNN(nn.Module):
    """The Hamiltonian CNN with its stages written as a plain loop of TAC's H2 layer on images (symplectic Euler):
    ``p -= h K_qᵀ σ(K_q q + b_q)``, ``q += h K_pᵀ σ(K_p p + b_p)``; the stem, transitions and head are the model's.

    ``channels_last``: the images enter in the ``channels_last`` memory format (as hamode's model and, by the
    strides of its shifted batches, ``make train``'s data give them), so every convolution after them runs in that
    layout; else they run in the layout of the tensors given (NCHW for a plain batch)."""

    def __init__(self, cnn: HamiltonianCNN, channels_last: bool = False) -> None:
        super().__init__()
        self.cnn = cnn  # its parameters are the baseline's parameters
        self.h = [stage.h for stage in cnn.stages]
        self.channels_last = channels_last

    def stage(self, i: int, y: Tensor) -> Tensor:
        field, h = self.cnn.stages[i].field, self.h[i]
        half = field.half
        p, q = y[:, :half], y[:, half:]
        for j in range(field.n_layers):
            z = torch.tanh(F.conv2d(q, field.Kq[j], field.bq[j], padding=1))
            p = p - h * F.conv_transpose2d(z, field.Kq[j], padding=1)
            z = torch.tanh(F.conv2d(p, field.Kp[j], field.bp[j], padding=1))
            q = q + h * F.conv_transpose2d(z, field.Kp[j], padding=1)
        return torch.cat([p, q], 1)

    def forward(self, images: Tensor) -> Tensor:
        cnn = self.cnn
        y = cnn.stem(channels_last(images) if self.channels_last else images)
        for i in range(len(cnn.stages)):
            if i:
                y = cnn.transitions[i - 1](y)
            y = self.stage(i, y)
        return cnn.head(y.mean((-2, -1)))

    def regularization(self, alpha: float) -> Tensor:
        return self.cnn.regularization(alpha)


class PublishedPixelNet(nn.Module):
    """L4DC's per-pixel net as the published code writes it: the conv's ``(B, C, H, W)`` output transposed to put
    the channels last for each call of the H-DNN, then a loop over layers with ``F.linear``."""

    def __init__(self, model: MNISTHDNN, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.h = model.net.h

    def flow(self, Y: Tensor) -> Tensor:
        field, h = self.model.net.field, self.h
        if self.method == "euler":  # H1: Y + h σ(Y Kᵀ + b) K Jᵀ
            K, b, J = field.K, field.b, field.J
            for j in range(field.n_layers):
                Y = Y + h * F.linear(torch.tanh(F.linear(Y, K[j], b[j])), J @ K[j].T)
            return Y
        half = field.half  # H2, symplectic Euler
        P, Q = Y[..., :half], Y[..., half:]
        for j in range(field.n_layers):
            P = P - h * F.linear(torch.tanh(F.linear(Q, field.Kq[j], field.bq[j])), field.Kq[j].T)
            Q = Q + h * F.linear(torch.tanh(F.linear(P, field.Kp[j], field.bp[j])), field.Kp[j].T)
        return torch.cat([P, Q], -1)

    def forward(self, images: Tensor) -> Tensor:
        y = self.model.conv(images)  # (B, C, H, W)
        y = self.flow(y.transpose(1, 3)).transpose(1, 3)  # channels last for the call, back afterwards
        return self.model.head(y.permute(0, 2, 3, 1).flatten(1))

    def regularization(self, alpha: float) -> Tensor:
        return self.model.regularization(alpha)


class PlainDeep2D(nn.Module):
    """The 2-D classifier with its flow as a plain autograd loop (forward Euler on H1, symplectic Euler on H2)."""

    def __init__(self, model: Toy2DClassifier, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.h = model.net.h

    def flow(self, y: Tensor) -> Tensor:
        field, h = self.model.net.field, self.h
        if self.method == "euler":
            K, b, J = field.K, field.b, field.J
            for j in range(field.n_layers):
                y = y + h * ((torch.tanh(y @ K[j].T + b[j]) @ K[j]) @ J.T)
            return y
        half, X = field.half, field.X
        p, q = y[..., :half], y[..., half:]
        for j in range(field.n_layers):
            p = p - h * ((torch.tanh(q @ field.Kq[j].T + field.bq[j]) @ field.Kq[j]) @ X)
            q = q + h * ((torch.tanh(p @ field.Kp[j].T + field.bp[j]) @ field.Kp[j]) @ X.T)
        return torch.cat([p, q], -1)

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        out = m.head(self.flow(m.embed(x)))
        return out.squeeze(-1) if m.head_kind == "logit" else out

    def regularization(self, alpha: float) -> Tensor:
        return self.model.regularization(alpha)


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast(device, bfloat16)`` (what Lightning's ``bf16-mixed`` precision does)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()

    def regularization(self, alpha: float) -> Tensor:
        return self.model.regularization(alpha)


# ---------------------------------------------------------------- the benchmark
OTHER_MODELS = ("ResidualCNN",)
"""Variants that are other models of the same frame (timed beside the others, not the same equations)."""
BF16 = "bf16"
"""Variants whose name contains this run in bfloat16: checked against the reference to bfloat16's accuracy."""
TOLERANCE = {False: 1e-4, True: 3e-2}


def _same_logits(variants: dict[str, nn.Module], x: Tensor, reference: str) -> dict[bool, float]:
    """The largest relative difference of the variants' logits from the reference's (eval mode, no step yet),
    for the variants in the reference's precision (``False``) and in bfloat16 (``True``)."""
    with torch.no_grad():
        outs = {}
        for name, model in variants.items():
            if name in OTHER_MODELS:
                continue
            was = model.training
            model.eval()
            outs[name] = model(x)
            model.train(was)
    ref = outs[reference]
    worst = {False: 0.0, True: 0.0}
    for name, o in outs.items():
        reduced = BF16 in name
        worst[reduced] = max(worst[reduced], float((o - ref).abs().max() / ref.abs().max()))
    for reduced, w in worst.items():
        if w > TOLERANCE[reduced]:
            raise SystemExit(
                f"the variants disagree before timing: relative difference {w:.2e} (reference {reference}, "
                f"{'bfloat16' if reduced else 'full precision'} variants)"
            )
    return worst


def _agreement(worst: dict[bool, float], variants: dict[str, nn.Module]) -> str:
    text = f"logits agree to {worst[False]:.1e} before timing"
    if any(BF16 in name for name in variants):
        text += f" (the bf16 variants to {worst[True]:.1e})"
    return text


@torch.no_grad()
def symplecticity(device: torch.device) -> list[list]:
    """Rows ``[conv_dtype, one-step defect, H drift]`` for a ConvH2 layer with a float32 state."""

    def net(n_layers: int, conv_dtype: str) -> hamode.HamiltonianNet:
        torch.manual_seed(0)  # the same weights for every net
        field = hamode.make_field("ConvH2", 4, n_layers, weights="constant", conv_dtype=conv_dtype)
        return hamode.HamiltonianNet(field, t_end=0.05 * n_layers, integrator="symplectic_euler").to(device)

    rows = []
    y0 = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(1)).to(device)  # a CPU generator, any device
    energy = net(1000, "state").double()  # H measured exactly (float64, convolutions in float64)
    for conv_dtype in ("state", "bfloat16"):
        one = net(1, conv_dtype)
        with torch.enable_grad():
            M = torch.autograd.functional.jacobian(lambda y, one=one: one(y.reshape(y0.shape)).flatten(), y0.flatten())
        J = one.field.flat_structure(5, 5).to(M)
        defect = float((M.T @ J @ M - J).abs().max())
        ys = net(1000, conv_dtype).trajectory(y0).reshape(-1, 4, 5, 5)
        H = energy.hamiltonian(0.0, ys.double())
        rows.append([conv_dtype, defect, float((H - H[0]).abs().max() / H[0].abs())])
    return rows


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = (
            F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
            if logits.dim() == 1
            else F.cross_entropy(logits, y)
        )
        reg = getattr(model, "regularization", None)  # the Hamiltonian models' smoothness regulariser
        (loss + reg(ALPHA) if reg is not None else loss).backward()
        opt.step()

    return step


def model_cases(
    device: torch.device, data_dir: str | Path | None = None
) -> list[tuple[str, str, dict[str, nn.Module], Tensor, Tensor, str]]:
    """``(model, description, variants, x, y, the variant the others are compared with)`` for every model; the MNIST
    models take their batch from ``data_dir`` where it holds MNIST (``image_input``)."""
    torch.manual_seed(0)
    cases = []
    cnn = HamiltonianCNN(**CNN_ARGUMENTS)
    reference = copy.deepcopy(cnn)
    for stage in reference.stages:
        stage.fast = False
    reversible = copy.deepcopy(cnn)
    for stage in reversible.stages:
        stage.set_integrator("symplectic_euler", gradient="reversible")
    torch.manual_seed(0)
    residual = ResidualCNN(channels=[16, 32, 64], layers=[2, 2, 2], h=0.5, norm="batch")
    reduced = HamiltonianCNN(**CNN_ARGUMENTS, conv_dtype="bfloat16")
    reduced.load_state_dict(cnn.state_dict())
    variants = {
        "hand-written loop": HandCNN(copy.deepcopy(cnn)),
        "hand-written loop, channels_last": HandCNN(copy.deepcopy(cnn), channels_last=True),
        "hamode fused": cnn,
        "hamode fast=False": reference,
        "hamode reversible": reversible,
        "ResidualCNN": residual,
        "hand-written loop, bf16 autocast": Autocast(HandCNN(copy.deepcopy(cnn))),
        "hand-written loop, channels_last, bf16 autocast": Autocast(HandCNN(copy.deepcopy(cnn), channels_last=True)),
        "hamode fused, bf16 convolutions + autocast": Autocast(reduced),
    }
    x, y, given = image_input(data_dir, 128)
    cases.append(
        (
            "cnn",
            f"HamiltonianCNN, ConvH2 16/32/64 x 2 layers, symplectic Euler, batch 128, AdamW; {given}",
            variants,
            x,
            y,
            "hand-written loop",
        )
    )
    for name, arch, method in (("pixel_h1", "H1_J1", "euler"), ("pixel_h2", "H2", "symplectic_euler")):
        torch.manual_seed(0)
        model = MNISTHDNN(arch, channels=8, n_layers=4, h=0.5, integrator=method)
        variants = {"published-style loop": PublishedPixelNet(copy.deepcopy(model), method), "hamode fused": model}
        x, y, given = image_input(data_dir, 100)
        cases.append(
            (
                name,
                f"MNISTHDNN {arch} per pixel, conv 1->8, 4 layers, {method}, batch 100, Adam; {given}",
                variants,
                x,
                y,
                "published-style loop",
            )
        )
    for name, arch, method in (("deep2d_h1", "H1_J1", "euler"), ("deep2d_h2", "H2", "symplectic_euler")):
        torch.manual_seed(0)
        model = Toy2DClassifier(arch, dim=4, n_layers=1024, h=0.05, integrator=method)
        variants = {"plain loop": PlainDeep2D(copy.deepcopy(model), method), "hamode fused": model}
        if hamode.get_integrator(method).reversible:
            rev = copy.deepcopy(model)
            rev.net.set_integrator(method, gradient="reversible")
            variants["hamode reversible"] = rev
        x, y = torch.randn(125, 2), torch.randint(0, 2, (125,))
        cases.append(
            (
                name,
                f"Toy2DClassifier {arch}, n = 4, depth 1024, {method}, batch 125, Adam",
                variants,
                x,
                y,
                "plain loop",
            )
        )
    out = []
    for name, desc, variants, x, y, ref in cases:
        variants = {k: v.to(device) for k, v in variants.items()}
        out.append((name, desc, variants, x.to(device), y.to(device), ref))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_models")
    parser.add_argument("--repeats", type=positive_int, default=7, help="interleaved repetitions (default 7)")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2], help="thread counts, comma-separated (1,2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", default="", help="run only the models whose name contains this text")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"where the MNIST models' batch comes from (default {DEFAULT_DATA_DIR}/, make data's folder, and a random "
        "batch without the files there; a folder named here must hold them)",
    )
    parser.add_argument("--random-input", action="store_true", help="a standard normal batch for the MNIST models")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="first apply hamode.memory.keep_freed_memory(), as the hamode command does (process-wide: every "
        "variant runs under it); default: the C library's defaults, as a user's script gets them",
    )
    args = parser.parse_args(argv)
    if args.random_input and args.data_dir is not None:
        parser.error("--random-input and --data-dir: give one of them")
    if args.data_dir is not None and mnist_batch(args.data_dir, 1) is None:
        parser.error(f"--data-dir {args.data_dir}: no verified MNIST files there (make data, or obtain_mnist)")
    threads = args.threads
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    start(None if argv is None else ["scripts/bench_models.py", *argv])
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory: this C library is not glibc")
    allocator = "freed memory kept (hamode.memory)" if args.keep_freed_memory else "the C library's default allocator"
    out = out_dir(args.out)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows, sections = [], []
    data_dir = None if args.random_input else (args.data_dir or DEFAULT_DATA_DIR)
    for name, desc, variants, x, y, ref in model_cases(device, data_dir):
        if args.only and args.only not in name:
            continue
        worst = _same_logits(variants, x, ref)
        opts = {}
        for k, m in variants.items():
            cls = torch.optim.AdamW if name == "cnn" else torch.optim.Adam
            opts[k] = cls(m.parameters(), lr=1e-3)
        steps = {k: _train_step(m, opts[k], x, y) for k, m in variants.items()}
        for t in threads if device.type == "cpu" else [0]:
            if t:
                torch.set_num_threads(t)
            ms = interleaved_medians(steps, args.repeats, sync)
            label = f"{t} thread{'s' if t > 1 else ''}" if t else args.device
            table_rows = [[k, ms[k], ms[k] / ms[ref]] for k in variants]
            rows += [[name, label, k, v, r] for k, v, r in table_rows]
            table = markdown_table(["variant", "ms per training step", f"x {ref}"], table_rows)
            sections.append(f"### {name}: {desc} ({label})\n\n{_agreement(worst, variants)}\n\n{table}\n")
            print(sections[-1], flush=True)
    where = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name(device)
    machine = (
        f"{torch.__version__}, device {args.device} ({where}), {allocator}, median of {args.repeats} interleaved runs"
    )
    write_csv(out / "bench_models.csv", ["model", "threads", "variant", "ms", "ratio"], rows)
    write_text(out / "bench_models.md", f"Training step, {machine}\n\n" + "\n".join(sections))
    sym = symplecticity(device)
    table = markdown_table(["conv_dtype", "one-step max abs(MᵀJM - J)", "max relative H drift, 1000 steps"], sym)
    text = (
        "ConvH2 layer, float32 state (1, 4, 5, 5), h = 0.05, symplectic Euler, constant weights (default init); M the "
        f"one-step Jacobian (autograd), H over 1000 steps, measured in float64\n\n{table}\n"
    )
    print(text)
    write_csv(out / "symplecticity.csv", ["conv_dtype", "defect", "H_drift"], sym)
    write_text(out / "symplecticity.md", text)


if __name__ == "__main__":
    main()
