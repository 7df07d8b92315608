"""Is BF16's force error the rounding of the weights or of the activations?

The weights rounded to BF16 are a fixed, smooth change of the model: evaluated in fp64 they give
a conservative force field that training could absorb. The activations' rounding is noise that
changes with every configuration. This probe evaluates, against the fp64 forces of the weights:
the fp64 forces of the BF16-rounded weights (radial MLP kept FP32, as bf16-mixed keeps it), and
bf16-mixed; then bf16-mixed against the fp64 forces of the rounded weights (the activations'
share alone). Every 16-bit cast rounds (``--xla_allow_excess_precision=false``).

    P=experiments/results/precision_study/h100_policies
    python $P/ethanol_stages/weight_rounding_probe.py MODEL_DIR TEST.xyz N_CONFIGS OUT.json
"""

import json
import sys

from mpnn_jax import study, study_runs

study.forbid_excess_precision()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def round_weights(params, keep=("RadialMLP",)):
    """Every weight rounded to BF16 (and back to its dtype), except those whose path names one
    of ``keep``."""

    def f(path, x):
        if any(k in jax.tree_util.keystr(path) for k in keep):
            return x
        return jnp.asarray(x).astype(jnp.bfloat16).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(f, params)


def main(run: str, data: str, n: int, out: str) -> None:
    model, params, info = study_runs.load_study_model(run)
    graphs = study_runs.read_study_graphs(data, info, n_configs=n)
    ref = study.predict_all(model, params, graphs, policy="fp64")
    rounded = study.predict_all(model, round_weights(params), graphs, policy="fp64")
    bf16 = study.predict_all(model, params, graphs, policy="bf16-mixed")
    res = {
        "fp64 of the BF16-rounded weights vs fp64": study.compare(rounded, ref),
        "bf16-mixed vs fp64": study.compare(bf16, ref),
        "bf16-mixed vs fp64 of the BF16-rounded weights": study.compare(bf16, rounded),
        "command": " ".join(sys.argv),
        "environment": study_runs.environment_info(),
        "n_configs": len(graphs),
    }
    for k, v in res.items():
        if isinstance(v, dict) and "forces_mae_mev_per_A" in v:
            print(
                f"{k}: F {v['forces_mae_mev_per_A']:.3g} meV/Å, "
                f"E {v['energy_mae_mev_per_atom']:.3g} meV/atom"
            )
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
