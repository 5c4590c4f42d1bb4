"""PIM-style GEMV engine: DRAM-like banks, each with a row buffer and MAC lanes beside it.

A channel controller turns a GEMV instruction into all-bank activate / MAC-burst / precharge
commands with DRAM timing (``t_rcd``, ``t_rp``, ``t_ccd``, ``burst``), as PIM-GPT and SK hynix AiM
describe; weights stay resident in the banks, the input vector is broadcast. ``host/pim.py`` maps
a weight matrix onto the banks (row or column partition) and drives the engine.
"""

from ..registry import EngineSpec, register
from .config import PimConfig
from .isa import OPCODE_GEMV, GemvInstr

OPCODES = {"pim_gemv": OPCODE_GEMV}


def _build(cfg):
    from .engine import PimEngine

    return PimEngine(cfg)


SPEC = register(
    EngineSpec(
        kind="pim",
        config_cls=PimConfig,
        build=_build,
        opcodes=OPCODES,
        instructions={"pim_gemv": "gatesmith.generators.pim.isa:GemvLayout"},
        model="gatesmith.generators.pim.model:gemv",
        cycles="gatesmith.generators.pim.cycles:gemv_cycles",
        verify="gatesmith.tests.bench_pim:verify",
        doc="banks x lanes int MACs beside DRAM-like row buffers; GEMV over resident weights",
    )
)

__all__ = ["PimConfig", "GemvInstr", "SPEC", "OPCODES"]
