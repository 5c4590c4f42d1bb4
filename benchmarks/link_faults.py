"""Host-link recovery under injected faults: ok / retried / raised / hung per fault kind and rate.

A seeded proxy (``tests/faults.py``) wraps the real socket to the Verilator-simulated board and
corrupts, drops, duplicates, inserts or delays bytes in both directions at a per-byte rate.
Each trial is one ``dev.matmul`` (int8, 9x20 @ 20x5 on a 3x2 systolic array, ~3-4 KB each way)
with the faults on, checked against ``a.long() @ b.long()``; then a clean call (faults off)
checks the Device was not wedged. Columns:

* ok: exact result, no fault seen by the link; retried: exact result after the link recovered;
  raised: DeviceError; wrong: a result that differs from the golden one (must be 0);
* hung: calls longer than ``--hang-s`` (every wait is bounded, so a call always ends);
* wedged: clean calls after a faulted one that failed (must be 0).

Also: Ctrl-C at a random time during a matmul, then a clean call; and instruction-queue writes
of NOPs under corruption, where RETIRED counts how often each one really ran (exactly once).

    python benchmarks/link_faults.py               # ~5 minutes on 2 cores
    python benchmarks/link_faults.py --calls 10 --rates 1e-3

Writes ``benchmarks/results/link_faults.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import time
from pathlib import Path

import torch

from gatesmith.config import AccelConfig
from gatesmith.errors import DeviceError
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.device import Device
from gatesmith.host.transport import SocketTransport
from gatesmith.sim.board import SimBoard
from gatesmith.tests.faults import KINDS, FaultyTransport

RESULTS = Path(__file__).resolve().parent / "results"
CFG = AccelConfig(
    name="small",
    engines=(SystolicConfig(rows=3, cols=2, spad_depth=64, acc_depth=32),),
    link_max_words=64,
)


def _device(board, **faults):
    inner = SocketTransport(board.sock, alive=board.alive, latency=0.1)
    t = FaultyTransport(inner, **faults)
    dev = Device(t, CFG)
    dev.transport.close = lambda: None  # the board outlives the Device
    return dev, t


def _gemm(g, m=9, k=20, n=5):
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    return a, b


def cell(board, kind: str, rate: float, calls: int, seed: int, hang_s: float) -> dict:
    dev, t = _device(board, kind=kind, rate=rate, seed=seed)
    g = torch.Generator().manual_seed(seed)
    row = {"kind": kind, "rate": rate, "calls": calls, "ok": 0, "retried": 0, "raised": 0,
           "wrong": 0, "hung": 0, "wedged": 0, "injected": 0, "max_call_s": 0.0}  # fmt: skip
    errors: dict[str, int] = {}
    for _ in range(calls):
        a, b = _gemm(g)
        faults0 = dev.stats["faults"]
        t.enabled = True
        t0 = time.monotonic()
        try:
            c = dev.matmul(a, b)
        except DeviceError as e:
            row["raised"] += 1
            key = re.sub(r"\d+(\.\d+)?", "N", str(e).split(" (")[0])[:80]  # by kind of error
            errors[key] = errors.get(key, 0) + 1
        else:
            if not torch.equal(c.long(), a.long() @ b.long()):
                row["wrong"] += 1
            elif dev.stats["faults"] > faults0:
                row["retried"] += 1
            else:
                row["ok"] += 1
        dt = time.monotonic() - t0
        t.enabled = False
        row["max_call_s"] = round(max(row["max_call_s"], dt), 2)
        row["hung"] += dt > hang_s
        a, b = _gemm(g, 4, 6, 3)
        try:
            if not torch.equal(dev.matmul(a, b).long(), a.long() @ b.long()):
                row["wrong"] += 1
        except DeviceError:
            row["wedged"] += 1
    row["injected"] = t.injected
    row["link"] = {k: dev.stats[k] for k in ("faults", "retries", "resyncs", "replayed")}
    row["errors"] = errors
    dev.close()
    return row


def ctrl_c(board, trials: int, seed: int) -> dict:
    dev, _ = _device(board, kind="drop", rate=0.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    rng = torch.Generator().manual_seed(seed + 1)
    res = {"trials": trials, "interrupted": 0, "next_call_ok": 0, "next_call_failed": 0}

    def boom(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, boom)
    try:
        for _ in range(trials):
            a, b = _gemm(g, 30, 60, 8)
            signal.setitimer(signal.ITIMER_REAL, 0.002 + 0.2 * float(torch.rand(1, generator=rng)))
            try:
                dev.matmul(a, b)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                res["interrupted"] += 1
            a, b = _gemm(g, 7, 9, 4)
            try:
                ok = torch.equal(dev.matmul(a, b).long(), a.long() @ b.long())
            except DeviceError:
                ok = False
            res["next_call_ok" if ok else "next_call_failed"] += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    dev.close()
    return res


def exactly_once(board, writes: int, rate: float, seed: int) -> dict:
    dev, t = _device(board, kind="corrupt", rate=rate, seed=seed)
    before = dev.retired()
    sent = raised = 0
    for i in range(writes):
        t.enabled = True
        try:
            dev.execute([[0, 0, 0, 0]] * (1 + i % 4))
            sent += 1 + i % 4
        except DeviceError:
            raised += 1
        t.enabled = False
    dev.wait()
    res = {"writes": writes, "rate": rate, "nops_acknowledged": sent,
           "nops_retired": dev.retired() - before, "raised": raised,
           "replayed_answers": dev.stats["replayed"]}  # fmt: skip
    dev.close()
    return res


def markdown(res: dict) -> str:
    lines = [
        "# Host-link recovery under injected faults",
        "",
        f"{res['date']}, {res['machine']}, {res['nproc']} cores; {res['calls']} matmuls per cell "
        f"(int8 9x20 @ 20x5 on a 3x2 systolic array, simulated board), seed {res['seed']}, "
        f"retries {res['retries']}, hung = a call over {res['hang_s']} s.",
        "",
        "| fault | rate/byte | injected | ok | retried | raised | wrong | hung | wedged "
        "| max call s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["cells"]:
        lines.append(
            f"| {r['kind']} | {r['rate']:g} | {r['injected']} | {r['ok']} | {r['retried']} "
            f"| {r['raised']} | {r['wrong']} | {r['hung']} | {r['wedged']} | {r['max_call_s']} |"
        )
    c = res["ctrl_c"]
    e = res["exactly_once"]
    lines += [
        "",
        f"Ctrl-C at a random time in a matmul: {c['interrupted']} of {c['trials']} interrupted; "
        f"the next call succeeded {c['next_call_ok']} times and failed {c['next_call_failed']}.",
        "",
        f"Instruction-queue writes under corruption ({e['rate']:g}/byte): {e['writes']} writes, "
        f"{e['nops_acknowledged']} NOPs acknowledged, {e['nops_retired']} retired, "
        f"{e['replayed_answers']} answers replayed from the device's record, {e['raised']} raised.",
        "",
        "Errors raised (count): "
        + "; ".join(
            f"{k} ({v})" for k, v in sorted(res["errors"].items(), key=lambda kv: -kv[1])
        )
        if res["errors"]
        else "No call raised.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="faulted matmuls per kind and rate")
    ap.add_argument("--rates", default="1e-4,1e-3,3e-3", help="per-byte fault rates")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--hang-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", default=str(RESULTS / "link_faults"))
    args = ap.parse_args(argv)
    board = SimBoard(CFG)
    cells = []
    try:
        for kind in args.kinds.split(","):
            for rate in (float(r) for r in args.rates.split(",")):
                t0 = time.monotonic()
                cells.append(cell(board, kind, rate, args.calls, args.seed, args.hang_s))
                print(f"{kind} {rate:g}: {cells[-1]} ({time.monotonic() - t0:.1f} s)", flush=True)
        cc = ctrl_c(board, 30, args.seed)
        print("ctrl-c", cc, flush=True)
        eo = exactly_once(board, 100, 3e-3, args.seed)
        print("exactly once", eo, flush=True)
    finally:
        board.close()
    errors: dict[str, int] = {}
    for c in cells:
        for k, v in c["errors"].items():
            errors[k] = errors.get(k, 0) + v
    res = {
        "benchmark": "link_faults",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "nproc": len(os.sched_getaffinity(0)),
        "calls": args.calls,
        "seed": args.seed,
        "retries": 3,
        "hang_s": args.hang_s,
        "cells": cells,
        "ctrl_c": cc,
        "exactly_once": eo,
        "errors": errors,
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
