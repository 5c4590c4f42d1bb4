"""The torch integration: gatesmith.compile and torch.compile(backend="gatesmith") split a model
between the accelerator and the host; roofline placement; pipelined runs and their timeline;
bad input. Models: examples/encoder_block.py (one BERT-style block) and the examples'
sentence encoder and KV-cache decoder. The golden-model runs take seconds; the simulated-board
run uses the chain config (cached by test_chain.py) and equals the golden run bit for bit.
"""

from __future__ import annotations

import importlib.util
import pathlib

import gatesmith
import gatesmith.host
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.pim.config import PimConfig
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.placement import HostRoofline

from gatesmith.cli import main
from gatesmith.config import AccelConfig
from gatesmith.errors import CompileError, UsageError

CFG = AccelConfig(name="chain", engines=(
    GeluConfig(lanes=4, depth=64, max_len=64),
    LayerNormConfig(lanes=4, depth=64, max_len=64),
    SoftmaxConfig(lanes=4, depth=64, max_len=64),
    SystolicConfig(rows=4, cols=4, spad_depth=128, acc_depth=64,
                   dataflows=("os", "ws"))))  # fmt: skip
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
# fixed host rooflines, so placements do not depend on how busy this machine is
FAST_HOST = HostRoofline("cpu", flops=1e12, bytes_per_s=1e11, op_s=1e-7)
SLOW_HOST = HostRoofline("cpu", flops=1e6, bytes_per_s=1e6, op_s=1e-3)


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cos(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def block():
    mod = _example("encoder_block")
    m = mod.model()
    g = gatesmith.compile(m, mod.example_inputs(), device="golden", config=CFG,
                          placement="accelerator", calibration=mod.calibration(),
                          host="cpu", host_roofline=SLOW_HOST)  # fmt: skip
    return mod, m, g


def test_accelerator_split_runs_every_engine_op_there_and_lists_the_rest(block):
    mod, m, g = block
    x = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(11))
    y = g(x)
    assert _cos(y, m(x).detach()) > 0.99
    kinds = {g.decisions[o].kind for o in g.accel_ops()}
    assert kinds == {"linear", "matmul", "softmax", "gelu", "layer_norm"}
    off = g.off_accelerator()
    assert off == {"add": "an elementwise add runs on the host (no elementwise engine)",
                   "add_1": "an elementwise add runs on the host (no elementwise engine)"}  # fmt: skip
    table = g.report()
    assert "| add | add | cpu | host |" in table and "accelerator at 50 MHz" in table


def test_split_equals_golden_partitions_composed_with_the_float_rest(block):
    """Independently of the executor: each partition's compiled golden run on the inputs the
    float host ops give it, in order, reproduces the split's output bit for bit."""
    mod, m, g = block
    x = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(12))
    y = g(x)
    env = {}
    nodes = list(g.gm.graph.nodes)
    it = iter([x])
    for n in nodes:
        args = torch.fx.node.map_arg(n.args, lambda a: env[a])
        if n.op == "placeholder":
            env[n] = next(it)
        elif n.op == "get_attr":
            env[n] = g.gm.get_parameter(n.target) if "." in n.target else getattr(g.gm, n.target)
        elif n.op == "call_module" and n.target.startswith("fused_"):
            env[n] = g.gm.get_submodule(n.target).compiled.run(tuple(args))
        elif n.op == "call_module":
            env[n] = g.gm.get_submodule(n.target)(*args)
        elif n.op == "call_function":
            env[n] = n.target(*args, **n.kwargs)
        else:
            out = args[0]
    assert torch.equal(y, out[0] if isinstance(out, (tuple, list)) else out)


