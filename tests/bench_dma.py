"""cocotb bench: the DMA's AXI4 manager (``mem_``) against cocotbext-axi's AxiRam, the control
port (``axi_``) driven by AxiLiteMaster, with seeded random pauses on every channel of both.

The config comes in ``GATESMITH_CFG`` (JSON), the seed in ``GATESMITH_SEED``. Checked here:

* ``program_with_backpressure``: a token-ordered program of LOADs (device memory -> the systolic
  engine's ``left``/``top`` windows) and STOREs (windows -> device memory) whose rows cross 4 KiB
  boundaries and are longer than ``mem_max_burst`` leaves exactly the device memory and windows
  that a numpy model of the program predicts (written here, independently of the RTL and of the
  host code), while the host reads and writes other device memory (MEM_WINDOW_BASE) and other
  window words; RETIRED and the PERF_LOAD/PERF_STORE word counts agree;
* all along, a monitor on the ``mem_`` bus checks every AR/AW handshake: INCR, AxSIZE 2, at most
  ``mem_max_burst`` beats, inside one 4 KiB page and inside device memory; per program the words
  the bursts cover are exactly those the copies and the fetch of the entries name (none twice,
  none missing, no burst spanning the gap between two rows); at least one burst is cut at a
  4 KiB boundary and one at the max burst, so these checks cannot pass vacuously;
* ``register_queue_equals_program``: the same instructions pushed one at a time through the
  register queue (waiting for idle after each) leave the same device memory;
* ``dma_errors``: a LOAD whose device range runs past ``mem_bytes`` latches MEM_RANGE with
  ERROR_ADDR = its mem_addr and ERROR_PC = its entry, issues no AXI4 transaction, and the
  entries after it are discarded; through the register queue the same and a STORE past the end,
  a 32-bit wrap-around, MEM_ALIGN, BAD_SHAPE, BAD_FIELD (ERROR_PC 0xFFFF, no bus traffic) and
  WINDOW_RANGE; a copy ending exactly at ``mem_bytes`` is legal; after clearing, a program works;
* ``deadlock_watchdog``: a compute entry popping a token nobody pushes ends in DEADLOCK (the
  watchdog) naming that entry, the accelerator goes idle, and after clearing a program works;
* ``handshake_stability``: the same with other seeds; AxVALID and the AR/AW payload hold from
  VALID until READY (AXI4 A3.2.1) while the fetcher, the DMA and the host compete for the port.
"""

import json
import os
import random
from collections import Counter

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, Event, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam, AxiResp

from gatesmith.config import AccelConfig, config_from_dict
from gatesmith.generators.accel.isa import ENTRY_WORDS, DmaInstr, EntryHeader, Op
from gatesmith.hdl.fields import pack_struct
from gatesmith.generators.accel.regs import CTRL_BITS, MEM_WINDOW_BASE, REG, STATUS_BITS
from gatesmith.generators.engine import ENGINE_WINDOW_BASE, ENGINE_WINDOW_SIZE, ErrorCode
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.generators.systolic.engine import window_layout


def _config():
    """The config of GATESMITH_CFG, built without the engine registry: the registry imports every
    engine package, and with them torch (tens of seconds inside a loaded simulator process)."""
    data = json.loads(os.environ["GATESMITH_CFG"])
    engines = data.pop("engines")
    assert list(engines) == ["systolic"], f"this bench drives one systolic engine, not {engines}"
    scfg = config_from_dict(SystolicConfig, engines["systolic"], "engines.systolic")
    cfg = AccelConfig(engines=(scfg,), **data)
    assert json.loads(cfg.to_json()) == json.loads(os.environ["GATESMITH_CFG"])
    return cfg


