"""One-off probe: how much of the ``update`` stage's BF16 force error is MACE's symmetric
contraction? Evaluates a trained MACE under policies with the contraction forced to FP32
(``SymmetricContraction`` swapped for one built with the fp32 policy), against fp64.

    python contraction_probe.py MODEL_DIR TEST.xyz N_CONFIGS OUT.json
"""

import json
import sys

import jax

import mpnn_jax.models.mace as mace
from mpnn_jax import study, study_runs
from mpnn_jax.precision import get_policy

POLICIES = ["fp32+update=bf16", "bf16-mixed", "fp32+update=f16", "fp16-mixed"]


def contraction_in_fp32(original):
    """``SymmetricContraction`` that ignores the policy it is given and computes in fp32."""
    fp32 = get_policy("fp32")

    def build(irreps, correlation, n_species, policy, backend="e3nn"):
        return original(irreps, correlation, n_species, fp32, backend=backend)

    return build


def main(workdir: str, data: str, n: int, out_path: str) -> None:
    jax.config.update("jax_enable_x64", True)
    model, params, info = study_runs.load_study_model(workdir)
    graphs = study_runs.read_study_graphs(data, info, n_configs=n)
    ref = study.predict_all(model, params, graphs, policy="fp64")
    original = mace.SymmetricContraction
    out = {}
    try:
        for spec in POLICIES:
            for forced in (False, True):
                mace.SymmetricContraction = contraction_in_fp32(original) if forced else original
                r = study.compare(study.predict_all(model, params, graphs, policy=spec), ref)
                key = spec + (" (contraction fp32)" if forced else "")
                out[key] = {k: float(v) for k, v in r.items() if "forces" in k or "energy" in k}
                print(key, {k: round(v, 4) for k, v in out[key].items()}, flush=True)
    finally:
        mace.SymmetricContraction = original
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
