"""One process of a (multi-process) CPU training run, launched by ``test_multiprocess.py``.

The forced host device count must be set before jax is imported, so this runs in a subprocess::

    python tests/training/multiprocess_checks.py WORKDIR N_LOCAL_DEVICES [override ...]

With ``parallel.num_processes=P`` among the overrides the process joins a P-process run through
``train`` itself (``jax.distributed.initialize`` from the config); JAX's CPU collectives between
processes go through gloo. Prints one JSON line: the summary, ``process_index``,
``process_count``, ``local_devices`` and ``batches_built`` (host batches this process padded:
each process should build only its own devices' share).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(sys.argv[2])}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # before any backend exists

from mpnn_jax.data import GraphLoader  # noqa: E402
from mpnn_jax.training.config import load_config  # noqa: E402
from mpnn_jax.training.loop import train  # noqa: E402

TINY = ROOT / "experiments" / "configs" / "tiny.yaml"


def main() -> None:
    workdir, overrides = Path(sys.argv[1]), sys.argv[3:]
    built = [0]
    make_batch = GraphLoader.make_batch

    def counting(self, indices, **kwargs):
        built[0] += 1
        return make_batch(self, indices, **kwargs)

    GraphLoader.make_batch = counting
    summary = train(load_config(TINY, overrides=overrides), workdir)
    out = {
        "summary": {k: v for k, v in summary.items() if k in ("status", "step", "best_val_loss")},
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
        "batches_built": built[0],
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
