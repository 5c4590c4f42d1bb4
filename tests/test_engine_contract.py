"""The engine contract, checked for every engine in the registry (generators/registry.py)."""

import pytest
from amaranth.lib import wiring
from amaranth.lib.wiring import Flow

from gatesmith.generators.accel.isa import Op
from gatesmith.generators.engine import ENGINE_WINDOW_ADDR_WIDTH, INSTR_BITS, Window
from gatesmith.generators.registry import engines

SPECS = engines()


def test_registry_has_the_engines():
    assert {"systolic", "bitserial", "pim", "gelu", "softmax", "layernorm"} <= set(SPECS)


def test_opcodes_are_unique_and_outside_the_controllers():
    seen = {int(op): "controller" for op in Op}
    for kind, spec in SPECS.items():
        assert spec.opcodes, kind
        for name, op in spec.opcodes.items():
            assert isinstance(op, int) and 0x10 <= op <= 0xFF, (kind, name, op)
            assert op not in seen, f"{kind}.{name} reuses {op:#x} of {seen[op]}"
            seen[op] = kind


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_engine_keeps_the_contract(kind):
    spec = SPECS[kind]
    cfg = spec.config_cls()
    assert spec.config_cls.kind == kind
    comp = spec.build(cfg)
    assert isinstance(comp, wiring.Component)
    members = comp.signature.members
    want = {
        "cmd": Flow.In,
        "busy": Flow.Out,
        "done": Flow.Out,
        "error": Flow.Out,
        "host": Flow.In,
        "perf_macs": Flow.Out,
        "perf_stall": Flow.Out,
    }
    for name, flow in want.items():
        assert name in members, f"{kind} has no {name} port"
        assert members[name].flow == flow, (kind, name)
    assert len(comp.cmd.payload) == INSTR_BITS
    assert len(comp.error) == 8
    # its window regions are described, inside the window, and do not overlap
    wins = comp.windows()
    assert wins and all(isinstance(w, Window) for w in wins), kind
    spans = sorted((w.offset, w.offset + (w.depth - 1) * w.stride + -(-w.width // 32)) for w in wins)
    for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
        assert a1 <= b0, f"{kind}: window regions overlap"
    assert spans[-1][1] <= 1 << ENGINE_WINDOW_ADDR_WIDTH
    for w in wins:
        assert w.access in ("r", "w", "rw") and w.width > 0 and w.stride >= -(-w.width // 32)
        assert w.as_dict()["name"] == w.name
