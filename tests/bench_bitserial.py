"""cocotb bench for the bit-serial engine's generated Verilog (driven by test_bitserial_verilator).

The case file (``BITSERIAL_CASE``, JSON) holds host-bus writes, instructions, the idle gaps the
producer leaves after each accepted instruction, the result addresses to read, and what the
golden model says they hold, with each instruction's error code and cycle count.

:func:`build_case` writes such a case for any bit-serial config; :func:`verify` (the engine's
``EngineSpec.verify`` entry) runs this bench with it on the engine's generated Verilog.
"""

import json
import os
import tempfile
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge


async def _reset(dut):
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    dut.host__w_en.value = 0
    dut.host__r_en.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


@cocotb.test()
async def bitserial_case(dut):
    case = json.loads(open(os.environ["BITSERIAL_CASE"]).read())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await _reset(dut)

    for addr, value in case["writes"]:
        dut.host__addr.value = addr
        dut.host__w_data.value = value
        dut.host__w_en.value = 1
        await RisingEdge(dut.clk)
    dut.host__w_en.value = 0

    pending = [sum(w << (32 * i) for i, w in enumerate(ws)) for ws in case["instrs"]]
    gaps = list(case["gaps"])
    log, accepted, cyc, gap, macs = [], [], 0, 0, 0
    while len(log) < len(case["instrs"]):
        if pending and gap == 0:
            dut.cmd__payload.value = pending[0]
            dut.cmd__valid.value = 1
        else:
            dut.cmd__valid.value = 0
        await ReadOnly()
        took = int(dut.cmd__valid.value) and int(dut.cmd__ready.value)
        if int(dut.done.value):
            log.append([accepted[len(log)], cyc, int(dut.error.value)])
        macs += int(dut.perf_macs.value)
        await RisingEdge(dut.clk)
        if took:
            accepted.append(cyc)
            pending.pop(0)
            gap = gaps.pop(0) if gaps else 0
        elif gap:
            gap -= 1
        cyc += 1
        assert cyc < 2_000_000, "engine did not finish"
    dut.cmd__valid.value = 0

    got = []
    for addr in case["reads"]:
        dut.host__addr.value = addr
        dut.host__r_en.value = 1
        await RisingEdge(dut.clk)
        dut.host__r_en.value = 0
        await ReadOnly()
        got.append(int(dut.host__r_data.value))
        await RisingEdge(dut.clk)

    if os.environ.get("BITSERIAL_LOG"):
        with open(os.environ["BITSERIAL_LOG"], "w") as f:
            json.dump({"log": log, "macs": macs}, f)
    errors = [e for _, _, e in log]
    cycles = [d - a for a, d, _ in log]
    assert errors == case["errors"], (errors, case["errors"])
    assert cycles == case["cycles"], (cycles, case["cycles"])
    assert macs == case["macs"], (macs, case["macs"])
    bad = [i for i, (g, e) in enumerate(zip(got, case["expect"])) if g != e]
    assert not bad, f"{len(bad)} result words differ, first at read {bad[0]}: " \
        f"{got[bad[0]]:#x} != {case['expect'][bad[0]]:#x}"
    for (_, d0, _), (a1, _, _) in zip(log, log[1:]):
        assert a1 >= d0, "accepted an instruction while busy"


# --------------------------------------------------------------------------------------------
# The engine's verify bench (runs in the host process, not in the simulator)
# --------------------------------------------------------------------------------------------


