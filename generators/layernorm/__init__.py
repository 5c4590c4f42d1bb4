"""LayerNorm engine: integer mean and variance, Newton integer square root (I-ViT); lanes 1..16."""

from ..registry import EngineSpec, register
from .config import LayerNormConfig

OPCODES = {"layernorm": 0x22}


def _build(cfg):
    from .engine import LayerNormEngine

    return LayerNormEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="layernorm",
        config_cls=LayerNormConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={"layernorm": "gatesmith.hdl.nonlinear_common:ROW_INSTR"},
        model="gatesmith.generators.layernorm.model:layernorm_model",
        cycles="gatesmith.generators.layernorm.engine:LayerNormEngine.cycles",
        verify="gatesmith.tests.bench_nonlinear_rows:verify",
        doc="row LayerNorm over int8/int16 fixed point with int16 gamma/beta",
    )
)

__all__ = ["LayerNormConfig", "SPEC", "OPCODES"]
