"""``experiments/perf/pallas_conv.py`` on the CPU: its agreement check (the pallas convolution
and its gradients against the reference, in Pallas's interpreter) and ``--no-agreement``, which
sweeps use to skip it. No timing claim."""

import json

from repo_scripts import load_script

import mpnn_jax  # noqa: F401  (before the script's e3nn_jax starts JAX: mpnn_jax.compat)


def test_agreement_check_and_its_skip(tmp_path):
    cli = load_script("experiments/perf/pallas_conv.py")
    out = tmp_path / "check.json"
    assert cli.main(["--out", str(out), "--check-only", "--small"]) == 0
    errs = json.loads(out.read_text())["agreement_fp32"]
    assert set(errs) == {"out", "d_node_feats", "d_sh", "d_weights"}
    assert max(errs.values()) < 1e-4 and min(errs.values()) >= 0.0  # FP32 rounding, not zero
    assert max(errs.values()) > 0.0
    assert cli.main(["--out", str(out), "--check-only", "--no-agreement"]) == 0
    assert "agreement_fp32" not in json.loads(out.read_text())
