"""The ``hamode`` command: LightningCLI over HDNNClassifier and the data modules, plus ``hamode compare``.

hamode fit --config configs/mnist_h2.yaml
hamode test --config configs/mnist_h2.yaml --ckpt_path best
hamode fit --config configs/swiss_roll_h1.yaml --model.net.init_args.integrator=rk4 --trainer.max_epochs=5
hamode compare --config configs/swiss_roll_h1.yaml --integrators euler,rk4 --seeds 3 --out outputs/compare

Every run writes into its own folder ``<save_dir>/<name>/version_N`` (the logger's): the logs, the config,
and ``checkpoints/best.ckpt`` (best validation accuracy) and ``checkpoints/last.ckpt`` (the last completed
epoch). ``--ckpt_path last`` / ``--ckpt_path best`` name those of the newest run of the config that has one;
``fit --ckpt_path`` continues that run in its own folder.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .callbacks import LastCheckpoint, NonFiniteGuard, PredictionWriter
from .checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    RunLock,
    RunLockedError,
    check_class_paths,
    class_paths,
    read_checkpoint,
)
from .module import FIXED_ON_RESUME, LEGACY_MODEL_KEYS, OPTIMIZER_HPARAMS, HDNNClassifier, upgrade_model_config

NET_KEY = "net"
"""The injected model (``model.net``: ``class_path``, ``init_args``): a checkpoint fixes it, discretisation included."""
EVALUATION_DISCRETISATION = ("eval_integrator", "eval_substeps")
"""Hyper-parameters of evaluation only: the command line's values, where given, win over a checkpoint's."""
FIXED_MODEL_KEYS = ("n_classes",)
"""Training-system hyper-parameters a checkpoint fixes (its metrics and head were made for them)."""
CHECKPOINT_ALIASES = ("last", "best")
CKPT_PATH_HELP = (
    "a checkpoint file, or an alias: 'last' is the last.ckpt and 'best' the best.ckpt (best validation accuracy "
    "of that run) of the NEWEST run of this config that has one (<save_dir>/<name>/version_N with the highest N), "
    "not the best over runs; the file picked is printed with its run, epoch and score. With fit: continue that run."
)
"""``--ckpt_path`` values that name a checkpoint of the config's newest run (``last.ckpt`` / ``best.ckpt``)."""
LOG_DIR_PATTERN = re.compile(r"version_(\d+)$")
COMPARE_HELP = "Train one config under several integrators (and seeds) and compare them (hamode compare --help)."


class _DropTips(logging.Filter):
    """Lightning's advertising tips ("💡 Tip: ... litlogger") are not printed by hamode."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Silence Lightning's tips and the one known torch deprecation warning raised inside Lightning 2.6
    (``isinstance(treespec, LeafSpec)``); every other warning still shows."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # cli(args) is hamode's API (tests, hamode compare): the args given are the ones meant, whatever sys.argv holds
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended.*")


def _checkpoint_summary(checkpoint: dict[str, Any]) -> str:
    """ "run version_3, epoch 7, val/acc 0.9612" for a checkpoint written by hamode fit."""
    parts = []
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, int):
        parts.append(f"epoch {epoch}")
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_score") is not None:
            score = state["best_model_score"]
            parts.append(f"best {state.get('monitor', 'score')} of the run so far {float(score):.4g}")
            break
    return ", ".join(parts) or "no epoch recorded"


def _run_folders(root: Path) -> list[Path]:
    """``root/version_N`` folders, newest (largest N) first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := LOG_DIR_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


