"""Softmax engine: online single-pass (base-2 exp tables) or I-ViT Shiftmax, lanes 1..16."""

from ..registry import EngineSpec, register
from .config import SoftmaxConfig

OPCODES = {"softmax": 0x20}


def _build(cfg):
    from .engine import SoftmaxEngine

    return SoftmaxEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="softmax",
        config_cls=SoftmaxConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={"softmax": "gatesmith.hdl.nonlinear_common:ROW_INSTR"},
        model="gatesmith.generators.softmax.model:softmax_model",
        cycles="gatesmith.generators.softmax.engine:SoftmaxEngine.cycles",
        verify="gatesmith.tests.bench_nonlinear_rows:verify",
        doc="row softmax over int8/int16 fixed point, uint16 probabilities (1.0 = 2**15)",
    )
)

__all__ = ["SoftmaxConfig", "SPEC", "OPCODES"]
