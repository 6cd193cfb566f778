"""Convolutional H-DNN fields at image size: fused engine vs autograd reference, backprop vs reversible.

    python scripts/bench_conv.py --out outputs/bench_conv
    python scripts/bench_conv.py --depths 4 --batch 2 --size 8 --repeats 1   # a quick look

ConvH2 (C channels, 3x3 convolutions) under symplectic Euler on a (batch, C, size, size) state, one
forward + backward of a mean-square loss per measurement (median of --repeats after a warm-up): wall
time and the bytes autograd saves for backward (``SavedBytes``: parameters excluded). Ratios are
measured in the same process; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, median_time, out_dir, positive_int, start, write_csv, write_text

import hamode
from hamode.diagnostics import SavedBytes

HEADERS = ["depth", "path", "gradient", "seconds", "saved MiB", "time / fused backprop"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_conv")
    parser.add_argument("--depths", nargs="+", type=positive_int, default=[8, 32])
    parser.add_argument("--channels", type=positive_int, default=16)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--size", type=positive_int, default=28)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    start(None if argv is None else ["scripts/bench_conv.py", *argv])
    folder = out_dir(args.out)
    torch.manual_seed(0)
    y0 = torch.randn(args.batch, args.channels, args.size, args.size)
    rows = []
    for depth in args.depths:
        field = hamode.make_field("ConvH2", dim=args.channels, n_layers=depth)
        cells = []
        for fast in (True, False):
            for gradient in ("backprop", "reversible"):
                net = hamode.HamiltonianNet(field, 0.1 * depth, "symplectic_euler", fast=fast, gradient=gradient)

                def run(net=net):
                    out = net(y0.clone().requires_grad_(True))
                    out.pow(2).mean().backward()

                with SavedBytes(exclude=field.parameters()) as saved:
                    net(y0.clone().requires_grad_(True))
                seconds = median_time(run, repeats=args.repeats)
                cells.append([depth, "fused" if fast else "reference", gradient, seconds, saved.bytes / 2**20])
        base = cells[0][3]
        rows += [[*c, c[3] / base] for c in cells]
    table = markdown_table(HEADERS, rows)
    state = f"({args.batch}, {args.channels}, {args.size}, {args.size})"
    text = f"ConvH2, symplectic Euler, state {state}, torch threads {torch.get_num_threads()}\n\n{table}\n"
    print(text)
    write_text(folder / "bench_conv.md", text)
    write_csv(folder / "bench_conv.csv", HEADERS, rows)


if __name__ == "__main__":
    main()
