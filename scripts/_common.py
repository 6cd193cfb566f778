"""Shared helpers for the scripts: output folder, printing the command, timing, markdown tables."""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hamode.files import write_csv, write_text

__all__ = [
    "interleaved_medians",
    "markdown_table",
    "median_time",
    "out_dir",
    "positive_int",
    "start",
    "thread_counts",
    "toy2d_accuracy",
    "toy2d_model",
    "train_toy2d",
    "write_csv",
    "write_text",
]


def start(argv: Sequence[str] | None = None) -> None:
    """Print the exact command that is running (the scripts' convention)."""
    argv = sys.argv if argv is None else argv
    print("$ python " + " ".join(shlex.quote(a) for a in argv), flush=True)


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``; else ``platform.processor()``), for a table's title: times are
    quoted with the machine they came from."""
    import platform

    from hamode.native import cpu_info

    return cpu_info("model name") or platform.processor() or platform.machine() or "unknown processor"


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (argparse names the option in its error)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def thread_counts(text: str) -> list[int]:
    """An argparse ``type``: comma-separated torch thread counts, each >= 1 (``"1,2"`` -> ``[1, 2]``)."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(t < 1 for t in counts):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return counts


def out_dir(path: str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or sum(times) < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], object] = lambda: None
) -> dict[str, float]:
    """Median wall time in milliseconds of each of ``fns`` over ``repeats`` interleaved repetitions, after two
    warm-up calls each (allocations, oneDNN primitives). The order rotates every repetition, so a machine's drift
    and the cost of running right after another function fall on every function alike; ``sync`` (a device
    synchronisation) is called around each timed call."""
    names = list(fns)
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            t = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(ts) * 1e3 for n, ts in times.items()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def toy2d_model(architecture: str, n_layers: int, **kwargs):
    """The 2-D model of the scripts' recipe: n = 4, inputs at state coordinates 0 and 3 (as in the authors'
    code), N(0, 1) weights; ``kwargs`` go to :class:`hamode.models.Toy2DClassifier` (t_end or h, ...)."""
    from hamode.models import Toy2DClassifier

    kwargs = {"init": "normal", "positions": [0, 3], **kwargs}
    return Toy2DClassifier(architecture, dim=4, n_layers=n_layers, **kwargs)


def toy2d_accuracy(model, x, y) -> float:
    """Test accuracy in % of a logistic-head 2-D classifier."""
    import torch

    with torch.no_grad():
        return ((model(x) > 0).long() == y).float().mean().item() * 100


def train_toy2d(
    model,
    xtr,
    ytr,
    iterations: int,
    seed: int,
    lr: float = 0.05,
    alpha: float = 5e-4,
    head_weight_decay: float = 1e-4,
    before_step: Callable[[int], object] | None = None,
) -> float:
    """The papers' 2-D training: Adam (weight decay on the head only), batch 125, logistic loss plus the
    model's smoothness regulariser; ``before_step(iteration)`` runs before every step. Returns seconds.

    A plain loop, not the Lightning Trainer, on purpose and only where that is needed: Table 1 trains 1440
    small nets (the Trainer's per-run set-up and per-epoch overhead would dominate them), and the gradient
    study measures the sensitivities before individual optimizer steps. Integrator comparisons and the
    continuous/discrete ablation train through the Trainer (``hamode compare``)."""
    import torch
    import torch.nn.functional as F

    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adam(
        [{"params": body}, {"params": model.head.parameters(), "weight_decay": head_weight_decay}], lr=lr
    )
    g = torch.Generator().manual_seed(seed)
    it = 0
    t = time.perf_counter()
    while it < iterations:
        perm = torch.randperm(len(xtr), generator=g)
        for k in range(0, len(xtr) - 124, 125):
            if before_step is not None:
                before_step(it)
            idx = perm[k : k + 125]
            loss = F.binary_cross_entropy_with_logits(model(xtr[idx]), ytr[idx].float()) + model.regularization(alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it >= iterations:
                break
    return time.perf_counter() - t
