"""The experiment scripts run end to end at tiny sizes and write what they promise."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cpu_only  # the configs and scripts train on the CPU (accelerator: cpu)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    if str(SCRIPTS) not in sys.path:  # the scripts import their _common
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f))


def test_table1_runs_resumes_and_scores(tmp_path, capsys):
    script = load("reproduce_l4dc_table1")
    args = ["--out", str(tmp_path), "--seeds", "1", "--epochs", "1", "--rows", "double_moons:1"]
    args += ["--architectures", "H1_J1", "H2"]
    script.main(args)
    runs = read_csv(tmp_path / "runs.csv")
    assert [r[2] for r in runs[1:]] == ["H1_J1", "H2"]
    assert (tmp_path / "table1.png").stat().st_size > 0
    assert "Cells meeting the published value (mean, to 0.1 %): " in (tmp_path / "table1.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))  # every file is written through a temporary one, then renamed
    # a second invocation reuses the stored runs instead of training again
    script.run_one = lambda *a, **k: pytest.fail("retrained a stored run")
    script.main(args)
    assert read_csv(tmp_path / "runs.csv") == runs
    with pytest.raises(SystemExit):
        script.main(["--rows", "swiss_roll:5"])
    assert "row must be one of" in capsys.readouterr().err


def test_distributed_h2_locality(tmp_path):
    script = load("distributed_h2")
    script.main(["--out", str(tmp_path), "--layers", "2", "--epochs", "1", "--seeds", "1", "--datasets", "swiss_roll"])
    rows = {r[1]: r for r in read_csv(tmp_path / "distributed_h2.csv")[1:]}
    # the ring net's Jacobians vanish exactly outside the ring pattern; the fully connected one's do not
    assert float(rows["sparse"][5]) == 0.0 and float(rows["sparse"][6]) == 0.0
    assert float(rows["full"][5]) > 0 and float(rows["full"][6]) > 0
    assert int(rows["sparse"][2]) < int(rows["full"][2])


def test_ablation_continuous_discrete(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])
    script = load("ablation_continuous_discrete")
    script.main(["--out", str(tmp_path), "--layers", "2", "--epochs", "1", "--seeds", "1"])
    rows = {r[0]: r for r in read_csv(tmp_path / "results.csv")[1:]}
    trained = ["euler", "euler x4", "rk4", "rk4 x4", "torchdiffeq:dopri5 tol=0.001", "torchdiffeq:dopri5 tol=1e-05"]
    assert list(rows) == trained
    nfe = read_csv(tmp_path / "results.csv")[0].index("nfe_per_forward")
    assert float(rows["rk4"][nfe]) == 2 * 4 and float(rows["euler x4"][nfe]) == 2 * 4  # 2 layers x 4 evaluations
    cross = read_csv(tmp_path / "cross_eval.csv")[1:]
    evaluated = {r[2] for r in cross}
    assert evaluated == {"euler", "euler x2", "euler x4", "euler x8", "euler x16", "torchdiffeq:dopri5 tol=1e-07"}
    # trained and evaluated with the same rule: the cross-evaluation repeats the test accuracy
    assert [float(r[3]) for r in cross if r[0] == "euler" and r[2] == "euler"] == [float(rows["euler"][5])]
    assert (tmp_path / "ablation.png").stat().st_size > 0


def test_plot_2d(tmp_path):
    script = load("plot_2d")
    script.main(["--out", str(tmp_path), "--layers", "4", "--epochs", "1", "--dataset", "double_moons"])
    for suffix in ("boundary", "propagation"):
        assert (tmp_path / f"double_moons_H1_J1_{suffix}.png").stat().st_size > 0


@pytest.mark.slow
def test_table2_one_cell(tmp_path):
    if not (Path("data") / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip("MNIST not in data/ (make data)")
    script = load("reproduce_l4dc_table2")
    script.main(["--out", str(tmp_path), "--epochs", "1", "--layers", "0", "2", "--architectures", "H1_J2"])
    rows = read_csv(tmp_path / "table2.csv")
    assert [r[0] for r in rows[1:]] == ["0", "2"]
    assert float(rows[1][2]) > 85  # conv + linear after one epoch


def test_compare_integrators(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])
    script = load("compare_integrators")
    args = ["--out", str(tmp_path), "--layers", "2", "--epochs", "1", "--seeds", "1"]
    script.main([*args, "--integrators", "euler", "symplectic_euler"])
    rows = {r[0]: r for r in read_csv(tmp_path / "results.csv")[1:]}
    nfe = read_csv(tmp_path / "results.csv")[0].index("nfe_per_forward")
    assert float(rows["euler"][nfe]) == 2 and float(rows["symplectic_euler"][nfe]) == 2  # evaluations per forward
    cross = read_csv(tmp_path / "cross_eval.csv")[1:]
    assert [float(r[3]) for r in cross if r[0] == r[2] == "euler"] == [float(rows["euler"][5])]  # diagonal


def test_table1_parallel_jobs_match_serial(tmp_path, capsys):
    script = load("reproduce_l4dc_table1")
    args = ["--seeds", "1", "--epochs", "1", "--restarts", "2", "--rows", "double_moons:1"]
    args += ["--architectures", "H1_J1", "MS3"]
    script.main(["--out", str(tmp_path / "serial"), *args])
    # the workers import the script by its path, so run it the way users do
    cmd = [
        sys.executable,
        str(SCRIPTS / "reproduce_l4dc_table1.py"),
        "--out",
        str(tmp_path / "parallel"),
        "--jobs",
        "2",
    ]
    subprocess.run([*cmd, *args], check=True, capture_output=True)
    serial, parallel = (sorted(r[:6] for r in read_csv(tmp_path / d / "runs.csv")) for d in ("serial", "parallel"))
    assert serial == parallel and len(serial) == 3
    for bad in (["--jobs", "0"], ["--restarts", "-1"], ["--seeds", "two"]):
        with pytest.raises(SystemExit):
            script.main(["--out", str(tmp_path / "bad"), *bad])
        assert "expected an integer >= 1" in capsys.readouterr().err


def test_table1_refuses_to_mix_recipes(tmp_path, capsys):
    script = load("reproduce_l4dc_table1")
    args = ["--out", str(tmp_path), "--seeds", "1", "--epochs", "1", "--rows", "double_moons:1"]
    script.main([*args, "--architectures", "H2"])
    assert json.loads((tmp_path / "recipe.json").read_text())["H2"]["integrator"] == "symplectic_euler_qp"
    for change in (["--lr", "0.5"], ["--integrator-for"], ["--restarts", "2"]):
        with pytest.raises(SystemExit):
            script.main([*args, "--architectures", "H2", *change])
        assert "the H2 runs in" in capsys.readouterr().err
    # the recipe is kept per architecture: another column may join the folder with its own settings
    script.main([*args, "--architectures", "H1_J1", "--integrator-for", "H1_J1=rk4"])
    assert json.loads((tmp_path / "recipe.json").read_text())["H1_J1"]["integrator"] == "rk4"
    for bad in ("MS3=rk5", "MLP=rk4", "MS3"):
        with pytest.raises(SystemExit):
            script.main(["--out", str(tmp_path / "bad"), "--integrator-for", bad])
        assert "expected ARCH=INTEGRATOR" in capsys.readouterr().err


def test_bench_engine_ab_refuses_bad_arguments(tmp_path, capsys):
    ab = load("bench_engine_ab")
    with pytest.raises(SystemExit):
        ab.main(["--baseline", str(SCRIPTS.parent), "--repeats", "0", "--out", str(tmp_path)])
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--baseline .*: no hamode/__init__.py there"):
        ab.main(["--baseline", str(tmp_path), "--out", str(tmp_path)])


def test_bench_engine_ab_times_a_cell_against_a_baseline():
    """One cell, this checkout against itself: the two engines agree and the ratios are formed."""
    ab = load("bench_engine_ab")
    row = ab.cell(ab.load_baseline(SCRIPTS.parent), "leapfrog", "H2", 4, 8, repeats=3)
    assert row[:4] == ["leapfrog", "H2", 4, 8] and all(x > 0 for x in row[4:])


def test_bench_engine_ab_checks_each_engine_against_the_float64_flow():
    """Engines may round differently, not less accurately: one whose weights are off by 1e-4 is refused."""
    import torch

    import hamode

    ab = load("bench_engine_ab")
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=8)
    y0 = torch.randn(125, 4)
    net = hamode.HamiltonianNet(field, 0.4, "leapfrog")
    ab.check_both(field, "leapfrog", 0.4, y0, net, net)
    off = hamode.make_field("H2", dim=4, n_layers=8)
    off.load_state_dict(field.state_dict())
    with torch.no_grad():
        next(off.parameters()).add_(1e-4)
    with pytest.raises(AssertionError, match=r"the baseline's engine: .* from the float64 flow"):
        ab.check_both(field, "leapfrog", 0.4, y0, net, hamode.HamiltonianNet(off, 0.4, "leapfrog"))


def test_gradient_study_with_the_implicit_rule(tmp_path):
    script = load("gradient_study")
    script.main(["--out", str(tmp_path), "--iterations", "3", "--every", "2", "--models", "h1_implicit_midpoint,mlp32"])
    rows = {r[0]: r for r in read_csv(tmp_path / "gradient_study.csv")[1:]}
    assert float(rows["h1_implicit_midpoint"][5]) >= 1 - 1e-5  # TAC's bound, every probe sample (float32)
    assert float(rows["h1_implicit_midpoint"][7]) >= 1  # solver iterations per step
    assert (tmp_path / "gradient_study.png").stat().st_size > 0


def test_new_script_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        load("gradient_study").main(["--models", "h1_time_varying,resnet"])
    assert "--models: unknown ['resnet']; valid: h1_time_varying" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load("bench_cli_startup").main(["--repeats", "0"])
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err


def test_bench_conv_writes_its_table(tmp_path, capsys):
    load("bench_conv").main(
        ["--out", str(tmp_path), "--depths", "2", "4", "--batch", "2", "--size", "6", "--repeats", "1"]
    )
    rows = read_csv(tmp_path / "bench_conv.csv")[1:]
    assert len(rows) == 8 and {r[1] for r in rows} == {"fused", "reference"}
    saved = {(r[0], r[1], r[2]): float(r[4]) for r in rows}
    assert saved[("4", "fused", "reversible")] == saved[("2", "fused", "reversible")]  # flat in depth
    assert saved[("4", "fused", "backprop")] > saved[("2", "fused", "backprop")]
    assert "$ python scripts/bench_conv.py" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        load("bench_conv").main(["--depths", "0"])


def test_mnist_conv_study_at_tiny_sizes(tmp_path, capsys, mnist_dir):
    script = load("mnist_conv_study")
    common = ["--out", str(tmp_path), "--data-dir", mnist_dir]
    side = ["--part", "side", "--models", "ConvH2 CNN (", "ResidualCNN", "--epochs", "1", "--train-batches", "2"]
    script.main([*common, *side, "--side-test", "64"])
    rows = read_csv(tmp_path / "side_by_side.csv")
    assert [r[0].split(" (")[0] for r in rows[1:]] == ["ConvH2 CNN", "ResidualCNN"]
    assert int(rows[1][4]) == 72666 and float(rows[1][3]) > 0  # the config's CNN: its parameters
    tiny = ["--depths", "2", "4", "--depth-steps", "2", "--depth-batch", "8", "--depth-test", "32", "--probe", "1"]
    script.main([*common, "--part", "depth", *tiny, "--lanczos", "8", "--repeats", "1"])
    rows = {int(r[0]): r for r in read_csv(tmp_path / "depth.csv")[1:]}
    assert set(rows) == {2, 4} and float(rows[4][1]) == 1.0  # fixed T = 4
    assert min(float(r[3]) for r in rows.values()) >= 1 - 1e-4  # ConvH2 + symplectic Euler: TAC's bound
    assert float(rows[4][6]) == float(rows[2][6]) and float(rows[4][5]) > float(rows[2][5])  # reversible flat
    for name in ("side_by_side.png", "depth.png", "side_by_side.md", "depth.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert "$ python scripts/mnist_conv_study.py" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--t-end", "0"])
    assert "--t-end must be > 0, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--depth-lr", "-1"])
    assert "--depth-lr must be > 0, got -1.0" in capsys.readouterr().err


def test_bench_models_baselines_compute_the_models_equations(tmp_path, capsys):
    """Every hand-written baseline gives the hamode model's logits on the same weights (the benchmark refuses to
    time variants that disagree), and one model's table is written."""
    import torch

    bench = load("bench_models")
    for name, _, variants, x, _, reference in bench.model_cases(torch.device("cpu")):
        worst = bench._same_logits(variants, x[:8], reference)
        assert worst[False] <= 1e-4, name
        if any("bf16" in v for v in variants):  # the CNN's bfloat16 variants: to bfloat16's accuracy, and not equal
            assert 1e-5 < worst[True] <= 3e-2, name
    bench.main(["--out", str(tmp_path), "--only", "pixel_h1", "--repeats", "1", "--threads", "1"])
    rows = read_csv(tmp_path / "bench_models.csv")[1:]
    assert [r[2] for r in rows] == ["published-style loop", "hamode fused"] and float(rows[0][4]) == 1.0
    assert "$ python scripts/bench_models.py" in capsys.readouterr().out
    # what bfloat16 convolutions cost the structure: a defect far above float32's, far below O(1)
    (state, d_state, _), (reduced, d_reduced, _) = read_csv(tmp_path / "symplecticity.csv")[1:]
    assert (state, reduced) == ("state", "bfloat16")
    assert float(d_state) < 1e-5 < float(d_reduced) < 1e-2
    for bad in (["--repeats", "0"], ["--threads", "x"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            bench.main(["--out", str(tmp_path), *bad])


def test_bench_models_times_the_mnist_models_on_real_images_where_there_are_any(tmp_path, mnist_dir, capsys):
    """The MNIST models' batch is MNIST's first training images, normalised as the data module serves them, and the
    table says which input it timed (a random batch where there is no MNIST)."""
    import torch

    from hamode.data.mnist import read_mnist
    from lightning_modules.data import MNIST_MEAN, MNIST_STD, MNISTDataModule

    bench = load("bench_models")
    x, y, given = bench.image_input(mnist_dir, 100)
    (images, labels), _ = read_mnist(mnist_dir)
    want = torch.from_numpy(images[:100].copy()).float().div(255.0).sub(MNIST_MEAN).div(MNIST_STD).unsqueeze(1)
    assert torch.equal(x, want) and torch.equal(y, torch.from_numpy(labels[:100].astype("int64")))
    assert given == "input: MNIST training images 0-99"
    module = MNISTDataModule(data_dir=str(mnist_dir), val_split=0)
    module.setup("fit")
    served = module.train_set[0].flatten(1)
    assert all(bool((served == image).all(1).any()) for image in x[:3].flatten(1))  # exactly as the module serves
    x, _, given = bench.image_input(tmp_path, 4)  # no MNIST there: random, and said so
    assert x.shape == (4, 1, 28, 28) and given == f"input: standard normal (no MNIST in {tmp_path})"
    cases = {name: desc for name, desc, *_ in bench.model_cases(torch.device("cpu"), mnist_dir)}
    assert all(
        cases[m].endswith("; input: MNIST training images 0-127" if m == "cnn" else "0-99")
        for m in cases
        if m in ("cnn", "pixel_h1", "pixel_h2")
    )
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path), "--random-input", "--data-dir", str(mnist_dir)])
    assert "--random-input and --data-dir: give one of them" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a folder named explicitly must hold MNIST (a typo is not a random batch)
        bench.main(["--out", str(tmp_path), "--data-dir", str(tmp_path / "nope")])
    assert f"--data-dir {tmp_path / 'nope'}: no verified MNIST files there" in capsys.readouterr().err


