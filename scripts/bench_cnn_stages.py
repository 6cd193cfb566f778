"""Where the default Hamiltonian CNN's Hamiltonian stages spend their time, against the convolutions they must call.

    python scripts/bench_cnn_stages.py --out outputs/bench_cnn_stages [--repeats 15] [--threads 1,2] [--batch 128]
        [--keep-freed-memory]

For each stage of the default ``HamiltonianCNN`` (configs/mnist_conv_h2.yaml: ConvH2 16/32/64, 2 layers per stage,
h = 0.5, symplectic Euler; each stage's input as the frame hands it over, ``channels_last``), one forward and
backward (input and parameter gradients) of:

- ``hamode fused``: the stage itself (the fused engine);
- ``hand loop (NCHW)``: ``bench_models.HandCNN.stage`` on the same weights, on a contiguous (NCHW) input, as a
  user's loop runs; ``hand loop (channels_last)``: the same loop on the ``channels_last`` input;
- ``convolutions alone``: exactly the convolutions the fused engine calls in that pass (per layer and half,
  through `hamode.fields.Convolution`: ``K x + b`` and ``Kᵀ s`` forward; ``K c``, ``Kᵀ gz`` and the two weight
  gradients backward), on tensors of the same shapes and layout, and nothing else: what an engine that calls these
  convolutions cannot go below.

``fused - convolutions`` is everything else the fused stage does (the activation and its derivative, the
updates, splitting the state into p and q and joining them, the bias gradients, the engine's own work). The
fused and hand-written stages are checked to agree before anything is timed. Repetitions are interleaved and the
medians reported (`_common.interleaved_medians`), at each thread count in one process.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import Tensor

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
from bench_models import CNN_ARGUMENTS, HandCNN

from hamode.memory import keep_freed_memory
from hamode.models import HamiltonianCNN

HEADERS = [
    "threads",
    "stage",
    "state",
    "hamode fused ms",
    "hand loop (NCHW) ms",
    "hand loop (channels_last) ms",
    "convolutions alone ms",
    "fused - convolutions ms",
    "fused / hand loop (NCHW)",
]


def convolutions_alone(stage, x: Tensor):
    """A function running the convolutions the fused engine calls for one forward and backward of ``stage`` on
    an input like ``x`` (same shapes, layout and dtype), on fixed random tensors."""
    field = stage.field
    conv, half, m = field.conv, field.half, field.width
    shape = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    g = torch.Generator().manual_seed(0)

    def state(channels: int) -> Tensor:
        return torch.randn(shape[0], channels, *shape[2:], generator=g, dtype=x.dtype).contiguous(memory_format=fmt)

    xin, s, c, gz = state(half), state(m), state(half), state(m)
    halves = []  # per layer: (K, Kᵀ's kernel, b) of the q half (dp), then of the p half (dq)
    for j in range(field.n_layers):
        for K, b in ((field.Kq, field.bq), (field.Kp, field.bp)):
            K = K.detach()[j]
            halves.append((K, conv.adjoint_kernel(K), b.detach()[j]))  # Kᵀ's kernels: made once per pass

    def run() -> None:
        for K, Kt, b in halves:  # forward
            conv.apply(xin, K, b)
            conv.apply(s, Kt)
        for K, Kt, _ in reversed(halves):  # backward: the VJP's two convolutions, then the two weight gradients
            conv.apply(c, K)
            conv.apply(gz, Kt)
            conv.weight_grad(c, s, K.shape)
            conv.weight_grad(xin, gz, K.shape)

    return run


def stage_cases(batch: int):
    """``(stage index, fused stage, hand loop, its stage index, input (channels_last), cotangent)`` per stage of
    the default Hamiltonian CNN, with its weights."""
    torch.manual_seed(0)
    cnn = HamiltonianCNN(**CNN_ARGUMENTS)
    hand = HandCNN(copy.deepcopy(cnn))
    size = 28
    cases = []
    for i, stage in enumerate(cnn.stages):
        channels = stage.field.dim
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        cotangent = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        cases.append((i, stage, hand, x, cotangent))
        size //= 2
    return cases


def _agree(stage, hand: HandCNN, i: int, x: Tensor) -> float:
    with torch.no_grad():
        mine, theirs = stage(x), hand.stage(i, x.contiguous())
    return float((mine - theirs).abs().max() / theirs.abs().max())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_cnn_stages")
    parser.add_argument("--repeats", type=positive_int, default=15, help="interleaved repetitions (default 15)")
    parser.add_argument("--threads", type=thread_counts, default=[1, 2], help="thread counts, comma-separated (1,2)")
    parser.add_argument("--batch", type=positive_int, default=128, help="images per batch (default 128, the config's)")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="first apply hamode.memory.keep_freed_memory(), as the hamode command does",
    )
    args = parser.parse_args(argv)
    start(None if argv is None else ["scripts/bench_cnn_stages.py", *argv])
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep-freed-memory: this C library is not glibc")
    out = out_dir(args.out)
    before = torch.get_num_threads()
    cases = stage_cases(args.batch)
    for i, stage, hand, x, _ in cases:
        worst = _agree(stage, hand, i, x)
        if worst > 1e-4:
            raise SystemExit(f"stage {i}: the fused stage and the hand-written loop disagree by {worst:.1e}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for i, stage, hand, x, cotangent in cases:
            xr = x.detach().requires_grad_()
            xn = x.detach().contiguous().requires_grad_()
            gn = cotangent.contiguous()

            def fused(stage=stage, xr=xr, cotangent=cotangent) -> None:
                stage(xr).backward(cotangent)

            def hand_nchw(hand=hand, i=i, xn=xn, gn=gn) -> None:
                hand.stage(i, xn).backward(gn)

            def hand_cl(hand=hand, i=i, xr=xr, cotangent=cotangent) -> None:
                hand.stage(i, xr).backward(cotangent)

            fns = {"fused": fused, "nchw": hand_nchw, "cl": hand_cl, "conv": convolutions_alone(stage, x)}
            ms = interleaved_medians(fns, args.repeats)
            rows.append(
                [
                    threads,
                    i,
                    "x".join(str(n) for n in x.shape),
                    ms["fused"],
                    ms["nchw"],
                    ms["cl"],
                    ms["conv"],
                    ms["fused"] - ms["conv"],
                    ms["fused"] / ms["nchw"],
                ]
            )
            print(dict(zip(HEADERS, rows[-1])), flush=True)
    torch.set_num_threads(before)
    allocator = "freed memory kept (hamode.memory)" if args.keep_freed_memory else "the C library's default allocator"
    title = (
        f"Hamiltonian stages of the default HamiltonianCNN, forward + backward, torch {torch.__version__}, "
        f"{cpu_name()}, {allocator}, medians of {args.repeats} interleaved runs"
    )
    table = markdown_table(HEADERS, rows)
    write_text(out / "bench_cnn_stages.md", f"{title}\n\n{table}\n")
    write_csv(out / "bench_cnn_stages.csv", HEADERS, rows)
    print(f"\n{title}\n\n{table}")


if __name__ == "__main__":
    main()
