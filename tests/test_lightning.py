"""The training system: configs, CLI, checkpoints, resume, NaN guard, sensitivity logging, DDP."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hamode.data.mnist import verify_mnist
from hamode.models import Toy2DClassifier
from lightning_modules import HDNNClassifier, NonFiniteLossError, SensitivityMonitor, Toy2DDataModule
from lightning_modules.cli import cli

pytestmark = pytest.mark.cpu_only  # the configs and scripts train on the CPU (accelerator: cpu)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])  # LightningCLI warns when it also sees pytest's arguments


def _trainer(tmp_path, **kw):
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


TOY_NET_ARGS = ("architecture", "dim", "n_layers", "h", "t_end", "integrator", "substeps", "gradient", "weights")


def _toy(system_class=None, **kw):
    """The system around a Toy2DClassifier (H2, 4 layers); the keywords go to the net or the system."""
    net = dict(architecture="H2", dim=4, n_layers=4, h=0.5)
    system = dict(lr=0.02, lr_schedule="exponential", lr_gamma=0.9, alpha=1e-3)
    for key, value in kw.items():
        (net if key in TOY_NET_ARGS else system)[key] = value
    return (system_class or HDNNClassifier)(net=Toy2DClassifier(**net), **system)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_cli_builds_every_config(config, tmp_path):
    c = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(c.model, HDNNClassifier)
    assert c.model.discretisation()[0] == c.model.hparams.net["init_args"]["integrator"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_every_config(config, tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs write outputs/ relative to the working directory
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"]
    if "mnist" in config.stem:
        args.append(f"--data.data_dir={mnist_dir}")
    c = cli(args)
    assert c.trainer.state.finished
    assert torch.isfinite(c.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("config", ["swiss_roll_h1", "double_moons_h2", "mnist_h2"])
def test_bf16_mixed_precision_trains(config, tmp_path, mnist_dir, monkeypatch):
    """--trainer.precision=bf16-mixed: the layers around the H-DNN run in bf16, its ODE solve in float32."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / f"configs/{config}.yaml"), "--trainer.precision=bf16-mixed"]
    args += ["--trainer.fast_dev_run=2", "--trainer.enable_progress_bar=false"]
    if "mnist" in config:
        args.append(f"--data.data_dir={mnist_dir}")
    c = cli(args)
    assert c.trainer.state.finished and c.trainer.precision == "bf16-mixed"
    assert torch.isfinite(c.trainer.callback_metrics["train/loss"])


def test_cli_override_integrator(tmp_path):
    c = cli(
        [
            "--config",
            str(ROOT / "configs/double_moons_h2.yaml"),
            "--model.net.init_args.integrator=leapfrog",
            "--model.net.init_args.substeps=2",
        ],
        run=False,
    )
    assert c.model.hamiltonian_nets[0].integrator_name == "leapfrog" and c.model.hamiltonian_nets[0].substeps == 2


@pytest.mark.parametrize(
    "override,match",
    [
        ("--model.net.init_args.architecture=H3", "unknown architecture 'H3'; valid"),
        ("--model.net.init_args.integrator=rk5", "unknown integrator 'rk5'; valid"),
        ("--model.net.init_args.dim=7", "even dim"),
        (
            "--model.net.init_args.integrator=leapfrog --model.net.init_args.architecture=H1_J2",
            "needs a separable field",
        ),
    ],
)
def test_bad_configs_fail_at_start(override, match):
    args = ["--config", str(ROOT / "configs/double_moons_h2.yaml"), *override.split()]
    with pytest.raises(ValueError, match=match):
        cli(args, run=False)


def test_mnist_data_dir_inside_a_file_fails_at_start(tmp_path):
    from lightning_modules import MNISTDataModule

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        MNISTDataModule(data_dir=str(tmp_path / "file" / "data"))


