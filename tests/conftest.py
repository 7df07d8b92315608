"""Fixtures shared by all test directories (keep small): float64 on demand, a seeded rng, one
persistent XLA compilation cache for the session and true FP32 matmuls on accelerators; the order
of the test files (the heaviest first, for pytest-xdist); LLVM's -O0 for the compile-bound suite."""

import os

# The CPU suite is compile-bound (tiny graphs, hundreds of programs): LLVM at -O0 compiles them
# faster and runs them fast enough (the suite on 2 cores: 895 -> 590 s). Semantics are IEEE
# either way (no fast-math); set before JAX starts its backend, inherited by the subprocesses
# of the multi-process tests. An XLA_FLAGS that names the level itself wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import numpy as np
import pytest

#: Test files from the heaviest down (seconds on 2 cores, fresh run), scheduled in this order before
#: every other file: pytest-xdist's ``--dist loadfile`` hands whole files to the workers in the
#: collection's order, and a heavy file handed out last keeps one worker busy while the other has
#: nothing left (46 s of 714 before this order). The lighter files (< 25 s) follow in the
#: collection's order and fill the gaps. ``test_evaluate`` comes early: it trains the session's
#: shared tiny run (``tests/training/conftest.py``) before the other files that read it start.
HEAVY_FILES_FIRST = (
    "nn/test_pallas_backend.py",  # 147 s
    "models/test_nequip.py",  # 84
    "training/test_evaluate.py",  # 68
    "nn/test_pallas_symmetric.py",  # 83
    "training/test_parallel.py",  # 76
    "test_study.py",  # 72
    "test_potential.py",  # 72
    "models/test_mace.py",  # 62
    "training/test_train_presets.py",  # 64
    "training/test_resume.py",  # 61
    "nn/test_cueq_backend.py",  # 56
    "nn/test_linear_conv.py",  # 48
    "nn/test_symmetric_contraction.py",  # 45
    "md/test_simulate.py",  # 42
    "test_xla.py",  # 37
    "test_benchmark.py",  # 36
    "md/test_models.py",  # 35
    "test_notebooks.py",  # 33
    "training/test_cli.py",  # 30
    "test_compat.py",  # 27
)


def pytest_configure(config):
    """Keeps the collection's order of files for ``--dist loadfile``: xdist's default re-sorts them
    by their number of tests (most first), which put heavy files of few tests (the 4-device
    check, the training presets, the notebook) last."""
    if getattr(config.option, "loadscopereorder", None):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """:data:`HEAVY_FILES_FIRST` first, each file's tests together and in their order."""
    rank = {f"tests/{name}": i for i, name in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture
def x64():
    """Enables float64 for one test (``jax.enable_x64`` context), without leaking it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    """A seeded numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def shared_tmp_path(tmp_path_factory):
    """A directory of this session shared by all pytest-xdist workers (the parent of their base
    directories; without xdist, the base directory): for what one worker makes and another may
    read (with a lock where it is written, see ``tests/training/conftest.py``)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.getbasetemp().parent
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(shared_tmp_path):
    """A persistent XLA compilation cache for the whole session, shared by the pytest-xdist
    workers: tests that jit the same program through new function objects (each ``jax.jit(
    make_predictor(model))``, the resume tests' four compilations of one step) compile it once,
    and a program one worker compiled (the tiny-config training step of the training tests, in
    whichever files) the other loads. Its path, for subprocesses that should share it.

    An entry read while another process still writes it fails to decompress: JAX warns and
    compiles (the multi-process training tests have always shared one cache this way)."""
    path = shared_tmp_path / "xla_cache"
    path.mkdir(exist_ok=True)
    path = str(path)
    old = {
        k: getattr(jax.config, k)
        for k in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield path
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="session", autouse=True)
def true_fp32_matmuls():
    """True FP32 matmuls for the whole session on GPUs and TPUs (the CPU has no other kind).

    The suite's FP32 tolerances (against float64, finite differences, padding, rotations) are
    FP32's; on NVIDIA GPUs XLA runs FP32 matmuls as TF32 by default (10-bit mantissas, the speed
    setting of the ``fp32`` preset), which misses them by 1e-4 relative: on an H100 four tests
    failed that way and passed with ``highest`` (PERFORMANCE_LOG entry 17). The ``fp32`` preset's
    TF32 speed is the benchmarks' business; 16-bit policies name their own dot algorithms."""
    if jax.default_backend() == "cpu":
        yield
        return
    old = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    yield
    jax.config.update("jax_default_matmul_precision", old)
