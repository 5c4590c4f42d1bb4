"""ASIC view: generic Yosys synthesis, cell counts and an area estimate, and a LibreLane export.

No PDK is needed (and none is downloaded). Each unit (every engine of the config on its own, and
the whole :class:`~gatesmith.generators.accel.top.Accelerator` with its controller, DMA, COPY unit,
queues and AXI4-Lite subordinate) is synthesised by Yosys to its *internal* gate library:

``synth -top T -flatten -run begin:fine`` (coarse synthesis; memories are kept as ``$mem_v2``)
-> memories that stay macros are set aside (see below) -> ``techmap`` -> ``dfflegalize`` to one
flip-flop kind (a rising-edge D flip-flop; enables and synchronous resets become gates, as in a
minimal standard-cell library) -> ``abc -g cmos`` with the script :data:`ABC_SCRIPT` ->
``stat -json -tech cmos``.

The gate set (:data:`GATE_SET`, Yosys's ``-g cmos``) is NOT NAND NOR AOI3 OAI3 AOI4 OAI4 MUX
NMUX XOR XNOR. The figures reported per unit:

* cells by type, flip-flops, and Yosys's CMOS transistor estimate of the gates;
* NAND2 equivalents: each cell weighted by :data:`NAND2_EQ`, the ratio of a cell's area to a
  2-input NAND's, taken from the X1 cells of the NanGate FreePDK45 Open Cell Library (INV 0.532,
  NAND2 0.798, AOI21 1.064, AOI22 1.330, XOR2 1.596, MUX2 1.862, DFF 4.522 um^2);
* a logic area: NAND2 equivalents x :data:`UM2_PER_NAND2` (sky130_fd_sc_hd__nand2_1: three
  0.46 um sites x 2.72 um = 3.75 um^2). Cell area only: no placement density, no clock tree, no
  buffering, no routing; divide by the core utilisation for a die figure;
* memories (``memories="macro"``, the default): every memory with write ports and at least
  ``macro_min_words`` words is assumed to become an SRAM macro. Its bits are reported on their own
  and priced at :data:`SRAM_UM2_PER_BIT` (the OpenRAM sky130 macro
  ``sky130_sram_2kbyte_1rw1r_32x512_8``: 683.1 x 416.54 um for 16,384 bits, periphery included;
  smaller macros cost more per bit). A macro's registered read port is part of the macro, so
  those flip-flops are not counted as logic. ROMs (the identity block) and smaller memories are
  mapped to gates and flip-flops. ``memories="flops"`` maps every memory to flip-flops and gates.

With a Liberty file (``liberty=``, ``gatesmith asic --liberty FILE.lib``: a PDK's standard
cells, which this project neither ships nor downloads) the same flow maps to that file's cells
(``dfflibmap``, ``abc -liberty``) and the logic area is the file's own (``stat -liberty``).

Tools: Yosys is found as for the bitstream flow (:func:`gatesmith.flows.bitstream.find_tool`);
the yowasp build runs sandboxed, so every path given to it is relative to its working directory.

:func:`openlane_export` writes a directory a user with a PDK hands to LibreLane (OpenLane 2):
the Verilog of the Verilog flow, ``config.json`` and a README.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BuildError, ConfigError
from .bitstream import find_tool

__all__ = [
    "ASSUMPTIONS",
    "AsicEvent",
    "AsicReport",
    "AsicUnit",
    "GATE_SET",
    "NAND2_EQ",
    "SRAM_UM2_PER_BIT",
    "UM2_PER_NAND2",
    "asic_view",
    "openlane_export",
    "synthesise_verilog",
]

STAGES = ("elaborate", "synthesis", "export")
GATE_SET = "cmos"  # abc -g cmos: NOT NAND NOR AOI3 OAI3 AOI4 OAI4 MUX NMUX XOR XNOR
# Yosys's default ABC script (&fraig, scorr, &dch, &nf) ran over 13 minutes on the whole 2x2
# accelerator in the WebAssembly build without finishing; this one takes ~20 s there. Measured
# on the systolic engine alone, it gives 2.0% (1x1) and 3.5% (2x2) more NAND2-eq than the default.
ABC_SCRIPT = "strash; dc2; map"
MEMORY_MODES = ("macro", "flops")
MACRO_MIN_WORDS = 32  # below this a memory is a register file of flip-flops, not an SRAM macro

# Area of each Yosys internal cell in 2-input-NAND equivalents: NanGate FreePDK45 OCL X1 cell
# areas (um^2) over NAND2_X1's 0.798. NMUX is priced as MUX2; ANDNOT/ORNOT as AND2 (an inverted
# input); a flip-flop with an asynchronous reset as DFFR_X1 (5.32). -g cmos emits no AND/OR.
NAND2_EQ = {
    "$_BUF_": 0.798 / 0.798,
    "$_NOT_": 0.532 / 0.798,
    "$_NAND_": 1.0,
    "$_NOR_": 1.0,
    "$_AND_": 1.064 / 0.798,
    "$_OR_": 1.064 / 0.798,
    "$_ANDNOT_": 1.064 / 0.798,
    "$_ORNOT_": 1.064 / 0.798,
    "$_AOI3_": 1.064 / 0.798,
    "$_OAI3_": 1.064 / 0.798,
    "$_AOI4_": 1.330 / 0.798,
    "$_OAI4_": 1.330 / 0.798,
    "$_XOR_": 1.596 / 0.798,
    "$_XNOR_": 1.596 / 0.798,
    "$_MUX_": 1.862 / 0.798,
    "$_NMUX_": 1.862 / 0.798,
    "$_DFF_P_": 4.522 / 0.798,
    "$_DFF_PP0_": 5.320 / 0.798,
    "$_DFF_PP1_": 5.320 / 0.798,
}
FLOP_CELLS = ("$_DFF_P_", "$_DFF_PP0_", "$_DFF_PP1_")
UM2_PER_NAND2 = 3 * 0.46 * 2.72  # sky130_fd_sc_hd__nand2_1: 3.7536 um^2
SRAM_UM2_PER_BIT = 683.1 * 416.54 / (512 * 32)  # sky130_sram_2kbyte_1rw1r_32x512_8: ~17.4

ASSUMPTIONS = {
    "synthesis": "Yosys generic synthesis (synth -flatten, coarse), techmap, dfflegalize to "
    "$_DFF_P_ (enables and synchronous resets become gates), abc -g cmos with the ABC script "
    f"'{ABC_SCRIPT}' (2-4% more NAND2-eq than Yosys's default script, measured on small "
    "engines; the default takes too long on a whole accelerator)",
    "gate_set": "NOT NAND NOR AOI3 OAI3 AOI4 OAI4 MUX NMUX XOR XNOR + DFF (Yosys internal cells)",
    "nand2_eq": "cell area / NAND2 area of the NanGate FreePDK45 Open Cell Library X1 cells "
    "(INV 0.67, AOI21 1.33, AOI22 1.67, XOR2 2.0, MUX2 2.33, DFF 5.67 NAND2-eq)",
    "um2_per_nand2": f"{UM2_PER_NAND2:.4f} um^2, sky130_fd_sc_hd__nand2_1 (3 sites of "
    "0.46 x 2.72 um); cell area only: no placement density, clock tree, buffers or routing",
    "memories": "memories with write ports and >= macro_min_words words become SRAM macros (bits "
    "reported apart; a macro's registered read port is inside it); ROMs and smaller memories "
    "become gates and flip-flops",
    "sram_um2_per_bit": f"{SRAM_UM2_PER_BIT:.2f} um^2/bit, the OpenRAM sky130 macro "
    "sky130_sram_2kbyte_1rw1r_32x512_8 (683.1 x 416.54 um, 16 kbit, periphery included); "
    "smaller macros cost more per bit",
}


@dataclass(frozen=True)
class AsicEvent:
    """A progress event: ``status`` is ``start`` or ``done``; ``unit`` names the design."""

    stage: str
    status: str
    unit: str = ""
    message: str = ""
    elapsed_s: float = 0.0


@dataclass
class AsicUnit:
    """The generic-synthesis result of one design unit (an engine or the whole accelerator)."""

    name: str  # "systolic", ..., or "accelerator"
    top: str  # the Verilog module synthesised
    cells: dict[str, int]  # gate-level cells by Yosys type (memory macros excluded)
    memories: list[dict] = field(default_factory=list)  # the macros: name, width, depth, bits
    transistors: int | None = None  # Yosys's CMOS estimate of the gates (stat -tech cmos)
    seconds: float = 0.0
    memory_mode: str = "macro"
    library: str = ""  # a liberty file's name when mapped to it; "" for Yosys's own gates
    liberty_um2: float | None = None  # stat -liberty: the mapped cells' area from that file
    liberty_ff: int | None = None  # flip-flops counted before dfflibmap (liberty names vary)

    @property
    def ff(self) -> int:
        if self.library:
            return self.liberty_ff or 0
        return sum(n for t, n in self.cells.items() if t in FLOP_CELLS)

    @property
    def gates(self) -> int:
        return sum(self.cells.values()) - self.ff

    @property
    def unknown_cells(self) -> dict[str, int]:
        if self.library:  # the liberty file prices its own cells
            return {}
        return {t: n for t, n in self.cells.items() if t not in NAND2_EQ}

    @property
    def nand2_eq(self) -> float | None:
        """NAND2 equivalents of Yosys's gates (None when mapped to a liberty file's cells)."""
        if self.library:
            return None
        return sum(NAND2_EQ.get(t, 0.0) * n for t, n in self.cells.items())

    @property
    def logic_um2(self) -> float:
        if self.library:
            return self.liberty_um2 or 0.0
        return self.nand2_eq * UM2_PER_NAND2

    @property
    def memory_bits(self) -> int:
        return sum(m["bits"] for m in self.memories)

    @property
    def sram_um2(self) -> float:
        return self.memory_bits * SRAM_UM2_PER_BIT

    @property
    def total_um2(self) -> float:
        return self.logic_um2 + self.sram_um2

    @classmethod
    def from_dict(cls, d: dict) -> AsicUnit:
        """The unit of an ``asic.json`` entry (:meth:`as_dict`)."""
        keys = ("name", "top", "cells", "memories", "transistors", "seconds", "memory_mode",
                "library", "liberty_um2", "liberty_ff")  # fmt: skip
        return cls(**{f: d[f] for f in keys if f in d})

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("ff", "gates", "nand2_eq", "logic_um2", "memory_bits", "sram_um2", "total_um2"):
            v = getattr(self, k)
            d[k] = round(v, 1) if isinstance(v, float) else v
        d["unknown_cells"] = self.unknown_cells
        return d


@dataclass
class AsicReport:
    design: str
    config_hash: str
    units: list[AsicUnit]
    memory_mode: str
    macro_min_words: int
    library: str  # the liberty file's name, or "" for Yosys's gates and the NAND2 table
    tools: dict
    seconds: float
    config: dict
    openlane_dir: str | None = None
    assumptions: dict = field(default_factory=lambda: dict(ASSUMPTIONS))

    def unit(self, name: str) -> AsicUnit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "units"}
        d["units"] = [u.as_dict() for u in self.units]
        return d

    def to_markdown(self) -> str:
        lines = [
            f"ASIC view of `{self.design}` ("
            + (f"mapped to {self.library}" if self.library else "generic synthesis")
            + f", {self.tools.get('yosys', '?')}; "
            f"memories: {self.memory_mode}, macros from {self.macro_min_words} words)",
            "",
            table_markdown(self.units),
            "",
            "Assumptions:",
            "",
        ]
        lines += [f"- {k}: {v}" for k, v in self.assumptions.items()]
        macros = [(u.name, m) for u in self.units for m in u.memories]
        if macros:
            lines += ["", "| unit | memory macro | words x bits | read / write ports |",
                      "| --- | --- | ---: | ---: |"]  # fmt: skip
            for name, m in macros:
                lines.append(
                    f"| {name} | {m['name']} | {m['depth']} x {m['width']} | "
                    f"{m['rd_ports']} / {m['wr_ports']} |"
                )
        return "\n".join(lines)

    def write(self, out_dir) -> None:
        out = Path(out_dir)
        (out / "asic.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "asic.md").write_text(f"# ASIC view: {self.design}\n\n{self.to_markdown()}\n")


TABLE_COLUMNS = ("unit", "cells", "FFs", "NAND2-eq", "logic mm^2", "memory bits", "SRAM mm^2",
                 "transistors", "synth s")  # fmt: skip


def table_rows(units) -> list[tuple[str, ...]]:
    """The report table's rows, as strings (shared by the markdown, the CLI and the benchmark)."""
    rows = []
    for u in units:
        rows.append((
            u.name, f"{sum(u.cells.values()):,}", f"{u.ff:,}",
            "-" if u.nand2_eq is None else f"{u.nand2_eq:,.0f}",
            f"{u.logic_um2 / 1e6:.4f}", f"{u.memory_bits:,}", f"{u.sram_um2 / 1e6:.4f}",
            f"{u.transistors:,}" if u.transistors is not None else "?", f"{u.seconds:.1f}",
        ))  # fmt: skip
    return rows


