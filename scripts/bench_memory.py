"""Memory of training deep H-DNNs: backprop (stores every step) vs reversible (rebuilds states with
the exact inverse step), for the 2-D setting (batch 125, dim 8) and the MNIST setting (state
(100, 28, 28, 8)), depths 16/64/256.

    python scripts/bench_memory.py --out outputs/bench_memory

Two measures per configuration: bytes saved for backward (``torch.autograd.graph.saved_tensors_hooks``;
parameters excluded, they exist anyway) and peak RSS growth of one forward+backward, each
configuration in a fresh subprocess (``resource.getrusage`` peak minus the peak after set-up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, out_dir, start, write_csv

SETTINGS = {"2d": (125, 8), "mnist": (100, 28, 28, 8)}


def measure(setting: str, depth: int, gradient: str) -> dict:
    """Runs in the child process."""
    import resource

    import torch

    import hamode
    from hamode.diagnostics import SavedBytes

    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=8, n_layers=depth)
    net = hamode.HamiltonianNet(field, t_end=0.1 * depth, integrator="leapfrog", gradient=gradient)
    y0 = torch.randn(*SETTINGS[setting])
    y0.requires_grad_(True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with SavedBytes(exclude=field.parameters()) as saved:
        out = net(y0)
    (out.pow(2).mean() + net.regularization(1e-3)).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"saved_bytes": saved.bytes, "rss_growth_bytes": (peak - base) * 1024}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_memory")
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        setting, depth, gradient = args.child
        print(json.dumps(measure(setting, int(depth), gradient)))
        return
    start()
    out = out_dir(args.out)
    rows = []
    for setting in SETTINGS:
        for depth in args.depths:
            res = {}
            for gradient in ("backprop", "reversible"):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", setting, str(depth), gradient],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res[gradient] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    setting,
                    depth,
                    res["backprop"]["saved_bytes"] / 2**20,
                    res["reversible"]["saved_bytes"] / 2**20,
                    res["backprop"]["rss_growth_bytes"] / 2**20,
                    res["reversible"]["rss_growth_bytes"] / 2**20,
                ]
            )
            print(rows[-1], flush=True)
    headers = [
        "setting",
        "layers",
        "backprop saved MiB",
        "reversible saved MiB",
        "backprop RSS growth MiB",
        "reversible RSS growth MiB",
    ]
    write_csv(out / "bench_memory.csv", headers, rows)
    report = "Leapfrog on H2 (dim 8), fused engine.\n\n" + markdown_table(headers, rows)
    (out / "bench_memory.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
