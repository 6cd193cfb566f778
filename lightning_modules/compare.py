"""``hamode compare``: train one config under several discretisations (and seeds) with the Lightning Trainer,
then report them side by side and evaluate every trained net under every discretisation.

    hamode compare --config configs/swiss_roll_h1.yaml --integrators euler,rk4,torchdiffeq:dopri5 --seeds 3 \\
        --out outputs/compare_swiss_roll [--substeps 1,4] [--tolerances 1e-3,1e-5] \\
        [--eval-integrators ...] [--eval-substeps 1,2,4,8] [--eval-tolerances 1e-7] \\
        [any --model.* / --data.* / --trainer.* override of `hamode fit`]

Discretisations are the product of ``--integrators`` with ``--substeps`` (fixed-step rules) or with
``--tolerances`` (adaptive ``torchdiffeq:`` methods, rtol = atol = tol; without it the config's
solver_options). Seeds set ``seed_everything`` (the initial weights and Lightning's RNG); the data (split,
order) stay as the config has them, so the integrators see the same data.

Every (discretisation, seed) is one ``hamode fit`` run in ``OUT/<discretisation>/seed_<s>`` (its logs, config,
``checkpoints/best.ckpt`` and ``last.ckpt``) and, once evaluated, ``result.json``. A run with a result is not
redone; an interrupted one resumes from its own last.ckpt. Then, in OUT:

- ``results.csv``: one row per run: discretisation, integrator, substeps, tolerance, seed, test_acc (%, of the
  best-by-validation checkpoint, or the last one without a validation set), train_seconds (the Trainer's
  training time, summed over resumes), epochs, nfe_per_forward (right-hand-side evaluations per forward; of a
  probe forward for adaptive solvers), min_bsm_norm (min over layers j < N and probe samples of
  ‖∂y_N/∂y_j‖₂), symplecticity_defect (max over probe samples of ‖Φ J Φᵀ - J‖_F, Φ = ∂y_N/∂y_0);
- ``summary.md``: mean ± std over seeds per discretisation, and the mean cross-evaluation;
- ``cross_eval.csv`` (trained, seed, evaluated, test_acc) and ``cross_eval.png`` (heat map of the mean over
  seeds): every trained net evaluated under every ``--eval-*`` discretisation (default: the trained ones);
- ``accuracy_vs_cost.png``: test accuracy against evaluations per forward and training time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hamode.files import write_csv, write_text

__all__ = ["Discretisation", "discretisations", "main"]

PROBE_SIZE = 16


@dataclass(frozen=True)
class Discretisation:
    """One way to discretise the flow: an integrator, its substeps per layer, and (adaptive solvers) a tolerance."""

    integrator: str
    substeps: int = 1
    tolerance: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.integrator.startswith("torchdiffeq:")

    @property
    def label(self) -> str:
        if self.tolerance is not None:
            return f"{self.integrator} tol={self.tolerance:g}"
        return self.integrator if self.substeps == 1 else f"{self.integrator} x{self.substeps}"

    @property
    def folder(self) -> str:
        name = self.integrator.replace(":", "-")
        return f"{name}-tol{self.tolerance:g}" if self.tolerance is not None else f"{name}-{self.substeps}"

    @property
    def solver_options(self) -> dict[str, float] | None:
        return None if self.tolerance is None else {"rtol": self.tolerance, "atol": self.tolerance}


def _split(text: str, kind, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SystemExit(f"hamode compare: {what} is empty ({text!r}); give a comma-separated list")
    out = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise SystemExit(f"hamode compare: {what}: {item!r} is not a {kind.__name__}") from None
        if (kind is int and value < 1) or (kind is float and not (math.isfinite(value) and value > 0)):
            raise SystemExit(f"hamode compare: {what}: {item!r} must be > 0")
        out.append(value)
    return out


def discretisations(
    integrators: str, substeps: str = "1", tolerances: str | None = None, flags: tuple[str, str, str] | None = None
) -> list[Discretisation]:
    """The product of the integrators with the substeps (fixed-step rules, hamode's and torchdiffeq's fixed-grid
    methods) or the tolerances (adaptive torchdiffeq methods), checked against the registries (an unknown name is
    refused with the valid ones). Substeps other than 1 with no fixed-step rule, or tolerances with no adaptive
    method, are refused: they would be silently ignored. ``flags``: the three options' names, for the messages."""
    from hamode import get_integrator, list_integrators
    from hamode.engines import ADAPTIVE_METHODS, list_torchdiffeq_methods

    f_int, f_sub, f_tol = flags or ("--integrators", "--substeps", "--tolerances")
    names = _split(integrators, str, f_int)
    steps = _split(substeps, int, f_sub)
    tols = _split(tolerances, float, f_tol) if tolerances else [None]
    adaptive = [n for n in names if n.startswith("torchdiffeq:") and n.split(":", 1)[1] in ADAPTIVE_METHODS]
    fixed = [n for n in names if n not in adaptive]
    if tolerances and not adaptive:
        raise SystemExit(
            f"hamode compare: {f_tol} {tolerances} applies to adaptive torchdiffeq methods "
            f"(torchdiffeq:{', torchdiffeq:'.join(ADAPTIVE_METHODS)}), and {f_int} names none: remove it"
        )
    if steps != [1] and not fixed:
        raise SystemExit(
            f"hamode compare: {f_sub} {substeps} applies to fixed-step rules, and {f_int} names only adaptive "
            f"methods (their steps are chosen by the tolerance): remove it"
        )
    out = []
    for name in names:
        if name in adaptive:
            out += [Discretisation(name, 1, tol) for tol in tols]
            continue
        if name.startswith("torchdiffeq:"):
            if name.split(":", 1)[1] not in list_torchdiffeq_methods():
                raise SystemExit(
                    f"hamode compare: unknown torchdiffeq method {name!r}; valid: "
                    + ", ".join(f"torchdiffeq:{m}" for m in list_torchdiffeq_methods())
                )
        else:
            try:
                get_integrator(name)
            except (KeyError, ValueError):
                raise SystemExit(
                    f"hamode compare: unknown integrator {name!r}; valid: {', '.join(list_integrators())}, "
                    "or torchdiffeq:<method>"
                ) from None
        out += [Discretisation(name, k) for k in steps]
    return list(dict.fromkeys(out))


