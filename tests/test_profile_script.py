"""``experiments/perf/profile.py``: the attribution of GPU kernels to modules and precision stages
(the figures of PERFORMANCE_LOG entry 8 are sums over it) and the trace reader."""

import gzip
import json

from repo_scripts import load_script


def _load():
    return load_script("experiments/perf/profile.py")


def test_stage_of_names_module_stage_and_backward():
    stage_of = _load().stage_of
    fwd = "jit(predict)/jvp(NequIP)/NequIPLayer_2/Convolution_0/RadialMLP_0/radial/jit(silu)/mul"
    assert stage_of(fwd) == "NequIPLayer_2:radial"
    bwd = "jit(predict)/transpose(jvp(NequIP))/NequIPLayer_1/Convolution_0/messages/add_any"
    assert stage_of(bwd) == "NequIPLayer_1:messages bwd"
    # the innermost stage wins (a gather of the aggregation stage inside the update's linear)
    inner = "jit(predict)/jvp(MACE)/Linear_3/update/aggregation/convert_element_type"
    assert stage_of(inner) == "Linear_3:aggregation"
    assert stage_of("jit(predict)/transpose(jvp(geometry))/scatter-add") == "-:geometry bwd"
    assert stage_of("") == "(other)"
    assert stage_of("state.opt_state[0].mu['params']['w0']") == "(other)"


def test_kernel_times_and_op_names(tmp_path):
    module = _load()
    trace = tmp_path / "plugins" / "profile" / "run1"
    trace.mkdir(parents=True)
    events = [
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 7, "dur": 30.0, "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "pid": 7, "dur": 12.0, "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "pid": 1, "dur": 99.0, "args": {"hlo_op": "host_side"}},  # not on the GPU
    ]
    with gzip.open(trace / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert module.kernel_times(str(tmp_path)) == {"fusion.1": 42.0}
    hlo = '  %fusion.1 = f32[4]{0} fusion(%p), metadata={op_name="jit(f)/jvp(M)/radial/mul"}\n'
    assert module.op_names(hlo) == {"fusion.1": "jit(f)/jvp(M)/radial/mul"}
    # a fusion without op_name of its own takes the first one inside the computation it calls
    hlo = (
        "%fused_pad.3 (param_0.1: bf16[4,2]) -> f32[8,2] {\n"
        "  %c = f32[4,2]{1,0} convert(%param_0.1), "
        'metadata={op_name="jit(f)/L_1/messages/convert"}\n'
        "  ROOT %pad.1 = f32[8,2]{1,0} pad(%c, %z), padding=0_4x0_0\n"
        "}\n\n"
        "ENTRY %main () -> f32[8,2] {\n"
        "  %loop_pad_fusion.3 = f32[8,2]{1,0} fusion(%x), kind=kLoop, calls=%fused_pad.3, "
        'metadata={scheduling_name="loop_pad_fusion.3"}\n'
        "}\n"
    )
    names = module.op_names(hlo)
    assert names["loop_pad_fusion.3"] == "jit(f)/L_1/messages/convert"
    assert module.stage_of(names["loop_pad_fusion.3"]) == "L_1:messages"


def test_a_case_may_carry_module_settings():
    from mpnn_jax.nn import pallas_conv, pallas_symmetric

    parse = _load().parse_case
    case = "mace-mp-s:water:10000:bf16-mixed:ef:pallas:DX_STAGE_OUTPUT=1,SPARSE_STAGE_OUTPUT=1"
    try:
        assert parse(case) == ("mace-mp-s", "water", "10000", "bf16-mixed", "ef", "pallas")
        assert pallas_conv.DX_STAGE_OUTPUT and pallas_symmetric.SPARSE_STAGE_OUTPUT
        # the next case starts from the defaults
        assert parse("nequip-M:water:10000:fp32:ef")[-1] == "e3nn"
        assert not pallas_conv.DX_STAGE_OUTPUT and not pallas_symmetric.SPARSE_STAGE_OUTPUT
    finally:
        parse("nequip-M:water:10000:fp32:ef")
