"""The engine registry: which engine kinds exist, their Config classes and components.

Each engine package calls :func:`register` at import; :func:`engines` imports them all. The
accelerator config (``gatesmith.config``), the accelerator top, the CLI and ``gatesmith verify``
find engines here, so adding an engine touches no shared file but ``_ENGINE_MODULES`` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EngineSpec", "register", "engines", "engine_spec", "resolve"]

# Engine packages, imported on first use. One line per engine.
_ENGINE_MODULES = [
    "gatesmith.generators.systolic",
    "gatesmith.generators.pim",
    "gatesmith.generators.bitserial",
    "gatesmith.generators.gelu",
    "gatesmith.generators.softmax",
    "gatesmith.generators.layernorm",
]


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # the YAML key and CLI name, e.g. "systolic"
    config_cls: type  # frozen dataclass; __post_init__ validates
    build: Callable  # config -> engine Component (see generators/engine.py)
    opcodes: dict  # name -> opcode (8-bit), unique across engines
    doc: str = ""
    # The engine's verify bench, "module:function", imported only by ``gatesmith verify``
    # (flows/verify.py) so that registering an engine imports neither cocotb nor the simulator.
    # The function is called as fn(accel_cfg, engine_cfg, *, seed, count, cocotb) and returns
    # rows (check, case, ok, note); it raises AssertionError when a cocotb bench fails.
    verify: str = ""
    # The rest of the engine object, as "module:attribute" references resolved by :func:`resolve`
    # (imported on use): ``instructions`` maps each opcode name to its 128-bit instruction
    # layout (an ``amaranth.lib.data`` layout with ``opcode`` in bits [7:0], used by the RTL
    # decoder and by the host encoder ``hdl.fields.pack_struct``); ``model`` is the bit-exact
    # golden model and ``cycles`` the cycle model the host plans with.
    instructions: dict = field(default_factory=dict)
    model: str = ""
    cycles: str = ""


_REGISTRY: dict[str, EngineSpec] = {}


CONTROLLER_OPCODES = range(0x10)  # NOP, SYNC, LOAD, STORE, COPY_SRC, COPY (generators/accel/isa.py)


def register(spec: EngineSpec) -> EngineSpec:
    low = sorted(o for o in spec.opcodes.values() if o in CONTROLLER_OPCODES)
    if low:
        raise RuntimeError(f"engine {spec.kind} uses opcodes {low} that the controller reserves")
    for other in _REGISTRY.values():
        if other.kind == spec.kind:
            continue
        clash = set(other.opcodes.values()) & set(spec.opcodes.values())
        if clash:
            raise RuntimeError(f"engine {spec.kind} reuses opcodes {clash} of {other.kind}")
    _REGISTRY[spec.kind] = spec
    return spec


def engines() -> dict[str, EngineSpec]:
    for name in _ENGINE_MODULES:
        importlib.import_module(name)
    return dict(_REGISTRY)


def engine_spec(kind: str) -> EngineSpec:
    all_ = engines()
    if kind not in all_:
        raise ValueError(f"engine must be one of {', '.join(sorted(all_))}, not {kind!r}")
    return all_[kind]


def resolve(ref: str):
    """The object a ``"package.module:attr.attr"`` reference of an EngineSpec names."""
    mod, _, attr = ref.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