class HamodeCLI(LightningCLI):
    """LightningCLI with per-run checkpoints (best by validation accuracy, last completed epoch), the NaN /
    divergence guard always on, ``last``/``best`` checkpoint aliases, and checks that nothing asked is dropped.

    With ``--ckpt_path FILE`` nothing asked is dropped. The checkpoint is read as data; a class it names that is
    neither one of hamode's models nor named by this command's config is refused before anything is imported.
    The command's training hyper-parameters (lr, alpha, weight decays, lr_gamma) are used, each one that differs
    from the checkpoint's printed, and on ``fit`` applied to the restored optimizer; a change of optimizer, lr
    schedule or n_classes is refused. ``--model.eval_integrator`` / ``--model.eval_substeps`` given are honoured.
    A net (``model.net``: its class and every init argument, the discretisation among them) that differs from the
    checkpoint's is refused with the differences shown, unless ``--allow_discretisation_change=true``; so is data
    split differently (the data module's ``SPLIT_KEYS``: dataset, size, seed, ...), which would evaluate on
    training data, unless ``--allow_data_change=true``.

    ``fit`` holds a lock on its run folder (a second process writing into it is refused) and writes every
    checkpoint atomically; SIGINT/SIGTERM stop it after the batch in flight with ``last.ckpt`` saved and exit
    status 130/143 ([`LastCheckpoint`][lightning_modules.LastCheckpoint]).

    A hamode <= 0.2 config (``model.task`` and the net's arguments on the training module) is refused with the
    upgraded ``model:`` block printed.
    """

    def parse_arguments(self, parser, args) -> None:
        if args is None or isinstance(args, (list, tuple)):
            _refuse_legacy_config(sys.argv[1:] if args is None else list(args))
        super().parse_arguments(parser, args)

    def init_parser(self, **kwargs: Any):
        parser = super().init_parser(**kwargs)
        parser.epilog = (
            "hamode compare --help: train one config under several integrators (and seeds) and compare them. "
            "--ckpt_path last / best: the newest run's last.ckpt / best.ckpt."
        )
        return parser

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for subparser in getattr(parser, "_subcommands_action", None).choices.values():
            for action in subparser._actions:
                if action.dest == "ckpt_path":  # hamode resolves the aliases itself, across runs: say how
                    action.help = CKPT_PATH_HELP
        # `hamode compare` is dispatched before this parser (lightning_modules.main); listed here for --help
        action = getattr(parser, "_subcommands_action", None)
        if action is not None:
            from jsonargparse import ArgumentParser

            action.add_subcommand("compare", ArgumentParser(description=COMPARE_HELP), help=COMPARE_HELP)

    # ------------------------------------------------------------ checkpoints of runs
    def _logger_root(self, cfg) -> Path | None:
        """``<save_dir>/<name>`` of the configured logger (None: no file logger)."""
        logger = cfg["trainer"].get("logger")
        if isinstance(logger, list):
            logger = logger[0] if logger else None
        if logger is None or isinstance(logger, bool) or not hasattr(logger, "get"):
            return None
        init = logger.get("init_args") or {}
        save_dir = init.get("save_dir") or cfg["trainer"].get("default_root_dir") or "."
        name = init.get("name", "lightning_logs")
        return Path(save_dir) / (name or "")

    def _resolve_alias(self, subcommand: str, cfg) -> None:
        alias = cfg.get("ckpt_path")
        if alias not in CHECKPOINT_ALIASES:
            return
        filename = f"{alias}.ckpt"
        dirpath = cfg["checkpoint"].get("dirpath")
        if dirpath:
            candidates = [Path(dirpath) / filename]
            where = str(Path(dirpath))
        else:
            root = self._logger_root(cfg)
            if root is None:
                raise SystemExit(
                    f"hamode {subcommand}: --ckpt_path {alias} needs a file logger (trainer.logger) or "
                    "--checkpoint.dirpath to find the runs; give the checkpoint file instead"
                )
            candidates = [run / "checkpoints" / filename for run in _run_folders(root)]
            where = f"{root}/version_*/checkpoints"
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SystemExit(f"hamode {subcommand}: --ckpt_path {alias}: no {filename} in {where}")
        cfg["ckpt_path"] = str(found)
        self._ckpt_alias = alias  # printed with what the file holds once it is read (_parse_ckpt_path)

    def _run_of(self, cfg) -> Path | None:
        """The run folder (``<save_dir>/<name>/<version>``) that holds ``cfg.ckpt_path``, or None."""
        ckpt = Path(cfg["ckpt_path"]).resolve()
        run = ckpt.parent.parent
        root = self._logger_root(cfg)
        if ckpt.parent.name != "checkpoints" or root is None:
            return None
        return run if run.parent == root.resolve() else None

    def _set_logger_version(self, cfg, version: int | str) -> None:
        logger = cfg["trainer"]["logger"]
        logger = logger[0] if isinstance(logger, list) else logger
        logger["init_args"]["version"] = version

    def _continue_run(self, subcommand: str, cfg) -> None:
        """``fit --ckpt_path <run>/checkpoints/X.ckpt`` continues that run in its own folder (same version);
        test/validate/predict from a run's checkpoint log into ``<run>/<subcommand>_K``."""
        run = self._run_of(cfg)
        if run is None:
            return  # a checkpoint from elsewhere: a new run that starts from (or evaluates) it
        if subcommand != "fit":
            k = 0
            while (run / f"{subcommand}_{k}").exists():
                k += 1
            self._set_logger_version(cfg, f"{run.name}/{subcommand}_{k}")
            return
        self._set_logger_version(cfg, run.name)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
            self._lock_run(subcommand, run)  # before touching its files: another process may be writing the run
        metrics = run / "metrics.csv"
        if metrics.is_file():  # the CSV logger starts its file afresh: keep the earlier epochs' rows
            n = 1
            while (run / f"metrics-before-resume-{n}.csv").exists():
                n += 1
            metrics.rename(run / f"metrics-before-resume-{n}.csv")
        # both warn that the folder is not empty: it is this run's, continued on purpose
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty.*")
        print(f"hamode fit: continuing the run in {run}", flush=True)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return super()._parse_ckpt_path()
        cfg = self.config[subcommand]
        self._resolve_alias(subcommand, cfg)
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path:
            return super()._parse_ckpt_path()
        try:
            checkpoint = read_checkpoint(ckpt_path)
        except CheckpointError as e:
            raise SystemExit(f"hamode {subcommand}: {e}") from None
        alias = getattr(self, "_ckpt_alias", None)
        if alias:
            print(
                f"hamode {subcommand}: --ckpt_path {alias} is {ckpt_path} ({_checkpoint_summary(checkpoint)})",
                flush=True,
            )
        bad = [
            k
            for k, v in checkpoint.get("state_dict", {}).items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise SystemExit(
                f"hamode {subcommand}: the checkpoint {ckpt_path} holds weights that are not finite "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): it was written by a run that diverged; "
                f"use the run's {NonFiniteGuard.FILENAME} (the last state with a finite loss) or another checkpoint"
            )
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        _refuse_legacy_checkpoint(subcommand, ckpt_path, hparams)
        asked = cfg["model"].clone()
        # the classes this command's own config names (parsed, so imported already) are the only others allowed
        trusted = {path for _, path in class_paths(asked) if isinstance(path, str)}
        try:
            check_class_paths(
                ckpt_path, hparams, trusted, how=": if you trust it, name that class in the config's model.net"
            )
        except CheckpointError as e:
            raise SystemExit(f"hamode {subcommand}: {e}") from None
        self._check_data(subcommand, cfg, checkpoint)
        super()._parse_ckpt_path()  # replaces self.config
        cfg = self.config[subcommand]
        saved = cfg["model"]
        changed = _net_differences(asked.get(NET_KEY), saved.get(NET_KEY))
        if changed and not cfg.get("allow_discretisation_change"):
            lines = "\n".join(f"  model.net.{k}: asked {a!r}, checkpoint {b!r}" for k, a, b in changed)
            hint = (
                "resuming would silently train another network"
                if subcommand == "fit"
                else "to evaluate under another integrator use --model.eval_integrator / --model.eval_substeps"
            )
            raise SystemExit(
                f"hamode {subcommand}: the config's net (its discretisation or architecture) differs from the "
                f"checkpoint {ckpt_path}:\n{lines}\n"
                f"({hint}; --allow_discretisation_change=true takes the checkpoint's values)"
            )
        self._apply_asked(subcommand, ckpt_path, asked, saved)
        self._continue_run(subcommand, cfg)

    def _apply_asked(self, subcommand: str, ckpt_path: str, asked, saved) -> None:
        """The command's training-system hyper-parameters replace the checkpoint's (printed where they differ);
        those a checkpoint fixes are refused when they differ."""
        fixed = (*FIXED_MODEL_KEYS, *(FIXED_ON_RESUME if subcommand == "fit" else ()))
        refused = [(k, asked.get(k), saved.get(k)) for k in fixed if asked.get(k) != saved.get(k)]
        if refused:
            lines = "\n".join(f"  model.{k}: asked {a!r}, checkpoint {b!r}" for k, a, b in refused)
            verb = "resumed" if subcommand == "fit" else "used"
            raise SystemExit(
                f"hamode {subcommand}: the checkpoint {ckpt_path} cannot be {verb} with:\n{lines}\n(its optimizer "
                "state, schedule and metrics were made for the checkpoint's values: keep them, or start a new run)"
            )
        applied = []
        for key in (*OPTIMIZER_HPARAMS, "alpha"):
            if key in FIXED_ON_RESUME or asked.get(key) == saved.get(key):
                continue
            applied.append((key, asked.get(key), saved.get(key)))
            saved[key] = asked.get(key)
        for key in EVALUATION_DISCRETISATION:
            if asked.get(key) is not None and asked.get(key) != saved.get(key):
                applied.append((key, asked[key], saved.get(key)))
                saved[key] = asked[key]
        if subcommand != "fit":  # the training hyper-parameters do not change an evaluation: only say the rest
            applied = [a for a in applied if a[0] in EVALUATION_DISCRETISATION]
        for key, a, b in applied:
            print(f"hamode {subcommand}: model.{key} = {a!r} (the checkpoint has {b!r})", flush=True)

    def _check_data(self, subcommand: str, cfg, checkpoint: dict[str, Any]) -> None:
        """Refuse data split differently from the checkpoint's (a test on training images), unless allowed."""
        saved = checkpoint.get("datamodule_hyper_parameters")
        data = cfg.get("data")
        if not isinstance(saved, dict) or data is None or cfg.get("allow_data_change"):
            return
        data = data.as_dict() if hasattr(data, "as_dict") else dict(data)
        init = data.get("init_args") or {}
        module, _, name = str(data.get("class_path", "")).rpartition(".")
        try:
            split_keys = getattr(getattr(__import__(module, fromlist=[name]), name), "SPLIT_KEYS", ())
        except (ImportError, AttributeError, ValueError):
            split_keys = ()
        missing = object()
        differ = [
            (k, init.get(k), saved.get(k, "(none)"))
            for k in split_keys
            if saved.get(k, missing) is missing or init.get(k) != saved.get(k)
        ]
        if differ:
            lines = "\n".join(f"  data.init_args.{k}: asked {a!r}, checkpoint {b!r}" for k, a, b in differ)
            raise SystemExit(
                f"hamode {subcommand}: the data is split differently from the checkpoint's ({cfg['ckpt_path']}):\n"
                f"{lines}\n(its training and test sets would overlap the checkpoint's; --allow_data_change=true "
                "uses the asked data anyway)"
            )

    # ------------------------------------------------------------ one writer per run folder
    def _lock_run(self, subcommand: str, folder: Path) -> None:
        if getattr(self, "_run_lock", None) is not None:
            return
        try:
            self._run_lock = RunLock(folder).acquire()
        except RunLockedError as e:
            raise SystemExit(f"hamode {subcommand}: {e}") from None

    def before_fit(self) -> None:
        folder = self.trainer.log_dir
        if folder and self.trainer.is_global_zero:
            new = not Path(folder).exists()
            self._lock_run("fit", Path(folder))
            if new:  # the folder holds only the lock: the logger's "not empty" warning would be about it
                warnings.filterwarnings("ignore", message=rf"Experiment logs directory {re.escape(folder)} exists.*")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # however the command ends (an error, the NaN guard, a signal): the folder is free again
            lock = getattr(self, "_run_lock", None)
            if lock is not None:
                lock.release()
                self._run_lock = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--allow_discretisation_change",
            type=bool,
            default=False,
            help="with --ckpt_path: take the checkpoint's discretisation where the config asks for another one",
        )
        parser.add_argument(
            "--allow_data_change",
            type=bool,
            default=False,
            help="with --ckpt_path: use data split differently from the checkpoint's (its dataset, size or seed)",
        )
        from lightning.pytorch.callbacks import ModelCheckpoint

        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def before_instantiate_classes(self) -> None:
        quiet_lightning()
        if self.config.get("subcommand") not in (None, "fit"):
            # evaluation restores the checkpoint callbacks' state into another folder: nothing is lost
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from .*")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin is kept
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else self.config
        # last.ckpt (every completed epoch, and on an interrupt) in the same folder as best.ckpt
        trainer.callbacks.append(LastCheckpoint(dirpath=cfg["checkpoint"].get("dirpath")))
        return trainer

    def after_test(self) -> None:
        metrics = self.trainer.callback_metrics
        if "test/acc" in metrics and self.trainer.is_global_zero:
            print(f"test accuracy: {100 * float(metrics['test/acc']):.2f} %{describe(self.model)}")

    def after_predict(self) -> None:
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter)), None)
        if writer is not None and writer.written is not None and self.trainer.is_global_zero:
            print(f"predictions: {writer.written}{describe(self.model)}")


