"""``experiments/perf/pick_parts.py``: the fastest kernel settings of a ``pallas_conv.py
--parts-only`` sweep per preset, read back from the committed H100 sweeps (their picks are the
programs the interleaved rounds timed) and on synthetic sweeps (thresholds, failed variants,
settings of two kernels joined)."""

import json
import math

import pytest
from repo_scripts import ROOT, load_script

RESULTS = ROOT / "experiments/results/benchmarks"


@pytest.fixture(scope="module")
def pp():
    return load_script("experiments/perf/pick_parts.py")


def _sweep(path, preset, part, times):
    """A pallas_conv.py result file with one ``parts`` entry (plus the floors it also writes)."""
    row = {f"floor_MB {part}": 100.0, **{f"{v} {part}": t for v, t in times.items()}}
    path.write_text(json.dumps({"kernels": {f"water:10000 {preset} parts": row}}))
    return str(path)


def _picks(pp, capsys, *files):
    assert pp.main(list(files)) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split() for line in lines if not line.startswith("#"))


def test_committed_sweeps_give_the_picks_that_were_timed(pp, capsys):
    """Session 28's node and transposed sweeps (the picks that call t timed in rounds, log entry
    30) and session 29's edge sweep (call m's one-warp edge programs, entry 31)."""
    call_t = RESULTS / "h100_s28/call_t"
    picks = _picks(pp, capsys, str(call_t / "trans_sweep.json"), str(call_t / "node_sweep.json"))
    assert picks == {"fp32": "pallas:BLOCK_NODES=4",
                     "bf16-mixed": "pallas:BLOCK_NODES_T=8,BLOCK_NODES=16"}  # fmt: skip
    assert (
        "programs: pallas@fp32 pallas@bf16-mixed " + picks["bf16-mixed"]
        in (call_t / "times.txt").read_text()
    )
    edge = RESULTS / "h100_s29/call_m/edge_sweep.json"
    assert _picks(pp, capsys, str(edge)) == dict.fromkeys(
        ["fp32", "bf16-mixed"], "pallas:BLOCK_EDGES=2,EDGE_WARPS=1"
    )
    parts = pp.parts_of([str(edge)])
    assert parts["fp32"]["edge"]["pallas"] == pytest.approx(1.685, abs=1e-3)


def test_a_setting_must_beat_the_defaults_by_min_gain(pp, tmp_path, capsys):
    times = {"pallas": 1.0, "pallas:BLOCK_NODES=4": 0.98, "pallas:NUM_WARPS=2": math.nan}
    f = _sweep(tmp_path / "a.json", "fp32", "node", times)
    assert _picks(pp, capsys, f) == {"fp32": "pallas"}  # 2% < 3%; NaN (a failed variant) skipped
    assert pp.main([f, "--min-gain", "0.01"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "fp32 pallas:BLOCK_NODES=4"
    assert pp.pick({"pallas:A=1": 0.5}, 0.03) == "pallas"  # no defaults timed: no pick


def test_settings_of_two_kernels_join_and_the_first_keeps_a_shared_key(pp):
    assert pp.join(["pallas:A=1", "pallas:B=2,A=3", "pallas"]) == "pallas:A=1,B=2"
    assert pp.join(["pallas", "pallas"]) == "pallas"


def test_a_file_without_parts_is_an_error(pp, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"kernels": {}, "agreement_fp32": {"out": 1e-4}}))
    assert pp.main([str(empty)]) == 1
    assert "no kernel parts" in capsys.readouterr().err