def test_bench_make_train_refuses_what_it_cannot_compare(tmp_path, capsys):
    """The make-train A/B needs a hamode checkout as its baseline and configs both sides have (its runs take
    minutes, so they are exercised by hand; here: the refusals, before anything runs)."""
    bench = load("bench_make_train")
    for bad, match in (
        (["--baseline", str(tmp_path)], "not a checkout of hamode"),
        (["--baseline", str(SCRIPTS.parent), "--configs", "configs/nope.yaml"], "no such config in this checkout"),
    ):
        with pytest.raises(SystemExit):
            bench.main(["--out", str(tmp_path / "out"), *bad])
        assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine")
def test_bench_native_writes_its_table(tmp_path, capsys):
    load("bench_native").main(["--out", str(tmp_path), "--rows", "9000", "--repeats", "1"])
    rows = read_csv(tmp_path / "bench_native.csv")[1:]
    names = {"base + alpha x W", "VJP + factor sums", "copy + tanh in place"}
    names |= {"bf16 product: tanh, float32 + bf16", "bf16 product: base + alpha x"}
    names |= {"bf16 product: tanh backward, float32 + bf16"}
    assert len(rows) == 18 and {r[0] for r in rows} == names
    assert all(float(r[6]) <= (1e-5 if r[1] == "float32" else 1e-12) for r in rows)  # checked before timing
    assert "$ python scripts/bench_native.py" in capsys.readouterr().out
    cpu = load("_common").cpu_name()
    assert cpu and cpu in (tmp_path / "bench_native.md").read_text()  # times come with the machine they came from
    for bad, message in (
        (["--rows", "100"], "--rows x --n must be at least 65536"),
        (["--n", "65"], "--n must be at most 64"),
        (["--repeats", "0"], "expected an integer >= 1, got '0'"),
    ):
        with pytest.raises(SystemExit):
            load("bench_native").main(bad)
        assert message in capsys.readouterr().err


