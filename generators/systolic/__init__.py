"""The systolic tensor engine: a rows x cols MAC array with run-time dataflow (OS/WS/IS)."""

from ..registry import EngineSpec, register
from .config import SystolicConfig

OPCODES = {"gemm": 0x10}


def _build(cfg):
    from .engine import SystolicEngine

    return SystolicEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="systolic",
        config_cls=SystolicConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={"gemm": "gatesmith.generators.systolic.engine:GemmInstr"},
        model="gatesmith.generators.systolic.model:gemm",
        cycles="gatesmith.generators.systolic.model:cycles",
        verify="gatesmith.tests.bench_axi_systolic:verify",
        doc="rows x cols int MAC array; GEMM from scratchpad, OS/WS/IS chosen per instruction",
    )
)

__all__ = ["SystolicConfig", "SPEC", "OPCODES"]
