"""Accelerator configuration: one frozen object from flags, YAML or Python.

An :class:`AccelConfig` names the engines an accelerator contains (each with its own frozen
Config dataclass, see ``generators/registry.py``) and the shared parts (host link, instruction
queue, clock). YAML form::

    name: demo
    clock_hz: 50000000
    engines:
      systolic: {rows: 8, cols: 8, dtype: int8, dataflows: [os, ws, is]}

Every invalid value raises :class:`~gatesmith.errors.ConfigError` naming the field path
(``engines.systolic.rows``) and what would be valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

__all__ = ["AccelConfig", "load_config", "config_from_dict", "config_to_dict"]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, path):
    """Check ``value`` against the annotation ``tp``; lists become tuples for tuple fields."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, not {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, not {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], path)
    return value


def config_from_dict(cls, data, path: str):
    """Build the frozen dataclass ``cls`` from a mapping; unknown keys are errors."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of fields, not {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path} has no field {unknown[0]!r}; valid fields are {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}.{e}") from None


def config_to_dict(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _default_engines():
    from .generators.systolic.config import SystolicConfig

    return (SystolicConfig(),)


@dataclass(frozen=True)
class AccelConfig:
    """A whole accelerator: engines plus the shared controller, queues, device memory and link.

    ``engines`` is a tuple of engine Config objects, at most one per kind, in window order (engine
    ``i``'s host window is at ``0x0100_0000 * (i + 1)``). ``perf_width`` is the width of the
    performance counters (read as 64-bit registers; 32 saves area on small parts, 48 bits of
    cycles last 65 days at 50 MHz). ``perf_counters``: ``all`` (default) implements every
    counter; ``minimal`` only PERF_CYCLES and PERF_PROGRAM (the clock and the time the host's
    timing model predicts), and the other counters read 0: for small parts.
    """

    name: str = "gatesmith"
    engines: tuple = field(default_factory=_default_engines)
    queue_depth: int = 16
    link_max_words: int = 256
    link_timeout_cycles: int = 1 << 20
    clock_hz: int = 50_000_000
    baud: int = 1_000_000
    perf_width: int = 48
    perf_counters: str = "all"  # or "minimal": only PERF_CYCLES and PERF_PROGRAM count
    # Device memory (the AXI4 manager port). Defaults model the ULX3S's 32 MiB SDRAM (a 16-bit
    # SDR part at twice the 50 MHz fabric clock: 4 bytes per fabric cycle at best, ~12 cycles from
    # request to first data through a controller).
    mem_bytes: int = 32 << 20
    mem_data_width: int = 32
    mem_latency: int = 12  # cycles from a burst request to its first beat (simulated board)
    mem_cycles_per_beat: int = 1  # beats, read or write (one data bus), this many cycles apart
    mem_max_burst: int = 16  # longest burst the DMA issues, in beats
    watchdog_cycles: int = 4096  # a program that makes no progress this long is a DEADLOCK
    copy_unit: bool = True  # the on-chip COPY (chaining); without it chains go through memory

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"name must be an identifier (letters, digits, _), not {self.name!r}")
        if not isinstance(self.engines, tuple) or not self.engines:
            raise ConfigError("engines must name at least one engine")
        kinds = [type(e).kind for e in self.engines]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"engines must name each kind at most once, not {kinds}")
        if self.queue_depth not in (2, 4, 8, 16, 32, 64):
            raise ConfigError(
                f"queue_depth must be one of 2, 4, 8, 16, 32, 64, not {self.queue_depth}"
            )
        if self.link_max_words not in (16, 32, 64, 128, 256, 512, 1024):
            raise ConfigError(
                "link_max_words must be a power of two in 16..1024, "
                f"not {self.link_max_words}"
            )
        if not 1 << 8 <= self.link_timeout_cycles <= 1 << 30:
            raise ConfigError(
                f"link_timeout_cycles must be in 256..2**30, not {self.link_timeout_cycles}"
            )
        if isinstance(self.perf_width, bool) or self.perf_width not in range(32, 65):
            raise ConfigError(f"perf_width must be an integer in 32..64, not {self.perf_width}")
        if self.perf_counters not in ("all", "minimal"):
            raise ConfigError(
                f"perf_counters must be one of all, minimal, not {self.perf_counters!r}"
            )
        if not 1_000_000 <= self.clock_hz <= 1_000_000_000:
            raise ConfigError(f"clock_hz must be in 1e6..1e9, not {self.clock_hz}")
        if not 9600 <= self.baud <= self.clock_hz // 4:
            raise ConfigError(f"baud must be in 9600..clock_hz/4, not {self.baud}")
        m = self.mem_bytes
        if isinstance(m, bool) or not isinstance(m, int) or not 4096 <= m <= 1 << 31 or m & (m - 1):
            raise ConfigError(f"mem_bytes must be a power of two in 4096..2**31, not {m!r}")
        if self.mem_data_width != 32:
            raise ConfigError(
                f"mem_data_width must be 32 (the only width the DMA implements), not {self.mem_data_width!r}"
            )
        if not 1 <= self.mem_latency <= 1024:
            raise ConfigError(f"mem_latency must be in 1..1024 cycles, not {self.mem_latency}")
        if not 1 <= self.mem_cycles_per_beat <= 64:
            raise ConfigError(
                f"mem_cycles_per_beat must be in 1..64, not {self.mem_cycles_per_beat}"
            )
        if self.mem_max_burst not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            raise ConfigError(
                f"mem_max_burst must be a power of two in 1..256, not {self.mem_max_burst}"
            )
        if not isinstance(self.copy_unit, bool):
            raise ConfigError(f"copy_unit must be true or false, not {self.copy_unit!r}")
        if not 64 <= self.watchdog_cycles <= 1 << 24:
            raise ConfigError(f"watchdog_cycles must be in 64..2**24, not {self.watchdog_cycles}")

    def engine(self, kind: str):
        """The config of the engine of ``kind``, or None."""
        for e in self.engines:
            if type(e).kind == kind:
                return e
        return None

    def engine_index(self, kind: str) -> int:
        for i, e in enumerate(self.engines):
            if type(e).kind == kind:
                return i
        have = ", ".join(type(e).kind for e in self.engines)
        raise ConfigError(f"this accelerator has no {kind} engine (it has: {have})")

    def to_dict(self) -> dict:
        d = config_to_dict(self)
        d["engines"] = {type(e).kind: config_to_dict(e) for e in self.engines}
        return d

    @classmethod
    def from_dict(cls, data: dict, path: str = "config") -> AccelConfig:
        from .generators.registry import engines as registered

        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping, not {type(data).__name__}")
        data = dict(data)
        eng = data.pop("engines", None)
        if eng is None:
            eng = {"systolic": {}}
        if not isinstance(eng, dict) or not eng:
            raise ConfigError("engines must be a mapping from engine kind to its fields")
        specs = registered()
        configs = []
        for kind, fields in eng.items():
            if kind not in specs:
                raise ConfigError(
                    f"engines has no engine {kind!r}; valid engines are {', '.join(sorted(specs))}"
                )
            configs.append(config_from_dict(specs[kind].config_cls, fields, f"engines.{kind}"))
        top = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(top))
        if unknown:
            raise ConfigError(
                f"{path} has no field {unknown[0]!r}; valid fields are {', '.join(sorted(top))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints[k], k) for k, v in data.items()}
        return cls(engines=tuple(configs), **kwargs)

    def to_json(self) -> str:
        # engine order is window order: keep it (no sort_keys)
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def load_config(cfg=None) -> AccelConfig:
    """An :class:`AccelConfig` from a path to YAML/JSON, a mapping, an engine Config, or itself."""
    from .generators.registry import engines as registered

    if cfg is None:
        return AccelConfig()
    if isinstance(cfg, AccelConfig):
        return cfg
    for spec in registered().values():
        if isinstance(cfg, spec.config_cls):
            return AccelConfig(engines=(cfg,))
    if isinstance(cfg, dict):
        return AccelConfig.from_dict(cfg)
    if isinstance(cfg, (str, os.PathLike)):
        p = Path(cfg)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config file {str(p)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                f"offset {e.start})"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if data is None:
            raise ConfigError(
                f"config file {str(p)!r} is empty; write {{}} in it for the default design"
            )
        return AccelConfig.from_dict(data, path=p.name)
    raise ConfigError(
        "config must be a path to a YAML file, a mapping, an AccelConfig or an engine Config, "
        f"not {type(cfg).__name__}"
    )
