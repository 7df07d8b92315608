"""Timing and memory harness for energy+forces inference and training steps.

Used by ``experiments/benchmark.py``. The harness builds realistic systems (batches of real
molecules, periodic fcc Cu, a water-density O/H box), a model at a named size, and times the
jitted predictor (energy + forces) and a full training step (energy + force loss, so second
derivatives) under each precision preset:

* compile time (lower + compile, seconds),
* the median of ``repeats`` timed calls after warm-up, each synchronised with
  ``block_until_ready``, rotating among ``n_inputs`` perturbed copies of the input so caches do
  not flatter,
* the compiled program's memory (arguments + outputs + temporaries, from XLA's memory analysis)
  and, on a GPU, the device's peak bytes in use,
* a roofline account: XLA's cost analysis of the compiled program (FLOPs, bytes accessed), the
  lower-bound time ``max(flops / matmul ceiling of the preset, bytes / bandwidth)`` against the
  device's ceilings (:func:`device_ceilings` when measured in the same run, else
  :data:`H100_CEILINGS`), and measured / lower bound.

Implementation variants of the nn blocks (:func:`mpnn_jax.nn.ops.implementation`: ``take_rows``
"onehot"/"take", ``sorted_edges`` "none"/"senders"/"receivers") are a per-case choice, so they
can be timed side by side in one process; a case with sorted edges gets its graph re-sorted
(:func:`sort_edges`).

No timing claim comes from the CPU: ``--quick`` exists to keep the harness working in the test
suite. Everything here runs on whatever ``jax.devices()[0]`` is.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_jax.precision import get_policy

#: Model sizes. NequIP: channels per irrep and lmax; MACE: channels, hidden irreps, max_ell,
#: correlation, interactions. ``mace-mp-s`` is cuEquivariance's MP-S benchmark size.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "nequip-S": dict(name="nequip", channels=16, max_ell=1, n_layers=3),
    "nequip-M": dict(name="nequip", channels=32, max_ell=2, n_layers=4),
    "nequip-L": dict(name="nequip", channels=64, max_ell=2, n_layers=5),
    "mace-S": dict(
        name="mace", num_channels=32, hidden_irreps="0e+1o", max_ell=2, correlation=2,
        num_interactions=2,
    ),
    "mace-M": dict(
        name="mace", num_channels=64, hidden_irreps="0e+1o", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-L": dict(
        name="mace", num_channels=128, hidden_irreps="0e+1o+2e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
    "mace-mp-s": dict(
        name="mace", num_channels=128, hidden_irreps="0e", max_ell=3, correlation=3,
        num_interactions=2,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class System:
    """A benchmark input: one padded graph (numpy) and what it is."""

    name: str
    n_atoms: int
    n_edges: int
    graph: Any  # jraph.GraphsTuple of numpy arrays, padded
    n_species: int


def device_info() -> dict[str, Any]:
    """Device kind, platform, JAX/jaxlib versions, commit and host, for every result file."""
    dev = jax.devices()[0]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    info = {
        "device": getattr(dev, "device_kind", str(dev)),
        "platform": dev.platform,
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "python": platform.python_version(),
        "host": platform.node(),
        "commit": commit,
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        pass
    return info


def peak_device_bytes() -> int | None:
    """The device's peak bytes in use so far (GPU/TPU), None where the backend does not say."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise various errors
        return None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0))


def compiled_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of a compiled XLA program (bytes), if reported."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = 0
    for key in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        total += int(getattr(m, key, 0) or 0)
    return total


#: H100 SXM ceilings measured in this project (``experiments/results/benchmarks``, upper ends):
#: matmul TFLOP/s per dtype (``fp32`` = XLA's default precision, TF32) and copy GB/s (read +
#: write). Used when :func:`device_ceilings` was not measured in the same run.
H100_CEILINGS: dict[str, float] = {
    "matmul_tflops_bf16": 641.0,
    "matmul_tflops_fp16": 617.0,
    "matmul_tflops_fp32": 355.0,
    "matmul_tflops_fp32-highest": 50.0,
    "copy_GBps": 2700.0,
}