def describe(model: HDNNClassifier) -> str:
    """`` (rk4, 1 substep)``: the discretisation the model's Hamiltonian nets evaluate with (its ``eval_integrator``
    / ``eval_substeps``, else the training one; '' without a Hamiltonian net; every stage's when they differ)."""
    with model.evaluating():
        found = list(dict.fromkeys((n.integrator_name, n.substeps) for n in model.hamiltonian_nets))
    if not found:
        return ""
    text = "; ".join(f"{name}, {k} substep{'' if k == 1 else 's'}" for name, k in found)
    return f" ({text})"


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (Namespace or dict) as ``{"init_args.n_layers": 4, ...}``."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _net_differences(asked: Any, saved: Any) -> list[tuple[str, Any, Any]]:
    """``(key, asked, checkpoint)`` for every entry of the net's config that differs."""
    a, b = flatten_config(asked), flatten_config(saved)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _legacy_message(where: str, model: dict[str, Any]) -> str:
    import yaml

    keys = ", ".join(k for k in model if k in LEGACY_MODEL_KEYS)
    block = yaml.safe_dump({"model": upgrade_model_config(model)}, sort_keys=False)
    return (
        f"hamode: {where} gives the net's arguments to the training module ({keys}): since hamode 0.3 the model "
        "is injected as model.net (class_path + init_args) and model.task is gone. Replace its model: block by\n\n"
        f"{block}\n(on the command line: --model.net.init_args.<argument>=...)"
    )