def table_markdown(units) -> str:
    head = "| " + " | ".join(TABLE_COLUMNS) + " |"
    rule = "| --- |" + " ---: |" * (len(TABLE_COLUMNS) - 1)
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in table_rows(units)])


# ---- synthesis ---------------------------------------------------------------------------------
def _script(verilog: str, top: str, memories: str, macro_min_words: int,
            liberty: str | None = None) -> str:
    if memories == "flops":
        mem_map = ["memory_map"]
    else:  # ROMs and small memories to gates; the rest stay $mem_v2 (macros)
        mem_map = [
            "memory_map t:$mem_v2 r:WR_PORTS=0 %i",
            f"memory_map t:$mem_v2 r:SIZE<{macro_min_words} %i",
        ]
    return "\n".join([
        f"read_verilog {verilog}",
        f"synth -top {top} -flatten -run begin:fine",
        *mem_map,
        "opt_clean",
        "select t:$mem_v2",
        "write_json -compat-int macros.json",
        "select -clear",
        "opt -fast -full",
        "techmap",
        "opt -fast",
        "dfflegalize -cell $_DFF_P_ 01 -cell $_DFF_PP0_ 01 -cell $_DFF_PP1_ 01",
        *(_liberty_map(liberty) if liberty else [
            f"abc -g {GATE_SET} -script +{ABC_SCRIPT.replace(' ', '')}",
            "opt_clean -purge",
            "tee -q -o stat.json stat -json -tech cmos",
        ]),
        "",
    ])  # fmt: skip


