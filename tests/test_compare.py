"""`hamode compare`: per-(discretisation, seed) Lightning runs, their reports, resuming, refused inputs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from lightning_modules.compare import discretisations, main

pytestmark = pytest.mark.cpu_only

ROOT = Path(__file__).resolve().parents[1]
SWISS = str(ROOT / "configs/swiss_roll_h1.yaml")
SMALL = [
    "--trainer.max_epochs=1",
    "--data.init_args.n_samples=400",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["hamode"])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_two_integrators_writes_results_cross_eval_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--config", SWISS, "--integrators", "euler,symplectic_euler", "--seeds", "1", "--out", str(out)]
    main([*args, "--model.net.init_args.architecture=H2", *SMALL])
    rows = {r["discretisation"]: r for r in _rows(out / "results.csv")}
    assert set(rows) == {"euler", "symplectic_euler"}
    for r in rows.values():
        assert float(r["nfe_per_forward"]) == 16  # 16 layers, one evaluation per step
        assert float(r["min_bsm_norm"]) > 0 and float(r["train_seconds"]) > 0 and r["epochs"] == "1"
    assert float(rows["symplectic_euler"]["symplecticity_defect"]) < 1e-4  # float32 training
    assert float(rows["euler"]["symplecticity_defect"]) > 1e-3
    cross = _rows(out / "cross_eval.csv")
    assert len(cross) == 4
    for c in cross:
        if c["trained"] == c["evaluated"]:  # the diagonal is the run's own test accuracy
            assert float(c["test_acc"]) == float(rows[c["trained"]]["test_acc"])
    for name in ("summary.md", "cross_eval.png", "accuracy_vs_cost.png"):
        assert (out / name).stat().st_size > 0
    assert "± " in (out / "summary.md").read_text()
    for d in ("euler-1", "symplectic_euler-1"):
        assert (out / d / "seed_0/checkpoints/last.ckpt").is_file() and (out / d / "seed_0/result.json").is_file()
    capsys.readouterr()
    # a finished run is not redone; an interrupted one (no result yet) resumes from its own last.ckpt
    (out / "euler-1/seed_0/result.json").unlink()
    main([*args, "--model.net.init_args.architecture=H2", *SMALL])
    printed = capsys.readouterr().out
    assert "symplectic_euler, seed 0: done before" in printed
    assert f"--ckpt_path {out / 'euler-1/seed_0/checkpoints/last.ckpt'}" in printed
    again = {r["discretisation"]: r for r in _rows(out / "results.csv")}
    assert again["euler"]["test_acc"] == rows["euler"]["test_acc"]  # resumed at its end: nothing retrained
    assert json.loads((out / "euler-1/seed_0/result.json").read_text())["epochs"] == 1


def test_compare_substeps_and_test_time_refinement(tmp_path):
    out = tmp_path / "abl"
    main(
        [
            "--config",
            SWISS,
            "--integrators",
            "euler",
            "--substeps",
            "1,2",
            "--eval-substeps",
            "1,2,4",
            "--out",
            str(out),
            "--model.net.init_args.n_layers=2",
            *SMALL,
        ]
    )
    rows = {r["discretisation"]: r for r in _rows(out / "results.csv")}
    assert {k: float(r["nfe_per_forward"]) for k, r in rows.items()} == {"euler": 2, "euler x2": 4}
    evaluated = {(c["trained"], c["evaluated"]) for c in _rows(out / "cross_eval.csv")}
    assert ("euler", "euler x4") in evaluated and ("euler x2", "euler") in evaluated


def test_discretisations_are_checked():
    assert [d.label for d in discretisations("rk4,torchdiffeq:dopri5", "1,4", "1e-3,1e-5")] == [
        "rk4",
        "rk4 x4",
        "torchdiffeq:dopri5 tol=0.001",
        "torchdiffeq:dopri5 tol=1e-05",
    ]
    with pytest.raises(SystemExit, match=r"unknown integrator 'rk5'; valid: .*euler.*rk4"):
        discretisations("rk5")
    with pytest.raises(SystemExit, match=r"--substeps: '0' must be > 0"):
        discretisations("rk4", "0")
    with pytest.raises(SystemExit, match=r"--tolerances: 'x' is not a float"):
        discretisations("torchdiffeq:dopri5", "1", "x")


@pytest.mark.parametrize(
    "flag", ["--model.net.init_args.integrator=rk4", "--model.net.substeps=2", "--ckpt_path=x", "--seed_everything=3"]
)
def test_compare_refuses_what_it_sets_itself(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", SWISS, "--integrators", "euler", "--out", str(tmp_path), flag])
    assert "is set by hamode compare for each run" in capsys.readouterr().err


def test_compare_refuses_a_bad_override_before_training(tmp_path):
    with pytest.raises(SystemExit):
        main(["--config", SWISS, "--integrators", "euler", "--out", str(tmp_path), "--model.no_such_option=1"])
    assert not list(tmp_path.glob("euler-1/seed_0/checkpoints"))


def test_hamode_command_dispatches_compare(capsys):
    from lightning_modules.main import main as hamode

    with pytest.raises(SystemExit) as e:
        hamode(["compare", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: hamode compare" in text and "--eval-integrators" in text


def test_cross_evaluation_that_cannot_run_is_recorded_as_not_applicable(tmp_path, capsys):
    out = tmp_path / "na"
    main(
        ["--config", SWISS, "--integrators", "euler", "--eval-integrators", "euler,leapfrog", "--out", str(out), *SMALL]
    )
    cross = {c["evaluated"]: c["test_acc"] for c in _rows(out / "cross_eval.csv")}
    assert cross["leapfrog"] == "nan" and float(cross["euler"]) > 0  # H1 is not separable: leapfrog cannot run
    assert "leapfrog: not applicable (integrator 'leapfrog' needs a separable field" in capsys.readouterr().out
    assert "| euler | " in (out / "summary.md").read_text() and "n/a" in (out / "summary.md").read_text()


def test_compare_trains_the_hamiltonian_cnn_under_two_integrators(tmp_path, mnist_dir):
    """`hamode compare` on configs/mnist_conv_h2.yaml (a small CNN, a few real MNIST steps): every stage follows the
    discretisation, the diagnostics cover every stage (Lanczos on the image states)."""
    out = tmp_path / "cnn"
    conv = str(ROOT / "configs/mnist_conv_h2.yaml")
    args = ["--config", conv, "--integrators", "symplectic_euler,leapfrog", "--out", str(out)]
    small = [
        f"--data.data_dir={mnist_dir}",
        "--model.net.init_args.channels=[4, 8]",
        "--model.net.init_args.layers=[1, 2]",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    main([*args, *small])
    rows = {r["discretisation"]: r for r in _rows(out / "results.csv")}
    assert set(rows) == {"symplectic_euler", "leapfrog"}
    assert float(rows["symplectic_euler"]["nfe_per_forward"]) == 3  # 1 + 2 layers, one evaluation each
    assert float(rows["leapfrog"]["nfe_per_forward"]) > 3
    for r in rows.values():
        assert float(r["min_bsm_norm"]) >= 1 - 1e-4  # symplectic rules: TAC's bound (Lanczos converges from below)
        assert r["symplecticity_defect"] == "nan"  # image states: not formed
    cross = _rows(out / "cross_eval.csv")
    assert len(cross) == 4
    for c in cross:
        if c["trained"] == c["evaluated"]:  # the diagonal is the run's own test accuracy, on all 10k test images
            assert float(c["test_acc"]) == float(rows[c["trained"]]["test_acc"])
