"""Soak: random instruction programs on a simulated board, each result checked bit for bit.

:func:`soak` runs random steps until the controller has retired at least ``instructions``
program entries (counted by the device's ``RETIRED`` register, not by the host). Each step is
one program (or a host call that builds one) whose inputs are seeded random and whose output is
compared with the golden models:

* ``dma``: LOAD a strided 2-D block from device memory into the systolic ``left`` scratchpad and
  STORE it back with other strides; the words must come back where the strides put them;
* ``gemm``: ``dev.matmul`` of random int8 shapes (several tiles and K-chunks, OS or WS);
* ``chain``: a GEMM kept in the accumulator -> COPY (requantise) -> softmax, GELU or LayerNorm ->
  COPY into the WS scratchpad -> a second GEMM -> STORE, one program, the intermediate never in
  device memory; or the nonlinear rows STOREd to device memory instead of the second GEMM;
* ``rows``: GELU rows left on the device and LOADed as they are into LayerNorm or softmax.

The device config is the "chain" board of ``tests/test_chain.py`` (gelu, layernorm, softmax and
a 4x4 systolic array with a 128-entry scratchpad).
"""

from __future__ import annotations

import numpy as np
import torch

from gatesmith.generators.gelu.model import gelu_model
from gatesmith.generators.layernorm.model import layernorm_model
from gatesmith.generators.softmax.model import softmax_model
from gatesmith.hdl.formats import IntFormat
from gatesmith.hdl.nonlinear_common import pack_row_instr
from gatesmith.hdl.requant import requant
from gatesmith.host.chain import acc_tile, requant_params, rows, spad_rows, windows
from gatesmith.host.nonlinear import Rows, _write_region
from gatesmith.host.program import Deps
from gatesmith.host.systolic import Packed, Plan, gemm_instr, gemm_program, upload

I8 = IntFormat(8)
OPCODES = {"softmax": 0x20, "gelu": 0x21, "layernorm": 0x22}
MODELS = {"softmax": softmax_model, "gelu": gelu_model}


def _i8(g, shape):
    return torch.randint(-128, 128, shape, generator=g).to(torch.int8)