def _liberty_map(liberty: str) -> list[str]:
    return [
        "tee -q -o ff.json stat -json",  # the flip-flops, before they take the library's names
        f"dfflibmap -liberty {liberty}",
        f"abc -liberty {liberty} -script +{ABC_SCRIPT.replace(' ', '')}",
        "opt_clean -purge",
        f"tee -q -o stat.json stat -json -liberty {liberty}",
    ]


def _param(value) -> int:
    """A Yosys JSON parameter (an int with -compat-int, else a binary string)."""
    return value if isinstance(value, int) else int(str(value), 2)


def _macros(path: Path) -> list[dict]:
    out = []
    for mod in json.loads(path.read_text()).get("modules", {}).values():
        for cname, cell in mod.get("cells", {}).items():
            if cell["type"] != "$mem_v2":
                continue
            p = cell["parameters"]
            width, depth = _param(p["WIDTH"]), _param(p["SIZE"])
            out.append({
                "name": str(p.get("MEMID", cname)).lstrip("\\"),
                "width": width, "depth": depth, "bits": width * depth,
                "rd_ports": _param(p["RD_PORTS"]), "wr_ports": _param(p["WR_PORTS"]),
            })  # fmt: skip
    return sorted(out, key=lambda m: m["name"])


def _check_memory_options(memories, macro_min_words) -> None:
    if memories not in MEMORY_MODES:
        raise ConfigError(f"memories must be one of {', '.join(MEMORY_MODES)}, not {memories!r}")
    words = macro_min_words
    if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= 1 << 20:
        raise ConfigError(f"macro_min_words must be an integer in 1..2**20, not {words!r}")


