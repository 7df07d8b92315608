"""The pallas kernels lowered to Triton IR, as on a GPU, on this CPU machine
(``experiments/perf/kernel_registers.py``).

The interpreter tests (``test_pallas_backend.py``) check the kernels' arithmetic but never the
Triton lowering, which rejects what the interpreter accepts (non-power-of-two tiles, some
indexing forms). Here every setting of the edge kernel that only a GPU would otherwise compile
is lowered, and its Triton module must carry the settings it was asked for. Compiling to
registers needs the `triton` package (not a dependency): that test skips without it.
"""

from __future__ import annotations

import re

import pytest
from repo_scripts import load_script

import mpnn_jax  # noqa: F401  (before JAX's backends start: mpnn_jax.compat)


@pytest.fixture(scope="module")
def kr():
    return load_script("experiments/perf/kernel_registers.py")


def test_occupancy_by_hand(kr):
    # 32 registers x 32 threads: 64 one-warp programs' worth of registers, capped at 32 blocks
    assert kr.occupancy(32, 1) == (32, 0.5)
    # 255 -> 256 registers x 32 threads = 8,192: 8 programs of one warp
    assert kr.occupancy(255, 1) == (8, 0.125)
    # 99 -> 104 x 256 threads = 26,624: 2 programs of 8 warps
    assert kr.occupancy(99, 8) == (2, 0.25)
    # 40 x 128 threads = 5,120: 12 programs by registers, 16 by warp slots
    assert kr.occupancy(40, 4) == (12, 0.75)


@pytest.mark.parametrize(
    "variant, warps",
    [
        ("pallas", 2),
        ("pallas:EDGE_STREAM=1", 2),
        ("pallas:EDGE_STREAM=3", 2),
        ("pallas:EDGE_STREAM=2,EDGE_WARPS=4", 4),
        ("pallas:EDGE_STREAM=2,BLOCK_EDGES=16", 4),
        ("pallas:EDGE_STREAM=2,BLOCK_EDGES=4", 1),
        ("pallas:EDGE_WARPS=16", 16),
    ],
)
def test_edge_kernel_lowers_to_triton(kr, variant, warps):
    """NequIP-M's edge kernel (32 channels, l <= 2, per-edge weights) under each setting: one
    Triton function of the kernel's name, with the warps asked for and a program id (the grid),
    FP32 accumulation of BF16 inputs."""
    (m,) = kr.lower_kernels("nequip-M", "bf16-mixed", variant, ["edge"])
    assert m["name"] == "mpnn_edge_contract" and m["num_warps"] == warps
    assert "tt.func public @mpnn_edge_contract" in m["ir"] and "tt.get_program_id" in m["ir"]
    assert "!tt.ptr<bf16>" in m["ir"] and re.search(r"arith\.addf .* : tensor<\d+x32xf32>", m["ir"])


def test_mace_kernels_lower_with_pairs_and_harmonic_tiles(kr):
    """MACE MP-S's three convolution kernels (128 channels, l <= 3 harmonics, weights per pair
    of reverse edges), the edge kernel streaming and reading each edge's 16 harmonics as one
    tile, and the order-3 product basis's G form."""
    kernels = ["node", "transposed", "edge", "sym_G"]
    mods = kr.lower_kernels("mace-mp-s", "fp32", "pallas:EDGE_STREAM=2,EDGE_SH_TILES=1", kernels)
    assert [m["kernel"] for m in mods] == kernels
    # the edge kernel: one warp over 2 edges (pallas_conv.edge_tile); the forms: one value per
    # thread
    assert [m["num_warps"] for m in mods] == [8, 8, 1, 4]
    assert mods[-1]["name"] == "mpnn_sparse_G"
    edge = mods[2]["ir"]
    assert "tensor<2x16x" in edge  # [block, d_sh] harmonic tiles
    assert "bf16" not in edge


def test_compiled_registers(kr):
    """With `triton` installed: ptxas compiles the edge kernel and reports registers within the
    hardware's 255 and streaming uses no more than the default."""
    pytest.importorskip("triton")
    mods = [
        kr.lower_kernels("nequip-M", "fp32", v, ["edge"])[0]
        for v in ("pallas", "pallas:EDGE_STREAM=2")
    ]
    res = kr.compile_modules(mods, kr.sys.executable)["kernels"]
    assert all(0 < r["registers"] <= 255 for r in res)
    assert res[1]["registers"] + res[1]["spill_store_B"] // 4 <= (
        res[0]["registers"] + res[0]["spill_store_B"] // 4
    )


@pytest.mark.slow  # 20 s on 2 cores: a whole MACE E+F program lowered
def test_program_runs_the_kernels_timed_alone(kr):
    """MACE MP-S's E+F program (``--program``) lowers every fused kernel the model uses, and its
    edge kernel is the one ``pallas_conv.py --parts`` times alone, but for the convolution's
    scale constant."""
    prog = kr.lower_program("mace-mp-s", "bf16-mixed", "ef", "pallas")
    names = {m["name"] for m in prog}
    assert {"mpnn_gather_sum", "mpnn_edge_contract", "mpnn_sparse_H", "mpnn_sparse_G"} <= names
    (edge,) = [m["ir"] for m in prog if m["name"] == "mpnn_edge_contract"]
    (alone,) = kr.lower_kernels("mace-mp-s", "bf16-mixed", "pallas", ["edge"])

    def strip(ir):  # constants (sizes, the scale) and SSA names aside: the operations
        ir = re.sub(r"arith\.constant [^:]+:", "arith.constant C :", ir)
        return re.sub(r"%[\w#]+", "%v", ir)

    def scalars(ir):
        return {float(v) for v in re.findall(r"arith\.constant ([-0-9.e+]+) : f32", ir)}

    assert strip(edge) == strip(alone["ir"])
    extra = scalars(edge) - scalars(alone["ir"])  # the scale: 1 / avg neighbours in the model
    assert len(extra) == 1 and 0.0 < extra.pop() < 1.0


def test_indexed_linear_lowers_to_rolled_tensor_core_loops(kr):
    """MACE MP-S's species-indexed linear (``pallas_linear``, 128 -> 128 channels, l = 3 chunk,
    4 sets): per set, a branch taken only where the block holds rows of that set (``scf.if``)
    around a rolled loop over input slices (``scf.for``; unrolled, the loops took 255 registers
    and spilled), each step a ``tt.dot`` of a [32, 32] slice by a [32, 128] weight tile
    accumulating in FP32: BF16 operands in bf16-mixed, FP32 as TF32 in fp32 (XLA's default)."""
    for preset, dtype in (("fp32", "f32"), ("bf16-mixed", "bf16")):
        (m,) = kr.lower_kernels("mace-mp-s", preset, "pallas", ["indexed"])
        assert m["name"] == "mpnn_indexed_linear" and m["num_warps"] == 4
        dots = [line for line in m["ir"].splitlines() if "tt.dot" in line]
        assert len(dots) == 4 and m["ir"].count("scf.for") == 4 and m["ir"].count("scf.if") >= 4
        for dot in dots:
            assert f"tensor<32x32x{dtype}> * tensor<32x128x{dtype}> -> tensor<32x128xf32>" in dot
            assert "inputPrecision = tf32" in dot
    import jax

    with jax.default_matmul_precision("highest"):  # the fp32-highest preset: IEEE products
        (m,) = kr.lower_kernels("mace-mp-s", "fp32", "pallas", ["indexed"])
    dots = [line for line in m["ir"].splitlines() if "tt.dot" in line]
    assert dots and not any("tf32" in dot for dot in dots)
