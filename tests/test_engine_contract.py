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


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_engine_object_is_complete(kind):
    """Each engine declares, in its spec: an instruction layout per opcode (128 bits, opcode in
    [7:0], encodable by the host with range checks), its golden model, its cycle model and its
    verify bench; its windows say how their elements are packed (what a COPY walks)."""
    from amaranth.lib import data

    from gatesmith.generators.registry import resolve
    from gatesmith.hdl.fields import pack_struct, struct_fields

    spec = SPECS[kind]
    assert set(spec.instructions) == set(spec.opcodes), kind
    for name, ref in spec.instructions.items():
        lay = data.Layout.cast(resolve(ref))
        assert lay.size == INSTR_BITS, (kind, name)
        assert (lay["opcode"].offset, lay["opcode"].width) == (0, 8), (kind, name)
        f = struct_fields(lay)
        widest = max(f, key=lambda n: f[n][1])
        values = {n: 0 for n in f}
        values["opcode"] = spec.opcodes[name]
        assert len(pack_struct(lay, **values)) == 4
        with pytest.raises(ValueError, match=widest):
            pack_struct(lay, **{**values, widest: 1 << f[widest][1]})
    assert callable(resolve(spec.model)) and callable(resolve(spec.cycles)), kind
    assert ":" in spec.verify, kind
    for w in spec.build(spec.config_cls()).windows():
        ew = w.elem_width or w.width
        assert ew > 0 and w.width % ew == 0, (kind, w.name)
        assert isinstance(w.signed, bool)