def test_bench_cnn_stages_times_the_engines_own_convolutions(tmp_path, capsys, monkeypatch):
    """The stage breakdown's floor calls exactly the convolutions the fused engine calls (same methods, shapes and
    count, recorded from both), its hand-written stages agree with hamode's, and it writes one row per stage."""
    from hamode.fields import Convolution

    bench = load("bench_cnn_stages")
    calls: list[tuple] = []
    for name in ("apply", "weight_grad"):
        original = getattr(Convolution, name)

        def recording(self, x, W, *rest, _name=name, _original=original, **options):
            calls.append((_name, tuple(x.shape), tuple(W.shape) if _name == "apply" else tuple(rest[0])))
            return _original(self, x, W, *rest, **options)

        monkeypatch.setattr(Convolution, name, recording)
    for i, stage, hand, x, cotangent in bench.stage_cases(2):
        calls.clear()
        stage(x.detach().requires_grad_()).backward(cotangent)
        engine = sorted(calls)
        calls.clear()
        bench.convolutions_alone(stage, x)()
        assert sorted(calls) == engine and len(engine) == 6 * 2 * stage.field.n_layers, i
        assert bench._agree(stage, hand, i, x) < 1e-5
    monkeypatch.undo()
    bench.main(["--out", str(tmp_path), "--batch", "2", "--repeats", "1", "--threads", "1"])
    rows = read_csv(tmp_path / "bench_cnn_stages.csv")[1:]
    assert [r[2] for r in rows] == ["2x16x28x28", "2x32x14x14", "2x64x7x7"]
    assert all(abs(float(r[3]) - float(r[6]) - float(r[7])) < 1e-3 for r in rows)  # fused - convolutions
    assert "$ python scripts/bench_cnn_stages.py" in capsys.readouterr().out
    for bad, message in ((["--threads", "0"], "thread counts must be >= 1"), (["--repeats", "0"], "got '0'")):
        with pytest.raises(SystemExit):
            bench.main(bad)
        assert message in capsys.readouterr().err
