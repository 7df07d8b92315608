"""The performance goals read from result files: which rows pair up, which files count, and the
committed results read back."""

import json
from pathlib import Path

import pytest
from repo_scripts import load_script

from mpnn_jax import benchmark as bm

ROOT = Path(__file__).resolve().parents[1]
H100 = {"device": "NVIDIA H100 80GB HBM3", "platform": "gpu"}


def _row(preset, ms, model="nequip-M", mode="ef", atoms=10125, **kw):
    return dict(
        model=model,
        system=f"water-{atoms}",
        n_atoms=atoms,
        mode=mode,
        preset=preset,
        median_ms=ms,
        **kw,
    )


def test_ratios_pair_rows_of_one_case_in_one_file():
    rows = [
        _row("fp32", 15.0),
        _row("bf16-mixed", 10.0),  # 1.5x: met
        _row("fp16-mixed", 5.0),  # not a goal's preset
        _row("fp32", 40.0, mode="train"),
        _row("bf16-mixed", 32.0, mode="train"),  # 1.25x: not met
        _row("fp32", 16.0, backend="cueq"),  # another backend: its own pair, without bf16
        _row("fp32", 2.0, atoms=5000),  # too small for the speed-up goals
        _row("bf16-mixed", 1.0, atoms=5000),
        _row("bf16-mixed", 1.0, mode="train", oom=True),
    ]
    figs = bm.goal_figures([{"info": H100, "rows": rows}], ["a.json"])
    got = {(f["goal"], f["backend"]): f for f in figs}
    assert set(got) == {("ef_speedup", "e3nn"), ("train_speedup", "e3nn")}
    ef, train = got["ef_speedup", "e3nn"], got["train_speedup", "e3nn"]
    assert ef["value"] == pytest.approx(1.5) and ef["met"] and ef["source"] == "a.json"
    assert train["value"] == pytest.approx(1.25) and not train["met"] and not train["reached"]
    # the fp32 row of one file never pairs with the bf16 row of another
    split = [{"info": H100, "rows": rows[:1]}, {"info": H100, "rows": rows[1:2]}]
    assert bm.goal_figures(split) == []


def test_cpu_files_make_no_claim_and_other_devices_do_not_meet():
    rows = [_row("fp32", 30.0), _row("bf16-mixed", 10.0)]
    assert bm.goal_figures([{"info": {"device": "cpu", "platform": "cpu"}, "rows": rows}]) == []
    (f,) = bm.goal_figures([{"device": {"device": "NVIDIA H200", "platform": "gpu"}, "rows": rows}])
    assert f["reached"] and not f["met"]
    assert "reached, not on an H100" in bm.format_goals([f])


def test_largest_and_mp_s_goals():
    largest = [
        dict(model="mace-mp-s", kind="water", mode="ef", preset=p, verified_atoms=n)
        for p, n in (("fp32", 1000), ("bf16-mixed", 1800))
    ]
    rows = [_row("fp32", 5.0, model="mace-mp-s", atoms=3000)]
    figs = {
        f["goal"]: f for f in bm.goal_figures([{"info": H100, "rows": rows, "largest": largest}])
    }
    assert figs["largest_ef"]["value"] == pytest.approx(1.8) and figs["largest_ef"]["met"]
    assert figs["mp_s_fp32"]["value"] == 5.0 and figs["mp_s_fp32"]["met"]  # <= 5.52 ms
    slow = [_row("fp32", 6.0, model="mace-mp-s", atoms=3000)]
    (f,) = bm.goal_figures([{"info": H100, "rows": slow}])
    assert not f["met"] and "not met" in bm.format_goals([f])


def test_summary_prefers_a_met_figure_then_the_named_device():
    def fig(value, device):
        return bm.goal_figures(
            [
                {
                    "info": {"device": device, "platform": "gpu"},
                    "rows": [_row("fp32", value), _row("bf16-mixed", 1.0)],
                }
            ]
        )[0]

    h100_low, h200_low = fig(1.2, H100["device"]), fig(1.4, "NVIDIA H200")
    assert bm.goal_summary([h200_low, h100_low]) == [h100_low]  # neither reaches 1.5x: the H100
    h200_high = fig(1.6, "NVIDIA H200")
    assert bm.goal_summary([h100_low, h200_high]) == [h200_high]  # reached somewhere beats not
    h100_met = fig(1.55, H100["device"])
    assert bm.goal_summary([h200_high, h100_low, h100_met]) == [h100_met]


