"""One-off: how much of the `update` stage's BF16 force error is MACE's symmetric contraction?
Evaluates a trained MACE under policies with the contraction forced to FP32 (monkeypatch)."""
import json, sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from mpnn_jax import study, study_runs
import mpnn_jax.models.mace as mace
from mpnn_jax.precision import get_policy

workdir, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model, params, info = study_runs.load_study_model(workdir)
graphs = study_runs.read_study_graphs(data, info, n_configs=n)
ref = study.predict_all(model, params, graphs, policy="fp64")
Orig = mace.SymmetricContraction
out = {}
for spec in ["fp32+update=bf16", "bf16-mixed", "fp32+update=f16", "fp16-mixed"]:
    for sc_fp32 in (False, True):
        if sc_fp32:
            fp32 = get_policy("fp32")
            mace.SymmetricContraction = lambda irr, c, ns, pol, backend="e3nn": Orig(
                irr, c, ns, fp32, backend=backend)
        else:
            mace.SymmetricContraction = Orig
        r = study.compare(study.predict_all(model, params, graphs, policy=spec), ref)
        key = f"{spec}{' (contraction fp32)' if sc_fp32 else ''}"
        out[key] = {k: r[k] for k in r if "forces" in k or "energy" in k}
        print(key, {k: round(float(v), 4) for k, v in out[key].items()}, flush=True)
mace.SymmetricContraction = Orig
json.dump(out, open(sys.argv[4], "w"), indent=1)