# ------------------------------------------------------------ one run
def _fit_args(args, extra: list[str], d: Discretisation, seed: int, run: Path) -> list[str]:
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(args.out), "name": d.folder, "version": f"seed_{seed}"},
    }
    fit = [
        "fit",
        "--config",
        args.config,
        *extra,
        f"--model.net.init_args.integrator={d.integrator}",
        f"--model.net.init_args.substeps={d.substeps}",
        f"--seed_everything={seed}",
        f"--trainer.logger={json.dumps(logger)}",
        '--trainer.callbacks+={"class_path": "lightning.pytorch.callbacks.Timer", "init_args": {"interval": "step"}}',
    ]
    if d.solver_options is not None:
        fit.append(f"--model.net.init_args.solver_options={json.dumps(d.solver_options)}")
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        fit += ["--ckpt_path", str(last)]
    return fit


CONFIG_FILE = "compare_config.json"
"""A run's resolved ``hamode fit`` configuration, written before it trains: what a rerun is checked against."""

_VOLATILE = ("ckpt_path", "config", "trainer.logger")  # run bookkeeping, not what the net is trained with


def resolved_config(fit_args: list[str]) -> dict[str, Any]:
    """The full configuration ``hamode fit <fit_args>`` trains with (every model, data and trainer key, the seed,
    the discretisation; the config files and command-line values resolved, defaults included), flattened to
    dotted keys. Building it instantiates the model, so a discretisation that cannot run on the net is refused
    here."""
    import yaml

    from .cli import cli, flatten_config

    args = list(fit_args[1:])  # without the subcommand
    if "--ckpt_path" in args:
        i = args.index("--ckpt_path")
        del args[i : i + 2]
    c = cli(args, run=False)
    dumped = yaml.safe_load(c.parser.dump(c.config, skip_check=True))
    flat = flatten_config(dumped)
    return {k: v for k, v in flat.items() if not any(k == v_ or k.startswith(v_ + ".") for v_ in _VOLATILE)}


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(before) | set(now))
    missing = object()
    return [
        f"{k}: was {before.get(k, '(unset)')!r}, now {now.get(k, '(unset)')!r}"
        for k in keys
        if before.get(k, missing) != now.get(k, missing)
    ]


@torch.no_grad()
def _accuracy(model, loader, device) -> float:
    correct = total = 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        pred = model.predict_step((x,), 0)["class"]
        correct += int((pred == y).sum())
        total += len(y)
    return 100.0 * correct / total