def synthesise_verilog(
    verilog: str,
    top: str,
    work_dir,
    *,
    name: str | None = None,
    memories: str = "macro",
    macro_min_words: int = MACRO_MIN_WORDS,
    liberty=None,
    timeout_s: float | None = None,
) -> AsicUnit:
    """Generic synthesis of the Verilog text ``verilog`` (module ``top``) in ``work_dir``.

    With ``liberty`` (a path to a Liberty file, e.g. a PDK's standard cells), the gates and
    flip-flops are mapped to its cells instead (``dfflibmap``, ``abc -liberty``) and the area is
    the file's (``stat -liberty``); NAND2 equivalents and transistors are then not reported.

    Writes ``<top>.v``, ``synth.ys``, ``synth.log``, ``macros.json`` and ``stat.json`` there.
    Raises ConfigError (bad ``memories``), ToolMissingError, BuildError (Yosys failed or ran past
    ``timeout_s``).
    """
    _check_memory_options(memories, macro_min_words)
    yosys = find_tool("yosys")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("stat.json", "macros.json", "ff.json"):
        (work / stale).unlink(missing_ok=True)
    lib_name = ""
    if liberty is not None:  # copied in: the yowasp build only sees its working directory
        lib_name = Path(liberty).name
        shutil.copyfile(_check_liberty(liberty), work / "cells.lib")
    (work / f"{top}.v").write_text(verilog)
    (work / "synth.ys").write_text(_script(f"{top}.v", top, memories, macro_min_words,
                                           "cells.lib" if lib_name else None))  # fmt: skip
    t0 = time.monotonic()
    try:  # relative paths and cwd: the yowasp build only sees its working directory
        r = subprocess.run([yosys, "-q", "-l", "synth.log", "-s", "synth.ys"], cwd=work,
                           capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"yosys ran past the {timeout_s:g} s time limit synthesising {top}; try a smaller "
            f"configuration (log: {work / 'synth.log'})"
        ) from None
    seconds = time.monotonic() - t0
    if r.returncode != 0 or not (work / "stat.json").is_file():
        out = r.stdout + r.stderr
        errors = [ln.strip() for ln in out.splitlines() if "ERROR" in ln] or out.splitlines()[-5:]
        raise BuildError(
            f"generic synthesis of {top} failed: {' '.join(errors)} (log: {work / 'synth.log'})"
        )
    stat = json.loads((work / "stat.json").read_text())
    design = stat.get("design") or next(iter(stat["modules"].values()))
    cells = {t: n for t, n in design.get("num_cells_by_type", {}).items() if t != "$mem_v2"}
    transistors = design.get("estimated_num_transistors")
    if isinstance(transistors, str):  # "1234+" when some cells (the macros) have no estimate
        transistors = int(transistors.rstrip("+")) if transistors.rstrip("+").isdigit() else None
    macros = _macros(work / "macros.json")
    (work / "macros.json").unlink()  # the whole netlist's names: large, and now in the report
    liberty_um2 = liberty_ff = None
    if lib_name:
        liberty_um2 = float(design.get("area", 0.0))
        pre = json.loads((work / "ff.json").read_text())
        pre = pre.get("design") or next(iter(pre["modules"].values()))
        liberty_ff = sum(pre.get("num_cells_by_type", {}).get(t, 0) for t in FLOP_CELLS)
        transistors = None
    return AsicUnit(
        name=name or top,
        top=top,
        cells=dict(sorted(cells.items())),
        memories=macros,
        transistors=transistors,
        seconds=round(seconds, 2),
        memory_mode=memories,
        library=lib_name,
        liberty_um2=liberty_um2,
        liberty_ff=liberty_ff,
    )