CFG = _config()
SEED = int(os.environ.get("GATESMITH_SEED", "1"))
MEM_BYTES = CFG.mem_bytes
MAX_BURST = CFG.mem_max_burst
ENG = CFG.engine_index("systolic")
LAY = window_layout(CFG.engine("systolic"))
LEFT, TOP = LAY["left"], LAY["top"]
WIN_BASE = ENGINE_WINDOW_BASE + ENG * ENGINE_WINDOW_SIZE
WIN_WORDS = TOP.offset + TOP.depth * TOP.stride  # model of window words 0 .. end of "top"
# ERROR[15:8] sources and the register-queue ERROR_PC, as regs.py documents them
SRC_LOAD, SRC_STORE, SRC_CTRL = 0xFD, 0xFE, 0xFF
PC_NONE = 0xFFFF
PROG_ADDR = 0x3FA0  # the program's entries straddle the 4 KiB boundary at 0x4000
SCRATCH, SCRATCH_WORDS = 0x2400, 256  # device memory no program here touches (host accesses)
PAUSE_P = 0.3  # probability that a channel pauses in a cycle

# The programs below address window words one per entry: one 32-bit word per left/top entry.
assert LEFT.stride == 1 and TOP.stride == 1 and LEFT.depth >= 64 and TOP.depth >= 64, LAY
assert MEM_BYTES == 1 << 16 and MAX_BURST <= 16, (MEM_BYTES, MAX_BURST)

NOP = None


def dma(op, *, rows, row_words, mem_addr, mem_stride, win_addr, win_stride, engine=ENG):
    return {"opcode": int(op), "engine": engine, "rows": rows, "row_words": row_words,
            "mem_addr": mem_addr, "mem_stride": mem_stride, "win_addr": win_addr,
            "win_stride": win_stride}  # fmt: skip


def instr_words(ins):
    return [int(Op.NOP), 0, 0, 0] if ins is None else pack_struct(DmaInstr, **ins)


def entry_words(deps, ins):
    hdr = {"pop_prev": 0, "pop_next": 0, "push_prev": 0, "push_next": 0, **deps}
    return pack_struct(EntryHeader, **hdr) + instr_words(ins)


def main_program():
    """LOAD, LOAD, STORE, STORE, LOADs over both windows again, STORE; ordered by tokens.

    Rows cross the 4 KiB boundaries at 0x1000, 0x2000, 0x3000, 0x5000, 0x7000, 0x8000, 0xB000,
    0xC000, 0xD000 and 0xE000, and are longer than the max burst. The tokens make the program equivalent to running its entries
    in order, which is what the model does.
    """
    ld, st = Op.LOAD, Op.STORE
    L, T = LEFT.offset, TOP.offset
    return [
        ({"push_next": 1}, dma(ld, rows=3, row_words=12, mem_addr=0x0FE0, mem_stride=1030,
                               win_addr=L + 2, win_stride=13)),
        ({"push_next": 1}, dma(ld, rows=2, row_words=20, mem_addr=0x4FF4, mem_stride=24,
                               win_addr=T + 5, win_stride=25)),
        ({"pop_prev": 1}, NOP),
        ({"pop_prev": 1, "push_next": 1}, NOP),
        ({"pop_prev": 1}, dma(st, rows=3, row_words=12, mem_addr=0x6FE8, mem_stride=1027,
                              win_addr=L + 2, win_stride=13)),
        ({"push_prev": 1}, dma(st, rows=2, row_words=20, mem_addr=0xAFFC, mem_stride=1024,
                               win_addr=T + 5, win_stride=25)),
        ({"pop_next": 1, "push_prev": 1}, NOP),
        ({"pop_next": 1, "push_next": 1}, dma(ld, rows=4, row_words=10, mem_addr=0xCFF8,
                                              mem_stride=10, win_addr=L + 20, win_stride=11)),
        # no token: runs right after the LOAD above, beside the STORE below (the two channels
        # take turns on the engine's window port, both AXI4 directions busy; it touches nothing
        # the STORE touches)
        ({}, dma(ld, rows=2, row_words=24, mem_addr=0x2FD0, mem_stride=40, win_addr=T,
                 win_stride=30)),
        ({"pop_prev": 1, "push_next": 1}, NOP),
        ({"pop_prev": 1}, dma(st, rows=4, row_words=16, mem_addr=0xDFE0, mem_stride=520,
                              win_addr=L, win_stride=16)),
    ]  # fmt: skip


# ---- the reference model ------------------------------------------------------------------------
def rows_of(ins):
    """(first device-memory word, first window word, words) of each row of a copy."""
    m0, w0, n = ins["mem_addr"] // 4, ins["win_addr"], ins["row_words"]
    return [(m0 + r * ins["mem_stride"], w0 + r * ins["win_stride"], n) for r in range(ins["rows"])]


