"""Speed of the simulated board: simulated cycles per second and host-link throughput.

For each array (int8, all three dataflows built in, default memories unless ``--spad-depth`` /
``--acc-depth``) this opens ``gatesmith.host.open("sim", ...)`` (the whole accelerator under
Verilator behind a socket) and measures:

* ``gemm``: a long GEMM through ``dev.matmul`` (host tiling, operand packing, link transfers,
  double buffering): PERF_CYCLES (every clock the board ran) / wall time, and the share of those
  cycles the engine was busy;
* ``engine``: the same engine kept busy with no link traffic: one legal GEMM instruction (the
  largest tile ``plan`` allows) queued ``--repeat`` times, then ``dev.wait()``: cycles / wall time
  is the bare Verilator speed of the design while it computes;
* ``write`` / ``read``: bulk writes and reads of the engine's left scratchpad memory (the whole
  memory, repeated up to ``--link-bytes``): link bytes per second each way (request and answer
  frames, headers included), payload bytes per second, frames per second and simulated cycles
  per payload byte; the data read back is checked against what was written.

    python benchmarks/sim_speed.py                    # 4x4 and 8x8
    python benchmarks/sim_speed.py --arrays 4x4,8x8,16x16

Writes ``benchmarks/results/sim_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from gatesmith.config import AccelConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.generators.systolic.engine import window_layout
from gatesmith.host.systolic import gemm_instr, plan

RESULTS = Path(__file__).resolve().parent / "results"
GEMM_SHAPE = {"4x4": (128, 256, 128), "8x8": (256, 256, 256), "16x16": (256, 256, 256)}


def _delta(dev, before):
    return {k: dev.stats[k] - before[k] for k in before}


def measure(arr: str, cfg: SystolicConfig, *, repeat: int, link_bytes: int, seed: int) -> dict:
    import gatesmith.host

    acfg = AccelConfig(engines=(cfg,))
    t0 = time.monotonic()
    print(f"[{arr}] opening the simulated board ...", flush=True)
    res: dict = {"array": arr}
    with gatesmith.host.open("sim", config=acfg, timeout=600.0) as dev:
        res["open_s"] = round(time.monotonic() - t0, 1)
        # ---- a long GEMM through the whole host path ----------------------------------------
        m, k, n = GEMM_SHAPE.get(arr, (256, 256, 256))
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
        gemm = []
        for df in cfg.dataflows:
            s0 = dict(dev.stats)
            dev.reset_perf()
            t = time.monotonic()
            c = dev.matmul(a, b, dataflow=df)
            wall = time.monotonic() - t
            p = dev.perf()
            d = _delta(dev, s0)
            gemm.append({"dataflow": df, "shape": f"{m}x{k}x{n}",
                         "exact": bool(torch.equal(c.long(), a.long() @ b.long())),
                         "cycles": p["cycles"], "busy": p["busy"], "wall_s": round(wall, 3),
                         "cycles_per_s": round(p["cycles"] / wall),
                         "busy_share": round(p["busy"] / p["cycles"], 4),
                         "link_bytes_per_s": round((d["bytes_sent"] + d["bytes_received"]) / wall),
                         **d})  # fmt: skip
            print(f"[{arr}] gemm {df} {m}x{k}x{n}: {p['cycles']} cycles in {wall:.2f} s = "
                  f"{p['cycles'] / wall / 1e3:.0f} k cycles/s", flush=True)  # fmt: skip
        res["gemm"] = gemm
        # ---- the engine alone: back-to-back instructions, no link traffic ------------------------
        big = 1 << 16
        p_ = plan(big, 64, big, "os", cfg)  # a large legal tile at K = 64 (operands resident)
        instr = gemm_instr("os", p_.mt, p_.kc, p_.nt)
        dev.reset_perf()
        t = time.monotonic()
        dev.execute([instr] * repeat)
        dev.wait()
        wall = time.monotonic() - t
        p = dev.perf()
        res["engine"] = {"instruction": f"os m={p_.mt} k={p_.kc} n={p_.nt}", "repeat": repeat,
                         "cycles": p["cycles"], "busy": p["busy"], "wall_s": round(wall, 3),
                         "cycles_per_s": round(p["cycles"] / wall),
                         "busy_share": round(p["busy"] / p["cycles"], 4)}  # fmt: skip
        print(f"[{arr}] engine alone: {p['cycles']} cycles in {wall:.2f} s = "
              f"{p['cycles'] / wall / 1e3:.0f} k cycles/s", flush=True)  # fmt: skip
        # ---- the host link: bulk writes and reads of the left scratchpad -------------------------
        lay = window_layout(cfg)["left"]
        base = dev.window_base("systolic") + 4 * lay.offset
        words = lay.depth * lay.stride  # the whole memory (padding words included)
        reps = max(1, link_bytes // (4 * words))
        rng = np.random.default_rng(seed)
        data = [rng.integers(0, 1 << 32, words, dtype=np.uint64).astype(np.uint32)
                for _ in range(2)]  # fmt: skip
        if lay.width != 32 * lay.stride:
            raise SystemExit(f"{arr}: the left memory's words have padding; pick rows*8 = 32*2^i")
        link = {}
        for op in ("write", "read"):
            s0 = dict(dev.stats)
            dev.reset_perf()
            t = time.monotonic()
            ok = True
            for i in range(reps):
                if op == "write":
                    dev.write(base, data[i % 2])
                else:
                    got = dev.read(base, words)
                    ok &= bool(np.array_equal(got, data[(reps - 1) % 2]))
            wall = time.monotonic() - t
            p = dev.perf()
            d = _delta(dev, s0)
            payload = 4 * words * reps
            link[op] = {"words_per_call": words, "calls": reps, "payload_bytes": payload,
                        "wall_s": round(wall, 3),
                        "payload_bytes_per_s": round(payload / wall),
                        "sent_bytes_per_s": round(d["bytes_sent"] / wall),
                        "received_bytes_per_s": round(d["bytes_received"] / wall),
                        "frames_per_s": round(d["frames"] / wall),
                        "cycles": p["cycles"], "cycles_per_payload_byte":
                        round(p["cycles"] / payload, 3),
                        "cycles_per_s": round(p["cycles"] / wall),
                        **d}  # fmt: skip
            if op == "read":
                link[op]["data_ok"] = ok
            print(f"[{arr}] link {op}: {payload / wall / 1e6:.2f} MB/s payload, "
                  f"{d['frames'] / wall:.0f} frames/s, {p['cycles'] / payload:.2f} cycles/byte",
                  flush=True)  # fmt: skip
        res["link"] = link
        res["max_words_per_frame"] = dev.read_reg("LINK_MAX_WORDS")
    res["config"] = acfg.to_dict()
    return res


def markdown(res: dict) -> str:
    L = ["# Simulated board speed: cycles per second and host-link throughput", ""]
    L.append(f"Measured {res['date']} on {res['machine']} (`nproc` = {res['nproc']}, load "
             f"average at the end {', '.join(f'{x:.1f}' for x in res['load_average'])}); "
             f"versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.")
    L.append("")
    for note in res["notes"]:
        L.append(f"- {note}")
    L.append("")
    L += ["## Simulated cycles per second", "",
          "| array | what | cycles | wall s | sim cycles/s | engine busy share | exact |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["arrays"]:
        for g in r["gemm"]:
            L.append(f"| {r['array']} | `dev.matmul` {g['shape']} {g['dataflow']} "
                     f"| {g['cycles']:,} | {g['wall_s']:.2f} | {g['cycles_per_s'] / 1e3:,.0f} k "
                     f"| {100 * g['busy_share']:.1f}% | {'yes' if g['exact'] else 'NO'} |")
        e = r["engine"]
        L.append(f"| {r['array']} | engine alone: {e['repeat']} x `{e['instruction']}` "
                 f"| {e['cycles']:,} | {e['wall_s']:.2f} | {e['cycles_per_s'] / 1e3:,.0f} k "
                 f"| {100 * e['busy_share']:.1f}% | - |")
    L += ["", "## Host link (socket transport, bulk scratchpad transfers)", "",
          "| array | op | payload | calls | wall s | payload B/s | sent B/s | received B/s "
          "| frames/s | sim cycles / payload byte | data ok |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["arrays"]:
        for op, x in r["link"].items():
            L.append(f"| {r['array']} | {op} | {x['payload_bytes'] / 1e6:.2f} MB | {x['calls']} "
                     f"| {x['wall_s']:.2f} | {x['payload_bytes_per_s'] / 1e6:.2f} M "
                     f"| {x['sent_bytes_per_s'] / 1e6:.2f} M "
                     f"| {x['received_bytes_per_s'] / 1e6:.2f} M | {x['frames_per_s']:,} "
                     f"| {x['cycles_per_payload_byte']:.2f} "
                     f"| {('yes' if x['data_ok'] else 'NO') if 'data_ok' in x else '-'} |")
    L.append("")
    for r in res["arrays"]:
        s = r["config"]["engines"]["systolic"]
        L.append(f"- {r['array']}: systolic {s['rows']}x{s['cols']} {s['dtype']}, dataflows "
                 f"{'/'.join(s['dataflows'])}, spad_depth {s['spad_depth']}, acc_depth "
                 f"{s['acc_depth']}; link_max_words {r['max_words_per_frame']}; opening the "
                 f"board took {r['open_s']} s")
    return "\n".join(L) + "\n"


NOTES = [
    "Per-second figures depend on the machine's load (the load average is printed above) and "
    "on the host's noise: on the 2-core machine these were measured on, the same binary's "
    "engine-alone rate varied by up to +-20% between runs. For scale, a bare 8x8 PE-array "
    "harness (no controller, DMA or memories) ran 1.1-1.4 M cycles/s on an idle core.",
    "`dev.matmul` cycles/s: PERF_CYCLES (every clock of the board, link transfers included) over "
    "the wall time of the call (tiling, operand packing, socket, Verilator). The board blocks "
    "on the socket while idle, so host-side Python time does not add cycles.",
    "Link bytes/s count whole frames (headers, CRC) on the socket; payload B/s only the data "
    "words. The board's link moves at most one byte per clock each way, so `sim cycles / "
    "payload byte` >= 1 is the on-board cost, and the wall rate is bounded by the simulation "
    "speed.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrays", default="4x4,8x8")
    ap.add_argument("--spad-depth", type=int, default=1024)
    ap.add_argument("--acc-depth", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=256, help="instructions in the engine-alone run")
    ap.add_argument("--link-bytes", type=int, default=1 << 20, help="payload per link test")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS / "sim_speed"))
    args = ap.parse_args(argv)
    arrays = []
    for arr in [a for a in args.arrays.split(",") if a]:
        r, c = (int(v) for v in arr.split("x"))
        cfg = SystolicConfig(rows=r, cols=c, dtype="int8", spad_depth=args.spad_depth,
                             acc_depth=args.acc_depth)  # fmt: skip
        arrays.append(measure(arr, cfg, repeat=args.repeat, link_bytes=args.link_bytes,
                              seed=args.seed))  # fmt: skip
    vers = {"python": platform.python_version()}
    for pkg in ("gatesmith", "amaranth", "verilator", "torch", "numpy"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = "not installed"
    res = {
        "benchmark": "sim_speed",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "versions": vers,
        "notes": NOTES,
        "arrays": arrays,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)


if __name__ == "__main__":
    main()