def _cdiv(a, b):
    return -(-a // b)


def instruction_specs(cfg, g) -> list[dict]:
    """Instruction fields for a case that fits ``cfg``'s memories: every weight precision with
    every built encoding pair, BitMoD mixes at 3 and 4 bits when built, scaled groups, K not a
    multiple of the lanes or the group size, N not a multiple of the PEs."""
    import torch

    m, n = 2, cfg.pes + 1
    # K crosses a group boundary when groups are small, and is never a multiple of the lanes
    k = cfg.group_size + 1 if cfg.group_size <= 4 * cfg.lanes else 2 * cfg.lanes + 3
    specs = []
    for w_bits in range(1, cfg.w_max_bits + 1):
        for w_enc in cfg.encodings:
            a_enc = cfg.encodings[(w_bits + len(specs)) % len(cfg.encodings)]
            a_bits = int(torch.randint(1, cfg.a_max_bits + 1, (1,), generator=g))
            specs.append(dict(m=m, n=n, k=k, w_bits=w_bits, a_bits=a_bits, w_enc=w_enc,
                              a_enc=a_enc, scaled=w_bits % 2 == 0))  # fmt: skip
    if cfg.bitmod:
        for w_bits in (4, 3):
            specs.append(dict(m=m + 1, n=n, k=k, w_bits=w_bits, a_bits=cfg.a_max_bits,
                              a_enc=cfg.encodings[0], mixed=True, scaled=True))  # fmt: skip
    specs.append(dict(m=1, n=1, k=1, w_bits=1, a_bits=1, w_enc=cfg.encodings[0],
                      a_enc=cfg.encodings[0]))  # fmt: skip
    used = dict(weights=0, acts=0, groups=0, results=0)
    room = dict(weights=cfg.w_depth, acts=cfg.a_depth, groups=cfg.g_depth, results=cfg.r_depth)
    fits = []
    for f in specs:
        need = dict(weights=_cdiv(f["n"], cfg.pes) * _cdiv(f["k"], cfg.lanes),
                    acts=f["m"] * _cdiv(f["k"], cfg.lanes),
                    groups=_cdiv(f["n"], cfg.pes) * _cdiv(f["k"], cfg.group_size),
                    results=_cdiv(f["n"], cfg.pes) * f["m"])  # fmt: skip
        if all(used[r] + need[r] <= room[r] for r in used):
            fits.append(f)
            used = {r: used[r] + need[r] for r in used}
    return fits


def build_case(cfg, g, path, specs=None, *, reject=True, gaps=True):
    """Write a case file for this bench: random operands for each instruction spec."""
    import numpy as np
    import torch

    from gatesmith.generators.bitserial import model as M
    from gatesmith.generators.bitserial.engine import window_layout

    win = {w.name: w for w in window_layout(cfg)}
    mems = {w.name: np.zeros((w.depth, w.stride), np.uint32) for w in win.values()}
    bases = {"weights": 0, "acts": 0, "groups": 0, "results": 0}
    instrs, errors, cycles, macs = [], [], [], 0
    for f in specs or instruction_specs(cfg, g):
        ins = M.Instr(**f, w_base=bases["weights"], a_base=bases["acts"],
                      g_base=bases["groups"], r_base=bases["results"])
        a = torch.randint(0, 1 << ins.a_bits, (ins.m, ins.k), generator=g)
        w = torch.randint(0, 1 << ins.w_bits, (ins.n, ins.k), generator=g)
        ng = -(-ins.k // cfg.group_size)
        ids = torch.arange(9) if ins.mixed else torch.zeros(1, dtype=torch.int64)
        dts = ids[torch.randint(0, len(ids), (ins.n, ng), generator=g)]
        dts = torch.where(dts >= 5, dts * (ins.w_bits == 4), dts)  # FP4 only at 4 bits
        sc = torch.randint(0, 1 << 16, (ins.n, ng), generator=g)
        for name, img in (("weights", M.weight_image(cfg, w)), ("acts", M.act_image(cfg, a)),
                          ("groups", M.group_image(cfg, dts, sc))):
            mems[name][bases[name] : bases[name] + len(img)] = img
            bases[name] += len(img)
        bases["results"] += -(-ins.n // cfg.pes) * ins.m
        instrs.append(ins)
    if reject:  # results past the end of the result memory
        instrs.insert(min(3, len(instrs)), M.Instr(m=1, n=1, k=1, w_bits=1, a_bits=1,
                                                   w_enc=cfg.encodings[0], a_enc=cfg.encodings[0],
                                                   r_base=cfg.r_depth))  # fmt: skip
    for ins in instrs:
        errors.append(int(M.execute(cfg, ins, mems["weights"], mems["acts"], mems["groups"],
                                    mems["results"])))
        cycles.append(M.cycles(cfg, ins))
        macs += ins.m * ins.n * ins.k if errors[-1] == 0 else 0
    writes = [(win[n].offset + e * win[n].stride + s, int(mems[n][e, s]))
              for n in ("weights", "acts", "groups")
              for e in range(bases[n]) for s in range(win[n].stride)]
    r = win["results"]
    reads = [r.offset + e * r.stride + s for e in range(bases["results"]) for s in range(r.stride)]
    expect = [int(mems["results"][e, s]) for e in range(bases["results"])
              for s in range(r.stride)]
    gaps = [int(x) * gaps for x in torch.randint(0, 3, (len(instrs),), generator=g)]
    gaps[0] = 0
    Path(path).write_text(json.dumps(dict(writes=writes, instrs=[i.words() for i in instrs],
                                          gaps=gaps, reads=reads, expect=expect, errors=errors,
                                          cycles=cycles, macs=macs)))  # fmt: skip
    return instrs, errors


def verify(cfg, bcfg, *, seed: int = 1, count: int = 8, cocotb: bool = True, progress=None):
    """``EngineSpec.verify`` of the bit-serial engine: rows (check, case, ok, note)."""
    import torch

    from gatesmith.generators.bitserial.engine import BitserialEngine
    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    if not cocotb:
        return []
    say = progress or (lambda msg: None)
    say("bitserial: bench_bitserial on Verilator (the first build takes a minute)")
    t0 = time.monotonic()
    g = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="gatesmith-verify-bitserial-") as tmp:
        case = Path(tmp) / "case.json"
        instrs, errors = build_case(bcfg, g, case, instruction_specs(bcfg, g))
        run_cocotb(verilog_of(BitserialEngine(bcfg), name="bitserial"), toplevel="bitserial",
                   test_module="gatesmith.tests.bench_bitserial",
                   env={"BITSERIAL_CASE": str(case)}, seed=seed)  # fmt: skip
    rejected = sum(e != 0 for e in errors)
    return [("cocotb bench_bitserial", f"{len(instrs)} instructions ({rejected} rejected)", True,
             f"== model, cycles == cycle model; {time.monotonic() - t0:.1f} s")]
