"""Formal checks with SymbiYosys (slow tier): the properties are in ``tests/formal_props.py``.

Each case runs ``mode bmc`` (no assertion can fail within ``depth`` cycles from reset, for
every input sequence the assumptions allow) and ``mode cover`` with the same depth (every
``Cover`` is reached, so the assumptions do not rule the interesting behaviour out). The
properties and depths:

* ``axi_lite`` (the Accelerator's AXI4-Lite subordinate, a 2x2 systolic config, depth 10): B
  and R hold VALID/payload until READY; no B without an accepted write, no R without an
  accepted read; AW and W accepted together; at most one transaction outstanding, and no
  request accepted while one is.
* ``hostlink`` (HostLinkBridge, max_words=2, depth 20: a 1-word WRITE frame through its AXI
  write, and PING/READ/error frames through their whole response): an AXI write only for a
  write frame whose CRC was good (an independent frame monitor parses the accepted bytes);
  every response starts 0x5A, has count <= max_words, and carries a CRC-16 that matches its
  bytes; tx, AW, W and AR hold VALID and payload until READY.
* ``fifo`` / ``fifo_buffered`` (amaranth.lib.fifo SyncFIFO and SyncFIFOBuffered, depth 4, as
  the instruction queue and the DMA's data and tag FIFOs; depth 12: filled, drained and its
  pointers wrapped): level in 0..depth and equal to writes minus reads, no write accepted when full, no read
  offered when empty, words out in the order they went in.
* ``burst_reader`` / ``burst_writer`` (hdl/axi4.py, max_burst=4, depth 20, start parameters
  free with rows <= 3 and row_words <= 40 at any aligned address): every burst has
  1..max_burst beats and never crosses a 4 KiB boundary; AR/AW (and W) hold VALID and payload
  until READY; the reader never back-pressures R; the writer sends exactly len + 1 W beats per
  burst with WLAST on the last, never before its AW, and always accepts B.
"""

import time
from pathlib import Path

import pytest
from amaranth.lib import fifo

from gatesmith.config import AccelConfig
from gatesmith.generators.systolic.config import SystolicConfig

from . import formal_props as F

SMALL = AccelConfig(
    name="formal",
    engines=(SystolicConfig(rows=2, cols=2, spad_depth=16, acc_depth=16, dataflows=("os",)),),
    queue_depth=2,
    link_max_words=16,
    mem_bytes=4096,
    perf_width=32,
)

CASES = {
    "axi_lite": (lambda: F.AxiLiteSubordinate(SMALL), 10),
    "hostlink": (F.HostLinkBridgeHarness, 20),
    "fifo": (lambda: F.FifoHarness(fifo.SyncFIFO, 4), 12),
    "fifo_buffered": (lambda: F.FifoHarness(fifo.SyncFIFOBuffered, 4), 12),
    "burst_reader": (F.BurstReaderHarness, 20),
    "burst_writer": (F.BurstWriterHarness, 20),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_formal(name, tmp_path: Path):
    missing = F.missing_tools()
    if missing:
        pytest.skip(f"SymbiYosys tools not installed ({', '.join(missing)}): pip install '.[formal]'")
    make, depth = CASES[name]
    for mode in ("bmc", "cover"):
        t0 = time.monotonic()
        assert F.run_sby(f"{name}_{mode}", make(), mode=mode, depth=depth, work=tmp_path) == "PASS"
        print(f"{name}: {mode} depth {depth} PASS in {time.monotonic() - t0:.1f} s")
