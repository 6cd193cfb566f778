"""Start-up cost of ``import hamode`` against ``import torch``, and of the ``hamode`` command against
``import lightning``, measured in the same run.

    python scripts/bench_cli_startup.py --out outputs/bench_cli_startup [--repeats 5]

Each command runs ``--repeats`` times in a fresh interpreter, alternating, and the median wall time is
reported. Targets: ``import hamode`` at most 0.3 s above ``import torch`` (no ``torch._dynamo`` at import);
``hamode --help`` and ``hamode fit --help`` at most 1.5x ``import lightning`` (the CLI needs Lightning itself;
torchvision, matplotlib and the data modules are imported only when used).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, out_dir, start, write_csv, write_text

HAMODE = str(Path(sys.executable).parent / "hamode")
COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "python -c 'import hamode'": [sys.executable, "-c", "import hamode"],
    "python -c 'import lightning'": [sys.executable, "-c", "import lightning"],
    "hamode --help": [HAMODE, "--help"],
    "hamode fit --help": [HAMODE, "fit", "--help"],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/bench_cli_startup")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    start()
    out = out_dir(args.out)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    torch_s, base = median["python -c 'import torch'"], median["python -c 'import lightning'"]
    rows = [[name, m, m - torch_s, m / base] for name, m in median.items()]
    headers = ["command", "median s", "s above import torch", "x import lightning"]
    write_csv(out / "cli_startup.csv", headers, rows)
    table = markdown_table(headers, rows)
    write_text(out / "cli_startup.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