def model(mem, win, program):
    """Device memory and windows after ``program``'s entries, run one after the other."""
    mem, win = mem.copy(), win.copy()
    for _, ins in program:
        if ins is None:
            continue
        for m0, w0, n in rows_of(ins):
            if ins["opcode"] == Op.LOAD:
                win[w0 : w0 + n] = mem[m0 : m0 + n]
            else:
                mem[m0 : m0 + n] = win[w0 : w0 + n]
    return mem, win


def expected_words(program, fetch=True):
    """Counters of the device-memory byte addresses the AR and AW channels must cover."""
    ar, aw = Counter(), Counter()
    if fetch:
        ar.update(PROG_ADDR + 4 * i for i in range(len(program) * ENTRY_WORDS))
    for _, ins in program:
        if ins is None:
            continue
        side = ar if ins["opcode"] == Op.LOAD else aw
        for m0, _, n in rows_of(ins):
            side.update(4 * (m0 + i) for i in range(n))
    return ar, aw


def intervals(words):
    """Maximal runs [start, end) of byte addresses in a Counter of word addresses."""
    out = []
    for a in sorted(words):
        if out and out[-1][1] == a:
            out[-1][1] = a + 4
        else:
            out.append([a, a + 4])
    return out


# ---- the bus monitor ----------------------------------------------------------------------------
class BurstMonitor:
    """Every AR and AW handshake on the ``mem_`` bus, checked against AXI4's rules as it happens."""

    def __init__(self, dut):
        self.clk, self.rst = dut.clk, dut.rst
        self.chans = {
            ch: tuple(getattr(dut, f"mem__{ch}{s}")
                      for s in ("valid", "ready", "addr", "len", "size", "burst"))
            for ch in ("ar", "aw")
        }  # fmt: skip
        self.bursts = {"ar": [], "aw": []}  # (byte address, beats)
        self.problems = []  # AXI4 rule violations at handshakes (AxSIZE, AxBURST, AxLEN, 4 KiB)
        # AXI4 handshake rule (ARM's protocol checker: AXI4_ERRM_ARADDR_STABLE and friends):
        # once AxVALID is high, it and the address/control payload hold until AxREADY
        self.unstable = []
        cocotb.start_soon(self._run())

    def mark(self):
        return {ch: len(b) for ch, b in self.bursts.items()}

    def since(self, mark, ch):
        return self.bursts[ch][mark[ch] :]

    async def _run(self):
        edge = RisingEdge(self.clk)
        waiting = dict.fromkeys(self.chans)  # payload of a VALID that saw no READY yet
        while True:
            await edge
            if int(self.rst.value):  # a reset may drop a VALID (AXI4 A3.1.2)
                waiting = dict.fromkeys(self.chans)
                continue
            for ch, (valid, ready, addr, length, size, burst) in self.chans.items():
                if not int(valid.value):
                    if waiting[ch] is not None:
                        self.unstable.append(
                            f"{ch}valid dropped before its handshake: {ch}addr "
                            f"{waiting[ch][1]:#x} x {waiting[ch][2]} (valid since "
                            f"{waiting[ch][0]:.0f} ns) at {get_sim_time('ns'):.0f} ns"
                        )
                        waiting[ch] = None
                    continue
                a, beats = int(addr.value), int(length.value) + 1
                sz, bt = int(size.value), int(burst.value)
                now = get_sim_time("ns")
                if waiting[ch] is not None and waiting[ch][1:] != (a, beats, sz, bt):
                    self.unstable.append(
                        f"{ch.upper()} payload changed while {ch}valid waited for {ch}ready: "
                        f"{ch}addr {waiting[ch][1]:#x} x {waiting[ch][2]} beats (valid since "
                        f"{waiting[ch][0]:.0f} ns) became {a:#x} x {beats} at {now:.0f} ns"
                    )
                    waiting[ch] = None
                if not int(ready.value):
                    if waiting[ch] is None:
                        waiting[ch] = (now, a, beats, sz, bt)
                    continue
                waiting[ch] = None
                self.bursts[ch].append((a, beats))
                bad = []
                if sz != 2:
                    bad.append(f"{ch}size {sz} (want 2: 4 bytes)")
                if bt != 1:
                    bad.append(f"{ch}burst {bt} (want 1: INCR)")
                if beats > MAX_BURST:
                    bad.append(f"{beats} beats > mem_max_burst {MAX_BURST}")
                if a % 4:
                    bad.append("unaligned address")
                if (a & 0xFFF) + 4 * beats > 0x1000:
                    bad.append("crosses a 4 KiB boundary")
                if a + 4 * beats > MEM_BYTES:
                    bad.append(f"runs past mem_bytes {MEM_BYTES:#x}")
                if bad:
                    msg = f"{ch.upper()} burst {a:#x} x {beats}: " + "; ".join(bad)
                    self.problems.append(msg)
                    raise AssertionError(msg)


