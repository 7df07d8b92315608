"""Interleaved timing (:func:`mpnn_jax.benchmark.time_interleaved`) on a fake clock: the calls,
their rotating order, the inputs used in turn and the per-round speed-ups; and the script that
uses it (``experiments/perf/interleaved.py``) on a tiny case."""

import json

import pytest
from repo_scripts import load_script

from mpnn_jax import benchmark as bm
from mpnn_jax.benchmark import timing


def test_interleaved_rounds_on_a_fake_clock(monkeypatch):
    clock = [0.0]
    calls = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def program(name, ms):
        def fn(x):
            calls.append((name, x))
            clock[0] += ms * 1e-3 * (2.0 if x == "slow" else 1.0)  # one input twice as slow
            return x

        return fn

    programs = {
        "fp32": (program("fp32", 3.0), [("a",), ("slow",)]),
        "bf16": (program("bf16", 2.0), [("a",), ("slow",)]),
        "tf32": (program("tf32", 1.5), [("a",), ("slow",)]),
    }
    out = bm.time_interleaved(programs, warmup=2, repeats=4)
    assert len(calls) == 3 * (2 + 4)
    timed = calls[6:]
    rounds = [[n for n, _ in timed[3 * i : 3 * i + 3]] for i in range(4)]
    assert rounds[0] == ["fp32", "bf16", "tf32"] and rounds[1] == ["bf16", "tf32", "fp32"]
    assert all(sorted(r) == ["bf16", "fp32", "tf32"] for r in rounds)
    assert [x for n, x in timed if n == "fp32"] == ["a", "slow", "a", "slow"]
    assert out["fp32"]["median_ms"] == pytest.approx(4.5) and out["fp32"]["repeats"] == 4
    assert out["fp32"]["min_ms"] == pytest.approx(3.0) and out["fp32"]["max_ms"] == pytest.approx(
        6.0
    )
    assert "ratio_to_first" not in out["fp32"]
    # the same input in each round: the per-round ratio is exact although the times vary
    assert out["bf16"]["ratio_to_first"] == pytest.approx(1.5)
    assert out["bf16"]["ratio_p10"] == pytest.approx(1.5) == out["bf16"]["ratio_p90"]
    assert out["tf32"]["ratio_to_first"] == pytest.approx(2.0)
    # any two programs from their rounds: tf32 over bf16 in every round
    assert out["tf32"]["round_ms"] == pytest.approx([1.5, 3.0, 1.5, 3.0])
    between = bm.round_ratio(out["bf16"]["round_ms"], out["tf32"]["round_ms"])
    assert between["median"] == pytest.approx(2.0 / 1.5) == between["p90"]
    with pytest.raises(ValueError, match="at least one"):
        bm.time_interleaved({})


def test_interleaved_script_on_a_tiny_case(tmp_path, capsys, monkeypatch):
    cli = load_script("experiments/perf/interleaved.py")
    out = tmp_path / "il.json"
    args = ["--out", str(out), "--case", "nequip-S:water:24:ef", "--repeats", "2"]
    programs = ["e3nn@fp32", "e3nn@bf16-mixed", "e3nn@fp32@edges=1024,nodes=64"]
    assert cli.main([*args, "--programs", *programs, "--consecutive", "2"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["preset"] for r in rows] == ["fp32", "bf16-mixed", "fp32"]
    assert all(r["interleaved"] and r["median_ms"] > 0 and r["repeats"] == 2 for r in rows)
    assert all(len(r["round_ms"]) == 2 and isinstance(r["pad_copies"], dict) for r in rows)
    assert all(r["consecutive"]["median_ms"] > 0 for r in rows)
    # the third program: the same atoms and edges padded to a multiple of 1024
    assert rows[2]["padded_edges"] % 1024 == 0 and rows[0]["padded_edges"] % 1024 != 0
    assert rows[2]["padded_nodes"] == 64 and rows[0]["padded_nodes"] % 64 != 0
    assert rows[2]["n_edges"] == rows[0]["n_edges"] and rows[2]["n_atoms"] == rows[0]["n_atoms"]
    printed = capsys.readouterr().out
    assert rows[1]["ratio_to_first"] > 0 and "speed-up vs first" in printed
    assert (
        "column's program over the row's" in printed
        and "pad copies of e3nn@fp32@edges=1024" in printed
    )
    # a program that compiles but does not fit when it runs sits out the rounds; the rest go on
    real = cli.bm.fits_at_run_time
    calls = []

    def second_does_not_fit(fn, inputs):
        calls.append(fn)
        return real(fn, inputs) and len(calls) != 2

    monkeypatch.setattr(cli.bm, "fits_at_run_time", second_does_not_fit)
    assert cli.main([*args, "--programs", *programs]) == 0
    monkeypatch.undo()
    rows = json.loads(out.read_text())["rows"]
    assert rows[1]["oom"] and "round_ms" not in rows[1]
    assert all(len(rows[i]["round_ms"]) == 2 for i in (0, 2))
    assert "e3nn@bf16-mixed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*args, "--programs", "e3nn-fp32"])
    with pytest.raises(SystemExit):
        cli.main([*args, "--programs", "e3nn@fp32@edges=x"])
    with pytest.raises(SystemExit):
        cli.main([*args, "--programs", "e3nn@fp32@faces=8"])