def test_interleaved_rounds_give_the_ratio_and_win_the_summary():
    """A speed-up from interleaved rounds is the median of the rounds' ratios (not the ratio of
    the medians), pairs rows of one padding only, is compared with the fastest FP32 program timed
    the same way, and on an H100 outranks any single-row ratio, even one that meets the goal."""

    def rounds(preset, times, **kw):
        return _row(preset, sorted(times)[len(times) // 2], mode="train", interleaved=True,
                    round_ms=times, **kw)  # fmt: skip

    # the medians' ratio is 2.0, the rounds' ratios 1.25, 2.0 and 1.25
    fp32, bf16 = [10.0, 20.0, 30.0], [8.0, 10.0, 24.0]
    other = [t * 1.02 for t in fp32]  # the same atoms, padded otherwise
    result = {"info": H100, "rows": [
        rounds("fp32", fp32, padded_edges=1024), rounds("bf16-mixed", bf16, padded_edges=1024),
        rounds("fp32", other, padded_edges=2048), rounds("bf16-mixed", fp32, padded_edges=2048),
    ]}  # fmt: skip
    figs = bm.goal_figures([result], ["rounds"])
    assert len(figs) == 2 and all(f["interleaved"] for f in figs)
    assert sorted(f["value"] for f in figs) == pytest.approx([1.02, 1.25])
    assert all(f["counts"] and f["fastest_fp32_ms"] == 20.0 for f in figs)
    # a single-row figure that meets the goal, its FP32 program 25% faster than the rounds'
    single = {"info": H100, "rows": [_row("fp32", 12.0, mode="train"),
                                     _row("bf16-mixed", 9.0, mode="train")]}  # fmt: skip
    both = bm.goal_figures([single, result], ["single", "rounds"])
    assert all(f["counts"] for f in both)  # each against the fastest FP32 of its own timing
    (best,) = bm.goal_summary(both)
    assert best["interleaved"] and best["value"] == pytest.approx(1.25) and not best["met"]
    assert "interleaved rounds: water-10125" in bm.format_goals(both)
    # rounds on another card do not outrank the H100's single rows
    h200 = dict(result, info={"device": "NVIDIA H200", "platform": "gpu"})
    (best,) = bm.goal_summary(bm.goal_figures([single, h200], ["single", "h200"]))
    assert best["source"] == "single" and best["met"]


def test_committed_h100_results_read_back():
    """The session-15 H100 files: each figure is the ratio of the file's own two rows."""
    path = ROOT / "experiments/results/benchmarks/h100_s15/seed_mace.json"
    result = json.loads(path.read_text())
    figs = bm.goal_figures([result])
    assert {f["goal"] for f in figs} == {"ef_speedup", "train_speedup"}
    for f in figs:
        mode = "ef" if f["goal"] == "ef_speedup" else "train"
        ms = {r["preset"]: r["median_ms"] for r in result["rows"] if r["mode"] == mode}
        assert f["value"] == pytest.approx(ms["fp32"] / ms["bf16-mixed"], abs=1e-3)
        assert f["met"] == (f["value"] >= bm.GOALS[f["goal"]].target)
        assert "H100" in f["device"]


def test_a_ratio_counts_only_against_the_fastest_fp32_program():
    """A bf16-mixed step 1.6x faster than a slow FP32 program is no gain where another run's FP32
    program is as fast: that ratio neither reaches nor meets the goal; within 5% it counts."""
    slow = {"info": H100, "rows": [_row("fp32", 16.0), _row("bf16-mixed", 10.0)]}
    fast = {"info": H100, "rows": [_row("fp32", 12.0), _row("bf16-mixed", 10.0)]}
    near = {"info": H100, "rows": [_row("fp32", 12.5), _row("bf16-mixed", 8.0)]}
    figs = bm.goal_figures([slow, fast], ["slow", "fast"])
    by = {f["source"]: f for f in figs}
    assert by["slow"]["value"] == pytest.approx(1.6) and not by["slow"]["counts"]
    assert not by["slow"]["reached"] and not by["slow"]["met"]
    assert by["fast"]["counts"] and by["fast"]["fastest_fp32_ms"] == 12.0
    assert bm.goal_summary(figs) == [by["fast"]]  # 1.2x, counted, beats 1.6x against slow fp32
    alone = bm.goal_figures([slow], ["slow"])
    assert "vs slower fp32" not in bm.format_goals(alone) and alone[0]["met"]
    (only_slow,) = [f for f in figs if f["source"] == "slow"]
    assert "vs slower fp32 (12 ms)" in bm.format_goals([only_slow])
    (n,) = [f for f in bm.goal_figures([fast, near], ["fast", "near"]) if f["source"] == "near"]
    assert n["counts"] and n["met"]  # 12.5 <= 1.05 x 12.0: 1.56x met
    # another device's FP32 program does not discount this one's
    other = {"info": {"device": "NVIDIA H200", "platform": "gpu"}, "rows": fast["rows"]}
    assert all(f["counts"] for f in bm.goal_figures([slow, other]))


def test_rounds_count_against_the_fastest_fp32_rounds_within_3_percent():
    """Interleaved rounds are steadier between machines than single rows, so their FP32 program
    may be at most FP32_SLACK_ROUNDS (3%) slower than the fastest FP32 rounds of the case: the
    session-29 case, an FP32 program 4.5% slower than a faster FP32 tile timed in other rounds,
    no longer meets the training goal with 1.31x; 2% slower still counts. Single rows keep 5%."""

    def rounds(fp32_ms, bf16_ms, interleaved=True):
        def kw(t):
            return dict(interleaved=True, round_ms=[t] * 3) if interleaved else {}

        rows = [_row(p, t, mode="train", **kw(t))
                for p, t in (("fp32", fp32_ms), ("bf16-mixed", bf16_ms))]  # fmt: skip
        return {"info": H100, "rows": rows}

    old, new = rounds(37.91, 28.91), rounds(36.28, 28.50)  # h100_s29: call e, call m's picks
    by = {f["source"]: f for f in bm.goal_figures([old, new], ["old", "new"])}
    assert by["old"]["value"] == pytest.approx(37.91 / 28.91, abs=1e-3) and not by["old"]["counts"]
    assert not by["old"]["met"] and by["new"]["counts"] and not by["new"]["met"]
    (best,) = bm.goal_summary(list(by.values()))
    assert best["source"] == "new" and best["value"] == pytest.approx(36.28 / 28.50, abs=1e-3)
    near = rounds(36.28 * 1.02, 28.0)
    n = {f["source"]: f for f in bm.goal_figures([near, new], ["near", "new"])}["near"]
    assert n["counts"] and n["met"]
    single = rounds(36.28 * 1.045, 28.0, interleaved=False)
    fast = rounds(36.28, 28.50, interleaved=False)
    s = {f["source"]: f for f in bm.goal_figures([single, fast], ["single", "fast"])}["single"]
    assert s["counts"] and s["met"]  # 4.5% within single rows' 5%


def test_a_slow_atom_order_is_compared_with_the_fastest_order():
    """The same atoms shuffled (session 20: fp32 65.8 ms against 53.8 in the input order) make a
    higher ratio against a slower FP32 program: it does not count; another order that is as fast
    does."""
    kw = dict(model="mace-mp-s", atoms=52728)

    def rows(order, fp32, bf16):
        suffix = "" if order == "input" else f"-{order}"
        return [
            {**_row(p, ms, **kw), "system": f"water-52728{suffix}", "atom_order": order}
            for p, ms in (("fp32", fp32), ("bf16-mixed", bf16))
        ]

    result = {"info": H100, "rows": rows("input", 53.8, 45.5) + rows("random", 65.8, 50.5)}
    result["rows"] += rows("morton", 54.2, 45.4)
    by = {f["system"]: f for f in bm.goal_figures([result])}
    assert by["water-52728-random"]["value"] == pytest.approx(65.8 / 50.5, abs=1e-3)
    assert (
        not by["water-52728-random"]["counts"]
        and by["water-52728-random"]["fastest_fp32_ms"] == 53.8
    )
    assert by["water-52728-morton"]["counts"] and by["water-52728"]["counts"]


def test_session16_spilling_fp32_ratio_does_not_count():
    """Session 16's first timing of the sparse forms ran an FP32 program that spilled registers
    (21.4 ms E+F); against the fixed one (14.7 ms) its 1.77x does not count."""
    d = ROOT / "experiments/results/benchmarks/h100_s16"
    files = [d / "sparse_mace.json", d / "sparse_mace_final.json"]
    figs = bm.goal_figures([json.loads(f.read_text()) for f in files], [f.name for f in files])
    ef = [f for f in figs if f["goal"] == "ef_speedup" and f["source"] == "sparse_mace.json"]
    assert ef and not any(f["counts"] for f in ef)
    (best,) = [f for f in bm.goal_summary(figs) if f["goal"] == "ef_speedup"]
    assert best["source"] == "sparse_mace_final.json" and best["fp32_ms"] < 15.0


def test_goals_option_of_the_script(tmp_path, capsys):
    cli = load_script("experiments/benchmark.py")
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "info": H100,
                "rows": [_row("fp32", 13.0, mode="train"), _row("bf16-mixed", 10.0, mode="train")],
            }
        )
    )
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"note": "no rows"}))
    kernels = tmp_path / "kernels.json"  # a perf script's table of kernels alone: not model rows
    kernels.write_text(json.dumps({"device": "NVIDIA H100", "rows": [{"kernel": "fwd", "ms": 1}]}))
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"device": H100, "rows": 3}))
    assert cli.main(["--goals", str(good), str(empty), str(kernels), str(counts)]) == 0
    out = capsys.readouterr().out
    assert "train_speedup" in out and "1.3x" in out and " met " in out
    with pytest.raises(SystemExit):
        cli.main(["--goals", str(empty)])
    with pytest.raises(SystemExit):
        cli.main(["--goals", str(kernels), str(counts)])
