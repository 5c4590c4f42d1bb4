"""GELU engine: Edge-MoE ROM with linear interpolation, or I-ViT ShiftGELU; lanes 1..16."""

from ..registry import EngineSpec, register
from .config import GeluConfig

OPCODES = {"gelu": 0x21}


def _build(cfg):
    from .engine import GeluEngine

    return GeluEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="gelu",
        config_cls=GeluConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={"gelu": "gatesmith.hdl.nonlinear_common:ROW_INSTR"},
        model="gatesmith.generators.gelu.model:gelu_model",
        cycles="gatesmith.generators.gelu.engine:GeluEngine.cycles",
        verify="gatesmith.tests.bench_nonlinear_rows:verify",
        doc="elementwise GELU over int8/int16 fixed point rows",
    )
)

__all__ = ["GeluConfig", "SPEC", "OPCODES"]