def _r(g, lo, hi) -> int:
    """A random integer in lo..hi."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


class Soak:
    def __init__(self, dev, seed: int):
        self.dev, self.g = dev, torch.Generator().manual_seed(seed)
        self.steps: dict[str, int] = {}
        ln = dev.config.engine("layernorm")
        # gamma/beta for every element position (a chained LayerNorm of n reads the first n)
        self.gamma = torch.randint(2**10, 2**12, (ln.max_len,), generator=self.g)
        self.beta = torch.randint(-500, 500, (ln.max_len,), generator=self.g)
        self._write_params()

    def _write_params(self) -> None:
        ln, wins = self.dev.config.engine("layernorm"), windows(self.dev, "layernorm")
        _write_region(self.dev, "layernorm", wins["gamma"], self.gamma[None].numpy(), ln.lanes)
        _write_region(self.dev, "layernorm", wins["beta"], self.beta[None].numpy(), ln.lanes)

    def model(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        cfg = self.dev.config.engine(kind)
        if kind == "layernorm":
            n = x.shape[1]
            return layernorm_model(x, self.gamma[:n], self.beta[:n], cfg)
        return MODELS[kind](x, cfg)

    # ---- steps ----------------------------------------------------------------------------------
    def dma(self) -> None:
        dev, g = self.dev, self.g
        n_rows, row_words = _r(g, 1, 6), _r(g, 1, 12)
        mem_stride, win_stride = row_words + _r(g, 0, 5), row_words + _r(g, 0, 4)
        out_stride = row_words + _r(g, 0, 3)
        src = torch.randint(0, 2**31, (n_rows * mem_stride,), generator=g, dtype=torch.int64)
        with dev.alloc((src.numel(),), torch.int32) as a, \
                dev.alloc((n_rows * out_stride,), torch.int32) as b:  # fmt: skip
            a.write_raw(src.numpy().astype(np.uint32))
            b.write_raw(np.zeros(n_rows * out_stride, dtype=np.uint32))
            base = _r(g, 0, 128 - ((n_rows - 1) * win_stride + row_words))
            prog = dev.program()
            prog.load("systolic", win_addr=base, buf=a, rows=n_rows, row_words=row_words,
                      mem_stride=mem_stride, win_stride=win_stride, deps=Deps(push_next=True))  # fmt: skip
            prog.nop(deps=Deps(pop_prev=True, push_next=True))
            prog.store("systolic", win_addr=base, buf=b, rows=n_rows, row_words=row_words,
                       mem_stride=out_stride, win_stride=win_stride, deps=Deps(pop_prev=True))  # fmt: skip
            prog.run(timeout=60)
            got = b.read_raw().view("<u4").astype(np.int64).reshape(n_rows, out_stride)
        want = src.numpy().reshape(n_rows, mem_stride)[:, :row_words]
        assert np.array_equal(got[:, :row_words], want), "dma: words moved wrongly"
        assert not got[:, row_words:].any(), "dma: a STORE wrote outside its rows"

    def gemm(self) -> None:
        g = self.g
        m, k, n = _r(g, 1, 20), _r(g, 1, 80), _r(g, 1, 20)
        a, b = _i8(g, (m, k)), _i8(g, (k, n))
        df = ("os", "ws")[_r(g, 0, 1)]
        c = self.dev.matmul(a, b, dataflow=df)
        assert torch.equal(c.long(), a.long() @ b.long()), f"gemm {df} {m}x{k}x{n}"

    def chain(self) -> None:
        dev, g = self.dev, self.g
        cfg = dev.config.engine("systolic")
        kind = ("softmax", "gelu", "layernorm")[_r(g, 0, 2)]
        ecfg = dev.config.engine(kind)
        m, k, n, j = _r(g, 1, 8), _r(g, 1, 16), _r(g, 2, 12), _r(g, 1, 8)
        x, w, v = _i8(g, (m, k)), _i8(g, (k, n)), _i8(g, (n, j))
        scale = {"softmax": 1 / 64, "gelu": 2.0**ecfg.in_frac / 8000, "layernorm": 1 / 16}[kind]
        mult, shift = requant_params(scale)
        bufs = [upload(dev, x, "a", "os"), upload(dev, w, "b", "os")]
        try:
            prog = dev.program()
            gemm_program(dev, bufs[0], bufs[1], None, Plan(mt=m, nt=n, kc=k), "os", cfg, prog)
            prog.copy(acc_tile(dev, base=0, mt=m, nt=n), rows(dev, kind, "in", base=0, n=n),
                      rows=m, length=n, mult=mult, shift=shift)  # fmt: skip
            to_mem = bool(_r(g, 0, 1))  # the rows to device memory, or on to a second GEMM
            prog.instr(pack_row_instr(OPCODES[kind], src=0, dst=0, length=n, rows=m),
                       deps=Deps(push_next=to_mem), what=kind)  # fmt: skip
            y = self.model(kind, requant(x.long() @ w.long(), mult, shift, ecfg.in_fmt))
            if to_mem:
                wins = windows(dev, kind)
                row_words = -(-n // ecfg.lanes) * wins["out"].stride
                out = dev.alloc((m * row_words,), torch.int32)
                bufs.append(out)
                out.layout = Rows(kind, "out", m, n, ecfg.lanes, 16, wins["out"].stride,
                                  kind != "softmax")  # fmt: skip
                prog.store(kind, win_addr=wins["out"].offset, buf=out, rows=1,
                           row_words=m * row_words, deps=Deps(pop_prev=True))  # fmt: skip
                prog.run(timeout=60)
                assert torch.equal(out.layout.unpack_from(out), y), f"chain {kind} -> store"
                return
            oscale = 2.0**-8 if kind == "softmax" else 127 / 2**ecfg.out_frac / 4
            m2, s2 = requant_params(oscale)
            prog.copy(rows(dev, kind, "out", base=0, n=n), spad_rows(dev, "left", base=0, entries=m),
                      rows=m, length=n, mult=m2, shift=s2)  # fmt: skip
            res = self._gemm2(prog, m, n, v, bufs)
            prog.run(timeout=60)
            want = requant(y, m2, s2, I8) @ v.long()
            assert torch.equal(res.layout.unpack_from(res).long(), want), f"chain {kind} -> gemm"
        finally:
            for b in bufs:
                b.free()

    def _gemm2(self, prog, m, k, w2, bufs):
        dev = self.dev
        cfg = dev.config.engine("systolic")
        wins = windows(dev, "systolic")
        top_base, acc_base = cfg.spad_depth // 2, cfg.acc_depth // 2
        vb = upload(dev, w2, "b", "ws")
        bufs.append(vb)
        n = w2.shape[1]
        prog.load("systolic", win_addr=wins["top"].offset + top_base * wins["top"].stride, buf=vb,
                  rows=1, row_words=vb.nbytes // 4, deps=Deps(push_next=True))  # fmt: skip
        prog.instr(gemm_instr("ws", m, k, n, acc=acc_base, left=0, top=top_base),
                   deps=Deps(pop_prev=True, push_next=True), what="GEMM 2")  # fmt: skip
        acc = wins["acc"]
        entries = -(-n // cfg.cols) * m
        res = dev.alloc((entries * acc.stride,), torch.int32)
        bufs.append(res)
        res.layout = Packed(role="result", dataflow="ws", rows=m, cols=n)
        prog.store("systolic", win_addr=acc.offset + acc_base * acc.stride, buf=res, rows=1,
                   row_words=entries * acc.stride, deps=Deps(pop_prev=True))  # fmt: skip
        return res

    def rows(self) -> None:
        dev, g = self.dev, self.g
        r, n = _r(g, 1, 40), _r(g, 1, 64)
        x = torch.randint(-(2**14), 2**14, (r, n), generator=g)
        y = dev.gelu(x, out="device")
        with y:
            want = self.model("gelu", x)
            if _r(g, 0, 1):
                got = dev.layer_norm(y, n, self.gamma[:n], self.beta[:n])
                assert torch.equal(got, self.model("layernorm", want)), "rows gelu -> layernorm"
                self._write_params()  # the call wrote n of them, zero-padded to a lane word
            else:
                got = dev.softmax(y)
                assert torch.equal(got, self.model("softmax", want)), "rows gelu -> softmax"


STEPS = ("dma", "gemm", "chain", "chain", "rows")


def soak(dev, *, seed: int, instructions: int) -> dict[str, int]:
    """Random steps until ``instructions`` program entries have retired; returns the step
    counts and ``retired`` (the device's count)."""
    s = Soak(dev, seed)
    start = dev.retired()
    counts = {k: 0 for k in STEPS}
    while (dev.retired() - start) & 0xFFFF_FFFF < instructions:
        kind = STEPS[_r(s.g, 0, len(STEPS) - 1)]
        getattr(s, kind)()
        counts[kind] += 1
    counts["retired"] = (dev.retired() - start) & 0xFFFF_FFFF
    return counts
