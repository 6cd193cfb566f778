"""A/B speed of the fused engine against an earlier hamode (a checkout of another commit), in one process.

    git worktree add /tmp/hamode_base a93a291        # the engine before this change, say
    python scripts/bench_engine_ab.py --baseline /tmp/hamode_base --out outputs/bench_engine_ab

On a machine whose speed drifts from minute to minute, times measured in separate runs cannot be compared.
This script imports the baseline's ``hamode`` under another name and, repetition by repetition (rotating
their order: a run right after another one's frees is faster), times one forward+backward (with the
smoothness regulariser) of the baseline's fused engine, this checkout's fused engine and the plain
autograd loop of ``bench_speed.py`` on the same weights and input. It reports the medians of the
per-repetition ratios (new / baseline, fused / plain), which drift cancels out of.
Cells: depth 1024, batch 125, dim 4 and 8, euler (H1_J1), symplectic_euler and leapfrog (H2); the MNIST
state (100, 28, 28, 8) at 4 and 16 layers (H2, symplectic Euler).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, write_csv
from bench_speed import ALPHA, plain_loop

import hamode

CELLS = [
    ("euler", "H1_J1", 4, 1024),
    ("euler", "H1_J1", 8, 1024),
    ("symplectic_euler", "H2", 4, 1024),
    ("symplectic_euler", "H2", 8, 1024),
    ("leapfrog", "H2", 4, 1024),
    ("leapfrog", "H2", 8, 1024),
    ("symplectic_euler", "H2", "mnist", 4),
    ("symplectic_euler", "H2", "mnist", 16),
]


def load_baseline(tree: Path):
    """The ``hamode`` package of another checkout, imported as ``hamode_baseline``."""
    init = tree / "hamode" / "__init__.py"
    if not init.exists():
        raise SystemExit(f"--baseline {tree}: no hamode/__init__.py there (give the root of a hamode checkout)")
    spec = importlib.util.spec_from_file_location(
        "hamode_baseline", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["hamode_baseline"] = module
    spec.loader.exec_module(module)
    return module


def step_fn(run, params, y0):
    def step():
        for p in params:
            p.grad = None
        out, reg = run(y0)
        (out.pow(2).mean() + reg).backward()

    return step


def check_both(field, method: str, t_end: float, y0, new_net, base_net) -> None:
    """Both engines as close to the flow computed in float64 (autograd reference path, same weights) as the
    float32 reference path itself is, within a factor of 2: the engines may round differently from each other (the
    native kernels, hamode's tanh), not less accurately. Comparing the two engines with each other directly
    would fail on rounding alone (16 per-pixel layers: 4e-6 apart, each 3e-6 from the float64 flow)."""
    with torch.no_grad():
        exact = hamode.HamiltonianNet(copy.deepcopy(field).double(), t_end, method, fast=False)(y0.double())
        floor = (hamode.HamiltonianNet(field, t_end, method, fast=False)(y0).double() - exact).abs().max()
        for name, net in (("this checkout", new_net), ("the baseline", base_net)):
            err = (net(y0).double() - exact).abs().max()
            assert err <= 2 * floor + 1e-12, f"{name}'s engine: {err:.2e} from the float64 flow (float32: {floor:.2e})"


def cell(base, method, arch, dim, layers, repeats):
    mnist = dim == "mnist"
    n = 8 if mnist else dim
    h = 0.5 if mnist else 0.05
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=n, n_layers=layers)
    base_field = base.make_field(arch, dim=n, n_layers=layers)
    base_field.load_state_dict(field.state_dict())
    y0 = torch.randn(100, 28, 28, 8) if mnist else torch.randn(125, n)
    new_net = hamode.HamiltonianNet(field, layers * h, method)
    base_net = base.HamiltonianNet(base_field, layers * h, method)
    check_both(field, method, layers * h, y0, new_net, base_net)
    plain = plain_loop(method, field, h)
    steps = {
        "baseline": step_fn(lambda y: (base_net(y), base_net.regularization(ALPHA)), list(base_field.parameters()), y0),
        "new": step_fn(lambda y: (new_net(y), new_net.regularization(ALPHA)), list(field.parameters()), y0),
        "plain": step_fn(lambda y: plain(y.reshape(-1, n)), list(field.parameters()), y0),
    }
    times = {k: [] for k in steps}
    for fn in steps.values():
        fn()  # warm-up
    order = list(steps)
    for r in range(repeats):  # rotate the order: a run right after another one's frees is faster (the allocator)
        for k in order[r % 3 :] + order[: r % 3]:
            t = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {
        "new/baseline": statistics.median(a / b for a, b in zip(times["new"], times["baseline"])),
        "new/plain": statistics.median(a / b for a, b in zip(times["new"], times["plain"])),
        "baseline/plain": statistics.median(a / b for a, b in zip(times["baseline"], times["plain"])),
    }
    shape = "(100,28,28,8)" if mnist else n
    return [method, arch, shape, layers, *(1e3 * med[k] for k in steps), *ratio.values()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="root of another hamode checkout")
    parser.add_argument("--out", default="outputs/bench_engine_ab")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repetitions per cell (default 15)")
    parser.add_argument("--only", default="", help="run only the cells whose 'method/state' contains this text")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    start()
    out = out_dir(args.out)
    base = load_baseline(args.baseline.resolve())
    headers = [
        "method",
        "field",
        "state",
        "layers",
        "baseline fused ms",
        "new fused ms",
        "plain loop ms",
        "new/baseline",
        "new/plain",
        "baseline/plain",
    ]
    rows = []
    for method, arch, dim, layers in CELLS:
        if args.only not in f"{method}/{dim}":
            continue
        rows.append(
            cell(base, method, arch, dim, layers, args.repeats if dim != "mnist" else max(3, args.repeats // 3))
        )
        print(rows[-1], flush=True)
    write_csv(out / "bench_engine_ab.csv", headers, rows)
    text = [
        f"baseline: {args.baseline}; CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        "medians of per-repetition ratios",
        "",
        markdown_table(headers, rows),
    ]
    (out / "bench_engine_ab.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