def test_checkpoint_restores_discretisation(tmp_path):
    L.seed_everything(0)
    model = _toy(integrator="leapfrog", substeps=3, weights="linear")
    dm = Toy2DDataModule("double_moons", n_samples=600, batch_size=50)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(model, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = HDNNClassifier.load_from_checkpoint(path, weights_only=True)
    assert loaded.hamiltonian_nets[0].integrator_name == "leapfrog" and loaded.hamiltonian_nets[0].substeps == 3
    assert loaded.hamiltonian_nets[0].field.weights == "linear"
    x = torch.randn(7, 2)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_evaluate_under_another_integrator(tmp_path):
    L.seed_everything(0)
    model = _toy()
    dm = Toy2DDataModule("double_moons", n_samples=600, batch_size=50)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            seen.append(("train", pl_module.hamiltonian_nets[0].integrator_name))

        def on_validation_batch_start(self, trainer, pl_module, *a):
            seen.append(("val", pl_module.hamiltonian_nets[0].integrator_name, pl_module.hamiltonian_nets[0].substeps))

    model.set_integrator("rk4", substeps=4)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=[Spy()], num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert {s for s in seen if s[0] == "train"} == {("train", "symplectic_euler")}
    assert {s for s in seen if s[0] == "val"} == {("val", "rk4", 4)}
    with pytest.raises(ValueError, match="needs a separable field"):
        _toy(architecture="H1_J2").set_integrator("leapfrog")


class _Crash(Exception):
    pass


def _resume_run(tmp_path, crash_at=None, resume=False):
    L.seed_everything(0)
    model = _toy()
    dm = Toy2DDataModule("swiss_roll", n_samples=1000, batch_size=50, val_fraction=0.1)
    callbacks = [ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)]
    if crash_at is not None:

        class Crash(L.Callback):
            def on_train_batch_end(self, trainer, *a):
                if trainer.global_step == crash_at:
                    raise _Crash

        callbacks.append(Crash())
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(model, dm, ckpt_path="last" if resume else None)
    return model


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    full = _resume_run(tmp_path / "full")
    with pytest.raises(_Crash):
        _resume_run(tmp_path / "crash", crash_at=25)  # 18 batches per epoch: dies in the 2nd epoch
    resumed = _resume_run(tmp_path / "crash", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class _NaNLossAt(HDNNClassifier):
    """A toy model whose loss turns NaN at the 4th training batch (finite inputs and weights: non-finite
    inputs are refused before they reach the net, see test_non_finite_inputs_are_refused...)."""

    def training_step(self, batch, batch_idx):
        self._nan_now = batch_idx == 3
        return super().training_step(batch, batch_idx)

    def _loss(self, logits, y):
        loss, pred = super()._loss(logits, y)
        return (loss * float("nan") if getattr(self, "_nan_now", False) else loss), pred


def test_nonfinite_guard_stops_and_keeps_the_last_finite_weights(tmp_path):
    """last_finite.ckpt is one moment: the weights after step 2 (the last to give a finite loss), the optimizer
    state of step 2 and global_step 2 (it paired those weights with the step-3 Adam state and global_step 3)."""
    from lightning_modules import LastCheckpoint, NonFiniteGuard

    weights = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *a):
            weights[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    L.seed_everything(0)
    model = _toy(_NaNLossAt)
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        callbacks=[Spy(), NonFiniteGuard(), LastCheckpoint(dirpath=tmp_path)],
        num_sanity_val_steps=0,
    )
    data = Toy2DDataModule("double_moons", n_samples=600, batch_size=50)
    expected = (
        rf"stopping at step 3 \(epoch 0\): the loss is nan.*training state of step 2, the last with a finite loss, "
        rf"is in {tmp_path / 'last_finite.ckpt'}"
    )
    with pytest.raises(NonFiniteLossError, match=expected):
        trainer.fit(model, data)
    state = torch.load(tmp_path / "last_finite.ckpt", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.equal(state["state_dict"][k], v) for k, v in weights[2].items())
    adam_steps = {float(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}  # the optimizer state of the same moment
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "last.ckpt").exists()  # no epoch completed; the NaN is no interrupt to save


def test_nonfinite_guard_arguments_are_checked():
    from lightning_modules import NonFiniteGuard

    with pytest.raises(ValueError, match=r"divergence_factor must be a finite number > 1 or None, got 0\.5"):
        NonFiniteGuard(divergence_factor=0.5)
    with pytest.raises(ValueError, match=r"smoothing must be a number in \[0, 1\), got 1"):
        NonFiniteGuard(smoothing=1)