def cost_analysis(compiled: Any) -> dict[str, float | None]:
    """FLOPs and bytes accessed of a compiled XLA program (XLA's own count), None if not reported.

    ``compiled.cost_analysis()`` is a dict in recent JAX and a list with one dict per program in
    older ones (summed here); keys that a backend does not report come back as None.
    """
    try:
        raw = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model raise various errors
        raw = None
    if isinstance(raw, dict):
        raw = [raw]
    out: dict[str, float | None] = {"flops": None, "bytes_accessed": None}
    for key, name in (("flops", "flops"), ("bytes_accessed", "bytes accessed")):
        values = [float(d[name]) for d in (raw or []) if isinstance(d, dict) and name in d]
        out[key] = sum(values) if values else None
    return out


def ceiling_key(preset: str) -> str | None:
    """The :func:`device_ceilings` matmul key of a preset: its compute dtype and matmul precision.

    Example:
        >>> ceiling_key("bf16-mixed"), ceiling_key("fp32"), ceiling_key("fp32-highest")
        ('matmul_tflops_bf16', 'matmul_tflops_fp32', 'matmul_tflops_fp32-highest')
    """
    policy = get_policy(preset)
    name = jnp.dtype(policy.compute_dtype).name
    if name == "float32":
        return (
            "matmul_tflops_fp32-highest"
            if policy.matmul_precision == "highest"
            else "matmul_tflops_fp32"
        )
    return {"bfloat16": "matmul_tflops_bf16", "float16": "matmul_tflops_fp16"}.get(name)


def roofline(
    cost: dict[str, float | None],
    *,
    preset: str,
    median_ms: float | None,
    ceilings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Lower-bound time of a compiled program from its FLOPs and bytes against device ceilings.

    ``flops_ms`` = FLOPs at the preset's matmul ceiling (every FLOP on tensor cores: optimistic,
    most FLOPs of these models are elementwise), ``bytes_ms`` = bytes accessed at the copy
    bandwidth (XLA counts each fusion's operands and results once: caches can beat it only for
    arrays that fit in L2), ``lower_bound_ms`` = the larger, ``bound`` = which one, and
    ``measured_over_bound`` = ``median_ms / lower_bound_ms``.

    Args:
        cost: :func:`cost_analysis` of the program.
        preset: precision preset (selects the matmul ceiling, :func:`ceiling_key`).
        median_ms: measured time, or None.
        ceilings: :func:`device_ceilings` of this device; None: :data:`H100_CEILINGS`.

    Returns:
        A JSON-able dict; entries that cannot be computed are None.

    Example:
        >>> r = roofline({"flops": 6.41e11, "bytes_accessed": 2.7e9}, preset="bf16-mixed",
        ...              median_ms=4.0)
        >>> round(r["flops_ms"], 3), round(r["bytes_ms"], 3), r["bound"], r["measured_over_bound"]
        (1.0, 1.0, 'flops', 4.0)
    """
    source = "measured" if ceilings else "h100-default"
    ceilings = ceilings or H100_CEILINGS
    flops, nbytes = cost.get("flops"), cost.get("bytes_accessed")
    key = ceiling_key(preset)
    tflops = ceilings.get(key) if key else None
    bandwidth = ceilings.get("copy_GBps")
    flops_ms = flops / (tflops * 1e12) * 1e3 if flops and tflops else None
    bytes_ms = nbytes / (bandwidth * 1e9) * 1e3 if nbytes and bandwidth else None
    bounds = {k: v for k, v in (("flops", flops_ms), ("bytes", bytes_ms)) if v is not None}
    lower = max(bounds.values()) if bounds else None
    return {
        "flops": flops,
        "bytes_accessed": nbytes,
        "intensity_flop_per_byte": flops / nbytes if flops and nbytes else None,
        "ceiling_tflops": tflops,
        "ceiling_GBps": bandwidth,
        "ceilings_source": source,
        "flops_ms": flops_ms,
        "bytes_ms": bytes_ms,
        "lower_bound_ms": lower,
        "bound": max(bounds, key=bounds.get) if bounds else None,
        "measured_over_bound": median_ms / lower if lower and median_ms else None,
    }


def time_compiled(
    fn: Callable[..., Any], inputs: Sequence[tuple], *, warmup: int = 3, repeats: int = 20
) -> dict[str, float]:
    """Median/min/max and 10th/90th percentile wall time (ms) of ``fn(*inputs[i % len(inputs)])``,
    synchronised each call."""
    for i in range(warmup):
        jax.block_until_ready(fn(*inputs[i % len(inputs)]))
    times = []
    for i in range(repeats):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "repeats": repeats,
    }


def perturbed_inputs(graph: Any, n: int, *, seed: int = 0, sigma: float = 0.01) -> list[Any]:
    """``n`` copies of ``graph`` with positions jittered by ``sigma`` Å (same topology)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pos = graph.nodes["positions"]
        nodes = dict(graph.nodes)
        nodes["positions"] = pos + sigma * rng.standard_normal(pos.shape).astype(pos.dtype)
        out.append(graph._replace(nodes=nodes))
    return out


