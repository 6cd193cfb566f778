"""hamode.native's kernels against the torch calls they replace, on a per-pixel state (L4DC's MNIST net).

For a state of ``rows`` rows of ``n`` (default 78 400 x 8: a batch of 100 MNIST images, 8 channels a pixel):
``rowmm`` (one evaluation's product with its update, ``base + alpha x W``) against ``mm`` + ``add``, and
``rowvjp_sums`` (an evaluation's VJP with its three parameter factors summed over the rows) against the torch
calls of the same result (``mm``, ``tanh_backward``, ``mm``, ``add``, two ``bmm`` and a ``sum``), and ``tanh_``
(σ of the per-pixel and image fields, in place) against ``torch.tanh_``, each after copying a pre-activation into
its buffer. The row kernels' sides make fresh outputs, as in a training step; medians of interleaved repetitions,
at 1 and 2 threads, float32 and float64; every pair is checked to agree before it is timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import cpu_name, markdown_table, out_dir, positive_int, start, write_csv, write_text

from hamode import native


def _pairs(rows: int, n: int, dtype: torch.dtype):
    torch.manual_seed(0)
    y, c = torch.randn(rows, n, dtype=dtype), torch.randn(rows, n, dtype=dtype)
    W = torch.randn(n, n, dtype=dtype) / n**0.5
    s = torch.randn(rows, n, dtype=dtype).tanh()

    def torch_update():
        return torch.add(c, torch.mm(y, W), alpha=0.5)

    def torch_vjp():
        g = torch.ops.aten.tanh_backward(torch.mm(c, W), s)
        out = torch.add(c, torch.mm(g, W.mT), alpha=0.5)
        return out, s.mT @ c, g.mT @ y, g.sum(0)

    z = torch.randn(rows, n, dtype=dtype) * 2  # a pre-activation
    mine_z, torch_z = z.clone(), z.clone()

    pairs = [
        ("base + alpha x W", lambda: native.rowmm(y, W, 0.5, c), torch_update),
        ("copy + tanh in place", lambda: native.tanh_(mine_z.copy_(z)), lambda: torch.tanh_(torch_z.copy_(z))),
        (
            "VJP + factor sums",
            lambda: native.rowvjp_sums(c, W, s, 0, W.mT, y, 0.5, c),
            torch_vjp,
        ),
    ]
    if dtype != torch.float32:
        return pairs
    zb, yb = z.bfloat16(), y.bfloat16()  # bfloat16 products of a reduced-precision image field

    def torch_tanh_bf16():
        t = torch.tanh_(zb.float())
        return t, t.bfloat16()

    def torch_tanh_backward_bf16():
        g = torch.ops.aten.tanh_backward(yb.float(), s)
        return g, g.bfloat16()

    return [
        *pairs,
        ("bf16 product: tanh, float32 + bf16", lambda: native.tanh_bf16(zb), torch_tanh_bf16),
        (
            "bf16 product: base + alpha x",
            lambda: native.axpy_bf16(c, yb, 0.5),
            lambda: torch.add(c, yb.float(), alpha=0.5),
        ),
        (
            "bf16 product: tanh backward, float32 + bf16",
            lambda: native.tanh_backward_bf16(yb, s),
            torch_tanh_backward_bf16,
        ),
    ]


def _agree(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    # the float32 results (a bfloat16 one is the float32 one rounded: tests/test_native.py checks that)
    return max(float((x - z).abs().max() / z.abs().max()) for x, z in zip(a, b) if x.dtype != torch.bfloat16)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_native")
    parser.add_argument("--rows", type=positive_int, default=78_400)
    parser.add_argument("--n", type=positive_int, default=8, help=f"columns of the state (at most {native.MAX_SIZE})")
    parser.add_argument("--repeats", type=positive_int, default=101, help="interleaved repetitions (default 101)")
    args = parser.parse_args(argv)
    if args.n > native.MAX_SIZE:
        parser.error(f"--n must be at most {native.MAX_SIZE} (the kernels' largest size), got {args.n}")
    if args.rows * args.n < native.NATIVE_FROM:
        parser.error(
            f"--rows x --n must be at least {native.NATIVE_FROM} (hamode.native.NATIVE_FROM: smaller states stay "
            f"with torch), got {args.rows} x {args.n}"
        )
    start(None if argv is None else ["scripts/bench_native.py", *argv])
    out = out_dir(args.out)
    before = torch.get_num_threads()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            for what, mine, theirs in _pairs(args.rows, args.n, dtype):
                if mine() is None:
                    raise SystemExit(f"no native kernel for {what} ({dtype}): see the warning above")
                worst = _agree(mine(), theirs())
                if worst > (1e-5 if dtype == torch.float32 else 1e-12):
                    raise SystemExit(f"{what} ({dtype}): the kernel and torch disagree by {worst:.1e}")
                times = {"native": [], "torch": []}
                for _ in range(args.repeats):
                    for name, fn in (("native", mine), ("torch", theirs)):
                        t = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t)
                med = {k: sorted(v)[len(v) // 2] * 1e6 for k, v in times.items()}
                rows.append(
                    [
                        what,
                        str(dtype).removeprefix("torch."),
                        threads,
                        med["native"],
                        med["torch"],
                        med["native"] / med["torch"],
                        worst,
                    ]
                )
    torch.set_num_threads(before)
    headers = ["operation", "dtype", "threads", "native us", "torch us", "native / torch", "max rel. difference"]
    table = markdown_table(headers, rows)
    title = (
        f"hamode.native on a ({args.rows}, {args.n}) state, {cpu_name()}, torch {torch.__version__}, "
        f"medians of {args.repeats}"
    )
    write_text(out / "bench_native.md", f"{title}\n\n{table}\n")
    write_csv(out / "bench_native.csv", headers, rows)
    print(title + "\n\n" + table)


if __name__ == "__main__":
    main()