def test_sensitivity_monitor_logs_and_h2_norms_stay_above_one(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0)
    model = _toy(n_layers=8)
    logger = CSVLogger(tmp_path, name="s")
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        logger=logger,
        enable_checkpointing=False,
        callbacks=[SensitivityMonitor(every_n_steps=5, probe_size=8)],
        log_every_n_steps=1,
    )
    trainer.fit(model, Toy2DDataModule("double_moons", n_samples=600, batch_size=50))
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c.startswith("sensitivity/norm_min/layer_")]
    assert len(cols) == 9  # the 2-D task logs the full curve, j = 0..8
    values = [float(r[c]) for r in rows for c in cols if r.get(c)]
    assert values and min(values) >= 1 - 1e-5  # H2 + symplectic Euler: no vanishing (float32)


def test_mnist_files_present_and_verified(mnist_dir):
    assert verify_mnist(mnist_dir) == {}


def test_ddp_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["batches"] == 540 // 50 // 2 + (1 if (540 // 2) % 50 else 0)  # each rank sees half the data
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert any(not torch.equal(r0["state"][k], r0["before"][k]) for k in r0["state"])  # it trained


def test_in_memory_loader_resumes_with_augmentation():
    from lightning_modules.data import InMemoryLoader, random_shift

    x = torch.randn(50, 1, 28, 28)
    y = torch.arange(50)

    def make():
        return InMemoryLoader((x, y), 8, shuffle=True, seed=3, transform=lambda a, g: random_shift(a, 2, g, 0.0))

    loader = make()
    loader.sampler.set_epoch(2)
    full = list(loader)
    assert len(full) == len(loader) == 7
    assert not torch.equal(full[0][0], x[full[0][1]])  # augmented
    partial = make()
    partial.sampler.set_epoch(2)
    it = iter(partial)
    for _ in range(3):
        next(it)
    partial.consumed = 3  # what the DataModule counts when the loop takes batches
    state = partial.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 4
    for (a, la), (b, lb) in zip(full[3:], rest):
        assert torch.equal(a, b) and torch.equal(la, lb)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        InMemoryLoader((x,), 0, shuffle=False)


def test_random_shift_moves_whole_pixels():
    from lightning_modules.data import random_shift

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).reshape(2, 3, 5, 6) + 1
    g = torch.Generator().manual_seed(0)
    out = random_shift(x, 2, g, background=-7.0)
    assert out.shape == x.shape
    g = torch.Generator().manual_seed(0)
    dy, dx = (torch.randint(0, 5, (2, 2), generator=g) - 2).unbind(1)  # the offsets random_shift drew
    for i in range(2):
        a, b = int(dy[i]), int(dx[i])
        pad = torch.nn.functional.pad(x[i], (2, 2, 2, 2), value=-7.0)
        expect = pad[:, 2 + a : 2 + a + 5, 2 + b : 2 + b + 6]
        assert torch.equal(out[i], expect)  # every channel shifted by the same whole-pixel offset
    assert torch.equal(random_shift(x, 0, g, 0.0), x)


@pytest.mark.parametrize("bad", [1.5, -1, 14, True])
def test_mnist_augment_shift_must_be_whole_pixels(tmp_path, bad):
    from lightning_modules import MNISTDataModule

    with pytest.raises(ValueError, match="augment_shift must be a whole number of pixels"):
        MNISTDataModule(data_dir=str(tmp_path), augment_shift=bad)


