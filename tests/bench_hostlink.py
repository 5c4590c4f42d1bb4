"""cocotb bench: the host-link bridge in front of the accelerator (LinkTop), byte by byte.

Bytes go in on ``rx`` with random gaps and come out on ``tx`` under random backpressure. Checked:
ping, register and window reads/writes, the queue via WRITE_FIXED and a GEMM end to end, a
corrupted frame (CRC error, nothing written), unknown commands and bad lengths, junk between
frames, a truncated frame (dropped after the timeout, the link recovers), exactly-once frames
(a duplicate is answered from the record and not executed; the session flag; reset clears it).
"""

import json
import os
import random

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from gatesmith.config import AccelConfig
from gatesmith.generators.accel.regs import REG
from gatesmith.generators.engine import ENGINE_WINDOW_BASE
from gatesmith.generators.systolic import model
from gatesmith.generators.systolic.engine import window_layout
from gatesmith.generators.systolic.layout import os_operands, pack_words, unpack_acc
from gatesmith.generators.engine import INSTR_WORDS
from gatesmith.host.protocol import Cmd, Response, ResponseParser, Status, encode_request
from gatesmith.host.systolic import gemm_instr

CFG = AccelConfig.from_dict(json.loads(os.environ["GATESMITH_CFG"]))


class Link:
    def __init__(self, dut, rng, *, stall=0.0):
        self.dut, self.rng, self.stall = dut, rng, stall
        self.parser = ResponseParser()
        self.rx_bytes = bytearray()
        self.seq = 0
        cocotb.start_soon(self._tx_monitor())

    async def _tx_monitor(self):
        dut = self.dut
        while True:
            dut.tx__ready.value = int(self.rng.random() >= self.stall)
            await RisingEdge(dut.clk)
            if dut.tx__valid.value and dut.tx__ready.value:
                self.rx_bytes.append(int(dut.tx__payload.value))

    async def send(self, data: bytes):
        dut = self.dut
        for b in data:
            while self.rng.random() < self.stall:
                dut.rx__valid.value = 0
                await RisingEdge(dut.clk)
            dut.rx__payload.value = b
            dut.rx__valid.value = 1
            await RisingEdge(dut.clk)
            while not dut.rx__ready.value:
                await RisingEdge(dut.clk)
        dut.rx__valid.value = 0

    async def response(self, is_read, limit=100_000):
        for _ in range(limit):
            got = self.parser.feed(bytes(self.rx_bytes), {self.seq} if is_read else set())
            self.rx_bytes.clear()
            if got:
                assert len(got) == 1, got
                assert isinstance(got[0], Response), got[0]
                return got[0]
            await RisingEdge(self.dut.clk)
        raise AssertionError("no response")

    async def request(self, cmd, addr, count=0, payload=b"", *, corrupt=False, seq=None):
        self.seq = (self.seq + 1) & 0xFF if seq is None else seq
        frame = bytearray(encode_request(self.seq, cmd, addr, count, payload))
        if corrupt:
            frame[-3] ^= 0x40
        await self.send(bytes(frame))
        r = await self.response(cmd & ~Cmd.ONCE == Cmd.READ)
        assert r.seq == self.seq
        return r

    async def write(self, addr, words, fixed=False):
        words = np.asarray(words, dtype="<u4")
        mw = CFG.link_max_words
        for i in range(0, len(words), mw):
            chunk = words[i : i + mw]
            a = addr if fixed else addr + 4 * i
            cmd = Cmd.WRITE_FIXED if fixed else Cmd.WRITE
            r = await self.request(cmd, a, len(chunk), chunk.tobytes())
            assert r.status == Status.OK, r
            assert r.count == len(chunk)

    async def read(self, addr, n):
        out = []
        for i in range(0, n, CFG.link_max_words):
            r = await self.request(Cmd.READ, addr + 4 * i, min(CFG.link_max_words, n - i))
            assert r.status == Status.OK, r
            out.append(np.frombuffer(r.payload, dtype="<u4"))
        return np.concatenate(out)


async def setup(dut, stall):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rx__valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    return Link(dut, random.Random(int(os.environ.get("GATESMITH_SEED", "1"))), stall=stall)