def is_oom(err: BaseException) -> bool:
    """True if ``err`` is XLA's out-of-memory error."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def policy_names(presets: Sequence[str]) -> list[str]:
    """Validates preset names early (a typo fails before any compile)."""
    return [get_policy(p).name for p in presets]


def bytes_per_atom(points: Sequence[tuple[int, int]]) -> float:
    """Slope of (atoms, bytes) by least squares: the marginal memory cost of one atom."""
    a = np.array(points, dtype=float)
    if len(a) < 2:
        return float(a[0, 1] / max(a[0, 0], 1))
    slope, _ = np.polyfit(a[:, 0], a[:, 1], 1)
    return float(slope)


def to_device(graph: Any) -> Any:
    """Moves a numpy graph to the default device."""
    return jax.tree_util.tree_map(jnp.asarray, graph)


# --- systems ----------------------------------------------------------------------------------
def cu_fcc(n_atoms: int, *, seed: int = 0, a: float = 3.61):
    """A periodic fcc Cu supercell (cubic, 4 atoms a cell) of about ``n_atoms`` atoms, rattled."""
    from ase.build import bulk

    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((reps, reps, reps))
    atoms.rattle(0.05, seed=seed)
    return atoms


def water_box(n_atoms: int, *, seed: int = 0, density: float = 0.0334):
    """A periodic box of H2O at liquid density (``density`` molecules/Å^3), random orientations."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    n_side = max(1, round((n_atoms / 3) ** (1 / 3)))
    n_mol = n_side**3
    length = (n_mol / density) ** (1 / 3)
    spacing = length / n_side
    oh, angle = 0.9572, np.deg2rad(104.52)
    local = np.array(
        [[0, 0, 0], [oh, 0, 0], [oh * np.cos(angle), oh * np.sin(angle), 0]], dtype=float
    )
    positions, numbers = [], []
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for g in grid:
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        positions.append((g + 0.5) * spacing + local @ rot.T)
        numbers += [8, 1, 1]
    return Atoms(numbers=numbers, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


def molecule_batch(n_atoms: int, *, path: str | None = None, seed: int = 0) -> list:
    """Distinct real molecules (rMD17 ethanol by default) totalling about ``n_atoms`` atoms."""
    from mpnn_jax.data import bundled_path, read_xyz

    configs = read_xyz(path or bundled_path("rmd17_ethanol", "train"))
    rng = np.random.default_rng(seed)
    n_mol = max(1, round(n_atoms / configs[0].n_atoms))
    idx = rng.choice(len(configs), size=n_mol, replace=n_mol > len(configs))
    return [configs[i] for i in idx]


def build_system(kind: str, n_atoms: int, *, cutoff: float, species_table, seed: int = 0):
    """One padded benchmark graph of ``kind`` in {"cu", "water", "ethanol", "aspirin"}."""
    from mpnn_jax.data import atoms_to_graph, batch_graphs, pad_graph
    from mpnn_jax.data.buckets import round_up
    from mpnn_jax.data.xyz import atoms_to_configuration

    if kind in ("cu", "water"):
        atoms = cu_fcc(n_atoms, seed=seed) if kind == "cu" else water_box(n_atoms, seed=seed)
        configs = [atoms_to_configuration(atoms, energy_key=None, forces_key=None)]
    elif kind in ("ethanol", "aspirin"):
        path = None
        if kind == "aspirin":
            from pathlib import Path

            path = str(Path(__file__).resolve().parents[2] / "shared/data/rmd17_aspirin/train.xyz")
        configs = molecule_batch(n_atoms, path=path, seed=seed)
    else:
        raise ValueError(f"unknown system kind {kind!r}; expected cu, water, ethanol or aspirin")
    graphs = [atoms_to_graph(c, cutoff=cutoff, species_table=species_table) for c in configs]
    graph = batch_graphs(graphs)
    n_node = int(graph.n_node.sum())
    n_edge = int(graph.n_edge.sum())
    padded = pad_graph(
        graph,
        n_node=round_up(n_node + 1, 8),
        n_edge=round_up(n_edge, 64),
        n_graph=len(graphs) + 1,
    )
    return System(
        name=f"{kind}-{n_node}",
        n_atoms=n_node,
        n_edges=n_edge,
        graph=padded,
        n_species=len(species_table.numbers),
    )


def sort_edges(graph: Any, *, by: str) -> Any:
    """The padded numpy ``graph`` with its edges stably sorted by ``by`` ("senders"/"receivers").

    Padded edges point at the first padding node, past every real node, so they stay last and the
    edge masks and per-graph edge counts stay valid (a graph's edges index its own, contiguous,
    nodes). Used to keep the promise of ``mpnn_jax.nn.ops.SORTED_EDGES``.

    Example:
        >>> import jraph
        >>> g = jraph.GraphsTuple(nodes=None, edges={"shifts": np.arange(3.0)[:, None]},
        ...     globals=None, senders=np.array([0, 1, 2]), receivers=np.array([2, 0, 1]),
        ...     n_node=np.array([3]), n_edge=np.array([3]))
        >>> s = sort_edges(g, by="receivers")
        >>> s.receivers.tolist(), s.senders.tolist(), s.edges["shifts"][:, 0].tolist()
        ([0, 1, 2], [1, 2, 0], [1.0, 2.0, 0.0])
    """
    if by not in ("senders", "receivers"):
        raise ValueError(f"cannot sort edges by {by!r}; expected 'senders' or 'receivers'")
    key = np.asarray(graph.senders if by == "senders" else graph.receivers)
    order = np.argsort(key, kind="stable")
    return graph._replace(
        edges={k: np.asarray(v)[order] for k, v in graph.edges.items()},
        senders=np.asarray(graph.senders)[order],
        receivers=np.asarray(graph.receivers)[order],
    )


# --- measurements -------------------------------------------------------------------------
def make_model(size: str, *, policy: str, n_species: int, cutoff: float, avg_num_neighbors: float):
    """The model of a named size (``MODEL_SIZES``) under ``policy``; random-init weights suffice."""
    from mpnn_jax.models import build_model

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {list(MODEL_SIZES)}")
    spec = dict(MODEL_SIZES[size])
    name = spec.pop("name")
    return build_model(
        name,
        policy=policy,
        n_species=n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_num_neighbors,
        **spec,
    )


def make_train_state_and_step(model, params: Any, *, forces_weight: float = 100.0):
    """The library's own training step (loss scaling, Adam, EMA) for ``model``.

    Returns ``(state, step)`` with ``step(state, graph) -> (state, metrics)``: exactly what
    ``mpnn-jax train`` runs, so the benchmark times the real thing.
    """
    from mpnn_jax.potential import make_predictor
    from mpnn_jax.precision import loss_scale_for
    from mpnn_jax.training.loss import make_loss_fn
    from mpnn_jax.training.optim import make_optimizer
    from mpnn_jax.training.state import init_train_state, make_train_step

    optimizer, _ = make_optimizer(lr=1e-3, optimizer="adam")
    step = make_train_step(
        make_predictor(model),
        loss_fn=make_loss_fn(energy_weight=1.0, forces_weight=forces_weight),
        optimizer=optimizer,
        ema_decay=0.99,
    )
    state = init_train_state(
        params=params,
        optimizer=optimizer,
        loss_scale=loss_scale_for(model.policy),
        rng=jax.random.PRNGKey(0),
    )
    return state, step


def measure(
    *,
    size: str,
    system: System,
    preset: str,
    mode: str,
    params: Any,
    avg_num_neighbors: float,
    cutoff: float,
    repeats: int = 20,
    n_inputs: int = 3,
    warmup: int = 3,
    take_rows: str = "take",
    sorted_edges: str = "none",
    ceilings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Compiles and times one (model size, system, preset, mode) case; ``mode`` is "ef" or "train".

    ``take_rows`` and ``sorted_edges`` select the implementation variant
    (:func:`mpnn_jax.nn.ops.implementation`); with sorted edges the graph is re-sorted first.
    ``ceilings`` (from :func:`device_ceilings`) feed the roofline columns (:func:`roofline`).

    Returns a JSON-able dict with compile_s, median_ms, atom_steps_per_s, compiled_bytes, the
    roofline entries and, where the device reports it, peak_bytes; an out-of-memory case returns
    ``{"oom": True}``.
    """
    from mpnn_jax.nn import ops
    from mpnn_jax.potential import make_predictor

    policy = get_policy(preset)
    model = make_model(
        size,
        policy=preset,
        n_species=system.n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_num_neighbors,
    )
    graph = system.graph if sorted_edges == "none" else sort_edges(system.graph, by=sorted_edges)
    graphs = [to_device(g) for g in perturbed_inputs(graph, n_inputs)]
    row: dict[str, Any] = dict(
        model=size,
        system=system.name,
        n_atoms=system.n_atoms,
        n_edges=system.n_edges,
        preset=preset,
        mode=mode,
        take_rows=take_rows,
        sorted_edges=sorted_edges,
    )
    try:
        impl = ops.implementation(take_rows=take_rows, sorted_edges=sorted_edges)
        with impl, policy.matmul_context():
            if mode == "ef":
                fn = jax.jit(make_predictor(model))
                t0 = time.perf_counter()
                compiled = fn.lower(params, graphs[0]).compile()
                row["compile_s"] = time.perf_counter() - t0
                inputs = [(params, g) for g in graphs]
            elif mode == "train":
                state, step = make_train_state_and_step(model, params)
                fn = jax.jit(step)
                t0 = time.perf_counter()
                compiled = fn.lower(state, graphs[0]).compile()
                row["compile_s"] = time.perf_counter() - t0
                inputs = [(state, g) for g in graphs]
            else:
                raise ValueError(f"unknown mode {mode!r}; expected 'ef' or 'train'")
            row["compiled_bytes"] = compiled_bytes(compiled)
            cost = cost_analysis(compiled)
            row.update(time_compiled(compiled, inputs, warmup=warmup, repeats=repeats))
    except Exception as err:  # noqa: BLE001 - OOM surfaces as several exception types
        if is_oom(err):
            row["oom"] = True
            return row
        raise
    row["atom_steps_per_s"] = system.n_atoms / (row["median_ms"] * 1e-3)
    row["peak_bytes"] = peak_device_bytes()
    row.update(roofline(cost, preset=preset, median_ms=row["median_ms"], ceilings=ceilings))
    return row


def variant_name(row: dict[str, Any]) -> str:
    """``"take_rows/sorted_edges"`` of a row, e.g. ``"onehot/none"`` (the default)."""
    return f"{row.get('take_rows', 'onehot')}/{row.get('sorted_edges', 'none')}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of benchmark rows: each preset's speed-up over fp32 (same variant), the
    roofline lower bound (ms), the bound that sets it and measured / lower bound."""

    def key(r):
        return (r["model"], r["system"], r["mode"], variant_name(r))

    base = {key(r): r.get("median_ms") for r in rows if r["preset"] == "fp32" and not r.get("oom")}
    head = (
        f"{'model':10} {'system':16} {'mode':5} {'preset':13} {'variant':16} {'atoms':>7} "
        f"{'edges':>9} {'compile s':>9} {'ms':>9} {'atom-steps/s':>13} {'MiB':>8} {'vs fp32':>7} "
        f"{'GFLOP':>8} {'GB':>7} {'bound ms':>9} {'by':>5} {'x bound':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = (
            f"{r['model']:10} {r['system']:16} {r['mode']:5} {r['preset']:13} "
            f"{variant_name(r):16} {r['n_atoms']:7d} {r['n_edges']:9d}"
        )
        if r.get("oom"):
            lines.append(f"{lead}  out of memory")
            continue
        ref = base.get(key(r))
        speed = f"{ref / r['median_ms']:.2f}x" if ref else "-"
        mib = (r.get("compiled_bytes") or 0) / 2**20
        gflop = (r.get("flops") or 0) / 1e9
        gb = (r.get("bytes_accessed") or 0) / 1e9
        bound = r.get("lower_bound_ms")
        ratio = r.get("measured_over_bound")
        lines.append(
            f"{lead} {r['compile_s']:9.1f} {r['median_ms']:9.3f} "
            f"{r['atom_steps_per_s']:13.3g} {mib:8.1f} {speed:>7} {gflop:8.1f} {gb:7.2f} "
            f"{bound if bound is not None else float('nan'):9.3f} {r.get('bound') or '-':>5} "
            f"{ratio if ratio is not None else float('nan'):7.1f}"
        )
    return "\n".join(lines)


def avg_neighbours(system: System) -> float:
    """Mean number of neighbours per real atom of a benchmark system."""
    return system.n_edges / max(system.n_atoms, 1)


def init_for(size: str, system: System, *, cutoff: float, seed: int = 0) -> Any:
    """FP32 random-init parameters of ``size`` for ``system`` (shared by every preset)."""
    from mpnn_jax.potential import init_params

    model = make_model(
        size,
        policy="fp32",
        n_species=system.n_species,
        cutoff=cutoff,
        avg_num_neighbors=avg_neighbours(system),
    )
    return init_params(model, jax.random.PRNGKey(seed), to_device(system.graph))


def run_benchmark(
    *,
    sizes: Sequence[str],
    systems: Sequence[tuple[str, int]],
    presets: Sequence[str],
    modes: Sequence[str] = ("ef", "train"),
    cutoff: float = 5.0,
    repeats: int = 20,
    n_inputs: int = 3,
    warmup: int = 3,
    variants: Sequence[tuple[str, str]] = (("take", "none"),),
    ceilings: dict[str, float] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (size, system, mode, preset, variant) case, side by side with the same weights.

    Args:
        sizes: names from ``MODEL_SIZES``.
        systems: ``(kind, n_atoms)`` pairs, kind in {"cu", "water", "ethanol", "aspirin"}.
        presets: precision presets, e.g. ``("fp32", "bf16-mixed", "fp16-mixed", "fp32-highest")``.
        modes: ``"ef"`` (energy + forces) and/or ``"train"`` (a full training step).
        variants: ``(take_rows, sorted_edges)`` implementation variants, e.g.
            ``[("onehot", "none"), ("take", "none")]`` (see :func:`measure`).
        ceilings: :func:`device_ceilings` of this device for the roofline columns (None: the
            H100 defaults).
        progress: called with each finished row (e.g. to print it).

    Returns:
        The rows (see :func:`measure`).
    """
    from mpnn_jax.data import SpeciesTable
    from mpnn_jax.nn import ops

    policy_names(presets)
    for take_rows, sorted_edges in variants:  # validates names before any compile
        with ops.implementation(take_rows=take_rows, sorted_edges=sorted_edges):
            pass
    table = SpeciesTable((1, 6, 8, 29))  # H, C, O, Cu: one table for every system
    rows = []
    for kind, n_atoms in systems:
        system = build_system(kind, n_atoms, cutoff=cutoff, species_table=table)
        for size in sizes:
            params = init_for(size, system, cutoff=cutoff)
            for mode in modes:
                for preset in presets:
                    for take_rows, sorted_edges in variants:
                        row = measure(
                            size=size,
                            system=system,
                            preset=preset,
                            mode=mode,
                            params=params,
                            avg_num_neighbors=avg_neighbours(system),
                            cutoff=cutoff,
                            repeats=repeats,
                            n_inputs=n_inputs,
                            warmup=warmup,
                            take_rows=take_rows,
                            sorted_edges=sorted_edges,
                            ceilings=ceilings,
                        )
                        rows.append(row)
                        if progress is not None:
                            progress(row)
    return rows


def plot_throughput(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Throughput (atom-steps/s) against atoms, one line per (model, mode, preset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, mode in zip(axes, ("ef", "train")):
        groups: dict[tuple, list] = {}
        for r in rows:
            if r["mode"] == mode and not r.get("oom"):
                key = (r["model"], r["system"].split("-")[0], r["preset"])
                groups.setdefault(key, []).append((r["n_atoms"], r["atom_steps_per_s"]))
        for (model, kind, preset), pts in sorted(groups.items()):
            pts.sort()
            ax.plot(*zip(*pts), marker="o", label=f"{model} {kind} {preset}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms")
        ax.set_ylabel("atom-steps / s")
        ax.set_title("energy + forces" if mode == "ef" else "training step")
        ax.grid(True, which="both", alpha=0.3)
        if groups:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_ceilings(*, n: int = 8192, copy_mib: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured ceilings of this device: matmul TFLOP/s per dtype and copy bandwidth (GB/s).

    ``fp32`` runs at XLA's default precision (TF32 on NVIDIA GPUs), ``fp32-highest`` at full
    FP32; the copy counts bytes read plus bytes written.
    """
    out: dict[str, float] = {}
    key = jax.random.PRNGKey(0)
    for label, dtype, precision in (
        ("bf16", jnp.bfloat16, None),
        ("fp16", jnp.float16, None),
        ("fp32", jnp.float32, None),
        ("fp32-highest", jnp.float32, "highest"),
    ):
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
        f = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        t = time_compiled(f, [(a, b)], warmup=2, repeats=repeats)["median_ms"]
        out[f"matmul_tflops_{label}"] = 2 * n**3 / (t * 1e-3) / 1e12
    x = jnp.ones((copy_mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(lambda v: v * 2.0)
    t = time_compiled(f, [(x,)], warmup=2, repeats=repeats)["median_ms"]
    out["copy_GBps"] = 2 * x.size * 4 / (t * 1e-3) / 1e9
    return out


def device_memory_budget(fraction: float = 0.9) -> int | None:
    """``fraction`` of the device's allocatable bytes (GPU/TPU), None where not reported."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(fraction * stats["bytes_limit"])


def largest_system(
    *,
    size: str,
    kind: str,
    preset: str,
    mode: str,
    cutoff: float = 5.0,
    probe_atoms: tuple[int, int] = (500, 2000),
    budget_bytes: int | None = None,
    tries: int = 3,
) -> dict[str, Any]:
    """The largest ``kind`` system whose ``mode`` program fits the device, predicted and verified.

    XLA's memory analysis of the compiled program (arguments + outputs + temporaries) is linear in
    the number of atoms at fixed density; two probe sizes give the slope, the budget gives the
    predicted maximum, and one compiled run at that size (shrunk by 15% after an out-of-memory
    error, ``tries`` times) verifies it.

    Returns:
        ``bytes_per_atom``, ``predicted_atoms``, ``verified_atoms`` (None if no try fitted),
        ``budget_bytes`` and the probe points.
    """
    from mpnn_jax.data import SpeciesTable

    budget = budget_bytes or device_memory_budget()
    if budget is None:
        raise ValueError("the device does not report its memory: pass budget_bytes")
    table = SpeciesTable((1, 6, 8, 29))
    params: list[Any] = []  # initialised once, on the first (small) probe: shapes do not change

    def one(n_atoms: int) -> tuple[System, dict[str, Any]]:
        system = build_system(kind, n_atoms, cutoff=cutoff, species_table=table)
        if not params:
            params.append(init_for(size, system, cutoff=cutoff))
        row = measure(
            size=size,
            system=system,
            preset=preset,
            mode=mode,
            params=params[0],
            avg_num_neighbors=avg_neighbours(system),
            cutoff=cutoff,
            repeats=1,
            n_inputs=1,
            warmup=1,
        )
        return system, row

    points = []
    for n in probe_atoms:
        system, row = one(n)
        points.append((system.n_atoms, row.get("compiled_bytes") or 0))
    slope = bytes_per_atom(points)
    n0, b0 = points[-1]
    predicted = int(n0 + (budget - b0) / max(slope, 1.0))
    result: dict[str, Any] = dict(
        model=size,
        kind=kind,
        preset=preset,
        mode=mode,
        bytes_per_atom=slope,
        predicted_atoms=predicted,
        budget_bytes=budget,
        probes=points,
        verified_atoms=None,
    )
    target = predicted
    for _ in range(tries):
        system, row = one(target)
        if not row.get("oom") and (budget_bytes is None or row["compiled_bytes"] <= budget):
            result["verified_atoms"] = system.n_atoms
            result["verified_ms"] = row["median_ms"]
            result["verified_compiled_bytes"] = row["compiled_bytes"]
            break
        result.setdefault("failed_atoms", []).append(system.n_atoms)
        target = int(0.85 * target)
    return result