def _check_liberty(liberty) -> Path:
    path = Path(liberty)
    if not path.is_file():
        raise ConfigError(f"liberty file {str(path)!r} does not exist")
    return path


def _yosys_version(work_dir: Path) -> str:
    try:
        creator = json.loads((work_dir / "stat.json").read_text()).get("creator", "")
    except (OSError, ValueError):
        return "unknown"
    return creator.split(" (")[0] or "unknown"


def _units(cfg, engine: str | None, whole: bool) -> list[tuple[str, Callable]]:
    """(unit name, factory -> (component, module name)) for each unit to synthesise."""
    from ..generators.accel.top import Accelerator
    from ..generators.registry import engine_spec

    kinds = [type(e).kind for e in cfg.engines]
    if engine is not None and engine not in kinds:
        raise ConfigError(
            f"engine must be one of the config's engines ({', '.join(kinds)}), not {engine!r}"
        )
    units = []
    for ecfg in cfg.engines:
        kind = type(ecfg).kind
        if engine in (None, kind):
            units.append((kind, lambda e=ecfg, k=kind: (engine_spec(k).build(e),
                                                         f"{cfg.name}_{k}")))  # fmt: skip
    if whole:
        units.append(("accelerator", lambda: (Accelerator(cfg), cfg.name)))
    return units