async def _traffic(dut, stall):
    link = await setup(dut, stall)
    r = await link.request(Cmd.PING, 0)
    assert r.status == Status.OK and r.count == 0
    await link.write(REG["SCRATCH"], [0x0BADF00D])
    assert (await link.read(REG["SCRATCH"], 1))[0] == 0x0BADF00D
    # a GEMM end to end: operands, an instruction via WRITE_FIXED, status polling, results
    scfg = CFG.engine("systolic")
    lay = window_layout(scfg)
    base = ENGINE_WINDOW_BASE
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-128, 128, (5, 7), generator=g)
    b = torch.randint(-128, 128, (7, 3), generator=g)
    left, top = os_operands(a, b, scfg)
    lw, tw, aw = lay["left"], lay["top"], lay["acc"]
    await link.write(base + 4 * lw.offset, pack_words(left, 8, lw.width // 32, lw.stride))
    await link.write(base + 4 * tw.offset, pack_words(top, 8, tw.width // 32, tw.stride))
    await link.write(REG["QUEUE"], gemm_instr("os", 5, 7, 3), fixed=True)
    for _ in range(100):
        if (await link.read(REG["STATUS"], 1))[0] & 1:
            break
    rows = -(-3 // scfg.cols) * 5
    words = await link.read(base + 4 * aw.offset, rows * aw.stride)
    assert torch.equal(unpack_acc(words, 5, 3, scfg, aw.stride), model.gemm(a, b, scfg))


@cocotb.test()
async def traffic_no_backpressure(dut):
    await _traffic(dut, 0.0)


@cocotb.test()
async def traffic_with_backpressure(dut):
    await _traffic(dut, 0.4)


@cocotb.test()
async def bad_frames_change_nothing(dut):
    link = await setup(dut, 0.2)
    await link.write(REG["SCRATCH"], [1])
    r = await link.request(Cmd.WRITE, REG["SCRATCH"], 1, b"\x02\0\0\0", corrupt=True)
    assert r.status == Status.CRC_ERROR
    assert (await link.read(REG["SCRATCH"], 1))[0] == 1
    r = await link.request(0x09, 0, 0)
    assert r.status == Status.BAD_CMD
    r = await link.request(Cmd.READ, 0, 0)
    assert r.status == Status.BAD_LENGTH
    r = await link.request(Cmd.READ, 0, CFG.link_max_words + 1)
    assert r.status == Status.BAD_LENGTH
    r = await link.request(Cmd.READ, 0x00F0_0000, 2)
    assert r.status == Status.DECERR and len(r.payload) == 8
    r = await link.request(Cmd.WRITE, REG["MAGIC"], 2, b"\0" * 8)
    assert r.status == Status.SLVERR and r.count == 0
    # junk between frames is skipped
    await link.send(b"\x00\x13\x37")
    assert (await link.read(REG["SCRATCH"], 1))[0] == 1


@cocotb.test()
async def truncated_frame_times_out(dut):
    link = await setup(dut, 0.0)
    frame = encode_request(9, Cmd.WRITE, REG["SCRATCH"], 1, b"\x05\0\0\0")
    await link.send(frame[:6])  # the rest never comes
    await ClockCycles(dut.clk, CFG.link_timeout_cycles + 10)
    assert (await link.read(REG["SCRATCH"], 1))[0] == 0


@cocotb.test()
async def once_frames_execute_exactly_once(dut):
    link = await setup(dut, 0.2)
    r = await link.request(Cmd.PING, 0)
    assert r.status == Status.OK and not r.session and not r.replayed
    one = (1).to_bytes(4, "little")
    r = await link.request(Cmd.WRITE | Cmd.ONCE, REG["SCRATCH"], 1, one, seq=40)
    assert (r.status, r.count, r.session, r.replayed) == (Status.OK, 1, True, False)
    await link.write(REG["SCRATCH"], [2])
    # the same ONCE frame again (its answer was "lost"): the recorded answer, nothing executed
    r = await link.request(Cmd.WRITE | Cmd.ONCE, REG["SCRATCH"], 1, one, seq=40)
    assert (r.status, r.count, r.session, r.replayed) == (Status.OK, 1, True, True)
    assert (await link.read(REG["SCRATCH"], 1))[0] == 2
    # a corrupted ONCE frame is not recorded: re-sending it executes it
    nops = b"\0" * (4 * INSTR_WORDS * 2)
    r = await link.request(Cmd.WRITE_FIXED | Cmd.ONCE, REG["QUEUE"], 2 * INSTR_WORDS, nops,
                           corrupt=True, seq=41)  # fmt: skip
    assert r.status == Status.CRC_ERROR
    retired = (await link.read(REG["RETIRED"], 1))[0]
    for replayed in (False, True, True):
        r = await link.request(Cmd.WRITE_FIXED | Cmd.ONCE, REG["QUEUE"], 2 * INSTR_WORDS, nops,
                               seq=41)  # fmt: skip
        assert (r.status, r.count, r.replayed) == (Status.OK, 2 * INSTR_WORDS, replayed)
    for _ in range(100):
        if (await link.read(REG["STATUS"], 1))[0] & 1:
            break
    assert (await link.read(REG["RETIRED"], 1))[0] == retired + 2  # two NOPs, once
    # a failed ONCE write is recorded with its status; READ cannot be ONCE
    r = await link.request(Cmd.WRITE | Cmd.ONCE, REG["MAGIC"], 1, one, seq=42)
    assert (r.status, r.count) == (Status.SLVERR, 0)
    r = await link.request(Cmd.WRITE | Cmd.ONCE, REG["MAGIC"], 1, one, seq=42)
    assert (r.status, r.count, r.replayed) == (Status.SLVERR, 0, True)
    r = await link.request(Cmd.READ | Cmd.ONCE, 0, 1, seq=43)
    assert r.status == Status.BAD_CMD
    # a reset forgets the record: the session flag drops
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    r = await link.request(Cmd.PING, 0)
    assert r.status == Status.OK and not r.session


@cocotb.test()
async def fuzz_frames(dut):
    """Hypothesis-drawn traffic (tests/test_hostlink_fuzz.py writes it to GATESMITH_FUZZ):
    valid SCRATCH writes and reads, the same frames with a flipped bit anywhere, truncated
    frames and junk bytes, under backpressure. After every case a clean read of SCRATCH equals
    the model (only writes whose frame was intact took effect) and every answer the bridge gave
    to an intact request was a well-formed frame with a good CRC."""
    path = os.environ.get("GATESMITH_FUZZ")
    if not path:
        return
    cases = json.loads(open(path).read())
    link = await setup(dut, 0.2)
    scratch = 0
    wait = CFG.link_timeout_cycles + 64

    async def drain():
        await ClockCycles(dut.clk, wait)  # a partial frame is dropped after the timeout
        link.rx_bytes.clear()
        link.parser.reset()

    for i, case in enumerate(cases):
        kind = case["kind"]
        if kind == "junk":
            await link.send(bytes(case["bytes"]))
            await drain()
        elif kind in ("write", "read"):
            link.seq = (link.seq + 1) & 0xFF
            value = case["value"]
            if kind == "write":
                frame = bytearray(encode_request(link.seq, Cmd.WRITE, REG["SCRATCH"], 1,
                                                 value.to_bytes(4, "little")))  # fmt: skip
            else:
                frame = bytearray(encode_request(link.seq, Cmd.READ, REG["SCRATCH"], 1))
            flip = case.get("flip")
            if flip is None and not case.get("cut"):
                await link.send(bytes(frame))
                r = await link.response(kind == "read")
                assert r.seq == link.seq and r.status == Status.OK, (i, case, r)
                if kind == "write":
                    scratch = value
                else:
                    assert int.from_bytes(r.payload, "little") == scratch, (i, case)
                continue
            if flip is not None:
                byte, bit = flip
                frame[byte % len(frame)] ^= 1 << bit
            if case.get("cut"):
                frame = frame[: case["cut"] % len(frame)]
            await link.send(bytes(frame))
            await drain()
        # the invariant, with a clean frame: only intact writes changed SCRATCH
        got = (await link.read(REG["SCRATCH"], 1))[0]
        assert got == scratch, (i, case, hex(got), hex(scratch))
