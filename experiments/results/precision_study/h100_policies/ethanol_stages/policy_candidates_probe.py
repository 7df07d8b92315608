"""Which 16-bit stage sets keep the force error of the GPU-trained ethanol MACE-64 inside the
10% training bar of issue #5 (about 2.3 meV/Å against fp64, see ../README.md)?

The edge-wise stage (messages: [n_edges x channels x paths] tensors) moves most of the bytes; the
node-wise stages (update, readout) are smaller by about the average number of neighbours
(8 for an isolated ethanol at 5 Å, 30-55 in dense matter). Candidate
policies keep the node-wise stages in FP32 or FP16 and the messages in BF16 or FP16; every 16-bit
cast rounds (``--xla_allow_excess_precision=false``). Force and energy error against fp64:

    P=experiments/results/precision_study/h100_policies
    python $P/ethanol_stages/policy_candidates_probe.py MODEL_DIR TEST.xyz N_CONFIGS OUT.json
"""

import json
import sys

from mpnn_jax import study, study_runs

study.forbid_excess_precision()

CANDIDATES = (
    "bf16-mixed",
    "bf16-mixed+readout=f32",
    "bf16-mixed+update=f32,readout=f32",
    "bf16-mixed+embedding=f32,update=f32,readout=f32",
    "bf16-mixed+update=f16,readout=f16",
    "fp16-mixed",
    "fp16-mixed+update=f32,readout=f32",
)


def main(run: str, data: str, n: int, out: str) -> None:
    model, params, info = study_runs.load_study_model(run)
    graphs = study_runs.read_study_graphs(data, info, n_configs=n)
    rows = study.stage_errors(model, params, graphs, policies=CANDIDATES, model_error=True)
    res = {"command": " ".join(sys.argv), "environment": study_runs.environment_info()}
    res["n_configs"] = len(graphs)
    for row in rows:
        res[row["policy"]] = row
        print(
            f"{row['policy']}: F {row['forces_mae_mev_per_A']:.3g} meV/Å, "
            f"E {row['energy_mae_mev_per_atom']:.3g} meV/atom"
        )
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