def asic_view(
    cfg,
    out_dir,
    *,
    engine: str | None = None,
    whole: bool | None = None,
    memories: str = "macro",
    macro_min_words: int = MACRO_MIN_WORDS,
    openlane: bool = False,
    liberty=None,
    progress: Callable[[AsicEvent], None] | None = None,
    timeout_s: float | None = None,
) -> AsicReport:
    """Generic synthesis of each engine of ``cfg`` and of the whole accelerator into ``out_dir``.

    * ``cfg``: an AccelConfig, or anything :func:`gatesmith.config.load_config` takes.
    * ``engine``: synthesise only this engine kind (and, unless ``whole=True``, not the whole).
    * ``memories``/``macro_min_words``: see the module docstring.
    * ``openlane``: also write the LibreLane export into ``out_dir/openlane``.
    * ``liberty``: map to this Liberty file's cells and take their area from it (see
      :func:`synthesise_verilog`) instead of Yosys's gates and the NAND2 table.

    Writes ``asic.json``, ``asic.md`` and ``build/<unit>/`` (Verilog, script, log, stat.json).
    Raises ConfigError (bad config, unknown engine), ToolMissingError, BuildError.
    """
    from ..config import load_config
    from ..sim.cocotb_runner import verilog_of

    cfg = load_config(cfg)
    _check_memory_options(memories, macro_min_words)
    if liberty is not None:
        _check_liberty(liberty)
    whole = engine is None if whole is None else whole
    units = _units(cfg, engine, whole)
    find_tool("yosys")  # fail before any elaboration when it is missing
    out = Path(out_dir)
    (out / "build").mkdir(parents=True, exist_ok=True)
    (out / "asic.json").unlink(missing_ok=True)  # a failed rerun must not leave an old report

    def emit(stage, status, unit, message="", t0=None):
        if progress is not None:
            elapsed = round(time.monotonic() - t0, 3) if t0 is not None else 0.0
            progress(AsicEvent(stage, status, unit, message, elapsed))

    t_all = time.monotonic()
    results = []
    for name, factory in units:
        t0 = time.monotonic()
        emit("elaborate", "start", name, "Amaranth -> Verilog", t0)
        component, top = factory()
        verilog = verilog_of(component, name=top)
        emit("elaborate", "done", name, f"{len(verilog) // 1024} KiB of Verilog", t0)
        t1 = time.monotonic()
        emit("synthesis", "start", name, f"yosys synth + abc -g {GATE_SET}", t1)
        unit = synthesise_verilog(verilog, top, out / "build" / name, name=name,
                                  memories=memories, macro_min_words=macro_min_words,
                                  liberty=liberty, timeout_s=timeout_s)  # fmt: skip
        results.append(unit)
        emit("synthesis", "done", name,
             f"{sum(unit.cells.values()):,} cells, {unit.ff:,} FFs, {unit.memory_bits:,} "
             f"macro bits", t1)  # fmt: skip
    report = AsicReport(
        design=cfg.name,
        config_hash=cfg.content_hash,
        units=results,
        memory_mode=memories,
        macro_min_words=macro_min_words,
        library=Path(liberty).name if liberty is not None else "",
        tools={"yosys": _yosys_version(out / "build" / results[-1].name)},
        seconds=0.0,
        config=cfg.to_dict(),
    )
    if liberty is not None:
        for key in ("gate_set", "nand2_eq", "um2_per_nand2"):
            del report.assumptions[key]
        report.assumptions["liberty"] = (
            f"gates and flip-flops mapped to the cells of {Path(liberty).name} (dfflibmap, "
            "abc -liberty); logic area = stat -liberty, cell area only"
        )
    if openlane:
        t2 = time.monotonic()
        emit("export", "start", "accelerator", "LibreLane config", t2)
        whole_unit = next((u for u in results if u.name == "accelerator"), None)
        path = openlane_export(cfg, out / "openlane", unit=whole_unit)
        report.openlane_dir = str(path.relative_to(out))
        emit("export", "done", "accelerator", str(path), t2)
    report.seconds = round(time.monotonic() - t_all, 2)
    report.write(out)
    return report


