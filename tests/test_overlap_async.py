"""Asynchronous accelerator programs: ``Run.wait`` polls and calls the device's
``while_waiting`` hook while a program runs; ``host.overlap.run_pipelined`` uses it to run
host stages of other requests on the one host thread (no accelerator thread), with results
equal to the sequential runs. Board: the systolic + softmax + PIM config of test_pim_route.py.
"""

from __future__ import annotations

import threading

import gatesmith.host
import torch

from .test_pim_route import CFG, _compile, _example


def test_a_program_polls_and_lets_the_host_work_while_it_runs():
    g = torch.Generator().manual_seed(8)
    a = torch.randint(-128, 128, (64, 64), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (64, 64), generator=g, dtype=torch.int8)
    with gatesmith.host.open("sim", config=CFG) as dev:
        calls = []
        dev.while_waiting = lambda: calls.append(dev.status()["running"]) or False
        c = dev.matmul(a, b)
        dev.while_waiting = None
        assert torch.equal(c.long(), a.long() @ b.long())
    assert any(calls), "the hook runs while the program runs"


def test_pipelined_decode_steps_overlap_on_one_thread_and_equal_sequential():
    dec = _example("gpt_decoder")
    reqs = dec.requests()[:3]
    with gatesmith.host.open("sim", config=CFG) as dev:
        g = _compile(dec, device=dev)
        seq = [g(*r) for r in reqs]
        threads = []  # the threads alive while a host op runs
        node = next(n for st in g.stages if st.device == "host" for n in st.nodes
                    if n.op == "call_function")  # fmt: skip
        orig = node.target

        def spy(*args, **kwargs):
            threads.append(threading.active_count())
            return orig(*args, **kwargs)

        node.target = spy
        try:
            many = g.run_many(reqs)
        finally:
            node.target = orig
        tl = g.last_timeline
        g.close()
    for a, b in zip(seq, many, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert threads and max(threads) == threading.active_count()  # no accelerator thread
    assert {e.device for e in tl.events} == {"accel", "host"}
    assert {e.request for e in tl.events} == {0, 1, 2} and tl.board_cycles() > 0
    for i in range(3):  # each request's stages in order
        ev = sorted((e for e in tl.events if e.request == i), key=lambda e: e.start)
        assert all(x.end <= y.start + 1e-9 for x, y in zip(ev, ev[1:]))
    accel = [e for e in tl.events if e.device == "accel"]
    nested = [h for h in tl.events if h.device == "host"
              and any(a.start <= h.start and h.end <= a.end for a in accel)]  # fmt: skip
    assert nested, "host stages ran while accelerator programs ran"
    print(f"both busy {tl.both_busy():.1%} of {tl.span * 1e3:.0f} ms; "
          f"{len(nested)} host stages inside accelerator stages")