def _label(discretisation: tuple[str, int] | None) -> str:
    if discretisation is None:
        return "-"
    name, k = discretisation
    return name if k == 1 else f"{name} x{k}"


def _set(model, d: Discretisation) -> None:
    for net in model.hamiltonian_nets:
        if d.solver_options is not None:
            net.solver_options = d.solver_options
        net.set_integrator(d.integrator, substeps=d.substeps)


def _diagnostics(model, x: torch.Tensor) -> dict[str, float]:
    """Over every Hamiltonian net of the model (each stage of a CNN): evaluations per forward (summed), min over
    layers j < N and probe samples of ‖∂y_N/∂y_j‖₂ (exact for small states, Lanczos for image states) and the
    largest symplecticity defect of ∂y_N/∂y_0 (exact states only; NaN for image states)."""
    from hamode.diagnostics import layer_sensitivity, symplecticity_defect
    from hamode.models import hamiltonian_inputs

    inputs = hamiltonian_inputs(model.net, x)
    if not inputs:
        return {"nfe_per_forward": 0.0, "min_bsm_norm": float("nan"), "symplecticity_defect": float("nan")}
    nfe, norms, defects = 0.0, [], []
    for net, y0 in inputs:
        with torch.no_grad():
            net(y0)
        nfe += net.function_evaluations()
        found = layer_sensitivity(net, y0)
        norm = found["norm"].flatten(1)
        norms.append(float(norm[:-1].min()) if len(norm) > 1 else float(norm.min()))
        if found["matrices"] is not None:  # exact: ∂y_N/∂y_0 is its first matrix
            S0 = found["matrices"][0].flatten(0, -3)
            defects.append(float(symplecticity_defect(S0, net.field.J).max()))
        else:
            defects.append(float("nan"))
    finite = [d for d in defects if not math.isnan(d)]
    return {
        "nfe_per_forward": nfe,
        "min_bsm_norm": min(norms),
        "symplecticity_defect": max(finite) if finite else math.nan,
    }