# ---- LibreLane / OpenLane 2 export --------------------------------------------------------------
def _core_util(unit: AsicUnit | None) -> int:
    """A starting FP_CORE_UTIL (%): lower when macros take part of the core."""
    if unit is None or not unit.memories:
        return 40
    share = unit.sram_um2 / max(unit.total_um2, 1.0)
    return 40 if share < 0.2 else 30 if share < 0.6 else 25


def openlane_export(cfg, out_dir, *, unit: AsicUnit | None = None, top: str = "axi") -> Path:
    """Write a LibreLane (OpenLane 2) design directory for ``cfg`` into ``out_dir``.

    ``top`` is ``"axi"`` (the accelerator with its AXI4-Lite subordinate and AXI4 manager, the IP
    to harden as a macro) or ``"link"`` (host-link bridge in front: byte streams). ``unit``, when
    given, is the generic-synthesis result of that top: its figures go into the README and set
    the starting core utilisation. Returns ``out_dir``.
    """
    from ..config import load_config
    from .verilog import generate

    cfg = load_config(cfg)
    if top not in ("axi", "link"):
        raise ConfigError(f"top must be axi or link, not {top!r}")
    out = Path(out_dir)
    src = out / "src"
    generate(cfg, src, lint_output=False)
    design = cfg.name if top == "axi" else f"{cfg.name}_link"
    util = _core_util(unit)
    period_ns = round(1e9 / cfg.clock_hz, 3)
    config = {
        "meta": {"version": 2, "flow": "Classic"},
        "DESIGN_NAME": design,
        "VERILOG_FILES": [f"dir::src/{design}.v"],
        "CLOCK_PORT": "clk",
        "CLOCK_PERIOD": period_ns,
        "FP_CORE_UTIL": util,
        "PL_TARGET_DENSITY_PCT": util + 10,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "README.md").write_text(_openlane_readme(cfg, design, config, unit))
    return out


