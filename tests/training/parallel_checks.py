"""Data-parallel checks run by ``test_parallel.py`` in a subprocess with 4 host CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before jax is imported, so
these checks cannot run in the pytest process. Usage::

    python tests/training/parallel_checks.py {step,overflow,train}[,...] WORKDIR

Several checks, comma-separated, run in one process (one start, one draw of the shared FP32
parameters); each prints ``<name> passed`` or its traceback on stderr, and the exit status is
non-zero if any failed.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from mpnn_jax import testing  # noqa: E402
from mpnn_jax.data import GraphLoader  # noqa: E402
from mpnn_jax.data.buckets import Bucket  # noqa: E402
from mpnn_jax.precision import get_policy, loss_scale_for  # noqa: E402
from mpnn_jax.training import parallel  # noqa: E402
from mpnn_jax.training.loss import make_loss_fn  # noqa: E402
from mpnn_jax.training.optim import make_optimizer  # noqa: E402
from mpnn_jax.training.state import init_train_state, make_train_step  # noqa: E402

TINY = ROOT / "experiments" / "configs" / "tiny.yaml"
N_DEV = 4
_PARAMS: dict = {}  # the FP32 parameters (the same for every policy): drawn once


def _tiny_mace(policy_name: str, graph):
    from mpnn_jax.models import build_model
    from mpnn_jax.potential import make_predictor

    sizes = yaml.safe_load(TINY.read_text())["model"]["sizes"]
    policy = get_policy(policy_name)
    model = build_model(
        "mace",
        policy=policy,
        n_species=3,
        cutoff=4.0,
        avg_num_neighbors=8.0,
        atomic_energies=np.array([-13.6, -1025.3, -2035.6]),
        scale=1.0,
        shift=0.0,
        **sizes,
    )
    if "params" not in _PARAMS:
        _PARAMS["params"] = testing.random_params(model.clone(policy=get_policy("fp32")), graph)
    return make_predictor(model), _PARAMS["params"], policy


def _setup(policy_name: str):
    from tests.training.conftest import ethanol_graphs

    # 4 batches per epoch, the last one of a single graph: it gets its own, smaller bucket
    loader = GraphLoader(ethanol_graphs(10), batch_size=3, shuffle=True, seed=0)
    loader.plan = loader.plan.with_bucket(Bucket(n_node=16, n_edge=128, n_graph=2))
    first = next(loader.iterate(0))
    predict, params, policy = _tiny_mace(policy_name, first)
    opt, _ = make_optimizer(lr=1e-2, clip_norm=100.0)
    state = init_train_state(
        params=params,
        optimizer=opt,
        loss_scale=loss_scale_for(policy, initial=2.0**10),
        rng=jax.random.PRNGKey(1),
    )
    kwargs = dict(
        loss_fn=make_loss_fn(energy_weight=1.0, forces_weight=10.0),
        optimizer=opt,
        ema_decay=0.9,
        batches_per_epoch=len(loader),
    )
    mesh = parallel.make_mesh(parallel.select_devices("all"))
    assert mesh.size == N_DEV, jax.devices()
    step = parallel.make_parallel_train_step(predict, mesh=mesh, **kwargs)
    return loader, state, step, mesh, predict, kwargs


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def check_step(workdir: Path) -> None:
    """Two 4-device steps == two single-device steps on the mean loss of the same 4 batches.

    Each step is one epoch of 3 full batches and a single-graph one in a smaller bucket: the
    group is padded to the larger bucket, the reference keeps each batch in its own (and, with
    the same buckets in both steps, compiles once)."""
    loader, state, step, mesh, predict, kwargs = _setup("fp32")

    def mean_of_batches(batch_loss):  # the reference: a Python mean over separate batches
        def loss(params, batches):
            outs = [batch_loss(params, b) for b in batches]
            terms = jax.tree_util.tree_map(lambda *t: sum(t) / len(t), *[o[1] for o in outs])
            return sum(o[0] for o in outs) / len(outs), terms

        return loss

    ref_step = jax.jit(
        make_train_step(
            predict, **kwargs, loss_over_devices=mean_of_batches, batches_per_step=N_DEV
        )
    )
    host = list(loader.iterate(0)) + list(loader.iterate(1))  # each batch in its own bucket
    shapes = [(b.n_node.shape[0], b.senders.shape[0]) for b in host]
    assert shapes[:N_DEV] == shapes[N_DEV:], shapes  # the reference compiles once
    buckets = set(shapes)
    assert len(buckets) > 1, buckets  # each group is padded to its largest bucket
    groups = parallel.iterate_groups(loader, n_devices=N_DEV, epoch=0, position=0)
    par_state, ref_state = parallel.replicate(state, mesh), state
    for i in range(2):
        group = parallel.shard_batch(next(groups), mesh)
        assert group.nodes["positions"].sharding.shard_shape(group.nodes["positions"].shape)[0] == 1
        par_state, m = step(par_state, group)
        ref_state, mr = ref_step(ref_state, tuple(host[N_DEV * i : N_DEV * (i + 1)]))
        np.testing.assert_allclose(float(m["loss"]), float(mr["loss"]), rtol=1e-5)
        # Adam is blind to a uniform gradient scale: the norm checks the mean (not the sum)
        np.testing.assert_allclose(float(m["grad_norm"]), float(mr["grad_norm"]), rtol=1e-5)
        assert not bool(m["skipped"])
        for a, b in zip(_leaves(par_state.params), _leaves(ref_state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(_leaves(par_state.ema_params), _leaves(ref_state.ema_params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    leaf = jax.tree_util.tree_leaves(par_state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == N_DEV
    # two steps of 4 batches consumed exactly two epochs
    assert int(par_state.epoch) == 2 and int(par_state.position) == 0
    hlo = step.lower(par_state, group).compile().as_text()
    assert "all-reduce" in hlo
    print(f"ok: 4 batches, {len(buckets)} distinct buckets; gradient all-reduce in the HLO")


def check_overflow(workdir: Path) -> None:
    """A NaN target on one device skips the step on all and halves the (global) loss scale."""
    loader, state, step, mesh, _, _ = _setup("fp16-mixed")
    group = next(parallel.iterate_groups(loader, n_devices=N_DEV, epoch=0, position=0))
    energy = np.array(group.globals["energy"])  # [n_dev, n_graph]
    energy[2, 0] = np.nan  # one configuration on device 2
    bad = group._replace(globals={**group.globals, "energy": energy})
    s0 = parallel.replicate(state, mesh)
    s1, m = step(s0, parallel.shard_batch(bad, mesh))
    assert bool(m["skipped"]) and int(s1.n_skipped) == 1 and int(s1.step) == 1
    assert float(s1.loss_scale.loss_scale) == 2.0**9
    for new, old in ((s1.params, s0.params), (s1.opt_state, s0.opt_state)):
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
            for shard in a.addressable_shards:  # unchanged on every device
                np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(b))
    s2, m = step(s1, parallel.shard_batch(group, mesh))  # the clean group trains
    assert not bool(m["skipped"]) and int(s2.n_skipped) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(s2.params), _leaves(s0.params)))
    print("ok: skipped on all devices, scale 2^10 -> 2^9")


def check_train(workdir: Path) -> None:
    """``train`` on 4 devices (the test resumes it on 1); sharded == single-device evaluate."""
    from mpnn_jax.training.config import load_config
    from mpnn_jax.training.evaluate import evaluate
    from mpnn_jax.training.loop import train
    from tests.training.test_parallel import FOUR

    summary = train(load_config(TINY, overrides=FOUR), workdir)
    assert summary["status"] == "done" and summary["step"] == 5, summary
    one = evaluate(workdir, "bundled:rmd17_ethanol/test", n_configs=7, batch_size=1, devices=1)
    four = evaluate(workdir, "bundled:rmd17_ethanol/test", n_configs=7, batch_size=1)
    assert four["n_configs"] == one["n_configs"] == 7
    for k, v in one.items():
        if isinstance(v, float):
            np.testing.assert_allclose(four[k], v, rtol=1e-6, err_msg=k)
    print("ok: trained 5 steps on 4 devices; sharded evaluate matches")


CHECKS = {"step": check_step, "overflow": check_overflow, "train": check_train}

if __name__ == "__main__":
    names, workdir = sys.argv[1].split(","), Path(sys.argv[2])
    failed = []
    for name in names:
        try:
            CHECKS[name](workdir)
        except Exception:  # noqa: BLE001 - reported, and the next check still runs
            traceback.print_exc()
            failed.append(name)
        else:
            print(f"{name} passed", flush=True)
    sys.exit(1 if failed else 0)