def _run(args, extra: list[str], d: Discretisation, seed: int, evals: list[Discretisation]) -> dict[str, Any]:
    from lightning.pytorch.callbacks import Timer

    from hamode import ImplicitSolveError

    from .cli import cli
    from .module import HDNNClassifier

    run = Path(args.out) / d.folder / f"seed_{seed}"
    result_file = run / "result.json"
    if result_file.is_file():
        print(f"[compare] {d.label}, seed {seed}: done before ({result_file})", flush=True)
        return json.loads(result_file.read_text())
    fit = _fit_args(args, extra, d, seed, run)
    print(f"[compare] {d.label}, seed {seed}: hamode {shlex.join(fit)}", flush=True)
    with warnings.catch_warnings():  # the run folder already holds its recorded configuration (CONFIG_FILE)
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty.*")
        c = cli(fit)
    timer = next(cb for cb in c.trainer.callbacks if isinstance(cb, Timer))
    ckpts = run / "checkpoints"
    ckpt = ckpts / "best.ckpt" if (ckpts / "best.ckpt").is_file() else ckpts / "last.ckpt"
    device = c.trainer.strategy.root_device
    model = HDNNClassifier.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()
    dm = c.datamodule
    dm.setup("test")
    loader = dm.test_dataloader()
    with model.evaluating() as evaluated:  # the rule validation picked best.ckpt under (eval_integrator)
        test_acc = _accuracy(model, loader, device)
    result: dict[str, Any] = {
        "discretisation": d.label,
        **asdict(d),
        "seed": seed,
        "checkpoint": str(ckpt),
        "epochs": int(c.trainer.current_epoch),
        "checkpoint_epoch": int(torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"]) + 1,
        "train_seconds": float(timer.time_elapsed("train")),
        "evaluated_with": _label(evaluated),
        "test_acc": test_acc,
    }
    x = next(iter(loader))[0][:PROBE_SIZE].to(device)
    result.update(_diagnostics(model, x))
    cross = {}
    for e in evals:
        if not model.hamiltonian_nets:
            cross[e.label] = result["test_acc"]
            continue
        try:
            _set(model, e)
            cross[e.label] = _accuracy(model, loader, device)
        except (ValueError, ImplicitSolveError) as err:  # a splitting rule on a non-separable field; no solution
            print(f"[compare]   {e.label}: not applicable ({str(err)[:200]})", flush=True)
            cross[e.label] = float("nan")
    result["cross_eval"] = cross
    write_text(result_file, json.dumps(result, indent=1))
    print(
        f"[compare] {d.label}, seed {seed}: test accuracy {result['test_acc']:.2f} %, "
        f"{result['train_seconds']:.1f} s, {result['nfe_per_forward']:g} evaluations per forward",
        flush=True,
    )
    return result


# ------------------------------------------------------------ reports
RESULT_COLUMNS = (
    "discretisation",
    "integrator",
    "substeps",
    "tolerance",
    "seed",
    "test_acc",
    "evaluated_with",
    "train_seconds",
    "epochs",
    "checkpoint_epoch",
    "nfe_per_forward",
    "min_bsm_norm",
    "symplecticity_defect",
)


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def _report(out: Path, header: str, trained: list[Discretisation], evals: list[Discretisation], results) -> str:
    write_csv(out / "results.csv", RESULT_COLUMNS, [[r[k] for k in RESULT_COLUMNS] for r in results])
    write_csv(
        out / "cross_eval.csv",
        ["trained", "seed", "evaluated", "test_acc"],
        [[r["discretisation"], r["seed"], e, acc] for r in results for e, acc in r["cross_eval"].items()],
    )
    lines = [
        header,
        "",
        "| discretisation | test acc % (mean ± std) | train s | evaluations/forward | "
        "min ‖∂y_N/∂y_j‖ | symplecticity defect | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    mean_cross = []
    for d in trained:
        rs = [r for r in results if r["discretisation"] == d.label]
        lines.append(
            f"| {d.label} | {_mean_std([r['test_acc'] for r in rs])} | "
            f"{statistics.fmean(r['train_seconds'] for r in rs):.1f} | "
            f"{statistics.fmean(r['nfe_per_forward'] for r in rs):.4g} | "
            f"{min(r['min_bsm_norm'] for r in rs):.4g} | {max(r['symplecticity_defect'] for r in rs):.2g} | {len(rs)} |"
        )
        mean_cross.append([_mean(r["cross_eval"].get(e.label, math.nan) for r in rs) for e in evals])
    lines += ["", "Cross-evaluation: test accuracy % (mean over seeds); rows trained with, columns evaluated with", ""]
    lines.append("| trained \\ evaluated | " + " | ".join(e.label for e in evals) + " |")
    lines.append("|---|" + "---|" * len(evals))
    for d, row in zip(trained, mean_cross):
        lines.append(f"| {d.label} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in row) + " |")
    text = "\n".join(lines) + "\n"
    write_text(out / "summary.md", text)
    _plots(out, trained, evals, results, mean_cross)
    return text


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _plots(out: Path, trained, evals, results, mean_cross) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array(mean_cross, dtype=float)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(evals), 1.2 + 0.5 * len(trained)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(evals)), [e.label for e in evals], rotation=35, ha="right")
    ax.set_yticks(range(len(trained)), [d.label for d in trained])
    for i in range(len(trained)):
        for j in range(len(evals)):
            text = "n/a" if math.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("evaluated with")
    ax.set_ylabel("trained with")
    fig.colorbar(im, ax=ax, label="test accuracy %")
    fig.tight_layout()
    fig.savefig(out / "cross_eval.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for d in trained:
        rs = [r for r in results if r["discretisation"] == d.label]
        acc = [r["test_acc"] for r in rs]
        err = statistics.stdev(acc) if len(acc) > 1 else 0.0
        for ax, key in zip(axes, ("nfe_per_forward", "train_seconds")):
            ax.errorbar(
                statistics.fmean(r[key] for r in rs), statistics.fmean(acc), yerr=err, fmt="o", capsize=3, label=d.label
            )
    axes[0].set_xlabel("right-hand-side evaluations per forward")
    axes[1].set_xlabel("training time (s)")
    for ax in axes:
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_cost.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> str:
    """Run ``hamode compare``; returns the summary (also printed and written to ``OUT/summary.md``)."""
    parser = argparse.ArgumentParser(
        prog="hamode compare",
        description=__doc__.split("\n\n")[0],
        epilog="Any other argument (--model.*, --data.*, --trainer.*, ...) is passed to every `hamode fit` run.",
    )
    parser.add_argument("--config", required=True, help="the hamode fit config (YAML) every run starts from")
    parser.add_argument("--integrators", required=True, help="comma-separated: names, or torchdiffeq:<method>")
    parser.add_argument("--substeps", default="1", help="comma-separated substeps per layer for fixed-step rules")
    parser.add_argument("--tolerances", default=None, help="comma-separated rtol = atol for torchdiffeq methods")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. SEEDS-1 per discretisation")
    parser.add_argument("--out", required=True, help="output folder (runs, results.csv, summary.md, plots)")
    parser.add_argument("--eval-integrators", default=None, help="cross-evaluation integrators (default: trained)")
    parser.add_argument("--eval-substeps", default=None, help="cross-evaluation substeps (default: --substeps)")
    parser.add_argument("--eval-tolerances", default=None, help="cross-evaluation tolerances (default: --tolerances)")
    parser.add_argument(
        "--redo",
        action="store_true",
        help="retrain the runs whose recorded configuration differs from this command's (without it they are "
        "refused, with the differences shown)",
    )
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") and not a.startswith("--")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    for flag in (
        "--ckpt_path",
        "--model.net.init_args.integrator",
        "--model.net.init_args.substeps",
        "--model.net.integrator",  # jsonargparse's short form of the same two
        "--model.net.substeps",
        "--seed_everything",
        "--trainer.logger",
    ):
        if any(a == flag or a.startswith(flag + "=") for a in extra):
            parser.error(f"{flag} is set by hamode compare for each run; it cannot be given")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config!r} is not a file")
    trained = discretisations(args.integrators, args.substeps, args.tolerances)
    if args.eval_integrators or args.eval_substeps or args.eval_tolerances:
        evals = discretisations(
            args.eval_integrators or args.integrators,
            args.eval_substeps or args.substeps,
            args.eval_tolerances or (args.tolerances if args.eval_integrators is None else None),
            flags=("--eval-integrators", "--eval-substeps", "--eval-tolerances"),
        )
    else:
        evals = trained
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "hamode compare " + shlex.join(argv if argv is not None else sys.argv[2:])
    print(f"$ {command}", flush=True)
    # every run's configuration first: a bad override or a discretisation the net cannot run fails here, before
    # any training; a stored run trained with another configuration is refused (or, with --redo, retrained)
    runs = [(d, seed) for d in trained for seed in range(args.seeds)]
    stale: list[str] = []
    to_record: list[tuple[Path, dict[str, Any]]] = []
    redo: list[Path] = []
    for d, seed in runs:
        run = out / d.folder / f"seed_{seed}"
        try:
            config = resolved_config(_fit_args(args, extra, d, seed, run))
        except SystemExit:
            raise
        except Exception as error:
            from .errors import innermost_error

            raise SystemExit(f"hamode compare: {d.label}, seed {seed} cannot run: {innermost_error(error)}") from None
        recorded = run / CONFIG_FILE
        if run.exists() and any(run.iterdir()):
            if recorded.is_file():
                changed = _differences(json.loads(recorded.read_text()), config)
            else:
                changed = ["(the run has no recorded configuration: it was trained by an older hamode compare)"]
            if changed and args.redo:
                print(f"[compare] {d.label}, seed {seed}: retrained (--redo): {'; '.join(changed[:5])}", flush=True)
                redo.append(run)
            elif changed:
                stale.append(f"{run}:\n    " + "\n    ".join(changed[:20]))
                continue
        to_record.append((recorded, config))
    if stale:
        raise SystemExit(
            "hamode compare: these runs in --out were trained with another configuration than this command's:\n  "
            + "\n  ".join(stale)
            + "\nRerun with --redo to retrain them, or choose another --out."
        )
    for run in redo:
        shutil.rmtree(run)
    for recorded, config in to_record:
        recorded.parent.mkdir(parents=True, exist_ok=True)
        write_text(recorded, json.dumps(config, indent=1, sort_keys=True, default=str))
    started = time.perf_counter()
    results = [_run(args, extra, d, seed, evals) for d, seed in runs]
    header = (
        f"`{command}`\n\n{len(trained)} discretisations x {args.seeds} seeds; "
        f"{time.perf_counter() - started:.0f} s in this call ({os.cpu_count()} CPUs); test accuracy evaluated "
        f"with {', '.join(sorted({r['evaluated_with'] for r in results}))} (the rule each run validated with)"
    )
    text = _report(out, header, trained, evals, results)
    print(text)
    return text