def _openlane_readme(cfg, design: str, config: dict, unit: AsicUnit | None) -> str:
    mems = ""
    if unit is not None:
        mems = (
            f"\nSynthesis of this design by `gatesmith asic`: "
            f"{sum(unit.cells.values()):,} cells, {unit.ff:,} flip-flops, "
            + (f"~{unit.logic_um2 / 1e6:.3f} mm^2 of {unit.library} cells" if unit.library else
               f"{unit.nand2_eq:,.0f} NAND2-equivalents (~{unit.logic_um2 / 1e6:.3f} mm^2 of "
               "sky130 HD cells, Yosys's own gates, no PDK)")
            + f" before placement density, and {len(unit.memories)} memories of "
            f"{unit.memory_bits:,} bits in all that want SRAM macros:\n\n"
            "| memory | words x bits | read / write ports |\n| --- | ---: | ---: |\n"
            + "".join(
                f"| {m['name']} | {m['depth']} x {m['width']} | {m['rd_ports']} / "
                f"{m['wr_ports']} |\n"
                for m in unit.memories
            )
        )
    flops_note = ""
    if unit is not None and unit.memory_bits:
        flops_um2 = unit.memory_bits * (NAND2_EQ["$_DFF_P_"] + NAND2_EQ["$_MUX_"]) * UM2_PER_NAND2
        flops_note = (
            f" As flip-flops these {unit.memory_bits:,} bits alone need about "
            f"{flops_um2 / 1e6:.1f} mm^2 of sky130 HD cells (a flip-flop and a multiplexer per "
            "bit, before the read multiplexers)."
        )
    return f"""# {design}: LibreLane (OpenLane 2) design directory

Written by `gatesmith asic --openlane` for the accelerator config `{cfg.name}`
(config hash `{cfg.content_hash[:12]}`). `src/` holds the Verilog of `gatesmith generate`
(`{design}.v` is the top; `manifest.json` lists its ports, register map and engine windows).

| config.json field | value | why |
| --- | --- | --- |
| `DESIGN_NAME` | `{config['DESIGN_NAME']}` | the top module |
| `VERILOG_FILES` | `{config['VERILOG_FILES'][0]}` | one self-contained file from Amaranth |
| `CLOCK_PORT` | `clk` | the single clock domain; `rst` is a synchronous, active-high reset |
| `CLOCK_PERIOD` | {config['CLOCK_PERIOD']} ns | the config's clock, {cfg.clock_hz / 1e6:g} MHz |
| `FP_CORE_UTIL` | {config['FP_CORE_UTIL']} % | a start; lower it if global placement fails |
| `PL_TARGET_DENSITY_PCT` | {config['PL_TARGET_DENSITY_PCT']} % | a little above the core use |

## Running it (you need a PDK; gatesmith does not install one)

```sh
pip install librelane            # or LibreLane's Nix shell; with Docker add --dockerized
librelane --pdk sky130A config.json          # or: --pdk gf180mcuD (or set "PDK" in config.json)
# OpenLane 2 takes the same file: openlane --pdk sky130A config.json
```

`config.json` is in the OpenLane 2 format (`"meta": {{"version": 2, "flow": "Classic"}}`), which
LibreLane also reads; the fields above keep their names there. `--pdk-root DIR` points at a PDK
you installed yourself (e.g. with `ciel`); `--manual-pdk` stops LibreLane fetching one.
Results land in `runs/<tag>/` (`final/gds`, the metrics in `final/metrics.json`).

## Memories

The engines' scratchpads and accumulators are Amaranth `Memory` objects with a registered read
port. LibreLane's synthesis maps them to flip-flops and multiplexers unless you replace them
with SRAM macros (OpenRAM, DFFRAM): wrap a macro in a module with the same ports, list its LEF,
GDS and liberty views under `MACROS`, and give its Verilog as a black box.{flops_note}
For a first run, generate a config with small memories (`spad_depth`, `acc_depth`, `depth`).
{mems}"""