def test_roofline_placement_follows_the_host_roofline():
    mod = _example("encoder_block")
    x = mod.example_inputs()
    fast = gatesmith.compile(mod.model(), x, device="golden", config=CFG, host="cpu",
                             host_roofline=FAST_HOST)  # fmt: skip
    assert fast.accel_ops() == [] and fast.parts == {}
    d = fast.decisions["linear"]
    assert d.reason.startswith("roofline: cpu is faster: systolic ") and d.pred_accel_s > d.pred_host_s
    slow = gatesmith.compile(mod.model(), x, device="golden", config=CFG, host="cpu",
                             host_roofline=SLOW_HOST)  # fmt: skip
    assert set(slow.accel_ops()) == {k for k, d in slow.decisions.items() if d.pred_accel_s}
    assert slow.decisions["softmax"].reason.startswith("roofline: softmax ")
    host_only = gatesmith.compile(mod.model(), x, device="golden", config=CFG, host="cpu",
                                  placement="host", host_roofline=SLOW_HOST)  # fmt: skip
    assert host_only.accel_ops() == [] and torch.equal(host_only(*x), mod.model()(*x).detach())


def test_balance_moves_work_until_the_loads_meet():
    mod = _example("encoder_block")
    x = mod.example_inputs()
    host = HostRoofline("cpu", flops=2e9, bytes_per_s=2e9, op_s=8e-6)
    g = gatesmith.compile(mod.model(), x, device="golden", config=CFG, host="cpu",
                          placement="balance", host_roofline=host)  # fmt: skip
    on = [d for d in g.decisions.values() if d.device == "accel"]
    off = [d for d in g.decisions.values() if d.device == "host" and d.pred_host_s]
    assert on and off, "balance keeps work on both devices"
    assert all(d.reason.startswith("balance: ") for d in on)
    acc = sum(d.pred_accel_s for d in on)
    hst = sum(d.pred_host_s for d in off) + host.op_s * sum(
        d.device == "host" and d.pred_host_s is None for d in g.decisions.values())
    # no single further move lowers the busier device's load
    for d in off:
        assert max(acc + d.pred_accel_s, hst - d.pred_host_s) >= max(acc, hst) * (1 - 1e-9)
    assert _cos(g(*x), mod.model()(*x).detach()) > 0.99


def test_pipelined_requests_equal_sequential_and_draw_a_timeline(block, tmp_path):
    mod, m, g = block
    reqs = mod.calibration()[:4]
    seq = [g(*r) for r in reqs]
    many = g.run_many(reqs)
    assert all(torch.equal(a, b) for a, b in zip(seq, many, strict=True))
    tl = g.last_timeline
    assert {e.device for e in tl.events} == {"accel", "host"}
    assert {e.request for e in tl.events} == {0, 1, 2, 3}
    assert tl.board_cycles() > 0 and 0.0 <= tl.both_busy() <= 1.0
    for i in range(4):  # each request's stages in order, none overlapping another of its own
        ev = sorted((e for e in tl.events if e.request == i), key=lambda e: e.start)
        assert all(a.end <= b.start + 1e-9 for a, b in zip(ev, ev[1:]))
    tl.plot(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 1000


def test_kv_cache_decoder_generates_greedily_on_the_split():
    dec = _example("gpt_decoder")
    m = dec.model()
    g = gatesmith.compile(m, dec.example_inputs(), device="golden", config=CFG, host="cpu",
                          placement="accelerator", calibration=dec.calibration(),
                          host_roofline=SLOW_HOST)  # fmt: skip
    assert {g.decisions[o].kind for o in g.accel_ops()} >= {"linear", "matmul", "softmax"}
    prompt = dec.prompts(1, seed=21)[0]
    with torch.no_grad():
        ref = dec.generate(m, prompt, 4)
    out = dec.generate(g, prompt, 4)
    assert out[: len(prompt)] == prompt and len(out) == len(ref)
    match = sum(a == b for a, b in zip(out[len(prompt):], ref[len(prompt):])) / 4
    assert match >= 0.5, (out, ref)


def test_torch_compile_backend():
    mod = _example("encoder_block")
    m = mod.model()
    x = mod.example_inputs()[0]
    fast = torch.compile(m, backend="gatesmith", dynamic=False,
                         options={"device": "golden", "config": CFG, "placement": "accelerator",
                                  "host": "cpu"})  # fmt: skip
    y = fast(x)
    assert _cos(y, m(x).detach()) > 0.99
    x2 = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(3))
    assert _cos(fast(x2), m(x2).detach()) > 0.99  # another shape: compiled again, never reused
    with pytest.raises(Exception, match="unknown gatesmith backend option 'dev'"):
        torch.compile(m, backend="gatesmith", options={"dev": "golden"})(x)


