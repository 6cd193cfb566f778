"""The injected model: one training system for the per-pixel net, the Hamiltonian CNN, the ResNet baseline, the
2-D classifier and a user's own module; old configs refused with the upgrade; the image models."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import Batches
from torch import nn

from hamode import HamiltonianNet
from hamode.architectures import architecture_info
from hamode.models import (
    MNISTHDNN,
    HamiltonianCNN,
    ResidualCNN,
    Toy2DClassifier,
    channels_last,
    hamiltonian_inputs,
    hamiltonian_nets,
)
from lightning_modules import HDNNClassifier, Toy2DDataModule
from lightning_modules.cli import cli
from lightning_modules.module import upgrade_model_config

pytestmark = pytest.mark.cpu_only

ROOT = Path(__file__).resolve().parents[1]
CONV = str(ROOT / "configs/mnist_conv_h2.yaml")
SWISS = str(ROOT / "configs/swiss_roll_h1.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])


def _trainer(tmp_path, **kw):
    args = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**args, **kw})


class Images(L.LightningDataModule):
    """Random 8x8 one-channel images, 3 classes (the CNN tests need no MNIST)."""

    n_classes = 3

    def __init__(self, n: int = 48) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def train_dataloader(self):
        return Batches([(self.x[i : i + 16], self.y[i : i + 16]) for i in range(0, len(self.x), 16)])

    val_dataloader = test_dataloader = train_dataloader


# ------------------------------------------------------------ one system, any model
@pytest.mark.parametrize(
    "make",
    [
        lambda: HamiltonianCNN(n_classes=3, channels=(4, 8), layers=(2, 1), h=0.3),
        lambda: HamiltonianCNN(n_classes=3, channels=(4,), layers=(2,), architecture="ConvH1_J1", integrator="euler"),
        lambda: ResidualCNN(n_classes=3, channels=(4, 8), layers=(2, 1)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),  # a user's own module
    ],
    ids=["ConvH2-CNN", "ConvH1-CNN", "ResidualCNN", "user-module"],
)
def test_the_same_system_trains_every_model_and_checkpoints_it(make, tmp_path):
    L.seed_everything(0)
    net = make()
    before = [p.detach().clone() for p in net.parameters()]
    model = HDNNClassifier(net=net, lr=0.01, lr_schedule="none")
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, Images())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    x = Images().x[:5]
    if isinstance(net, nn.Sequential):  # a user's module: the checkpoint cannot know how to build it
        with pytest.raises(ValueError, match=r"has no net config .*load_from_checkpoint\(path, net="):
            HDNNClassifier.load_from_checkpoint(path, weights_only=True)
        loaded = HDNNClassifier.load_from_checkpoint(path, weights_only=True, net=make())
    else:  # hamode's models record their arguments: the checkpoint rebuilds the same net
        loaded = HDNNClassifier.load_from_checkpoint(path, weights_only=True)
        assert type(loaded.net) is type(net)
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_eval_integrator_acts_on_every_stage_of_a_cnn(tmp_path):
    net = HamiltonianCNN(n_classes=3, channels=(4, 6), layers=(1, 2), h=0.2)
    model = HDNNClassifier(net=net, eval_integrator="leapfrog", eval_substeps=2)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *a):
            seen.append(("train", *[(n.integrator_name, n.substeps) for n in pl_module.hamiltonian_nets]))

        def on_validation_batch_start(self, trainer, pl_module, *a):
            seen.append(("val", *[(n.integrator_name, n.substeps) for n in pl_module.hamiltonian_nets]))

    _trainer(tmp_path, max_epochs=1, callbacks=[Spy()]).fit(model, Images())
    assert {s for s in seen if s[0] == "train"} == {("train", ("symplectic_euler", 1), ("symplectic_euler", 1))}
    assert {s for s in seen if s[0] == "val"} == {("val", ("leapfrog", 2), ("leapfrog", 2))}


def test_eval_integrator_on_a_net_without_a_hamiltonian_net_is_refused():
    with pytest.raises(ValueError, match=r"eval_integrator='rk4'.*Sequential holds no hamode.HamiltonianNet"):
        HDNNClassifier(net=nn.Sequential(nn.Linear(2, 2)), eval_integrator="rk4")


def test_a_net_is_required_and_the_classes_must_match_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"net must be an nn.Module .*got None.*class_path: hamode.models.MNISTHDNN"):
        HDNNClassifier()
    with pytest.raises(ValueError, match=r"n_classes must be an int >= 2 or None, got 1"):
        HDNNClassifier(net=nn.Linear(2, 2), n_classes=1)
    model = HDNNClassifier(net=HamiltonianCNN(n_classes=10, channels=(4,), layers=(1,)))
    with pytest.raises(ValueError, match=r"HamiltonianCNN has 10 classes but the data module Images has 3"):
        _trainer(tmp_path, max_epochs=1).fit(model, Images())
    unknown = HDNNClassifier(net=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    assert unknown.n_classes is None
    _trainer(tmp_path, max_steps=1).fit(unknown, Images())  # from the data module
    assert unknown.n_classes == 3


def test_regulariser_is_the_nets_own_or_the_sum_over_its_hamiltonian_nets():
    cnn = HamiltonianCNN(channels=(4, 6), layers=(3, 2), init="normal")
    model = HDNNClassifier(net=cnn, alpha=0.1)
    expected = sum(net.regularization(0.1) for net in cnn.stages)
    assert torch.equal(model.regularization(), expected) and expected > 0

    class Wrapped(nn.Module):  # no regularization method: the system sums over the Hamiltonian nets it finds
        def __init__(self):
            super().__init__()
            self.inner = cnn

        def forward(self, x):
            return self.inner(x)

    assert torch.equal(HDNNClassifier(net=Wrapped(), alpha=0.1).regularization(), expected)


def test_optimizer_groups_split_the_hamiltonian_weights(tmp_path):
    cnn = HamiltonianCNN(n_classes=3, channels=(4, 6), layers=(1, 1))
    model = HDNNClassifier(net=cnn, weight_decay=0.1, hdnn_weight_decay=0.0, lr_schedule="none")
    model.trainer = _trainer(tmp_path)
    opt = model.configure_optimizers()
    rest, hdnn = opt.param_groups
    assert {id(p) for p in hdnn["params"]} == {id(p) for n in cnn.stages for p in n.parameters()}
    assert rest["weight_decay"] == 0.1 and hdnn["weight_decay"] == 0.0
    assert len(rest["params"]) + len(hdnn["params"]) == len(list(cnn.parameters()))


# ------------------------------------------------------------ configs and the command line
@pytest.mark.parametrize("name", ["mnist_conv_h2", "mnist_conv_h1"])
def test_conv_configs_build_a_hamiltonian_cnn(name, tmp_path):
    c = cli(["--config", str(ROOT / f"configs/{name}.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(c.model.net, HamiltonianCNN) and len(c.model.hamiltonian_nets) == 3
    expected = yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())["model"]["net"]["init_args"]
    assert {n.integrator_name for n in c.model.hamiltonian_nets} == {expected["integrator"]}
    field_class = architecture_info(expected["architecture"]).field_class
    assert all(isinstance(n.field, field_class) for n in c.model.hamiltonian_nets)


def test_the_hamode_command_runs_the_conv_config_on_real_mnist(tmp_path, mnist_dir):
    """`hamode fit --config configs/mnist_conv_h2.yaml --trainer.fast_dev_run=true` on the real MNIST files."""
    exe = Path(sys.executable).parent / "hamode"
    cmd = [str(exe), "fit", "--config", CONV, "--trainer.fast_dev_run=true", f"--data.data_dir={mnist_dir}", *QUIET]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_cnn_integrator_override_from_the_command_line(tmp_path):
    args = ["--config", CONV, "--model.net.init_args.integrator=leapfrog", "--model.net.init_args.substeps=2"]
    c = cli([*args, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert {(n.integrator_name, n.substeps) for n in c.model.hamiltonian_nets} == {("leapfrog", 2)}
    with pytest.raises(ValueError, match=r"architecture 'H2' acts on \(\.\.\., dim\) states.*ConvH1_J1, ConvH1_J2"):
        cli(["--config", CONV, "--model.net.init_args.architecture=H2"], run=False)


def _old_config(tmp_path) -> Path:
    import subprocess as sp

    old = sp.run(["git", "show", "1260b44:configs/swiss_roll_h1.yaml"], cwd=ROOT, capture_output=True, text=True)
    text = old.stdout if old.returncode == 0 else None
    if text is None:  # a shallow clone without that commit: the same config written out
        text = (
            "model:\n  task: toy2d\n  architecture: H1_J1\n  dim: 4\n  n_layers: 16\n  h: 0.4\n  integrator: euler\n"
            "  alpha: 0.0005\n  lr: 0.05\n  weight_decay: 0.0001\n  lr_schedule: none\n  head: logit\n"
            "data:\n  class_path: lightning_modules.Toy2DDataModule\n  init_args: {dataset: swiss_roll}\n"
        )
    path = tmp_path / "old.yaml"
    path.write_text(text)
    return path


def test_an_old_config_is_refused_with_its_upgrade_which_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    old = _old_config(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli(["fit", "--config", str(old)])
    message = str(e.value)
    assert "model.task is gone" in message and "class_path: hamode.models.Toy2DClassifier" in message
    block = yaml.safe_load(message.split("Replace its model: block by\n\n", 1)[1].split("\n(on the command line")[0])
    loaded = yaml.safe_load(old.read_text())
    loaded["model"] = block["model"]
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(loaded))
    c = cli(["fit", "--config", str(new), "--trainer.fast_dev_run=true", *QUIET])
    assert c.trainer.state.finished
    assert isinstance(c.model.net, Toy2DClassifier) and c.model.discretisation() == ("euler", 1)
    assert isinstance(c.model.net.net.field, architecture_info("H1_J1").field_class)
    assert c.model.net.head_kind == "logit"


def test_old_flags_are_refused_with_the_new_ones():
    with pytest.raises(
        SystemExit, match=r"--model.integrator is a hamode <= 0.2 flag.*--model.net.init_args.integrator"
    ):
        cli(["fit", "--config", SWISS, "--model.integrator=rk4"])
    with pytest.raises(SystemExit, match=r"--model.task is a hamode <= 0.2 flag"):
        cli(["fit", "--config", SWISS, "--model.task=mnist"])


def test_upgrade_model_config_maps_mnist_dim_to_channels():
    old = {"task": "mnist", "architecture": "H2", "dim": 16, "width": 8, "n_layers": 4, "h": 0.5, "lr": 0.01}
    assert upgrade_model_config(old) == {
        "net": {
            "class_path": "hamode.models.MNISTHDNN",
            "init_args": {"architecture": "H2", "channels": 16, "n_layers": 4, "h": 0.5, "width": 8},
        },
        "lr": 0.01,
    }
    with pytest.raises(ValueError, match=r"task must be 'mnist' or 'toy2d'.*got 'cifar'"):
        upgrade_model_config({"task": "cifar"})


def test_an_old_checkpoint_is_refused_by_name(tmp_path):
    old = {"hyper_parameters": {"task": "toy2d", "architecture": "H2", "lr": 0.02}, "state_dict": {}}
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with pytest.raises(SystemExit, match=r"written by hamode <= 0.2 \(model.task='toy2d'\)"):
        cli(["test", "--config", SWISS, "--ckpt_path", str(path)])


def test_a_changed_cnn_is_refused_when_resuming(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--config", SWISS, *QUIET]
    cli(["fit", *base, "--trainer.max_epochs=1", "--data.init_args.n_samples=400"])
    ckpt = "outputs/swiss_roll_h1/version_0/checkpoints/last.ckpt"
    changed = ["fit", *base, "--ckpt_path", ckpt, "--model.net.init_args.n_layers=8", "--trainer.max_epochs=2"]
    with pytest.raises(SystemExit, match=r"model.net.init_args.n_layers: asked 8, checkpoint 16"):
        cli([*changed, "--data.init_args.n_samples=400"])


# ------------------------------------------------------------ the image models
def test_hamiltonian_cnn_shapes_stages_and_transitions():
    cnn = HamiltonianCNN(in_channels=3, n_classes=5, channels=(4, 6, 8), layers=(1, 2, 1), stem_stride=2)
    assert cnn(torch.randn(2, 3, 20, 24)).shape == (2, 5)
    assert cnn.features(torch.randn(2, 3, 20, 24)).shape == (2, 8, 3, 3)  # 20x24 -> 10x12 -> 5x6 -> 3x3
    assert [n.n_layers for n in hamiltonian_nets(cnn)] == [1, 2, 1]
    assert all(isinstance(n, HamiltonianNet) for n in cnn.stages)
    plain = HamiltonianCNN(channels=(4,), layers=(1,), norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with pytest.raises(ValueError, match=r"stem_stride must be 1 or 2, got 3"):
        HamiltonianCNN(stem_stride=3)
    with pytest.raises(ValueError, match=r"norm must be 'batch' or 'none', got 'layer'"):
        HamiltonianCNN(norm="layer")


def test_residual_cnn_is_the_same_frame_without_hamiltonian_stages():
    kw = dict(n_classes=4, channels=(4, 8), layers=(2, 3))
    res, ham = ResidualCNN(**kw), HamiltonianCNN(**kw)
    assert not hamiltonian_nets(res)
    assert res(torch.randn(3, 1, 12, 12)).shape == (3, 4)
    assert [len(s.inner) for s in res.stages] == [2, 3]
    assert type(res.stem) is type(ham.stem) and len(res.transitions) == len(ham.transitions) == 1
    block = res.stages[0]
    y = torch.randn(2, 4, 6, 6)
    expected = y
    for k1, k2 in zip(block.inner, block.outer):
        expected = expected + block.h * k2(torch.tanh(k1(expected)))
    assert torch.allclose(block(y), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"kernel_size must be an odd int >= 1, got 2"):
        ResidualCNN(kernel_size=2)
    with pytest.raises(ValueError, match=r"h must be a finite number > 0, got 0"):
        ResidualCNN(h=0)


def test_hamiltonian_inputs_are_the_states_each_stage_receives():
    cnn = HamiltonianCNN(channels=(4, 6), layers=(1, 1)).eval()
    x = torch.randn(2, 1, 8, 8)
    found = hamiltonian_inputs(cnn, x)
    assert [net for net, _ in found] == list(cnn.stages)
    y0 = cnn.stem(channels_last(x))  # the layout the model runs its stem in (its rounding differs from NCHW's)
    assert torch.equal(found[0][1], y0)
    assert torch.equal(found[1][1], cnn.transitions[0](cnn.stages[0](y0)))


def test_models_record_their_arguments_and_copy_and_pickle():
    cnn = HamiltonianCNN(channels=(4, 6), layers=(1, 2), integrator="leapfrog")
    assert cnn.init_config == {"class_path": "hamode.models.HamiltonianCNN", "init_args": cnn.init_config["init_args"]}
    assert (
        cnn.init_config["init_args"]["channels"] == [4, 6] and cnn.init_config["init_args"]["integrator"] == "leapfrog"
    )
    x = torch.randn(2, 1, 8, 8)
    cnn.eval()
    for other in (copy.deepcopy(cnn), pickle.loads(pickle.dumps(cnn))):
        assert torch.equal(other.eval()(x), cnn(x)) and other.init_config == cnn.init_config
    assert MNISTHDNN(channels=4, n_layers=0).init_config["init_args"]["n_layers"] == 0
    net = HamiltonianNet(Toy2DClassifier("H2", dim=4, n_layers=3, h=0.5).net.field, 1.5)
    assert torch.equal(copy.deepcopy(net)(torch.ones(1, 4)), net(torch.ones(1, 4)))


def test_sensitivity_monitor_logs_every_stage_of_a_cnn(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from lightning_modules import SensitivityMonitor

    L.seed_everything(0)
    net = HamiltonianCNN(n_classes=3, channels=(4, 6), layers=(2, 2), norm="none")
    model = HDNNClassifier(net=net, lr_schedule="none")
    logger = CSVLogger(tmp_path, name="s")
    monitor = SensitivityMonitor(every_n_steps=1, probe_size=2, layers=[0, 1], max_iter=30)
    _trainer(tmp_path, max_steps=2, logger=logger, callbacks=[monitor], log_every_n_steps=1).fit(model, Images())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for stage in (0, 1):
        values = [
            float(r[f"sensitivity/stage{stage}/min_norm"]) for r in rows if r.get(f"sensitivity/stage{stage}/min_norm")
        ]
        assert values and min(values) >= 1 - 1e-4  # ConvH2 + symplectic Euler: TAC's bound (Lanczos: from below)


def test_toy_data_into_a_cnn_is_refused_by_the_class_count(tmp_path):
    model = HDNNClassifier(net=HamiltonianCNN(channels=(4,), layers=(1,)))
    with pytest.raises(ValueError, match=r"10 classes but the data module Toy2DDataModule has 2"):
        _trainer(tmp_path, max_steps=1).fit(model, Toy2DDataModule("double_moons", n_samples=200))


def test_hamiltonian_cnn_with_a_continuous_solve_and_the_adjoint():
    """Every gradient mode reaches the CNN's stages: a tight dopri5 solve with the adjoint gives the gradients of
    backprop through the same solve (both approximate the flow's exact gradient to the solver tolerance)."""
    grads = {}
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for gradient in ("backprop", "adjoint"):
        torch.manual_seed(0)
        opts = {"rtol": 1e-9, "atol": 1e-9}
        cnn = HamiltonianCNN(
            channels=(4,),
            layers=(2,),
            integrator="torchdiffeq:dopri5",
            gradient=gradient,
            norm="none",
            solver_options=opts,
        )
        cnn = cnn.to(torch.float64)
        grads[gradient] = torch.autograd.grad(cnn(x).square().sum(), list(cnn.stages.parameters()))
    for a, b in zip(grads["backprop"], grads["adjoint"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


def test_layer_sensitivity_is_exact_for_small_states_and_lanczos_for_images():
    from hamode import make_field
    from hamode.diagnostics import layer_sensitivity

    torch.manual_seed(0)
    field = make_field("ConvH2", dim=4, n_layers=3, init="normal").to(torch.float64)
    net = HamiltonianNet(field, 1.2, "symplectic_euler")
    y0 = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    exact = layer_sensitivity(net, y0, [0, 1, 2], exact_limit=36)
    lanczos = layer_sensitivity(net, y0, [0, 1, 2], exact_limit=35, max_iter=36, rtol=1e-12)
    assert exact["method"] == "exact" and lanczos["method"] == "lanczos"
    assert torch.allclose(exact["norm"], lanczos["norm"], rtol=1e-6)
    assert torch.allclose(exact["sigma_min"], lanczos["sigma_min"], rtol=1e-6)
    assert (exact["norm"] >= 1 - 1e-12).all()  # TAC: symplectic Euler on a separable field
    assert torch.allclose(exact["norm"] * exact["sigma_min"], torch.ones_like(exact["norm"]), rtol=1e-9)


def test_eval_substeps_zero_is_refused_not_ignored():
    with pytest.raises(ValueError, match=r"substeps must be >= 1, got 0"):
        HDNNClassifier(net=Toy2DClassifier("H2", dim=4, n_layers=2, h=0.5), eval_substeps=0)


def test_new_arguments_refuse_bad_values_by_name():
    from hamode import make_field
    from hamode.diagnostics import layer_sensitivity
    from lightning_modules import SensitivityMonitor

    with pytest.raises(ValueError, match=r"width must be >= 1, got 0"):
        ResidualCNN(width=0)
    net = HamiltonianNet(make_field("ConvH2", dim=4, n_layers=2), 0.4)
    with pytest.raises(ValueError, match=r"exact_limit must be >= 1, got 0"):
        layer_sensitivity(net, torch.randn(1, 4, 3, 3), exact_limit=0)
    with pytest.raises(ValueError, match=r"max_iter must be >= 1, got 0"):
        SensitivityMonitor(max_iter=0)


def test_compare_diagnostics_equal_the_direct_computation():
    """hamode compare's min norm and defect come from layer_sensitivity's matrices: the same numbers as the BSM."""
    from hamode.diagnostics import backward_sensitivity, symplecticity_defect
    from lightning_modules.compare import _diagnostics

    torch.manual_seed(0)
    model = HDNNClassifier(net=Toy2DClassifier("H2", dim=4, n_layers=3, h=0.5, init="normal").double())
    x = torch.randn(5, 2, dtype=torch.float64)
    found = _diagnostics(model, x)
    net = model.hamiltonian_nets[0]
    S = backward_sensitivity(net, model.net.embed(x))
    norms = torch.linalg.matrix_norm(S, ord=2)
    assert found["min_bsm_norm"] == pytest.approx(float(norms[:-1].min()), rel=1e-12)
    assert found["symplecticity_defect"] == pytest.approx(
        float(symplecticity_defect(S[0], net.field.J).max()), abs=1e-15
    )
    assert found["nfe_per_forward"] == 3


def test_the_net_argument_schema_refuses_what_it_does_not_hold():
    from hamode.models import NetArguments, build_net, takes_net_arguments

    with pytest.raises(TypeError, match="args must be a NetArguments, got dict"):
        build_net(4, {"architecture": "H2"})
    with pytest.raises(TypeError, match="takes_net_arguments: no net argument depth"):
        takes_net_arguments(depth=3)
    net = build_net(4, NetArguments(architecture="H2", n_layers=3, h=0.5))
    assert net.n_layers == 3 and net.integrator_name == "symplectic_euler"


def test_one_channel_images_run_the_stem_channels_last():
    # a one-channel NCHW batch "is" channels_last already (its channel stride is never used), so
    # contiguous(memory_format=channels_last) leaves its strides, and the convolution, which reads them, answers NCHW
    x = torch.randn(4, 1, 8, 8)
    assert x.contiguous(memory_format=torch.channels_last).stride() == (64, 64, 8, 1)
    view = channels_last(x)
    assert view.stride() == (64, 1, 8, 1) and view.data_ptr() == x.data_ptr() and torch.equal(view, x)
    cnn = HamiltonianCNN(channels=(4, 6), layers=(1, 1))
    assert cnn.stem(x).stride()[1] != 1  # NCHW
    seen = []
    cnn.stem.register_forward_hook(lambda module, args, out: seen.append(out.stride()))
    cnn(x)
    assert seen == [(256, 1, 32, 4)]  # (B, 4, 8, 8) channels_last
    rgb = torch.randn(2, 3, 5, 5)
    assert channels_last(rgb).stride() == (75, 1, 15, 3) and torch.equal(channels_last(rgb), rgb)
    sliced = torch.randn(2, 1, 8, 16)[..., ::2]  # not contiguous: copied
    assert channels_last(sliced).stride() == (64, 1, 8, 1) and torch.equal(channels_last(sliced), sliced)
    with pytest.raises(ValueError, match=r"channels_last: images must be \(B, C, H, W\), got shape \(1, 28, 28\)"):
        channels_last(torch.randn(1, 28, 28))


def test_the_per_pixel_state_is_the_convolutions_own_output():
    # the stem runs channels_last, so the (B, 28, 28, C) state is the convolution's output itself: no copy in the
    # forward, none of its gradient in the backward; the numbers are the NCHW convolution's to rounding
    torch.manual_seed(0)
    model = MNISTHDNN(channels=6, n_layers=2)
    x = torch.randn(3, 1, 28, 28)
    seen = []
    model.conv.register_forward_hook(lambda module, args, out: seen.append(out))
    y0 = model.embed(x)
    assert y0.shape == (3, 28, 28, 6) and y0.is_contiguous()
    assert y0.data_ptr() == seen[0].data_ptr()  # the same memory: .contiguous() had nothing to copy
    nchw = torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias, padding=1).permute(0, 2, 3, 1)
    assert torch.allclose(y0, nchw, atol=1e-6, rtol=1e-6)