def check_bursts(mon, mark, program, fetch=True, host=None):
    """The bursts since ``mark`` cover exactly the words of the program (and of the host's
    single-word accesses: ``host`` = {"ar": Counter, "aw": Counter}); returns the split counts."""
    assert not mon.problems, mon.problems
    assert not mon.unstable, f"{len(mon.unstable)} handshake violations: {mon.unstable[:4]}"
    want = dict(zip(("ar", "aw"), expected_words(program, fetch), strict=True))
    for ch, words in (host or {}).items():
        want[ch] = want[ch] + words
    splits_4k = splits_max = 0
    for ch in ("ar", "aw"):
        got = Counter()
        runs = intervals(want[ch])
        for a, beats in mon.since(mark, ch):
            got.update(a + 4 * i for i in range(beats))
            end = a + 4 * beats
            run = [r for r in runs if r[0] <= a and end <= r[1]]
            assert run, f"{ch.upper()} burst {a:#x} x {beats} is not inside one copied run"
            if end < run[0][1]:  # the burst was cut inside a run: why?
                if end % 0x1000 == 0 and beats < MAX_BURST:
                    splits_4k += 1
                elif beats == MAX_BURST:
                    splits_max += 1
        missing, extra = want[ch] - got, got - want[ch]
        assert not missing and not extra, (
            f"{ch.upper()} words: missing {sorted(missing)[:8]} extra {sorted(extra)[:8]} "
            f"(bursts: {[(hex(a), n) for a, n in mon.since(mark, ch)]})"
        )
    return splits_4k, splits_max


# ---- environment --------------------------------------------------------------------------------
def _pauses(seed):
    rng = random.Random(seed)
    while True:
        yield rng.random() < PAUSE_P


class Env:
    def __init__(self, dut, ram, master, mon, rng):
        self.dut, self.ram, self.master, self.mon = dut, ram, master, mon
        self.rng = rng  # initial states (device memory, windows)


async def setup(dut, seed_offset=0):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    ram = AxiRam(AxiBus.from_prefix(dut, "mem_"), dut.clk, dut.rst, size=MEM_BYTES)
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axi_"), dut.clk, dut.rst)
    rng = random.Random(SEED * 1000 + seed_offset)
    for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
               ram.read_if.ar_channel, ram.read_if.r_channel,
               master.write_if.aw_channel, master.write_if.w_channel, master.write_if.b_channel,
               master.read_if.ar_channel, master.read_if.r_channel):  # fmt: skip
        ch.set_pause_generator(_pauses(rng.getrandbits(32)))
    mon = BurstMonitor(dut)
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return Env(dut, ram, master, mon, rng)


async def rd(env, addr):
    r = await env.master.read(addr, 4)
    assert r.resp == AxiResp.OKAY, f"read {addr:#x}: {r.resp}"
    return int.from_bytes(r.data, "little")


async def wr(env, addr, value):
    r = await env.master.write(addr, int(value).to_bytes(4, "little"))
    assert r.resp == AxiResp.OKAY, f"write {addr:#x}: {r.resp}"


def ctrl(name):
    return 1 << CTRL_BITS[name][0]


def status_bit(st, name):
    lsb, width = STATUS_BITS[name]
    return (st >> lsb) & ((1 << width) - 1)


