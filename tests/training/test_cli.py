"""The ``mpnn-jax`` command on a tiny trained run: exit codes (0 success, 1 audit violations, 2 bad
arguments or input with a one-line error), and that ``evaluate`` and ``audit`` write what they
promise."""

from __future__ import annotations

import json

import pytest

from mpnn_jax.cli import main

from .test_train_presets import TINY

TEST = "bundled:rmd17_ethanol/test"


def _error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mpnn-jax {command}: error:"), err
    return err[0]


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse: a required option missing
        main(["train", "--config", str(TINY)])
    assert exc.value.code == 2
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "no.yaml"), "--workdir", str(tmp_path)]) == 2
    assert "no.yaml" in _error_line(capsys, "train")
    argv = ["train", "--config", str(TINY), "--workdir", str(tmp_path / "w")]
    assert main([*argv, "--set", "train.bogus=1"]) == 2
    assert "train.bogus" in _error_line(capsys, "train")
    assert main([*argv, "--set", "model.backend=nope"]) == 2
    assert "model.backend" in _error_line(capsys, "train")
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing trained on a bad config
    assert main(["evaluate", "--workdir", str(tmp_path / "none"), "--data", TEST]) == 2
    _error_line(capsys, "evaluate")


def test_evaluate_and_audit_on_a_trained_run(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--workdir", str(run_dir), "--data", TEST]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("n_configs", "energy_mae_mev_per_atom", "energy_mae_mev", "forces_mae_mev_per_A",
                "forces_rmse_mev_per_A", "policy", "backend"):  # fmt: skip
        assert key in result, key
    assert result["policy"] == "fp32" and result["n_configs"] > 0
    assert result["forces_mae_mev_per_A"] > 0 and "forces_mae_mev_per_A" in capsys.readouterr().out
    assert main([*argv, "--policy", "fp8"]) == 2
    assert "fp8" in _error_line(capsys, "evaluate")
    assert main([*argv, "--backend", "nope"]) == 2
    assert "nope" in _error_line(capsys, "evaluate")

    audit_json = tmp_path / "audit.json"
    argv = ["audit", "--workdir", str(run_dir)]
    assert main([*argv, "--policy", "bf16-mixed", "--json", str(audit_json)]) == 0
    printed = capsys.readouterr().out
    assert "policy bf16-mixed" in printed and "no violations" in printed
    assert "no 16-bit scatter-adds" in printed
    assert json.loads(audit_json.read_text())
    # a BF16 geometry stage is allowed, but its positions' gathers transpose into 16-bit sums
    assert main([*argv, "--policy", "bf16-mixed+geometry=bf16"]) == 0
    assert "16-bit scatter-adds, slow on GPUs" in capsys.readouterr().out
    assert main([*argv, "--policy", "fp8"]) == 2
    _error_line(capsys, "audit")


def test_audit_exits_1_on_violations(run_dir, monkeypatch, capsys):
    """A violation found by the audit (here: a cast to FP64 appended to the real report, which
    no FP32/BF16 policy allows) is exit code 1 with the offending line printed."""
    import dataclasses

    import mpnn_jax.training.evaluate as ev
    from mpnn_jax.precision.audit import OpRecord

    real = ev.audit_run
    bad = OpRecord(stage="messages", primitive="convert_element_type", kind="cast",
                   in_dtypes=("f32",), out_dtypes=("f64",), accum=None, backward=False,
                   name_stack="messages/injected")  # fmt: skip

    def with_violation(workdir, *, policy=None):
        report = real(workdir, policy=policy)
        return dataclasses.replace(report, records=(*report.records, bad))

    monkeypatch.setattr(ev, "audit_run", with_violation)
    assert main(["audit", "--workdir", str(run_dir), "--policy", "bf16-mixed"]) == 1
    out = capsys.readouterr().out
    assert "violations:" in out and "messages/injected" in out and "casts to f64" in out


def test_md_with_either_backend_follows_the_same_trajectory(run_dir, tmp_path, capsys):
    """``mpnn-jax md --backend``: the same weights under the cueq kernels (CPU: their pure-JAX
    method) give the e3nn run's trajectory; an unknown backend is exit 2."""
    from mpnn_jax.data import bundled_path
    from mpnn_jax.nn.backends import available_backends

    structure = str(bundled_path("rmd17_ethanol", "test"))
    argv = ["md", "--workdir", str(run_dir), "--structure", structure, "--steps", "20"]
    assert main([*argv, "--backend", "nope"]) == 2
    assert "nope" in _error_line(capsys, "md")
    finals = {}
    for backend in [b for b in ("e3nn", "cueq") if b in available_backends()]:
        out = tmp_path / backend
        assert main([*argv, "--backend", backend, "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["backend"] == backend
        finals[backend] = summary["final_total_energy_eV"]
    if "cueq" in finals:
        assert finals["cueq"] == pytest.approx(finals["e3nn"], abs=1e-5)
