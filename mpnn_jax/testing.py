"""Public test helpers: tiny graphs, padding, symmetry transforms and finite differences.

Users test their own models the way the library tests its own (cf. e3nn-jax's
``assert_equivariant``):

* :func:`molecule_graph`, :func:`periodic_graph`: random structures with a brute-force (numpy)
  neighbour list, as a single-graph ``jraph.GraphsTuple`` following the graph schema of
  :mod:`mpnn_jax.data.graphs` (this module does not depend on ``mpnn_jax.data``);
* :func:`batch`, :func:`pad`: batching and padding with jraph's conventions (the last graph is
  the padding graph);
* :func:`random_o3`, :func:`transform_graph`, :func:`permute_graph`: rotations/inversions,
  translations and node permutations of a graph;
* :func:`equivariance_error`, :func:`assert_equivariant`: for functions of ``e3nn.IrrepsArray``;
* :func:`tiny_model`, :func:`random_params`: small models and parameters with ``init``'s
  distribution, without compiling ``init``;
* :func:`central_difference`: central finite differences of a scalar function of an array;
  :func:`finite_difference_forces`, :func:`finite_difference_stress`.

Example:
    >>> import numpy as np
    >>> g = molecule_graph(np.random.default_rng(0), n_atoms=4, n_species=2, cutoff=3.0)
    >>> padded = pad(g, n_node=8, n_edge=32, n_graph=2)
    >>> padded.nodes["positions"].shape, int(padded.n_node[-1])
    ((8, 3), 4)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import e3nn_jax as e3nn
import jax
import jraph
import numpy as np

import mpnn_jax.compat  # noqa: F401  (jax.tree_map aliases that jraph still calls)


# --- neighbour lists and graphs ----------------------------------------------------------------
def tiny_model(name: str = "nequip", *, policy="fp32", n_species: int = 2, **sizes):
    """A small model with non-trivial scale, shift and E0s, for tests of tiny graphs.

    Args:
        name: ``"nequip"`` or ``"mace"``.
        policy: a precision policy or spec.
        n_species: number of species (E0s are ``-1.5, -2.5, ...`` eV).
        **sizes: model hyperparameters (see :func:`mpnn_jax.models.build_model`).

    Returns:
        The unbound Flax module (cutoff 3 Å, 4 average neighbours, scale 1.3 eV, shift 0.1 eV).
    """
    from mpnn_jax.models import build_model

    return build_model(
        name,
        policy=policy,
        n_species=n_species,
        cutoff=3.0,
        avg_num_neighbors=4.0,
        atomic_energies=[-1.5 - i for i in range(n_species)],
        scale=1.3,
        shift=0.1,
        **sizes,
    )


def random_params(model, graph: jraph.GraphsTuple, seed: int = 0, *, padded: bool = True):
    """Parameters with ``init``'s distribution, drawn in NumPy on its traced shapes.

    N(0, 1) for every weight, N(0, 1) / multiplicity for MACE's symmetric-contraction weights
    (leaves named ``w<order>_<irrep>``, ``[n_species, k, channels]``), as the models' ``init``
    draws them; nothing is compiled (on a 2-core CPU, compiling a MACE ``init`` costs more than
    most checks that use its parameters).

    Args:
        model: an unbound model (e.g. :func:`tiny_model`).
        graph: a graph of the shapes the model will see.
        seed: NumPy seed.
        padded: passed to :func:`mpnn_jax.potential.init_params`.

    Returns:
        The parameter pytree (``jax.Array`` leaves in ``init``'s dtypes, FP32).
    """
    import re

    import jax.numpy as jnp

    from mpnn_jax.potential import init_params

    shapes = jax.eval_shape(
        lambda g: init_params(model, jax.random.PRNGKey(0), g, padded=padded), graph
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.normal(size=leaf.shape)
        if re.fullmatch(r"w\d+_\w+", str(path[-1].key)):  # [n_species, k, channels]
            x = x / leaf.shape[1]
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def brute_force_neighbours(
    positions: np.ndarray, cell: np.ndarray | None, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full (symmetric) neighbour list by brute force over atoms and cell images.

    Args:
        positions: [n_atoms, 3] Å.
        cell: [3, 3] lattice vectors as rows (Å), periodic in all directions; ``None`` for a
            molecule.
        cutoff: Å.

    Returns:
        ``(senders, receivers, shifts)`` with ``senders``/``receivers`` int32 [n_edges] and
        ``shifts`` float64 [n_edges, 3] integer cell shifts ``S`` such that
        ``positions[receivers] - positions[senders] + S @ cell`` has length < cutoff (self-pairs
        with ``S = 0`` excluded).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if cell is None:
        images = np.zeros((1, 3))
        cell = np.zeros((3, 3))
    else:
        cell = np.asarray(cell, dtype=np.float64)
        volume = abs(np.linalg.det(cell))
        heights = [
            volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3]))
            for i in range(3)
        ]
        reps = [int(np.ceil(cutoff / h)) + 1 for h in heights]
        grids = np.meshgrid(*[np.arange(-n, n + 1) for n in reps], indexing="ij")
        images = np.stack([g.ravel() for g in grids], axis=-1).astype(np.float64)
    senders, receivers, shifts = [], [], []
    n = len(positions)
    for shift in images:
        offset = shift @ cell
        d = positions[None, :, :] - positions[:, None, :] + offset  # [sender, receiver, 3]
        dist = np.linalg.norm(d, axis=-1)
        s, r = np.nonzero(dist < cutoff)
        keep = ~((s == r) & np.all(shift == 0))
        senders.append(s[keep])
        receivers.append(r[keep])
        shifts.append(np.broadcast_to(shift, (int(keep.sum()), 3)))
    del n
    return (
        np.concatenate(senders).astype(np.int32),
        np.concatenate(receivers).astype(np.int32),
        np.concatenate(shifts).astype(np.float64),
    )


def graph_from_structure(
    positions: np.ndarray,
    species: np.ndarray,
    *,
    cutoff: float,
    cell: np.ndarray | None = None,
    energy: float = 0.0,
    forces: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    dtype: str | np.dtype = "float32",
) -> jraph.GraphsTuple:
    """One structure as a single-graph ``jraph.GraphsTuple`` (numpy arrays, graph schema).

    Args:
        positions: [n_atoms, 3] Å.
        species: int [n_atoms] species indices.
        cutoff: neighbour cutoff in Å.
        cell: [3, 3] rows are lattice vectors (periodic in 3D) or ``None`` (molecule).
        energy: total energy target (eV).
        forces: [n_atoms, 3] target (eV/Å), zeros if ``None``.
        stress: [3, 3] target (eV/Å^3), zeros if ``None``.
        dtype: float dtype of positions, shifts, cell and targets.

    Returns:
        The graph.
    """
    dtype = np.dtype(dtype)
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    senders, receivers, shifts = brute_force_neighbours(positions, cell, cutoff)
    periodic = cell is not None
    cell_arr = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    return jraph.GraphsTuple(
        nodes={
            "positions": positions.astype(dtype),
            "species": np.asarray(species, dtype=np.int32),
            "forces": (np.zeros((n, 3)) if forces is None else np.asarray(forces)).astype(dtype),
        },
        edges={"shifts": shifts.astype(dtype)},
        globals={
            "cell": cell_arr[None].astype(dtype),
            "energy": np.array([energy], dtype=dtype),
            "stress": (
                np.zeros((1, 3, 3)) if stress is None else np.reshape(stress, (1, 3, 3))
            ).astype(dtype),
            "weight": np.ones(1, dtype=dtype),
            "has_stress": np.array([float(stress is not None)], dtype=dtype),
            "pbc": np.array([float(periodic)], dtype=dtype),
        },
        senders=senders,
        receivers=receivers,
        n_node=np.array([n], dtype=np.int32),
        n_edge=np.array([len(senders)], dtype=np.int32),
    )


def _random_points(
    rng: np.random.Generator,
    n_atoms: int,
    sample: Callable[[], np.ndarray],
    min_dist: float,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    points: list[np.ndarray] = []
    for _ in range(10_000):
        p = sample()
        if not points or np.min(distance(np.array(points), p)) > min_dist:
            points.append(p)
            if len(points) == n_atoms:
                return np.array(points)
    raise RuntimeError("could not place the atoms; lower min_dist or n_atoms")


def molecule_graph(
    rng: np.random.Generator,
    *,
    n_atoms: int = 5,
    n_species: int = 2,
    cutoff: float = 3.0,
    min_dist: float = 0.9,
    dtype: str | np.dtype = "float32",
) -> jraph.GraphsTuple:
    """A random molecule (atoms at least ``min_dist`` Å apart in a small cube), non-periodic."""
    box = 1.2 * n_atoms ** (1 / 3) + 0.5
    pos = _random_points(
        rng,
        n_atoms,
        lambda: rng.uniform(0.0, box, size=3),
        min_dist,
        lambda a, p: np.linalg.norm(a - p, axis=-1),
    )
    species = rng.integers(0, n_species, size=n_atoms)
    return graph_from_structure(pos, species, cutoff=cutoff, dtype=dtype)


def random_triclinic_cell(rng: np.random.Generator, length: float = 4.0) -> np.ndarray:
    """A random, well-conditioned triclinic cell [3, 3] (rows are lattice vectors, Å)."""
    cell = length * (np.eye(3) + rng.uniform(-0.25, 0.25, size=(3, 3)))
    return cell if np.linalg.det(cell) > 0 else cell[::-1]


def periodic_graph(
    rng: np.random.Generator,
    *,
    n_atoms: int = 4,
    n_species: int = 2,
    cutoff: float = 3.0,
    cell_length: float = 4.0,
    min_dist: float = 1.0,
    dtype: str | np.dtype = "float32",
) -> jraph.GraphsTuple:
    """Atoms in a random triclinic periodic cell; minimum-image distance at least ``min_dist``."""
    cell = random_triclinic_cell(rng, cell_length)

    def distance(a: np.ndarray, p: np.ndarray) -> np.ndarray:
        frac = (a - p) @ np.linalg.inv(cell)
        frac -= np.round(frac)
        images = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
        d = (frac[:, None, :] + images[None]) @ cell  # [n, 27, 3]
        return np.min(np.linalg.norm(d, axis=-1), axis=-1)

    pos = _random_points(rng, n_atoms, lambda: rng.uniform(0, 1, size=3) @ cell, min_dist, distance)
    species = rng.integers(0, n_species, size=n_atoms)
    return graph_from_structure(pos, species, cutoff=cutoff, cell=cell, dtype=dtype)


def batch(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Concatenates graphs into one batch (numpy, ``jraph.batch_np``), without
    ``edges["reverse"]`` (jraph does not renumber it; :func:`mpnn_jax.data.batch_graphs` does)."""
    return jraph.batch_np([_without_reverse(g) for g in graphs])


def pad(graph: jraph.GraphsTuple, *, n_node: int, n_edge: int, n_graph: int) -> jraph.GraphsTuple:
    """Pads to fixed sizes with ``jraph.pad_with_graphs`` (the last graph becomes padding).

    ``n_node`` must exceed the number of real nodes and ``n_graph`` the number of real graphs.
    Padded features are zero, padded edges connect the first padding node to itself (their own
    reverses: ``edges["reverse"]`` is dropped; :func:`mpnn_jax.data.pad_graph` keeps it).
    """
    graph = _without_reverse(graph)
    return jraph.pad_with_graphs(graph, n_node=n_node, n_edge=n_edge, n_graph=n_graph)


def _without_reverse(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    if not isinstance(graph.edges, dict) or "reverse" not in graph.edges:
        return graph
    return graph._replace(edges={k: v for k, v in graph.edges.items() if k != "reverse"})


# --- symmetry transforms ------------------------------------------------------------------------
def random_o3(rng: np.random.Generator, *, improper: bool = True) -> np.ndarray:
    """A random orthogonal 3x3 matrix (float64), ``det = -1`` if ``improper`` (with inversion)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if improper else q


def transform_graph(
    graph: jraph.GraphsTuple,
    *,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
) -> jraph.GraphsTuple:
    """Applies ``r -> R r + t`` to positions and ``a -> R a`` to the lattice vectors (and forces).

    Shifts (integer lattice coordinates) are unchanged, so edge vectors become ``R r_ij``.
    """
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    t = np.zeros(3) if translation is None else np.asarray(translation, dtype=np.float64)
    nodes, glob = dict(graph.nodes), dict(graph.globals)
    dt = np.asarray(nodes["positions"]).dtype
    nodes["positions"] = (np.asarray(nodes["positions"], np.float64) @ rot.T + t).astype(dt)
    nodes["forces"] = (np.asarray(nodes["forces"], np.float64) @ rot.T).astype(dt)
    glob["cell"] = (np.asarray(glob["cell"], np.float64) @ rot.T).astype(dt)
    glob["stress"] = (rot @ np.asarray(glob["stress"], np.float64) @ rot.T).astype(dt)
    return graph._replace(nodes=nodes, globals=glob)


def permute_graph(graph: jraph.GraphsTuple, perm: np.ndarray) -> jraph.GraphsTuple:
    """Reorders the nodes of a single-graph batch: new node ``k`` is old node ``perm[k]``."""
    perm = np.asarray(perm)
    inverse = np.argsort(perm)
    nodes = {k: np.asarray(v)[perm] for k, v in graph.nodes.items()}
    return graph._replace(
        nodes=nodes,
        senders=inverse[np.asarray(graph.senders)].astype(np.int32),
        receivers=inverse[np.asarray(graph.receivers)].astype(np.int32),
    )


# --- equivariance --------------------------------------------------------------------------------
@jax.jit
def _transform(x: e3nn.IrrepsArray, rotation: jax.Array) -> e3nn.IrrepsArray:
    return x.transform_by_matrix(rotation)


def equivariance_error(
    fn: Callable[..., e3nn.IrrepsArray],
    rotation: np.ndarray,
    *args: e3nn.IrrepsArray,
    jit: bool = True,
) -> float:
    """``max |fn(D(R) x...) - D(R) fn(x...)|`` for IrrepsArray arguments (``R`` may have det -1).

    Arguments that are not ``e3nn.IrrepsArray`` are passed unchanged; ``fn`` is jitted unless
    ``jit`` is False.
    """
    rot = np.asarray(rotation)
    fn = jax.jit(fn) if jit else fn

    def tr(x):
        if isinstance(x, e3nn.IrrepsArray):
            return _transform(x, np.asarray(rot, x.dtype))
        return x

    out = fn(*args)
    out_rot = fn(*[tr(a) for a in args])
    out32 = e3nn.IrrepsArray(out.irreps, np.asarray(out.array, np.float32))
    expected = _transform(out32, np.asarray(rot, np.float32))
    diff = np.asarray(out_rot.array, np.float64) - np.asarray(expected.array, np.float64)
    return float(np.max(np.abs(diff)))


def assert_equivariant(
    fn: Callable[..., e3nn.IrrepsArray],
    rotation: np.ndarray,
    *args: e3nn.IrrepsArray,
    atol: float = 1e-5,
    jit: bool = True,
) -> float:
    """Asserts :func:`equivariance_error` ``<= atol`` and returns the error."""
    err = equivariance_error(fn, rotation, *args, jit=jit)
    if not err <= atol:
        raise AssertionError(f"equivariance error {err:.3e} > atol {atol:.1e}")
    return err


# --- finite differences --------------------------------------------------------------------------
def central_difference(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float) -> np.ndarray:
    """Central finite-difference gradient of a scalar function ``f`` at ``x`` (any shape)."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        dx = np.zeros_like(x)
        dx[idx] = eps
        grad[idx] = (float(f(x + dx)) - float(f(x - dx))) / (2 * eps)
    return grad


def finite_difference_forces(
    energy_fn: Callable[[jraph.GraphsTuple], float], graph: jraph.GraphsTuple, eps: float = 1e-4
) -> np.ndarray:
    """``-dE/dpositions`` by central differences; ``energy_fn(graph)`` returns the total energy."""
    positions = np.asarray(graph.nodes["positions"])

    def f(x):
        return energy_fn(
            graph._replace(nodes={**graph.nodes, "positions": x.astype(positions.dtype)})
        )

    return -central_difference(f, positions, eps)


def finite_difference_stress(
    energy_fn: Callable[[jraph.GraphsTuple], float], graph: jraph.GraphsTuple, eps: float = 1e-4
) -> np.ndarray:
    """``(1/V) dE/d(strain)`` [3, 3] of a single periodic graph by central differences.

    Positions and cell are deformed by ``(I + eps_sym)``, ``eps_sym`` the symmetric strain.
    """
    positions = np.asarray(graph.nodes["positions"])
    cell = np.asarray(graph.globals["cell"])
    dt = positions.dtype

    def f(strain):
        deform = np.eye(3) + 0.5 * (strain + strain.T)
        return energy_fn(
            graph._replace(
                nodes={**graph.nodes, "positions": (positions @ deform).astype(dt)},
                globals={**graph.globals, "cell": (cell @ deform).astype(dt)},
            )
        )

    volume = abs(np.linalg.det(np.asarray(cell[0], np.float64)))
    return central_difference(f, np.zeros((3, 3)), eps) / volume


def tree_max_abs_diff(a, b) -> float:
    """``max |a - b|`` over matching leaves of two pytrees (as float64)."""
    diffs = jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a,
        b,
    )
    return max(jax.tree_util.tree_leaves(diffs), default=0.0)