def _refuse_legacy_config(argv: list[str]) -> None:
    """Refuse a hamode <= 0.2 config file or ``--model.<net argument>`` flag, printing the upgraded block."""
    import yaml

    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else None
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        if path and Path(path).is_file():
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            model = loaded.get("model") if isinstance(loaded, dict) else None
            if isinstance(model, dict) and "class_path" not in model and any(k in LEGACY_MODEL_KEYS for k in model):
                raise SystemExit(_legacy_message(f"the config {path}", model))
        flag = arg.split("=", 1)[0]
        if flag.startswith("--model.") and flag[len("--model.") :] in LEGACY_MODEL_KEYS:
            raise SystemExit(
                f"hamode: {flag} is a hamode <= 0.2 flag: the net's arguments are now "
                f"--model.net.init_args.{flag[len('--model.') :]}=... (and --model.task is gone: choose the net's "
                "class with --model.net=hamode.models.MNISTHDNN, HamiltonianCNN, Toy2DClassifier or your own)"
            )


def _refuse_legacy_checkpoint(subcommand: str, path: str, hparams: dict[str, Any]) -> None:
    if "task" in hparams and NET_KEY not in hparams:
        raise SystemExit(
            f"hamode {subcommand}: the checkpoint {path} was written by hamode <= 0.2 (model.task="
            f"{hparams['task']!r}); its weights belong to the old module layout and cannot be loaded by this version"
        )