@pytest.fixture
def trained_swiss_roll(tmp_path, monkeypatch):
    """A 1-epoch run of configs/swiss_roll_h1.yaml (forward Euler) in tmp_path; returns its last.ckpt."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "configs/swiss_roll_h1.yaml")
    cli(["fit", "--config", config, "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false"])
    ckpt = tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt"
    assert ckpt.is_file()
    return config, str(ckpt)


def test_test_from_checkpoint_honours_the_eval_integrator(trained_swiss_roll, capsys):
    """`hamode test --ckpt_path ... --model.eval_integrator=rk4` evaluates under rk4 (it used the checkpoint's own)."""
    config, ckpt = trained_swiss_roll
    c = cli(["test", "--config", config, "--ckpt_path", ckpt, "--model.eval_integrator=rk4"])
    assert "(rk4, 1 substep)" in capsys.readouterr().out
    assert c.model.hparams.eval_integrator == "rk4"
    assert c.model.hamiltonian_nets[0].integrator_name == "euler"  # the evaluation rule does not outlive the test
    cli_acc = float(c.trainer.callback_metrics["test/acc"])
    # the same through the API
    model = HDNNClassifier.load_from_checkpoint(ckpt)
    model.set_integrator("rk4")
    trainer = _trainer(Path(ckpt).parent)
    api_acc = trainer.test(model, datamodule=c.datamodule, verbose=False)[0]["test/acc"]
    assert cli_acc == pytest.approx(api_acc, abs=1e-7)
    euler = cli(["test", "--config", config, "--ckpt_path", ckpt])
    assert euler.model.hamiltonian_nets[0].integrator_name == "euler"
    assert "(euler, 1 substep)" in capsys.readouterr().out


def test_unknown_eval_integrator_with_a_checkpoint_is_refused(trained_swiss_roll):
    config, ckpt = trained_swiss_roll
    with pytest.raises(ValueError, match=r"unknown integrator 'no_such_rule'; valid: .*euler.*rk4"):
        cli(["test", "--config", config, "--ckpt_path", ckpt, "--model.eval_integrator=no_such_rule"])


def test_resume_with_another_discretisation_is_refused(trained_swiss_roll):
    config, ckpt = trained_swiss_roll
    args = [
        "fit",
        "--config",
        config,
        "--ckpt_path",
        ckpt,
        "--model.net.init_args.integrator=rk4",
        "--model.net.init_args.substeps=2",
    ]
    with pytest.raises(
        SystemExit, match=r"model.net.init_args.integrator: asked 'rk4', checkpoint 'euler'\n.*substeps: asked 2"
    ):
        cli([*args, "--trainer.max_epochs=2"])
    allowed = ["--trainer.max_epochs=2", "--allow_discretisation_change=true", "--trainer.enable_progress_bar=false"]
    c = cli([*args, *allowed])
    net = c.model.hamiltonian_nets[0]
    assert net.integrator_name == "euler" and c.trainer.current_epoch == 2  # the checkpoint's, resumed


@pytest.mark.parametrize("bad", [-1.0, 0.0, 1.5, float("nan")])
def test_lr_gamma_must_be_a_decay_factor(bad):
    with pytest.raises(ValueError, match=r"lr_gamma must be a number in \(0, 1\]"):
        _toy(lr_gamma=bad)
    with pytest.raises(ValueError, match="lr must be finite"):
        _toy(lr=float("inf"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_in_training_and_evaluation(value, tmp_path):
    model = _toy()
    x = torch.randn(8, 2)
    x[3, 1] = value
    batch = (x, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="train batch 5 has 1 non-finite input values"):
        model.training_step(batch, 5)
    with pytest.raises(ValueError, match="test batch 0 has 1 non-finite input values"):
        model.test_step(batch, 0)


SWISS = str(ROOT / "configs/swiss_roll_h1.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _fit(*extra):
    return cli(["fit", "--config", SWISS, *QUIET, *extra])


def test_last_ckpt_is_the_last_completed_epoch_and_best_is_kept_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = _fit("--trainer.max_epochs=3", "--data.init_args.n_samples=800")
    ckpts = tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == c.trainer.global_step
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    scores = [
        v["best_model_score"]
        for k, v in best["callbacks"].items()
        if k.startswith("ModelCheckpoint{'monitor': 'val/acc'")
    ]
    assert best["epoch"] <= 2 and scores  # best by validation accuracy, its own file


def test_two_runs_of_one_config_keep_both_runs_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs=1", "--data.init_args.n_samples=400", "--seed_everything=1")
    first = (tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt").read_bytes()
    _fit("--trainer.max_epochs=1", "--data.init_args.n_samples=400", "--seed_everything=2")
    runs = tmp_path / "outputs/swiss_roll_h1"
    assert (runs / "version_0/checkpoints/last.ckpt").read_bytes() == first
    assert (runs / "version_1/checkpoints/best.ckpt").is_file()
    # `--ckpt_path last` names the newest run's last.ckpt
    cli(["test", "--config", SWISS, "--ckpt_path", "last", "--data.init_args.n_samples=400", *QUIET])
    assert "--ckpt_path last is outputs/swiss_roll_h1/version_1/checkpoints/last.ckpt" in capsys.readouterr().out
    assert (runs / "version_1/test_0/metrics.csv").is_file()  # the evaluation logs inside the run it evaluated


def test_ckpt_path_alias_without_a_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SystemExit, match=r"--ckpt_path best: no best.ckpt in outputs/swiss_roll_h1/version_\*/checkpoints"
    ):
        cli(["test", "--config", SWISS, "--ckpt_path", "best"])


def test_fit_ckpt_path_last_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs=1", "--data.init_args.n_samples=400")
    c = _fit("--trainer.max_epochs=2", "--data.init_args.n_samples=400", "--ckpt_path", "last")
    run = tmp_path / "outputs/swiss_roll_h1/version_0"
    assert Path(c.trainer.log_dir).resolve() == run.resolve()
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert not (run.parent / "version_1").exists()
    assert (run / "metrics-before-resume-1.csv").is_file() and (run / "metrics.csv").is_file()
    # resuming a finished run trains nothing
    done = _fit("--trainer.max_epochs=2", "--data.init_args.n_samples=400", "--ckpt_path", "last")
    assert done.trainer.global_step == c.trainer.global_step


def test_divergence_stops_with_the_step_named_and_leaves_finite_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.max_epochs=1", "--data.init_args.n_samples=400", "--model.lr=1e4", "--model.lr_schedule=none"]
    with pytest.raises(
        NonFiniteLossError,
        match=r"stopping at step \d+ \(epoch 0\): the (loss diverged|loss is nan|loss \S+ is above loss_ceiling)",
    ) as e:
        _fit(*args)
    assert "last_finite.ckpt" in str(e.value)
    path = tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last_finite.ckpt"
    model = HDNNClassifier.load_from_checkpoint(path, weights_only=True)
    dm = Toy2DDataModule("swiss_roll", n_samples=400)
    dm.setup()
    with torch.no_grad():
        assert torch.isfinite(model(dm.test_set[0])).all()


def test_predict_writes_classes_probabilities_and_the_discretisation(trained_swiss_roll, capsys):
    config, ckpt = trained_swiss_roll
    c = cli(["predict", "--config", config, "--ckpt_path", ckpt, "--model.eval_integrator=rk4", *QUIET])
    out = capsys.readouterr().out
    path = Path(ckpt).parents[1] / "predict_0/predictions.csv"
    assert "predictions: outputs/swiss_roll_h1/version_0/predict_0/predictions.csv (rk4, 1 substep)" in out
    with open(path) as f:
        rows = list(csv.DictReader(f))
    x = c.datamodule.test_set[0]
    model = HDNNClassifier.load_from_checkpoint(ckpt, weights_only=True)
    model.hamiltonian_nets[0].set_integrator("rk4")
    with torch.no_grad():
        p1 = torch.sigmoid(model(x))
    assert len(rows) == len(x)
    assert {r["integrator"] for r in rows} == {"rk4"} and {r["substeps"] for r in rows} == {"1"}
    got = torch.tensor([float(r["p_1"]) for r in rows], dtype=p1.dtype)
    assert torch.allclose(got, p1, atol=1e-6)
    assert [int(r["class"]) for r in rows] == (p1 > 0.5).long().tolist()
    assert all(abs(float(r["p_0"]) + float(r["p_1"]) - 1) < 1e-5 for r in rows)


def test_help_lists_the_choices_and_every_argument_has_help(capsys):
    with pytest.raises(SystemExit):
        cli(["fit", "--help"])
    text = capsys.readouterr().out
    from hamode import list_architectures, list_integrators

    blocks = re.split(r"\n  (?=--)", text)
    ours = [b for b in blocks if b.startswith(("--model.", "--nan_guard.", "--predictions.", "--allow_"))]
    helps = {b.split()[0]: re.split(r"\s{2,}", b.strip(), maxsplit=1)[-1] for b in ours}
    system = ("net", "n_classes", "alpha", "optimizer", "lr", "lr_schedule", "eval_integrator", "eval_substeps")
    assert {f"--model.{name}" for name in system} <= set(helps), sorted(helps)
    undocumented = [name for name, text in helps.items() if text.startswith("(type")]
    assert not undocumented, undocumented
    flat = re.sub(r"\s+", "", text)
    for name in list_integrators():  # eval_integrator's help
        assert name in flat, name
    assert "{exponential,onecycle,cosine,none}" in flat
    # the models' own arguments: `hamode fit --model.net.help CLASS`
    for model, kind in (("MNISTHDNN", "dense"), ("Toy2DClassifier", "dense"), ("HamiltonianCNN", "image")):
        with pytest.raises(SystemExit):
            cli(["fit", "--model.net.help", f"hamode.models.{model}"])
        text = capsys.readouterr().out
        flat = re.sub(r"\s+", "", text)
        assert "{backprop,reversible,adjoint}" in flat and "{tanh,relu,sigmoid}" in flat
        image = {"ConvH1_J1", "ConvH1_J2", "ConvH2"}
        names = [a for a in list_architectures() if (a in image) == (kind == "image")]
        for name in [*names, *list_integrators()]:
            assert name in flat, (model, name)
        blocks = [b for b in re.split(r"\n  (?=--)", text) if b.startswith("--model.net.")]
        assert len(blocks) >= 12, (model, len(blocks))
        helps = {b.split()[0]: re.split(r"\s{2,}", b.strip(), maxsplit=1)[-1] for b in blocks}
        undocumented = [name for name, help_text in helps.items() if help_text.startswith("(type")]
        assert not undocumented, (model, undocumented)
    with pytest.raises(SystemExit):
        cli(["fit", "--config", SWISS, "--model.net.init_args.gradient=sideways"])


def test_the_hamode_command_trains_without_lightning_tips_or_known_warnings(tmp_path):
    exe = Path(sys.executable).parent / "hamode"
    cmd = [str(exe), "fit", "--config", SWISS, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", *QUIET]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout + done.stderr
    assert "Tip" not in text and "LeafSpec" not in text and "args parameter is intended" not in text
    assert (tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt").is_file()


def _raw_links(src: str, dst: Path, skip: str | None = None) -> Path:
    """A data_dir whose raw files are symlinks to the real (verified) ones, except ``skip``."""
    from hamode.data.mnist import MNIST_FILES, raw_dir

    raw_dir(dst).mkdir(parents=True)
    for name in MNIST_FILES:
        if name != skip:
            (raw_dir(dst) / name).symlink_to(raw_dir(src) / name)
    return dst


def test_a_stale_processed_cache_does_not_change_the_training_images(mnist_dir, tmp_path, caplog):
    from lightning_modules import MNISTDataModule

    data = _raw_links(mnist_dir, tmp_path / "d")
    processed = data / "MNIST/processed"
    processed.mkdir()
    zeros = (torch.zeros(60000, 28, 28, dtype=torch.uint8), torch.zeros(60000, dtype=torch.long))
    torch.save(zeros, processed / "training.pt")  # what torchvision < 0.9 left behind (and newer ones prefer)
    torch.save((zeros[0][:10000], zeros[1][:10000]), processed / "test.pt")
    dm = MNISTDataModule(data_dir=str(data), val_split=0)
    with caplog.at_level("WARNING", logger="hamode.data.mnist"):
        dm.setup()
    assert "ignoring" in caplog.text and "processed" in caplog.text
    x, y = dm.train_set
    assert x.std() > 0.5 and len(set(y.tolist())) == 10
    from hamode.data.mnist import read_mnist

    (images, labels), _ = read_mnist(mnist_dir)
    assert torch.equal(
        y, torch.from_numpy(labels.astype("int64"))[torch.randperm(60000, generator=torch.Generator().manual_seed(0))]
    )
    assert int(images[0].sum()) > 0


def test_interrupted_fetches_leave_no_temporary_files(mnist_dir, tmp_path, monkeypatch, caplog):
    from hamode.data import mnist

    data = _raw_links(mnist_dir, tmp_path / "d")
    raw = mnist.raw_dir(data)
    (raw / ".hamode-train-images-idx3-ubyte.x1y2").write_bytes(b"half a file")  # a killed process's leftovers
    (raw / ".hamode-download.abc").mkdir()
    with caplog.at_level("WARNING", logger="hamode.data.mnist"):
        mnist.obtain_mnist(data, use_torchvision=False)
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist.MNIST_FILES)
    assert "left by an interrupted fetch" in caplog.text
    # an interrupt while a file is written removes its temporary
    target = tmp_path / "w"
    target.mkdir()

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist._atomic_write(target / "f", b"data", None)
    assert list(target.iterdir()) == []


def test_the_wheel_fallback_checks_its_sha256_and_logs_the_repair(mnist_dir, tmp_path, caplog):
    import gzip
    import zipfile

    from hamode.data import mnist

    data = _raw_links(mnist_dir, tmp_path / "d", skip="train-labels-idx1-ubyte")
    (mnist.raw_dir(data) / "train-labels-idx1-ubyte").write_bytes(b"corrupt")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / mnist.WHEEL_FILE, "w") as z:  # a crafted wheel under the right name
        z.writestr(mnist.WHEEL_MEMBER, gzip.compress(b"not mnist"))
    with (
        caplog.at_level("WARNING", logger="hamode.data.mnist"),
        pytest.raises(mnist.MNISTError, match=rf"has SHA-256 [0-9a-f]{{64}}, expected {mnist.WHEEL_SHA256}"),
    ):
        mnist.obtain_mnist(data, use_torchvision=False, wheel_dir=wheels)
    assert "removing corrupt" in caplog.text and "train-labels-idx1-ubyte" in caplog.text
    assert not (mnist.raw_dir(data) / "train-labels-idx1-ubyte").exists()  # never read, never kept


def test_decompression_is_capped():
    import gzip

    from hamode.data.mnist import MNISTError, gunzip_limited

    bomb = gzip.compress(bytes(50 << 20))  # 50 MB of zeros in ~50 kB
    assert len(bomb) < 100_000
    with pytest.raises(MNISTError, match="decompresses to more than 1048576 bytes"):
        gunzip_limited(bomb, 1 << 20)
    assert gunzip_limited(gzip.compress(b"abc"), 3) == b"abc"
    with pytest.raises(MNISTError, match="truncated"):
        gunzip_limited(gzip.compress(b"abcdef" * 100)[:-12], 10_000)


def test_last_ckpt_is_written_at_the_batch_boundary_after_a_sigint(tmp_path):
    """A real SIGINT in the middle of training: the batch finishes, last.ckpt holds its state, and the fit ends
    with TrainingInterrupted (exit status 130); a crash that is not a signal writes no last.ckpt."""
    import signal

    from lightning_modules import LastCheckpoint, TrainingInterrupted

    class Interrupt(L.Callback):
        def on_before_optimizer_step(self, trainer, *a):
            if trainer.global_step == 7:
                os.kill(os.getpid(), signal.SIGINT)  # in the middle of step 8: it is finished first

    L.seed_everything(0)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[Interrupt(), LastCheckpoint(dirpath=tmp_path)])
    with pytest.raises(TrainingInterrupted) as e:
        trainer.fit(_toy(), Toy2DDataModule("double_moons", n_samples=600, batch_size=50))
    assert e.value.code == 130 and e.value.step == 8
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 3:
                raise _Crash

    trainer = _trainer(tmp_path / "crash", max_epochs=3, callbacks=[Crash(), LastCheckpoint(dirpath=tmp_path / "c")])
    with pytest.raises(_Crash):
        trainer.fit(_toy(), Toy2DDataModule("double_moons", n_samples=600, batch_size=50))
    assert not (tmp_path / "c/last.ckpt").exists()


def test_tensorboard_logger_and_rich_progress_bar_extras(tmp_path, monkeypatch):
    """`pip install -e '.[tensorboard,rich]'` (the dev extras include both): the CLI trains with either."""
    monkeypatch.chdir(tmp_path)
    logger = (
        '{"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "tb", "name": "run"}}'
    )
    cli(
        [
            "fit",
            "--config",
            SWISS,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            f"--trainer.logger={logger}",
            "--trainer.callbacks+=lightning.pytorch.callbacks.RichProgressBar",
            "--trainer.enable_model_summary=false",
        ]
    )
    run = tmp_path / "tb/run/version_0"
    assert list(run.glob("events.out.tfevents.*")) and (run / "checkpoints/last.ckpt").is_file()


def test_the_hamode_command_has_a_version_and_lists_compare_in_its_help(tmp_path):
    import hamode

    exe = str(Path(sys.executable).parent / "hamode")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"hamode {hamode.__version__}"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    listed = done.stdout.split("Available subcommands:")[1]
    assert re.search(r"\n\s+compare\s+Train one config under several integrators", listed)
    for name in ("fit", "validate", "test", "predict"):
        assert re.search(rf"\n\s+{name}\s+\w", listed), name
