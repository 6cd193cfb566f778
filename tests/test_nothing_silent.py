"""Nothing reused, ignored or half-written: `hamode compare` reruns, evaluation batches, checkpoints after a
divergence, model defaults, discretisations changed behind the training system's back, declarations that lie,
non-finite arguments and user mistakes on the command line (one short message, exit status 2)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import QUIET, ROOT, run_hamode

import hamode
from hamode import models
from lightning_modules import HDNNClassifier, NonFiniteGuard, NonFiniteLossError, Toy2DDataModule
from lightning_modules.compare import main as compare

pytestmark = pytest.mark.cpu_only

SWISS = str(ROOT / "configs/swiss_roll_h1.yaml")
MOONS = str(ROOT / "configs/double_moons_h2.yaml")
SMALL = ["--data.init_args.n_samples=400", *QUIET]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])


def _trainer(**kw) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kw})


# ---------------------------------------------------------------- hamode compare
def test_compare_rerun_with_a_changed_setting_is_refused_then_redone(tmp_path, capsys):
    out = tmp_path / "X"
    base = ["--config", MOONS, "--integrators", "euler", "--seeds", "1", "--out", str(out), *SMALL]
    compare([*base, "--trainer.max_epochs=1"])
    assert json.loads((out / "euler-1/seed_0/result.json").read_text())["epochs"] == 1
    capsys.readouterr()
    refused = run_hamode("compare", *base, "--trainer.max_epochs=2", cwd=tmp_path)  # the real command
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "trainer.max_epochs: was 1, now 2" in refused.stderr and "--redo" in refused.stderr
    assert json.loads((out / "euler-1/seed_0/result.json").read_text())["epochs"] == 1  # nothing reported anew
    assert "--trainer.max_epochs=1" in (out / "summary.md").read_text()  # still headed by the command it holds
    compare([*base, "--trainer.max_epochs=2", "--redo"])
    assert json.loads((out / "euler-1/seed_0/result.json").read_text())["epochs"] == 2
    summary = (out / "summary.md").read_text()
    assert "--trainer.max_epochs=2" in summary
    capsys.readouterr()
    compare([*base, "--trainer.max_epochs=2"])  # the same command again: no work
    assert "done before" in capsys.readouterr().out


def test_compare_reports_under_the_evaluation_rule_and_the_epochs_trained(tmp_path):
    out = tmp_path / "E"
    args = ["--config", MOONS, "--integrators", "symplectic_euler", "--out", str(out), *SMALL]
    compare([*args, "--trainer.max_epochs=2", "--model.eval_integrator=leapfrog", "--model.eval_substeps=4"])
    result = json.loads((out / "symplectic_euler-1/seed_0/result.json").read_text())
    assert result["evaluated_with"] == "leapfrog x4" and result["epochs"] == 2
    assert 1 <= result["checkpoint_epoch"] <= 2
    assert "evaluated with leapfrog x4" in (out / "summary.md").read_text()


def test_compare_refuses_flags_that_do_not_apply_and_checks_every_discretisation_first(tmp_path):
    with pytest.raises(SystemExit, match="applies to adaptive torchdiffeq methods"):
        compare(["--config", SWISS, "--integrators", "euler,rk4", "--tolerances", "1e-3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--eval-tolerances .* applies to adaptive"):
        compare(["--config", SWISS, "--integrators", "euler", "--eval-tolerances", "1e-7", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="applies to fixed-step rules"):
        compare(["--config", SWISS, "--integrators", "torchdiffeq:dopri5", "--substeps", "1,4", "--out", str(tmp_path)])
    out = tmp_path / "L"
    with pytest.raises(SystemExit, match="leapfrog, seed 0 cannot run: integrator 'leapfrog' needs a separable"):
        compare(["--config", SWISS, "--integrators", "euler,leapfrog", "--out", str(out), *SMALL])
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("result.json"))  # nothing trained


# ---------------------------------------------------------------- evaluation batches
def test_evaluation_batch_size_is_the_training_one_unless_set_and_limits_count_it():
    dm = Toy2DDataModule(n_samples=400, batch_size=50)
    dm.setup()
    assert {len(x) for x, _ in dm.test_dataloader()} == {50}
    assert Toy2DDataModule(batch_size=50, eval_batch_size=7).eval_batch_size == 7
    net = HDNNClassifier(net=models.Toy2DClassifier(n_layers=2), lr=0.01)
    seen = []

    class Count(L.Callback):
        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(len(batch[0]))

    _trainer(limit_test_batches=2, callbacks=[Count()]).test(net, dm, verbose=False)
    assert seen == [50, 50]  # Lightning's limit counts batches of the size the data module says
    with pytest.raises(TypeError, match="num_workers"):
        from lightning_modules import MNISTDataModule

        MNISTDataModule(num_workers=4)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="eval_batch_size"):
            Toy2DDataModule(eval_batch_size=bad)
    with pytest.raises(ValueError, match="noise"):
        Toy2DDataModule(noise=float("nan"))


# ---------------------------------------------------------------- divergence
def test_after_a_forced_divergence_every_checkpoint_gives_finite_outputs(tmp_path):
    done = run_hamode(
        "fit", "--config", SWISS, "--model.lr=1e30", "--trainer.max_epochs=3", *SMALL, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "NonFiniteLossError" in done.stderr and "Traceback" not in done.stderr
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert any(c.name == NonFiniteGuard.FILENAME for c in checkpoints)
    x = torch.randn(64, 2)
    for path in checkpoints:
        model = HDNNClassifier.load_from_checkpoint(path)
        assert torch.isfinite(model(x)).all(), path.name
    tested = run_hamode("test", "--config", SWISS, "--ckpt_path", "best", *SMALL, cwd=tmp_path)
    assert tested.returncode == 2 and "no best.ckpt" in tested.stderr  # nothing diverged was kept as best


def test_a_checkpoint_with_non_finite_weights_is_refused_by_the_command(tmp_path):
    dm = Toy2DDataModule(n_samples=200)
    model = HDNNClassifier(net=models.Toy2DClassifier(n_layers=2), lr=0.01)
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, dm)
    with torch.no_grad():
        model.net.head.weight.fill_(float("nan"))
    path = tmp_path / "nan.ckpt"
    trainer.save_checkpoint(path)
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  net:\n    class_path: hamode.models.Toy2DClassifier\n    init_args: {n_layers: 2}\n"
        "data:\n  class_path: lightning_modules.Toy2DDataModule\n  init_args: {n_samples: 200}\n"
        "trainer: {logger: false}\n"
    )
    done = run_hamode("test", "--config", str(config), "--ckpt_path", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "holds weights that are not finite (net.head.weight)" in done.stderr


def test_the_guard_stops_on_an_absolute_loss_ceiling_and_at_chance():
    dm = Toy2DDataModule(n_samples=400)
    huge = HDNNClassifier(net=models.Toy2DClassifier(n_layers=4, h=1e6), lr=0.01)
    with pytest.raises(NonFiniteLossError, match="above loss_ceiling 1000"):
        _trainer(max_epochs=3, callbacks=[NonFiniteGuard(keep_finite=False)]).fit(huge, dm)

    class Constant(torch.nn.Module):  # confidently wrong: every point in class 1 with logit 5
        n_classes = 2

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return 5.0 + 0 * self.w + 0 * x[:, 0]

    stuck = HDNNClassifier(net=Constant(), lr=0.01, alpha=0.0)
    guard = NonFiniteGuard(keep_finite=False, chance_patience=2)
    with pytest.raises(NonFiniteLossError, match=r"stuck at chance.*for 2 validation epochs"):
        _trainer(max_epochs=5, callbacks=[guard]).fit(stuck, Toy2DDataModule(n_samples=400, val_fraction=0.5))
    for bad in (dict(loss_ceiling=0), dict(loss_ceiling=math.inf), dict(chance_patience=0), dict(keep_finite=1)):
        with pytest.raises(ValueError):
            NonFiniteGuard(**bad)


def test_an_adaptive_solve_stops_with_a_message_instead_of_running_on():
    net = models.Toy2DClassifier(n_layers=2, h=1000.0, integrator="torchdiffeq:dopri5")
    for hnet in models.hamiltonian_nets(net):
        hnet.solver_options = {"max_num_steps": 50}
        hnet.set_integrator("torchdiffeq:dopri5")
    with pytest.raises(hamode.engines.ContinuousSolveError, match=r"max_num_steps exceeded.*smaller h"):
        net(3 * torch.randn(8, 2))
    assert hamode.engines.MAX_NUM_STEPS == 10_000  # the default bound when no max_num_steps is given


# ---------------------------------------------------------------- models
@pytest.mark.parametrize(
    "name", sorted(set(models.__all__) & {"Toy2DClassifier", "MNISTHDNN", "HamiltonianCNN", "ResidualCNN"})
)
def test_every_model_builds_with_its_defaults(name):
    model = getattr(models, name)()
    x = torch.randn(2, 2) if name == "Toy2DClassifier" else torch.randn(2, 1, 28, 28)
    assert torch.isfinite(model(x)).all()


def test_every_model_class_in_hamode_models_is_covered_above():
    classes = {n for n in models.__all__ if isinstance(getattr(models, n), type)}
    built = {"Toy2DClassifier", "MNISTHDNN", "HamiltonianCNN", "ResidualCNN"}
    frames = {"RecordsInitArgs", "SetsIntegrator", "StagedCNN", "ResidualBlocks", "NetArguments"}
    assert classes - frames == built


def test_models_set_their_integrator_in_one_call_and_record_it():
    cnn = models.HamiltonianCNN(channels=(4, 8), layers=(1, 1))
    cnn.set_integrator("leapfrog", substeps=2)
    assert cnn.discretisation == ("leapfrog", 2) and {n.integrator_name for n in cnn.stages} == {"leapfrog"}
    assert cnn.init_config["init_args"]["integrator"] == "leapfrog" and cnn.init_config["init_args"]["substeps"] == 2
    toy = models.Toy2DClassifier()
    with pytest.raises(ValueError, match="needs a separable field"):
        toy.set_integrator("leapfrog")
    assert toy.discretisation == ("euler", 1)  # a refused call changes nothing
    with pytest.raises(ValueError, match=r"holds no hamode.HamiltonianNet"):
        models.MNISTHDNN(n_layers=0).set_integrator("euler")
    assert not hasattr(models.ResidualCNN(), "set_integrator")


def test_toy_classifier_heads_fit_their_losses():
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    logit = models.Toy2DClassifier()(x)
    assert logit.shape == (6,) and torch.isfinite(F.binary_cross_entropy_with_logits(logit, y.float()))
    assert torch.isfinite(F.cross_entropy(models.Toy2DClassifier(head="softmax")(x), y))
    assert "binary_cross_entropy_with_logits" in models.Toy2DClassifier.__doc__


# ---------------------------------------------------------------- the system keeps the net it was handed
def test_a_net_changed_before_hand_over_is_recorded_as_it_runs(tmp_path):
    net = models.Toy2DClassifier(n_layers=4)
    net.net.set_integrator("rk4", substeps=2)  # on the inner net, not through the model
    clf = HDNNClassifier(net=net, lr=0.01)
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(clf, Toy2DDataModule(n_samples=200))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = HDNNClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    x = torch.randn(16, 2)
    assert again.discretisation() == ("rk4", 2)
    assert torch.equal(again(x), clf(x))


def test_a_net_changed_behind_the_systems_back_is_refused_not_undone():
    clf = HDNNClassifier(net=models.Toy2DClassifier(n_layers=4), lr=0.01)
    clf.net.net.set_integrator("rk4")
    with pytest.raises(RuntimeError, match="changed after it was handed to HDNNClassifier"):
        _trainer(max_epochs=1, limit_train_batches=2).fit(clf, Toy2DDataModule(n_samples=200))


def test_an_evaluation_rule_never_leaks_into_training():
    clf = HDNNClassifier(net=models.Toy2DClassifier(n_layers=4), lr=0.01, eval_integrator="rk4")
    dm = Toy2DDataModule(n_samples=200, batch_size=20)
    _trainer(limit_test_batches=1).test(clf, dm, verbose=False)
    assert clf.discretisation() == ("euler", 1)
    seen = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(module.discretisation())

    _trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, callbacks=[Watch()]).fit(clf, dm)
    assert seen == [("euler", 1)] * 2


def test_class_counts_are_checked_against_the_data():
    clf = HDNNClassifier(net=models.Toy2DClassifier(n_layers=2), n_classes=3)
    with pytest.raises(ValueError, match="n_classes=3 was given, but the data module Toy2DDataModule has 2"):
        _trainer(max_epochs=1).fit(clf, Toy2DDataModule(n_samples=200))


# ---------------------------------------------------------------- declarations and values
def test_a_declaration_that_lies_is_refused_at_registration():
    class BackwardEuler(hamode.ImplicitRungeKutta):
        """Backward Euler: not symmetric, so not reversible. Order 1."""

        order = 1
        a = ((1.0,),)
        b = (1.0,)
        c = (1.0,)
        symplectic = False
        reversible = True

    class ClaimsOrder4(hamode.SplittingMethod):
        """Leapfrog. Order 2."""

        order = 4
        coefficients = ((0.5, 1.0), (0.5, 0.0))

    class ClaimsSymplectic(hamode.RungeKutta):
        """Heun. Order 2."""

        order = 2
        a = ((), (1.0,))
        b = (0.5, 0.5)
        symplectic = True

    for cls, what in (
        (BackwardEuler, "reversible = True"),
        (ClaimsOrder4, "order = 4"),
        (ClaimsSymplectic, "symplectic = True"),
    ):
        with pytest.raises(ValueError, match=f"declares {what}"):
            hamode.register_integrator("_liar")(cls)
        assert "_liar" not in hamode.list_integrators()
    hamode.register_integrator("_liar", check=False)(ClaimsOrder4)  # the user's call, explicitly
    hamode.integrators.unregister_integrator("_liar")


def test_non_finite_and_non_numeric_values_are_refused():
    J = torch.tensor([[0.0, math.nan], [-math.nan, 0.0]])
    with pytest.raises(ValueError, match="J must be finite"):
        hamode.H1Field(dim=2, n_layers=1, J=J)
    with pytest.raises(ValueError, match="rtol"):
        hamode.GaussLegendre4(rtol=True)
    for h in (math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match="h must be"):
            models.ResidualCNN(h=h)
        with pytest.raises(ValueError, match="h must be"):
            models.Toy2DClassifier(h=h)
    with pytest.raises(ValueError, match="t_end must be"):
        models.Toy2DClassifier(t_end=math.inf)
    with pytest.raises(TypeError, match="rtol"):
        hamode.HamiltonianNet(
            hamode.make_field("H2", dim=2, n_layers=1), 1.0, "torchdiffeq:dopri5", solver_options={"rtol": math.inf}
        )


# ---------------------------------------------------------------- the command line
def _short(done: subprocess.CompletedProcess, status: int = 2) -> str:
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("hamode") or ln.startswith("(")]
    assert 1 <= len(lines) <= 4, done.stderr
    return done.stderr


def test_user_mistakes_are_one_short_message_with_status_2(tmp_path):
    bad_rule = run_hamode("fit", "--config", SWISS, "--model.net.init_args.integrator=leap_frog", cwd=tmp_path)
    text = _short(bad_rule)
    assert "unknown integrator 'leap_frog'; valid:" in text and "leapfrog" in text
    assert "given by --model.net.init_args.integrator=leap_frog" in text
    debug = run_hamode("fit", "--config", SWISS, "--model.net.init_args.integrator=leap_frog", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    eval_rule = run_hamode("test", "--config", SWISS, "--model.eval_integrator=rk5", cwd=tmp_path)
    assert "unknown integrator 'rk5'" in _short(eval_rule)
    dup = tmp_path / "dup.yaml"
    dup.write_text("model:\n  lr: 0.1\n  alpha: 0.0\n  lr: 0.01\n")
    dup_keys = run_hamode("fit", "--config", SWISS, "--config", str(dup), cwd=tmp_path)
    assert "the key 'lr' is given twice in one block of the config (lines 2 and 4)" in _short(dup_keys)
    classes = run_hamode(
        "fit", "--config", SWISS, "--model.n_classes=3", "--trainer.max_epochs=1", *SMALL, cwd=tmp_path
    )
    assert "n_classes=3 was given" in _short(classes)


def test_ckpt_path_best_says_what_it_picked(tmp_path):
    done = run_hamode("fit", "--config", SWISS, "--trainer.max_epochs=1", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    tested = run_hamode("test", "--config", SWISS, "--ckpt_path", "best", *SMALL, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-2000:]
    picked = "--ckpt_path best is outputs/swiss_roll_h1/version_0/checkpoints/best.ckpt (epoch 0, best val/acc of"
    assert picked in tested.stdout
    helped = run_hamode("test", "--help", cwd=tmp_path)
    assert "NEWEST run of this config" in " ".join(helped.stdout.split())


def test_without_the_training_extra_the_message_says_how_to_install_it():
    code = "import sys; sys.modules['lightning'] = None; from lightning_modules.main import main; main(['fit'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "pip install 'hamode[train]'" in done.stderr
