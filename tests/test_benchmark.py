"""The benchmark harness keeps working (CPU, tiny): no timing claim is made or checked here."""

import importlib
import importlib.util
import json
import pkgutil

import jax
import numpy as np
import pytest
from repo_scripts import load_script

from mpnn_jax import benchmark as bm
from mpnn_jax.data import SpeciesTable

#: A test-only model size for the harness tests (one layer, 4 channels, l <= 1): the harness
#: treats every size alike, and compiling it costs half of ``nequip-S``'s on 2 cores.
XS = "nequip-XS"


@pytest.fixture
def xs_size(monkeypatch):
    """Registers :data:`XS` in ``MODEL_SIZES`` for one test (the CLI's ``--sizes`` choices too)."""
    monkeypatch.setitem(bm.MODEL_SIZES, XS, dict(name="nequip", channels=4, max_ell=1, n_layers=1))
    return XS


def test_quick_benchmark_rows_table_and_plot(tmp_path, xs_size):
    rows = bm.run_benchmark(
        sizes=[xs_size],
        systems=[("ethanol", 18)],
        presets=["fp32", "bf16-mixed"],
        modes=["ef", "train"],
        repeats=2,
        n_inputs=2,
        warmup=1,
    )
    assert [(r["mode"], r["preset"]) for r in rows] == [
        ("ef", "fp32"),
        ("ef", "bf16-mixed"),
        ("train", "fp32"),
        ("train", "bf16-mixed"),
    ]
    for r in rows:
        assert r["n_atoms"] == 18 and r["n_edges"] == 2 * 9 * 8
        assert r["median_ms"] > 0 and r["compile_s"] > 0 and r["atom_steps_per_s"] > 0
        assert r["compiled_bytes"] is None or r["compiled_bytes"] > 0
    json.dumps(rows)  # JSON-able
    table = bm.format_table(rows)
    assert "bf16-mixed" in table and "1.00x" in table
    bm.plot_throughput(rows, str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").stat().st_size > 1000
    # one row of panels per mode present: an E+F-only sweep draws no empty training panel
    import matplotlib.image

    both = matplotlib.image.imread(tmp_path / "t.png").shape[0]
    bm.plot_throughput([r for r in rows if r["mode"] == "ef"], str(tmp_path / "ef.png"))
    assert matplotlib.image.imread(tmp_path / "ef.png").shape[0] == pytest.approx(
        both / 2, rel=0.02
    )


@pytest.mark.parametrize("kind", ["cu", "water"])
def test_periodic_systems_have_realistic_density(kind):
    table = SpeciesTable((1, 6, 8, 29))
    system = bm.build_system(kind, 100, cutoff=5.0, species_table=table)
    cell = system.graph.globals["cell"][0]
    volume = abs(np.linalg.det(cell))
    if kind == "cu":  # fcc Cu, a = 3.61 Å: 4 atoms per 47.0 Å^3, 12 nearest neighbours
        assert system.n_atoms / volume == pytest.approx(4 / 3.61**3, rel=1e-6)
    else:  # liquid water: 0.0334 molecules per Å^3
        assert system.n_atoms / 3 / volume == pytest.approx(0.0334, rel=1e-6)
    assert 20 < bm.avg_neighbours(system) < 90


def test_interleaved_benchmark_rows_read_as_goal_figures(xs_size, monkeypatch):
    """--interleaved: every preset of a case compiled, then timed in rounds; the rows carry every
    round's time and the goals tool takes their speed-up from the rounds."""
    rounds = []
    real = bm.harness.time_interleaved

    def spy(programs, **kw):
        rounds.append(list(programs))
        return real(programs, **kw)

    monkeypatch.setattr(bm.harness, "time_interleaved", spy)
    rows = bm.run_benchmark(
        sizes=[xs_size], systems=[("ethanol", 18)], presets=["fp32", "bf16-mixed"],
        modes=["ef"], repeats=3, n_inputs=2, warmup=1, interleaved=True,
    )  # fmt: skip
    assert rounds == [["fp32", "bf16-mixed"]]  # one case, both presets in the same rounds
    assert [r["preset"] for r in rows] == ["fp32", "bf16-mixed"]
    for r in rows:
        assert r["interleaved"] and len(r["round_ms"]) == 3 and r["atom_steps_per_s"] > 0
        assert r["median_ms"] == pytest.approx(float(np.median(r["round_ms"])))
    big = [{**r, "n_atoms": 10_125} for r in rows]  # the speed-up goals need >= 10k atoms
    (fig,) = bm.goal_figures([{"info": {"device": "H100", "platform": "gpu"}, "rows": big}])
    ratio = bm.round_ratio(rows[0]["round_ms"], rows[1]["round_ms"])["median"]
    assert fig["interleaved"] and fig["value"] == pytest.approx(ratio, abs=1e-3)
    # the table's speed-up is the rounds' too: medians 20 / 10 ms, rounds' ratios 1.25, 2, 1.25
    rows[0].update(median_ms=20.0, round_ms=[10.0, 20.0, 30.0])
    rows[1].update(median_ms=10.0, round_ms=[8.0, 10.0, 24.0])
    assert " 1.25x " in bm.format_table(rows) and " 2.00x " not in bm.format_table(rows)


def test_interleaved_benchmark_drops_a_program_that_runs_out_of_memory(xs_size, monkeypatch):
    """A preset that compiles but runs out of device memory on its first call is an ``oom`` row
    and sits out the rounds; the others are still timed (and an error of another kind is
    raised, not swallowed)."""
    real = bm.harness.compile_program

    def compile_program(model, *args, **kw):
        fn, inputs, seconds = real(model, *args, **kw)
        if model.policy.name != "bf16-mixed":
            return fn, inputs, seconds

        def fails(*a):
            raise RuntimeError(f"{message}: while allocating 1.2 GiB")

        return fails, inputs, seconds

    monkeypatch.setattr(bm.harness, "compile_program", compile_program)
    common = dict(
        sizes=[xs_size], systems=[("ethanol", 18)], presets=["fp32", "bf16-mixed"],
        modes=["ef"], repeats=2, n_inputs=1, warmup=1, interleaved=True,
    )  # fmt: skip
    message = "RESOURCE_EXHAUSTED: Out of memory"
    fp32, bf16 = bm.run_benchmark(**common)
    assert bf16["oom"] and "median_ms" not in bf16
    assert not fp32.get("oom") and len(fp32["round_ms"]) == 2 and fp32["median_ms"] > 0
    assert "out of memory" in bm.format_table([fp32, bf16])
    message = "INVALID_ARGUMENT: shapes"
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        bm.run_benchmark(**common)


def test_build_system_edge_padding():
    table = SpeciesTable((1, 6, 8, 29))
    default = bm.build_system("water", 100, cutoff=5.0, species_table=table)
    padded = bm.build_system("water", 100, cutoff=5.0, species_table=table, edge_multiple=1000)
    n_edges = default.n_edges
    assert padded.n_edges == n_edges  # the real edges, padding aside
    assert default.graph.senders.shape[0] == -(-n_edges // 64) * 64  # small: multiples of 64
    assert padded.graph.senders.shape[0] == -(-n_edges // 1000) * 1000
    with pytest.raises(ValueError, match="edge_multiple"):
        bm.build_system("water", 100, cutoff=5.0, species_table=table, edge_multiple=-1)
    nodes = bm.build_system("water", 100, cutoff=5.0, species_table=table, node_multiple=100)
    n_atoms = default.n_atoms
    assert default.graph.nodes["species"].shape[0] == -(-(n_atoms + 1) // 8) * 8
    assert nodes.graph.nodes["species"].shape[0] == -(-(n_atoms + 1) // 100) * 100
    assert nodes.n_atoms == n_atoms and nodes.graph.senders.shape == default.graph.senders.shape
    with pytest.raises(ValueError, match="node_multiple"):
        bm.build_system("water", 100, cutoff=5.0, species_table=table, node_multiple=0)


def test_build_system_atom_orders():
    """Another order is the same structure: same atoms and edges, the order in name and field."""
    table = SpeciesTable((1, 6, 8, 29))
    base = bm.build_system("water", 100, cutoff=5.0, species_table=table)
    for how in ("morton", "species", "random"):
        s = bm.build_system("water", 100, cutoff=5.0, species_table=table, atom_order=how)
        assert s.name == f"{base.name}-{how}" and s.atom_order == how
        assert (s.n_atoms, s.n_edges) == (base.n_atoms, base.n_edges)
        real = slice(0, base.n_atoms)
        assert sorted(s.graph.nodes["species"][real]) == sorted(base.graph.nodes["species"][real])
        assert not np.array_equal(s.graph.nodes["positions"], base.graph.nodes["positions"])
    with pytest.raises(ValueError, match="unknown atom order"):
        bm.build_system("water", 100, cutoff=5.0, species_table=table, atom_order="hilbert")
    with pytest.raises(ValueError, match="periodic cells"):
        bm.build_system("ethanol", 9, cutoff=5.0, species_table=table, atom_order="morton")


@pytest.mark.slow  # the harness's own quick test above covers the rows it writes
def test_side_by_side_script_quick(tmp_path):
    """The side-by-side script's CPU smoke run: one row per variant, each padded as it says, and
    a table with each variant's speed-up over the first (no timing claims from the CPU)."""
    module = load_script("experiments/perf/side_by_side.py")
    out = tmp_path / "sbs.json"
    argv = ["--quick", "--settings", "edge_multiple", "--modes", "ef", "--presets", "fp32"]
    assert module.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["64", "128", "1024"]
    for r in rows:
        assert r["n_edges_padded"] % int(r["variant"]) == 0 and r["median_ms"] > 0
    table = module.format_table(rows)
    assert "1 (reference)" in table and table.count("x\n") + table.endswith("x") == 2


def test_bad_names_fail_before_compiling():
    with pytest.raises(ValueError, match="unknown policy"):
        bm.policy_names(["fp32", "bf17"])
    with pytest.raises(ValueError, match="unknown model size"):
        bm.make_model("huge", policy="fp32", n_species=1, cutoff=5.0, avg_num_neighbors=1.0)
    with pytest.raises(ValueError, match="unknown system kind"):
        bm.build_system("lava", 10, cutoff=5.0, species_table=SpeciesTable((1,)))


def test_bytes_per_atom_is_the_slope():
    assert bm.bytes_per_atom([(100, 1000 + 100 * 64), (200, 1000 + 200 * 64)]) == pytest.approx(64)


@pytest.mark.slow  # 12 s on 2 cores; the default suite keeps the bytes-per-atom rule above
def test_largest_system_prediction_fits_the_budget():
    budget = 230 * 2**20  # a toy budget on the CPU: a few hundred Cu atoms, well above the probes
    out = bm.largest_system(
        size="nequip-S",
        kind="cu",
        preset="fp32",
        mode="ef",
        probe_atoms=(32, 108),
        budget_bytes=budget,
    )
    slope = out["bytes_per_atom"]
    (n1, b1), (n0, b0) = out["probes"]
    assert slope == pytest.approx((b0 - b1) / (n0 - n1)) and slope > 0
    # linear in atoms: the budget line through the larger probe
    assert out["predicted_atoms"] == int(n0 + (budget - b0) / slope) > n0
    verified = out["verified_atoms"]
    assert verified is not None and n0 < verified <= out["predicted_atoms"]
    assert out["verified_compiled_bytes"] <= budget
    cells = round((verified / 4) ** (1 / 3))
    assert 4 * cells**3 == verified  # an fcc supercell (4 n^3 atoms)
    # the compiled size is close to the linear prediction (the method's premise)
    assert out["verified_compiled_bytes"] == pytest.approx(b0 + slope * (verified - n0), rel=0.1)


def test_docstring_examples():
    import doctest

    attempted = 0
    for info in pkgutil.iter_modules(bm.__path__):
        module = importlib.import_module(f"{bm.__name__}.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted > 0


def test_public_names_are_re_exported():
    """Every public name of every submodule is importable as ``mpnn_jax.benchmark.<name>``."""
    for info in pkgutil.iter_modules(bm.__path__):
        module = importlib.import_module(f"{bm.__name__}.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            assert getattr(bm, name) is value and name in bm.__all__, (info.name, name)


def test_backend_option_records_the_backend_and_rejects_unknown_ones(tmp_path, capsys, xs_size):
    rows = bm.run_benchmark(
        sizes=[xs_size],
        systems=[("ethanol", 9)],
        presets=["fp32"],
        modes=["ef"],
        repeats=1,
        n_inputs=1,
        warmup=1,
        backends=["e3nn"],
    )
    assert [r["backend"] for r in rows] == ["e3nn"] and rows[0]["median_ms"] > 0
    assert bm.backend_names(["auto"]) == (
        ["pallas"] if jax.default_backend() == "gpu" else ["e3nn"]
    )
    assert "backend" in bm.format_table(rows) and bm.backend_name({}) == "e3nn"
    with pytest.raises(ValueError, match=r"'no-such-backend'.*available backends: .*e3nn"):
        bm.run_benchmark(
            sizes=["nequip-S"],
            systems=[("lava", 9)],
            presets=["fp32"],
            backends=["no-such-backend"],
        )  # fails on the name, before building the (unknown) system or compiling anything

    cli = load_script("experiments/benchmark.py")
    out = tmp_path / "b.json"
    argv = ["--sizes", xs_size, "--systems", "ethanol:9", "--presets", "fp32", "--modes", "ef"]
    assert cli.main([*argv, "--repeats", "1", "--backends", "e3nn,", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["args"]["backends"] == ["e3nn"]
    assert [r["backend"] for r in result["rows"]] == ["e3nn"]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--backends", "e3nn,no-such-backend"])
    assert "available backends: e3nn" in capsys.readouterr().err
    # --replot draws the plot of that JSON without running anything; a JSON without rows is an
    # argument error that names the file
    import matplotlib.image

    png = tmp_path / "replot.png"
    assert cli.main(["--replot", str(out), "--plot", str(png)]) == 0
    assert matplotlib.image.imread(png).shape[0] > 100
    (tmp_path / "norows.json").write_text("{}")
    with pytest.raises(SystemExit):
        cli.main(["--replot", str(tmp_path / "norows.json"), "--plot", str(png)])
    assert "norows.json: not a benchmark JSON" in capsys.readouterr().err
    # several files of one device: one plot; files of two devices: an argument error
    other = {**result, "info": {**result["info"], "device": "another card"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert cli.main(["--replot", str(out), str(out), "--plot", str(png)]) == 0
    with pytest.raises(SystemExit):
        cli.main(["--replot", str(out), str(tmp_path / "other.json"), "--plot", str(png)])
    assert "different devices" in capsys.readouterr().err


@pytest.mark.slow  # 20 s on 2 cores; the quick harness test keeps the rest working
def test_roofline_columns_and_variants():
    """Every row has XLA's FLOPs and bytes and a positive lower bound; variants run side by side."""
    rows = bm.run_benchmark(
        sizes=["mace-S"],
        systems=[("water", 24)],
        presets=["fp32", "bf16-mixed"],
        modes=["ef"],
        repeats=1,
        n_inputs=1,
        warmup=1,
        variants=[("onehot", "none"), ("take", "receivers")],
    )
    assert [(r["preset"], bm.variant_name(r)) for r in rows] == [
        ("fp32", "onehot/none"),
        ("fp32", "take/receivers"),
        ("bf16-mixed", "onehot/none"),
        ("bf16-mixed", "take/receivers"),
    ]
    for r in rows:
        for key in ("flops", "bytes_accessed", "flops_ms", "bytes_ms", "lower_bound_ms"):
            assert r[key] > 0, key
        assert r["measured_over_bound"] == pytest.approx(r["median_ms"] / r["lower_bound_ms"])
        assert r["lower_bound_ms"] == max(r["flops_ms"], r["bytes_ms"])
        assert r["bound"] in ("flops", "bytes") and r["ceilings_source"] == "h100-default"
    assert rows[0]["ceiling_tflops"] == bm.H100_CEILINGS["matmul_tflops_fp32"]
    assert rows[2]["ceiling_tflops"] == bm.H100_CEILINGS["matmul_tflops_bf16"]
    json.dumps(rows)
    table = bm.format_table(rows)
    assert "take/receivers" in table and "x bound" in table


def test_roofline_with_measured_ceilings_and_missing_costs():
    ceilings = dict(bm.H100_CEILINGS, copy_GBps=1000.0)
    r = bm.roofline({"flops": 1e9, "bytes_accessed": 1e9}, preset="fp32", median_ms=2.0,
                    ceilings=ceilings)  # fmt: skip
    assert r["bytes_ms"] == pytest.approx(1.0) and r["bound"] == "bytes"
    assert r["ceilings_source"] == "measured" and r["measured_over_bound"] == pytest.approx(2.0)
    r = bm.roofline({"flops": None, "bytes_accessed": None}, preset="fp32", median_ms=2.0)
    assert r["lower_bound_ms"] is None and r["measured_over_bound"] is None

    class Listy:  # older JAX: one dict per program
        def cost_analysis(self):
            return [{"flops": 2.0, "bytes accessed": 8.0}, {"flops": 1.0}]

    class Broken:
        def cost_analysis(self):
            raise NotImplementedError

    assert bm.cost_analysis(Listy()) == {"flops": 3.0, "bytes_accessed": 8.0}
    assert bm.cost_analysis(Broken()) == {"flops": None, "bytes_accessed": None}


@pytest.mark.parametrize("by", ["senders", "receivers"])
def test_sort_edges_keeps_padding_last_and_edges_whole(by):
    table = SpeciesTable((1, 6, 8, 29))
    system = bm.build_system("ethanol", 27, cutoff=5.0, species_table=table)  # 3 molecules
    g = system.graph
    s = bm.sort_edges(g, by=by)
    assert np.all(np.diff(getattr(s, by)) >= 0)
    n_real = system.n_edges
    assert np.all(s.senders[n_real:] == system.n_atoms)  # padding edges stay last
    triples = lambda x: sorted(  # noqa: E731
        zip(x.senders.tolist(), x.receivers.tolist(), map(tuple, x.edges["shifts"].tolist()))
    )
    assert triples(s) == triples(g)
    with pytest.raises(ValueError, match="cannot sort"):
        bm.sort_edges(g, by="species")


def test_device_info_commit_from_the_environment_or_git(monkeypatch):
    """A copied tree's .git can be stale: ``MPNN_JAX_COMMIT`` names the code that really ran."""
    import subprocess

    from mpnn_jax.benchmark.timing import device_info

    monkeypatch.setenv("MPNN_JAX_COMMIT", "abc1234")
    assert device_info()["commit"] == "abc1234"
    monkeypatch.delenv("MPNN_JAX_COMMIT")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert device_info()["commit"] == head