def safe_parsing() -> None:
    """jsonargparse settings for every parser hamode makes: a ``class_path`` inside a free-form (``Any``) value
    stays data and is never instantiated, and jsonargparse's import denylist (``os``, ``subprocess``, ``builtins``'
    ``eval``/``exec``, ...) is enforced, not only warned about."""
    from jsonargparse import set_loader, set_parsing_settings

    set_parsing_settings(instantiate_subclass_spec_in_any=False, import_path_denylist=[])
    set_loader("yaml", yaml_without_duplicate_keys, exceptions=_yaml_errors())


def _yaml_errors() -> tuple[type[Exception], ...]:
    import yaml

    return (yaml.YAMLError,)


def yaml_without_duplicate_keys(stream: str):
    """jsonargparse's YAML loader, after a check that no mapping names a key twice (YAML itself lets the last one
    win silently, so ``lr: 0.1`` followed later by ``lr: 0.01`` in the same block would train with 0.01)."""
    import yaml
    from jsonargparse._loaders_dumpers import yaml_load

    try:
        root = yaml.compose(stream, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None  # not YAML: jsonargparse's own loader reports it
    nodes = [root] if root is not None else []
    while nodes:
        node = nodes.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in seen:
                        raise ValueError(
                            f"the key {key.value!r} is given twice in one block of the config (lines {seen[key.value]} "
                            f"and {line}); YAML would silently keep the second: remove one of them"
                        )
                    seen[key.value] = line
                nodes.append(value)
        elif isinstance(node, yaml.SequenceNode):
            nodes.extend(node.value)
    return yaml_load(stream)


def cli(args: list[str] | None = None, run: bool = True) -> HamodeCLI:
    """Build (and with ``run=True`` run) the CLI; returns it (tests use ``run=False``)."""
    quiet_lightning()
    safe_parsing()
    return HamodeCLI(
        HDNNClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs"}}
        },
        args=args,
        run=run,
    )