async def wait_idle(env, limit=100_000):
    """Poll STATUS until idle (nothing queued, fetched or running); returns STATUS."""
    for _ in range(limit // 50):
        st = await rd(env, REG["STATUS"])
        if status_bit(st, "idle") and not status_bit(st, "running"):
            return st
        await ClockCycles(env.dut.clk, 50)
    raise AssertionError(f"the accelerator never became idle (STATUS {st:#x})")


async def error_regs(env):
    return (await rd(env, REG["ERROR"]), await rd(env, REG["ERROR_ADDR"]),
            await rd(env, REG["ERROR_PC"]))  # fmt: skip


async def init_state(env, program=None, seed=None):
    """Random device memory (with ``program`` at PROG_ADDR) and random window contents."""
    rng = random.Random(seed) if seed is not None else env.rng
    mem = np.frombuffer(rng.randbytes(MEM_BYTES), dtype="<u4").copy()
    if program is not None:
        words = [w for deps, ins in program for w in entry_words(deps, ins)]
        mem[PROG_ADDR // 4 : PROG_ADDR // 4 + len(words)] = words
    env.ram.write(0, mem.tobytes())
    win = np.zeros(WIN_WORDS, dtype=np.uint32)
    for w in (LEFT, TOP):
        win[w.offset : w.offset + w.depth] = np.frombuffer(rng.randbytes(4 * w.depth), "<u4")
        data = win[w.offset : w.offset + w.depth].astype("<u4").tobytes()
        r = await env.master.write(WIN_BASE + 4 * w.offset, data)
        assert r.resp == AxiResp.OKAY
    return mem, win


def ram_words(env):
    return np.frombuffer(env.ram.read(0, MEM_BYTES), dtype="<u4").copy()


async def window_words(env):
    win = np.zeros(WIN_WORDS, dtype=np.uint32)
    for w in (LEFT, TOP):
        r = await env.master.read(WIN_BASE + 4 * w.offset, 4 * w.depth)
        assert r.resp == AxiResp.OKAY
        win[w.offset : w.offset + w.depth] = np.frombuffer(r.data, dtype="<u4")
    return win


def assert_words(got, want, what):
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (
        f"{what}: {bad.size} words differ, first at word {bad[0]:#x} (byte {4 * bad[0]:#x}): "
        f"got {int(got[bad[0]]):#010x}, want {int(want[bad[0]]):#010x}; "
        f"differing words {[hex(int(b)) for b in bad[:12]]}"
    )


async def run_program(env, program):
    """The program must already be in device memory at PROG_ADDR (init_state puts it there)."""
    await wr(env, REG["PROG_ADDR"], PROG_ADDR)
    await wr(env, REG["PROG_COUNT"], len(program))
    await wr(env, REG["CTRL"], ctrl("start_program"))
    return await wait_idle(env)


async def run_queue(env, program):
    """Each instruction through the register queue, waiting for idle after each."""
    for _, ins in program:
        for w in instr_words(ins):
            await wr(env, REG["QUEUE"], w)
        await wait_idle(env)


def words_moved(program, op):
    return sum(i["rows"] * i["row_words"] for _, i in program if i and i["opcode"] == op)


# window words main_program() leaves alone: the host writes the first and reads the second
HOST_WIN_RW = range(TOP.offset + 54, TOP.offset + 64)
HOST_WIN_RO = (LEFT.offset, LEFT.offset + 1, LEFT.offset + 63)


async def host_traffic(env, done, log, win0):
    """Until ``done`` is set, the host competes with the program for the AXI4 port and for the
    engine's window port: single-word writes and read-backs of device memory through
    MEM_WINDOW_BASE, and of window words that the program does not touch."""
    rng = random.Random(SEED + 77)
    while not done.is_set():
        a = SCRATCH + 4 * rng.randrange(SCRATCH_WORDS)
        v = rng.getrandbits(32)
        await wr(env, MEM_WINDOW_BASE + a, v)
        log["aw"][a] += 1
        log["values"][a] = v
        got = await rd(env, MEM_WINDOW_BASE + a)
        log["ar"][a] += 1
        assert got == v, f"MEM_WINDOW read of {a:#x}: {got:#x}, wrote {v:#x}"
        w = rng.choice(HOST_WIN_RW)
        v = rng.getrandbits(32)
        await wr(env, WIN_BASE + 4 * w, v)
        log["win"][w] = v
        got = await rd(env, WIN_BASE + 4 * w)
        assert got == v, f"window word {w:#x}: read {got:#x}, wrote {v:#x}"
        w = rng.choice(HOST_WIN_RO)
        got = await rd(env, WIN_BASE + 4 * w)
        assert got == win0[w], f"window word {w:#x}: read {got:#x}, want {int(win0[w]):#x}"


async def run_main_and_check(env, what, seed=None, host=False):
    """Run main_program() from a random state; check memory, windows, bursts, counters.

    ``host``: the host reads and writes device memory through the register window meanwhile.
    """
    prog = main_program()
    mem0, win0 = await init_state(env, prog, seed)
    want_mem, want_win = model(mem0, win0, prog)
    await wr(env, REG["CTRL"], ctrl("clear_perf"))
    retired0 = await rd(env, REG["RETIRED"])
    mark = env.mon.mark()
    log = {"ar": Counter(), "aw": Counter(), "values": {}, "win": {}}
    done = Event()
    task = cocotb.start_soon(host_traffic(env, done, log, win0)) if host else None
    st = await run_program(env, prog)
    done.set()
    if task is not None:
        await task
        assert log["values"], "the host made no device-memory access during the program"
    for a, v in log["values"].items():
        want_mem[a // 4] = v
    for w, v in log["win"].items():
        want_win[w] = v
    assert not status_bit(st, "error"), f"{what}: error {await error_regs(env)}"
    assert status_bit(st, "program_done"), f"{what}: STATUS {st:#x}"
    assert await rd(env, REG["RETIRED"]) - retired0 == len(prog)
    assert_words(ram_words(env), want_mem, f"{what}: device memory")
    assert_words(await window_words(env), want_win, f"{what}: windows")
    assert await rd(env, REG["PERF_LOAD_LO"]) == words_moved(prog, Op.LOAD)
    assert await rd(env, REG["PERF_STORE_LO"]) == words_moved(prog, Op.STORE)
    host_words = {"ar": log["ar"], "aw": log["aw"]}
    return check_bursts(env.mon, mark, prog, host=host_words), want_mem


# ---- tests --------------------------------------------------------------------------------------
@cocotb.test()
async def program_with_backpressure(dut):
    """Check 1 and 2: the token-ordered program under random pauses, with the host reaching
    device memory and the engine's window meanwhile, and the burst monitor."""
    env = await setup(dut, 1)
    (splits_4k, splits_max), _ = await run_main_and_check(env, "program", host=True)
    assert splits_4k >= 1, "no burst was cut at a 4 KiB boundary: the 4 KiB check is vacuous"
    assert splits_max >= 1, "no burst was cut at mem_max_burst: the burst-length check is vacuous"
    n = {ch: len(b) for ch, b in env.mon.bursts.items()}
    dut._log.info("bursts: %s, cut at 4 KiB: %d, at max burst: %d", n, splits_4k, splits_max)


@cocotb.test()
async def register_queue_equals_program(dut):
    """Check 3: the program's instructions one at a time through REG QUEUE give the same memory."""
    env = await setup(dut, 2)
    _, want = await run_main_and_check(env, "program", seed=SEED)
    prog = main_program()
    await init_state(env, prog, seed=SEED)  # the same initial state again
    retired0 = await rd(env, REG["RETIRED"])
    mark = env.mon.mark()
    await run_queue(env, prog)
    assert await rd(env, REG["ERROR"]) == 0, await error_regs(env)
    assert await rd(env, REG["RETIRED"]) - retired0 == len(prog)
    assert_words(ram_words(env), want, "register queue vs program: device memory")
    check_bursts(env.mon, mark, prog, fetch=False)


@cocotb.test()
async def dma_errors(dut):
    """Check 4a: MEM_RANGE (and the other DMA checks) name the entry and address; a refused
    copy issues no AXI4 transaction and the entries after it are discarded."""
    env = await setup(dut, 3)
    ld, st = Op.LOAD, Op.STORE
    L = LEFT.offset
    bad = dma(ld, rows=2, row_words=16, mem_addr=MEM_BYTES - 0x100, mem_stride=64,
              win_addr=L, win_stride=16)  # first row in range, the second runs 0x40 past the end
    good = dma(ld, rows=1, row_words=8, mem_addr=0x100, mem_stride=8, win_addr=L + 40, win_stride=8)
    prog = [({}, NOP), ({}, bad), ({"push_next": 1}, good), ({}, NOP)]
    mem0, win0 = await init_state(env, prog)
    mark = env.mon.mark()
    await run_program(env, prog)
    err, addr, pc = await error_regs(env)
    assert err == (SRC_LOAD << 8) | ErrorCode.MEM_RANGE, f"ERROR {err:#x}"
    assert addr == bad["mem_addr"], f"ERROR_ADDR {addr:#x}"
    assert pc == 1, f"ERROR_PC {pc}"
    assert status_bit(await rd(env, REG["STATUS"]), "error")
    # only the fetch of the program's entries: nothing for the bad LOAD nor the discarded one
    check_bursts(env.mon, mark, [(d, None) for d, _ in prog])
    assert_words(await window_words(env), win0, "windows after a refused program")
    assert_words(ram_words(env), mem0, "device memory after a refused program")

    await wr(env, REG["CTRL"], ctrl("clear_error"))
    assert await error_regs(env) == (0, 0, 0)
    # through the register queue: the same LOAD, a STORE past the end, a 32-bit wrap-around, a
    # range only 40 bits hold, and the other checks made before a copy starts; none may touch
    # the bus
    n_eng = len(CFG.engines)
    for code, src, ins in (
        (ErrorCode.MEM_RANGE, SRC_LOAD, bad),
        (ErrorCode.MEM_RANGE, SRC_STORE, dma(st, rows=3, row_words=4, mem_addr=MEM_BYTES - 0x20,
                                             mem_stride=4, win_addr=L, win_stride=4)),
        (ErrorCode.MEM_RANGE, SRC_LOAD, dma(ld, rows=1, row_words=8, mem_addr=0xFFFF_FFF0,
                                            mem_stride=0, win_addr=L, win_stride=0)),
        (ErrorCode.MEM_RANGE, SRC_LOAD, dma(ld, rows=0xFFFF, row_words=0xFFF, mem_addr=0,
                                            mem_stride=0x3FFFF, win_addr=L, win_stride=0)),
        (ErrorCode.MEM_ALIGN, SRC_STORE, dma(st, rows=1, row_words=4, mem_addr=0x102,
                                             mem_stride=4, win_addr=L, win_stride=4)),
        (ErrorCode.BAD_SHAPE, SRC_LOAD, dma(ld, rows=0, row_words=4, mem_addr=0x100,
                                            mem_stride=4, win_addr=L, win_stride=4)),
        (ErrorCode.BAD_SHAPE, SRC_STORE, dma(st, rows=2, row_words=0, mem_addr=0x100,
                                             mem_stride=4, win_addr=L, win_stride=4)),
        (ErrorCode.BAD_FIELD, SRC_LOAD, dma(ld, rows=1, row_words=4, mem_addr=0x100,
                                            mem_stride=4, win_addr=L, win_stride=4,
                                            engine=n_eng)),
    ):  # fmt: skip
        mark = env.mon.mark()
        for w in instr_words(ins):
            await wr(env, REG["QUEUE"], w)
        await wait_idle(env)
        got = await error_regs(env)
        want = ((src << 8) | code, ins["mem_addr"], PC_NONE)
        assert got == want, (
            f"{code.name} {ins}: ERROR, ERROR_ADDR, ERROR_PC = {[hex(v) for v in got]}, "
            f"want {[hex(v) for v in want]}"
        )
        assert env.mon.mark() == mark, (
            f"{code.name} {ins}: bursts {env.mon.since(mark, 'ar')} {env.mon.since(mark, 'aw')}"
        )
        await wr(env, REG["CTRL"], ctrl("clear_error"))
    # a LOAD running off the end of the left window: reported at its end, naming the window word
    off = dma(ld, rows=1, row_words=8, mem_addr=0x200, mem_stride=8,
              win_addr=L + LEFT.depth - 4, win_stride=8)  # fmt: skip
    mark = env.mon.mark()
    for w in instr_words(off):
        await wr(env, REG["QUEUE"], w)
    await wait_idle(env)
    got = await error_regs(env)
    want = ((SRC_LOAD << 8) | ErrorCode.WINDOW_RANGE, off["win_addr"], PC_NONE)
    assert got == want, f"WINDOW_RANGE: {[hex(v) for v in got]}, want {[hex(v) for v in want]}"
    check_bursts(env.mon, mark, [({}, off)], fetch=False)
    await wr(env, REG["CTRL"], ctrl("clear_error"))
    # the words past the window's end went nowhere (whether the 4 inside were written is
    # not specified)
    win1 = await window_words(env)
    inside = slice(LEFT.offset + LEFT.depth - 4, LEFT.offset + LEFT.depth)
    win0[inside] = win1[inside]
    assert_words(win1, win0, "windows after a LOAD past the end of the left window")
    # a copy that ends exactly at the end of device memory is legal
    edge = dma(ld, rows=2, row_words=8, mem_addr=MEM_BYTES - 0x60, mem_stride=16,
               win_addr=L + 3, win_stride=9)  # fmt: skip
    mark = env.mon.mark()
    for w in instr_words(edge):
        await wr(env, REG["QUEUE"], w)
    await wait_idle(env)
    assert await rd(env, REG["ERROR"]) == 0, await error_regs(env)
    _, want_win = model(mem0, win0, [({}, edge)])
    assert_words(await window_words(env), want_win, "windows after a load ending at mem_bytes")
    check_bursts(env.mon, mark, [({}, edge)], fetch=False)
    # after the errors, a program works
    await run_main_and_check(env, "program after the errors")


@cocotb.test()
async def deadlock_watchdog(dut):
    """Check 4b: a compute entry popping a token nobody pushes ends in DEADLOCK, not a hang."""
    env = await setup(dut, 4)
    L = LEFT.offset
    load = dma(Op.LOAD, rows=2, row_words=12, mem_addr=0x0FF0, mem_stride=12, win_addr=L,
               win_stride=12)  # no push: the NOP below waits for ever
    prog = [({}, load), ({"pop_prev": 1}, NOP), ({}, NOP)]
    mem0, win0 = await init_state(env, prog)
    mark = env.mon.mark()
    await wr(env, REG["PROG_ADDR"], PROG_ADDR)
    await wr(env, REG["PROG_COUNT"], len(prog))
    await wr(env, REG["CTRL"], ctrl("start_program"))
    for _ in range(40):  # the watchdog is CFG.watchdog_cycles; allow the load and the polling
        await ClockCycles(dut.clk, CFG.watchdog_cycles // 2)
        st = await rd(env, REG["STATUS"])
        if status_bit(st, "error"):
            break
    else:
        raise AssertionError(f"no DEADLOCK after {40 * CFG.watchdog_cycles // 2} cycles: {st:#x}")
    st = await wait_idle(env)
    err, addr, pc = await error_regs(env)
    assert err == (SRC_CTRL << 8) | ErrorCode.DEADLOCK, f"ERROR {err:#x}"
    assert pc == 1, f"ERROR_PC {pc} (the compute entry waiting for the token)"
    assert status_bit(st, "error") and not status_bit(st, "running"), f"STATUS {st:#x}"
    _, want_win = model(mem0, win0, prog[:1])
    assert_words(await window_words(env), want_win, "windows after the deadlocked program")
    check_bursts(env.mon, mark, prog[:1] + [(d, None) for d, _ in prog[1:]])

    await wr(env, REG["CTRL"], ctrl("clear_error"))
    assert await error_regs(env) == (0, 0, 0)
    assert not status_bit(await rd(env, REG["STATUS"]), "error")
    await run_main_and_check(env, "program after DEADLOCK")


@cocotb.test()
async def handshake_stability(dut):
    """AR/AW VALID and payload hold until READY (AXI4 A3.2.1), with the fetcher and a DMA channel
    competing for the read channel and the host for both, under other random pauses (every
    test's check_bursts asserts the monitor saw no violation; this one is about contention)."""
    env = await setup(dut, 5)
    await run_main_and_check(env, "program with host traffic", host=True)
    assert not env.mon.unstable, env.mon.unstable[:4]
