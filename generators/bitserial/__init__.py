"""The bit-serial tensor engine: run-time weight/activation precision 1..8, two's complement or
bipolar-INT, and BitMoD per-group datatypes (FP3/FP4 grids with an extra value) with scales."""

from ..registry import EngineSpec, register
from .config import BitserialConfig
from .model import OPCODES


def _build(cfg):
    from .engine import BitserialEngine

    return BitserialEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="bitserial",
        config_cls=BitserialConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={name: "gatesmith.generators.bitserial.model:MatmulLayout" for name in OPCODES},
        model="gatesmith.generators.bitserial.model:matmul",
        cycles="gatesmith.generators.bitserial.model:cycles",
        verify="gatesmith.tests.bench_bitserial:verify",
        doc="bit-serial weights x bit-parallel activations; precision and BitMoD datatype per "
        "instruction; per-group integer dequantisation",
    )
)

__all__ = ["BitserialConfig", "SPEC", "OPCODES"]
