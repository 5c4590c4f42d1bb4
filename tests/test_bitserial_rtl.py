"""Bit-serial engine RTL (Amaranth simulator) == golden model, bit for bit and cycle for cycle."""

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.bitserial.engine import BitserialEngine
from gatesmith.generators.engine import ErrorCode

SEED = 4321


def small(**kw) -> BitserialConfig:
    base = dict(lanes=4, pes=2, group_size=8, w_depth=64, a_depth=64, g_depth=16, r_depth=32)
    base.update(kw)
    return BitserialConfig(**base)


class EngineSim:
    """Drives a BitserialEngine in the Amaranth simulator: host-bus writes and reads, a queue of
    instructions on ``cmd`` (optionally with idle gaps), and a log of accept/done cycles."""

    def __init__(self, cfg: BitserialConfig):
        self.cfg = cfg
        self.dut = BitserialEngine(cfg)
        self.win = {w.name: w for w in self.dut.windows()}

    def image_writes(self, name: str, base: int, words: np.ndarray) -> list[tuple[int, int]]:
        w = self.win[name]
        return [(w.offset + (base + e) * w.stride + s, int(words[e, s]))
                for e in range(words.shape[0]) for s in range(words.shape[1])]

    def run(self, writes, instrs, reads, *, gaps=None, max_cycles=200_000):
        """Write ``(addr, value)`` pairs, run ``instrs`` (lists of 4 words), then read the word
        addresses in ``reads``. Returns (read values, [(accept, done, error)], perf sums)."""
        dut, out = self.dut, {}

        async def tb(ctx):
            for addr, value in writes:
                ctx.set(dut.host.addr, addr)
                ctx.set(dut.host.w_data, value)
                ctx.set(dut.host.w_en, 1)
                assert not ctx.get(dut.host.err), f"write to {addr:#x} rejected"
                await ctx.tick()
            ctx.set(dut.host.w_en, 0)
            log, pending, cyc, macs, stalls = [], list(instrs), 0, 0, 0
            accepted = []
            gap = 0
            while len(log) < len(instrs):
                if pending and gap == 0:
                    words = pending[0]
                    ctx.set(dut.cmd.payload, sum(w << (32 * i) for i, w in enumerate(words)))
                    ctx.set(dut.cmd.valid, 1)
                else:
                    ctx.set(dut.cmd.valid, 0)
                took = ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready)
                if ctx.get(dut.done):
                    log.append((accepted[len(log)], cyc, ctx.get(dut.error)))
                macs += ctx.get(dut.perf_macs)
                stalls += ctx.get(dut.perf_stall)
                await ctx.tick()
                if took:
                    accepted.append(cyc)
                    pending.pop(0)
                    gap = gaps.pop(0) if gaps else 0
                elif gap:
                    gap -= 1
                cyc += 1
                assert cyc < max_cycles, "engine did not finish"
            ctx.set(dut.cmd.valid, 0)
            vals = []
            for addr in reads:
                ctx.set(dut.host.addr, addr)
                ctx.set(dut.host.r_en, 1)
                assert not ctx.get(dut.host.err), f"read of {addr:#x} rejected"
                await ctx.tick()
                ctx.set(dut.host.r_en, 0)
                vals.append(ctx.get(dut.host.r_data))
            out.update(vals=vals, log=log, macs=macs, stalls=stalls)

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(tb)
        sim.run()
        return out["vals"], out["log"], out["macs"]

    def result_reads(self, ins: M.Instr) -> list[int]:
        w = self.win["results"]
        nt = -(-ins.n // self.cfg.pes)
        return [w.offset + (ins.r_base + e) * w.stride + s
                for e in range(nt * ins.m) for s in range(w.stride)]

    def results(self, ins: M.Instr, vals) -> torch.Tensor:
        stride = self.win["results"].stride
        words = np.array(vals, dtype=np.uint32).reshape(-1, stride)
        return M.result_from_image(self.cfg, words, ins.m, ins.n)


def _case(cfg, g, ins, *, dt_ids=None):
    """Random codes for ``ins``; returns (writes-ready images, model result, model error)."""
    a = torch.randint(0, 1 << ins.a_bits, (ins.m, ins.k), generator=g)
    w = torch.randint(0, 1 << ins.w_bits, (ins.n, ins.k), generator=g)
    ng = -(-ins.k // cfg.group_size)
    ids = dt_ids if dt_ids is not None else [0]
    dts = torch.tensor(ids)[torch.randint(0, len(ids), (ins.n, ng), generator=g)]
    sc = torch.randint(0, 1 << 16, (ins.n, ng), generator=g)
    r, _, err = M.matmul(cfg, ins, a, w, dts, sc)
    imgs = {"weights": M.weight_image(cfg, w), "acts": M.act_image(cfg, a),
            "groups": M.group_image(cfg, dts, sc)}
    return imgs, r, err


def _writes(es, ins, imgs):
    bases = {"weights": ins.w_base, "acts": ins.a_base, "groups": ins.g_base}
    return [x for name, img in imgs.items() for x in es.image_writes(name, bases[name], img)]


CASES = [
    # (config overrides, instruction fields, datatype ids)
    ({}, dict(m=3, n=3, k=13, w_bits=1, a_bits=8), None),
    ({}, dict(m=2, n=4, k=16, w_bits=2, a_bits=3, w_enc="bipolar"), None),
    ({}, dict(m=2, n=3, k=9, w_bits=3, a_bits=5, a_enc="bipolar"), None),
    ({}, dict(m=1, n=2, k=17, w_bits=5, a_bits=8, scaled=True), None),
    ({}, dict(m=2, n=2, k=8, w_bits=8, a_bits=8, w_enc="bipolar", a_enc="bipolar"), None),
    ({"bits_per_cycle": 1}, dict(m=2, n=3, k=11, w_bits=7, a_bits=2), None),
    ({"bits_per_cycle": 4}, dict(m=2, n=3, k=11, w_bits=6, a_bits=1, a_enc="bipolar"), None),
    ({}, dict(m=2, n=3, k=19, w_bits=4, a_bits=8, mixed=True, scaled=True), list(range(9))),
    ({"bits_per_cycle": 1}, dict(m=2, n=3, k=12, w_bits=3, a_bits=6, mixed=True, scaled=True),
     [0, 1, 2, 3, 4]),
    ({"lanes": 2, "pes": 4, "group_size": 2, "bits_per_cycle": 4},
     dict(m=2, n=5, k=7, w_bits=4, a_bits=4, mixed=True, w_enc="bipolar"), list(range(9))),
    ({"lanes": 1, "pes": 1, "group_size": 1, "w_max_bits": 4, "a_max_bits": 3, "acc_width": 32},
     dict(m=2, n=2, k=3, w_bits=4, a_bits=3, scaled=True), None),
]


@pytest.mark.parametrize("over,fields,ids", CASES)
def test_rtl_equals_model(over, fields, ids):
    cfg = small(**over)
    g = torch.Generator().manual_seed(SEED)
    ins = M.Instr(**fields, w_base=1, a_base=2, g_base=1, r_base=3)
    imgs, ref, err = _case(cfg, g, ins, dt_ids=ids)
    assert err == ErrorCode.NONE
    es = EngineSim(cfg)
    vals, log, macs = es.run(_writes(es, ins, imgs), [ins.words()], es.result_reads(ins))
    (acc, done, error), = log
    assert error == 0
    torch.testing.assert_close(es.results(ins, vals), ref, rtol=0, atol=0)
    assert done - acc == M.cycles(cfg, ins), (done - acc, M.cycles(cfg, ins))
    assert macs == ins.m * ins.n * ins.k


def test_back_to_back_with_gaps_and_backpressure():
    """Four instructions queued on cmd: the engine holds ready low while busy (backpressure);
    the producer sometimes idles between them. Each runs once, in order, results exact."""
    cfg = small(r_depth=64)
    g = torch.Generator().manual_seed(SEED + 1)
    es = EngineSim(cfg)
    specs = [dict(m=2, n=3, k=10, w_bits=2), dict(m=1, n=2, k=5, w_bits=8, a_enc="bipolar"),
             dict(m=3, n=4, k=12, w_bits=4, mixed=True, scaled=True),
             dict(m=2, n=2, k=3, w_bits=1, w_enc="bipolar")]
    writes, instrs, refs, reads = [], [], [], []
    wb = ab = gb = rb = 0
    for f in specs:
        ins = M.Instr(**f, w_base=wb, a_base=ab, g_base=gb, r_base=rb)
        imgs, ref, _ = _case(cfg, g, ins, dt_ids=list(range(9)) if ins.mixed else None)
        writes += _writes(es, ins, imgs)
        instrs.append(ins.words())
        refs.append((ins, ref, len(reads)))
        reads += es.result_reads(ins)
        wb += len(imgs["weights"])
        ab += len(imgs["acts"])
        gb += len(imgs["groups"])
        rb += -(-ins.n // cfg.pes) * ins.m
    bad = M.Instr(m=1, n=1, k=1, w_bits=3, mixed=True, g_base=16, r_base=63)  # groups past end
    instrs.insert(2, bad.words())
    vals, log, _ = es.run(writes, instrs, reads, gaps=[0, 3, 0, 1])
    assert [e for _, _, e in log] == [0, 0, ErrorCode.OUT_OF_RANGE, 0, 0]
    for (a0, d0, _), (a1, _, _) in zip(log, log[1:]):
        assert a1 >= d0  # never accepted while the previous one ran
    assert log[1][0] == log[0][1]  # no gap: accepted in the cycle done pulses
    for ins, ref, off in refs:
        n_words = len(es.result_reads(ins))
        torch.testing.assert_close(es.results(ins, vals[off : off + n_words]), ref, rtol=0, atol=0)
    assert log[2][1] - log[2][0] == M.REJECT_CYCLES


@pytest.mark.parametrize("fields,code", [
    (dict(m=0, n=1, k=1, w_bits=4), ErrorCode.BAD_SHAPE),
    (dict(m=1, n=1, k=1, w_bits=8, a_bits=8, mixed=True), ErrorCode.BAD_FIELD),
    (dict(m=1, n=1, k=1, w_bits=5), ErrorCode.BAD_FIELD),
    (dict(m=1, n=1, k=1, w_bits=4, a_enc="bipolar"), ErrorCode.BAD_FIELD),
    (dict(m=1, n=1, k=64 * 4 + 1, w_bits=4), ErrorCode.OUT_OF_RANGE),
    (dict(m=1, n=1, k=1, w_bits=4, r_base=32), ErrorCode.OUT_OF_RANGE),
    (dict(m=1, n=3, k=1, w_bits=4, a_base=63), ErrorCode.NONE),
])
def test_rejects(fields, code):
    cfg = small(w_max_bits=4, encodings=("twos",))
    ins = M.Instr(**fields)
    assert M.check(cfg, ins) == code
    es = EngineSim(cfg)
    _, log, _ = es.run([], [ins.words()], [])
    assert log[0][2] == code
    assert log[0][1] - log[0][0] == M.cycles(cfg, ins)


def test_invalid_datatype_raises_bad_field():
    cfg = small()
    ins = M.Instr(m=1, n=2, k=8, w_bits=3, mixed=True)
    g = torch.Generator().manual_seed(SEED + 2)
    imgs, _, err = _case(cfg, g, ins, dt_ids=[7])  # FP4 id at 3 bits
    assert err == ErrorCode.BAD_FIELD
    es = EngineSim(cfg)
    _, log, _ = es.run(_writes(es, ins, imgs), [ins.words()], [])
    assert log[0][2] == ErrorCode.BAD_FIELD


def test_host_bus_errors():
    cfg = small()
    es = EngineSim(cfg)
    dut = es.dut
    seen = {}

    async def tb(ctx):
        for what, addr, sig in (("read weights", es.win["weights"].offset, dut.host.r_en),
                                ("write results", es.win["results"].offset, dut.host.w_en),
                                ("read results", es.win["results"].offset, dut.host.r_en),
                                ("write nowhere", 1 << 20, dut.host.w_en)):
            ctx.set(dut.host.addr, addr)
            ctx.set(sig, 1)
            seen[what] = ctx.get(dut.host.err)
            await ctx.tick()
            ctx.set(sig, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"read weights": 1, "write results": 1, "read results": 0, "write nowhere": 1}


@pytest.mark.parametrize("bpc", [1, 2, 4])
def test_extremes_fp4_extra_asymmetry(bpc):
    """Every weight FP4's +/-16 (walked as 8 x doubled activation) against +/-255 bipolar
    activations and the largest scale: the widest partial sums the datapath must hold."""
    cfg = small(bits_per_cycle=bpc, lanes=8, group_size=16, acc_width=64)
    ins = M.Instr(m=2, n=3, k=35, w_bits=4, a_bits=8, a_enc="bipolar", mixed=True, scaled=True)
    a = torch.full((2, 35), 255)
    a[1] = 0  # -255
    w = torch.full((3, 35), 8)  # the negative-zero code
    dts = torch.tensor([[7, 8, 7], [8, 8, 8], [7, 7, 7]])
    sc = torch.full((3, 3), 65535)
    ref, ps, err = M.matmul(cfg, ins, a, w, dts, sc)
    assert err == ErrorCode.NONE and int(ps.abs().max()) == 16 * 255 * 16
    imgs = {"weights": M.weight_image(cfg, w), "acts": M.act_image(cfg, a),
            "groups": M.group_image(cfg, dts, sc)}
    es = EngineSim(cfg)
    vals, log, _ = es.run(_writes(es, ins, imgs), [ins.words()], es.result_reads(ins))
    assert log[0][2] == 0 and log[0][1] - log[0][0] == M.cycles(cfg, ins)
    torch.testing.assert_close(es.results(ins, vals), ref, rtol=0, atol=0)