# ---- bad input ----------------------------------------------------------------------------------


def test_a_model_that_does_not_trace():
    class Bad(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x

    with pytest.raises(CompileError, match=r"^the model does not trace with torch.export: "):
        gatesmith.compile(Bad(), (torch.ones(2, 2),), device="golden", config=CFG)


def test_a_device_that_does_not_exist():
    mod = _example("encoder_block")
    with pytest.raises(UsageError) as e:
        gatesmith.compile(mod.model(), mod.example_inputs(), device="fpga0", config=CFG)
    assert str(e.value) == (
        "device must be an open gatesmith.host.Device, 'sim' or 'golden', not 'fpga0'")
    with pytest.raises(UsageError) as e:
        gatesmith.compile(mod.model(), mod.example_inputs(), device="golden", config=CFG,
                          host="tpu")  # fmt: skip
    assert str(e.value) == "host must be 'auto', 'cpu' or 'cuda', not 'tpu'"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available on this machine")
def test_cuda_requested_without_cuda():
    mod = _example("encoder_block")
    with pytest.raises(UsageError) as e:
        gatesmith.compile(mod.model(), mod.example_inputs(), device="golden", config=CFG,
                          host="cuda")  # fmt: skip
    assert str(e.value) == ("host device 'cuda' was requested but CUDA is not available "
                            "(torch.cuda.is_available() is False)")  # fmt: skip


def test_a_config_without_the_engines_falls_back_to_the_host(caplog):
    mod = _example("encoder_block")
    pim_only = AccelConfig(name="pim_only", engines=(PimConfig(),))
    g = gatesmith.compile(mod.model(), mod.example_inputs(), device="golden", config=pim_only,
                          host="cpu", host_roofline=SLOW_HOST)  # fmt: skip
    assert g.accel_ops() == []
    off = g.off_accelerator()
    assert off["linear"] == "the accelerator has no systolic engine (it has: pim)"
    assert off["softmax"] == "the accelerator has no softmax engine (it has: pim)"
    assert "takes none of this model's engine ops: the whole model runs on the host" in caplog.text
    x = mod.example_inputs()
    assert torch.equal(g(*x), mod.model()(*x).detach())


def test_other_input_shapes_are_refused_or_recompiled(block):
    mod, m, g = block
    x = torch.randn(1, 4, 32)
    with pytest.raises(UsageError) as e:
        g(x)
    assert str(e.value) == (
        "inputs[0] has shape (1, 4, 32); the model was compiled for (1, 8, 32) (shapes are "
        "static: compile again for these shapes, or pass recompile=True)")
    r = gatesmith.compile(m, mod.example_inputs(), device="golden", config=CFG, host="cpu",
                          placement="accelerator", recompile=True, host_roofline=SLOW_HOST)  # fmt: skip
    y = r(x)
    assert y.shape == (1, 4, 32) and _cos(y, m(x).detach()) > 0.99
    assert list(r._variants) == [((1, 4, 32),)]


# ---- the simulated board and the CLI ------------------------------------------------------------


def test_split_on_the_simulated_board_equals_golden_bit_for_bit():
    mod = _example("encoder_block")
    m = mod.model()
    x = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(13))
    with gatesmith.host.open("sim", config=CFG) as dev:
        g = gatesmith.compile(m, mod.example_inputs(), device=dev, placement="accelerator",
                              calibration=mod.calibration(), host="cpu",
                              host_roofline=SLOW_HOST)  # fmt: skip
        y = g(x)
        cycles = g.last_timeline.board_cycles()
        assert torch.equal(y, g(x, backend="golden"))
        assert "(board)" in g.report()
        g.close()
    assert cycles > 0


def test_cli_run_model(capsys):
    code = main(["run", str(EXAMPLES / "encoder_block.py"), "--config",
                 str(EXAMPLES / "chain.yaml"), "--device", "golden", "--placement",
                 "accelerator", "--host", "cpu"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "| linear | linear | accel | systolic |" in cap.out
    assert "requests/s" in cap.out + cap.err
