"""The simulated board stops idle engines' clocks (``SIM_GATE_MODULE``, generators/accel/top.py).

That is a simulation speed-up only, so it must not change what the board does: one board built
with the gates and one without run the same work on all six engine kinds (device methods,
chained programs, fused attention through the COPY unit, window accesses, a rejected
instruction), and every result, error message and deterministic counter must be equal.
``cycles`` is left out: it counts the clocks the board ran while the host polled, which depends
on wall time; ``program`` (cycles with a program running) and each engine's busy cycles are the
cycle-exact figures.
"""

import re

import numpy as np
import torch

import gatesmith.host
from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.pim.config import PimConfig
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.attention import attention_int
from gatesmith.host.systolic import gemm_instr

CFG = AccelConfig(
    name="gated",
    engines=(
        SystolicConfig(rows=4, cols=4, spad_depth=128, acc_depth=64, dataflows=("os", "ws")),
        BitserialConfig(lanes=4, pes=2, group_size=8, w_depth=32, a_depth=32, g_depth=16,
                        r_depth=16),  # fmt: skip
        PimConfig(banks=2, lanes=4, row_size=16, rows_per_bank=64, vector_depth=128),
        SoftmaxConfig(lanes=4, depth=64, max_len=64),
        GeluConfig(lanes=4, depth=64, max_len=64),
        LayerNormConfig(lanes=4, depth=64, max_len=64),
    ),
)
DETERMINISTIC = ("busy", "macs", "active", "stall", "load", "store", "dma", "program", "copy")


def _workload(dev) -> list:
    """Every engine at work, one step at a time; each step's results and counters."""
    g = torch.Generator().manual_seed(11)
    out = []

    def step(name, fn):
        dev.reset_perf()
        try:
            res = fn()
        except DeviceError as e:
            # (the frame number in a link error counts the host's status polls: wall time)
            res = "DeviceError: " + re.sub(r"frame \d+", "frame N", str(e))
        p = dev.perf()
        counters = {k: p[k] for k in DETERMINISTIC} | {"engine_busy": p["engine_busy"]}
        if isinstance(res, torch.Tensor):
            res = res.tolist()
        out.append((name, res, counters))

    a = torch.randint(-128, 128, (19, 23), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (23, 13), generator=g, dtype=torch.int8)
    for df in ("os", "ws"):
        step(f"matmul {df}", lambda df=df: dev.matmul(a, b, dataflow=df))
    w4 = torch.randint(-8, 8, (16, 6), generator=g, dtype=torch.int8)
    x = torch.randint(-128, 128, (3, 16), generator=g, dtype=torch.int8)
    step("bitserial", lambda: dev.matmul(x, w4, engine="bitserial", w_bits=4))
    wp = torch.randint(-128, 128, (6, 20), generator=g, dtype=torch.int8)
    v = torch.randint(-128, 128, (20,), generator=g, dtype=torch.int8)
    h = dev.load_weights(wp)
    step("gemv", lambda: dev.gemv(v, h))
    s = torch.randn(5, 37, generator=g) * 2.5
    step("softmax", lambda: dev.softmax(s))
    step("gelu", lambda: dev.gelu(s))
    step("layer_norm", lambda: dev.layer_norm(s, (37,)))
    # a resident chain: the systolic result stays in a device buffer, then GELU reads it
    step("gelu after matmul", lambda: dev.gelu(dev.matmul(a, b).float() / 20000))
    # on-chip chaining: fused attention COPYs the scores into softmax and P into the scratchpad
    q, k, vv = (torch.randint(-128, 128, (2, 8, 4), generator=g, dtype=torch.int8) for _ in "qkv")
    step("attention", lambda: attention_int(dev, q, k, vv, 1 << 14, 16, causal=True))
    # single instructions on the register queue: a legal GEMM, then one the engine rejects
    step("gemm instr", lambda: (dev.execute([gemm_instr("os", 4, 8, 4)] * 3), dev.wait()))
    step("rejected", lambda: (dev.execute([gemm_instr("os", 0, 8, 4)]), dev.wait()))
    # every engine's window: write a word, read it back (the engine is idle meanwhile)
    for i, e in enumerate(CFG.engines):
        base = dev.window_base(type(e).kind)
        step(f"window {i}", lambda base=base, i=i: (dev.write(base, [0x1234_5678 + i]),
                                               dev.read(base, 1).tolist())[1])  # fmt: skip
    return out


def test_gated_board_equals_ungated(monkeypatch):
    runs = {}
    for gates in ("0", "1"):
        monkeypatch.setenv("GATESMITH_SIM_GATES", gates)
        with gatesmith.host.open("sim", config=CFG) as dev:
            runs[gates] = _workload(dev)
    ungated, gated = runs["0"], runs["1"]
    assert [n for n, *_ in gated] == [n for n, *_ in ungated]
    for (name, r0, c0), (_, r1, c1) in zip(ungated, gated):
        assert r1 == r0, name
        assert c1 == c0, name
    # the workload is real: every engine was busy in it, and the rejected instruction failed
    busy = np.sum([c["engine_busy"] for _, _, c in gated], axis=0)
    assert (busy > 0).all(), busy
    assert dict((n, r) for n, r, _ in gated)["rejected"].startswith("DeviceError")
    assert dict((n, c) for n, _, c in gated)["attention"]["copy"] > 0
