"""Shared parts of the streaming nonlinear engines (softmax, GELU, LayerNorm).

Python side: config checks and the instruction layout every nonlinear engine uses. Hardware side
(further down): the row sequencer with its memories and host window, a sequential divider, and
small pipeline helpers.

Instruction (128 bits, see ``generators/engine.py``)::

    [7:0]    opcode
    [31:8]   src   vector-word address of row 0 in the input memory
    [55:32]  dst   vector-word address of row 0 in the output memory
    [76:64]  len   elements per row, 1..max_len
    [95:80]  rows  rows, 1..65535; row r is at src + r * ceil(len / lanes)

A vector word holds ``lanes`` elements, element ``j`` of a row in word ``j // lanes``, lane
``j % lanes``; lanes past the row's end are ignored on input and written as 0 on output.
"""

from __future__ import annotations

from amaranth.lib import data

from .fields import struct_fields

__all__ = [
    "check_int",
    "check_common",
    "INSTR_FIELDS",
    "pack_row_instr",
    "words_per_row",
]

# The row instruction of the nonlinear engines (128 bits, bit 0 first): the RTL decoder and the
# host encoder both use this one description.
ROW_INSTR = data.StructLayout(
    {
        "opcode": 8,
        "src": 24,
        "dst": 24,
        "reserved0": 8,
        "len": 13,
        "reserved1": 3,
        "rows": 16,
        "reserved2": 32,
    }
)
INSTR_FIELDS = struct_fields(ROW_INSTR)


def check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value}")


def check_pow2(name, value, lo, hi):
    check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two in {lo}..{hi}, not {value}")


def check_common(cfg):
    """Checks of the fields every nonlinear engine config has."""
    from .formats import parse_int_format

    fmt = parse_int_format(cfg.in_dtype, field="in_dtype", allowed=("int8", "int16"))
    check_int("in_frac", cfg.in_frac, 0, fmt.width - 1)
    check_int("lanes", cfg.lanes, 1, 16)
    check_pow2("depth", cfg.depth, 16, 65536)
    check_int("max_len", cfg.max_len, 1, 4096)


def words_per_row(length: int, lanes: int) -> int:
    return -(-length // lanes)


def pack_row_instr(opcode: int, *, src: int, dst: int, length: int, rows: int) -> list[int]:
    """The 4 instruction words of a nonlinear row instruction (fields must fit their widths)."""
    value = opcode & 0xFF
    for name, v in (("src", src), ("dst", dst), ("len", length), ("rows", rows)):
        off, width = INSTR_FIELDS[name]
        if not 0 <= v < (1 << width):
            raise ValueError(f"{name} must fit in {width} bits, not {v}")
        value |= v << off
    return [(value >> (32 * i)) & 0xFFFF_FFFF for i in range(4)]


# --------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------

from dataclasses import dataclass  # noqa: E402

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.memory import Memory  # noqa: E402

__all__ += [
    "CHECK_CYCLES",
    "Region",
    "RowEngine",
    "RowContext",
    "SeqDivider",
    "delay",
    "restoring_div",
    "rom",
    "sum_tree",
    "max_tree",
    "greater",
    "mul_latency",
    "mul_pipe",
]

# Cycles of an instruction's checks (acceptance to the first row), in every engine's cycle model.
CHECK_CYCLES = 6

# Error codes of generators/engine.py's ErrorCode (hdl does not import generators).
_BAD_SHAPE, _OUT_OF_RANGE = 0x11, 0x12


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Region:
    """A memory of ``depth`` vector words of ``lanes`` elements of ``width`` bits.

    ``role``: ``in`` (the engine reads rows from it), ``out`` (the engine writes rows into it) or
    ``param`` (the engine reads it at the row's word index). ``access`` is the host's.
    """

    name: str
    width: int
    lanes: int
    depth: int
    role: str
    access: str
    doc: str = ""
    signed: bool = True

    @property
    def bits(self) -> int:
        return self.width * self.lanes

    @property
    def words(self) -> int:  # 32-bit host words per entry
        return -(-self.bits // 32)

    @property
    def stride(self) -> int:
        return _pow2_ceil(self.words)

    @property
    def mem_width(self) -> int:  # padded to whole host words, so the window has no holes
        return self.bits if self.words == 1 else 32 * self.stride

    @property
    def size(self) -> int:
        return _pow2_ceil(self.depth * self.stride)


def layout_regions(regions: list[Region]) -> list[tuple[Region, int]]:
    """Word offset of each region in the host window, aligned to its (power of two) size."""
    out, offset = [], 0
    for r in sorted(regions, key=lambda r: -r.size):
        out.append((r, offset))
        offset += r.size
    return sorted(out, key=lambda t: regions.index(t[0]))


def delay(m, sig, n: int, name: str = "d"):
    """``sig`` delayed by ``n`` clock cycles (a chain of registers)."""
    for i in range(n):
        r = Signal.like(sig, name=f"{name}_{i}")
        m.d.sync += r.eq(sig)
        sig = r
    return sig


def sum_tree(m, values, width: int, name: str = "sum"):
    """Sum of ``values`` by a balanced adder tree with a register after every level.

    Returns ``(sum, latency)``; ``width`` is the result width (signedness of the first value).
    """
    shape = signed(width) if values[0].shape().signed else unsigned(width)
    level, lat = list(values), 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            r = Signal(shape, name=f"{name}_{lat}_{i}")
            m.d.sync += r.eq(level[i] + level[i + 1] if i + 1 < len(level) else level[i])
            nxt.append(r)
        level, lat = nxt, lat + 1
    return level[0], lat


MUL_CHUNK = 17  # operand chunk of a multiplier: 17 unsigned bits, or up to 18 signed at the top


def _chunks(width: int, is_signed: bool):
    """(offset, width) of an operand's chunks, each of which fits a multiplier input."""
    out, off = [], 0
    while off < width:
        w = min(MUL_CHUNK, width - off)
        if is_signed and width - off <= MUL_CHUNK + 1:  # the signed top chunk, up to 18 bits
            w = width - off
        out.append((off, w))
        off += w
    return out


def mul_latency(a_shape, b_shape, stages: int = 1) -> int:
    """Cycles of :func:`mul_pipe` for operands of these shapes (``stages``: its multipliers')."""
    n = len(_chunks(a_shape.width, a_shape.signed)) * len(_chunks(b_shape.width, b_shape.signed))
    return stages + (n - 1).bit_length()


def mul_pipe(m, a, b, name: str = "mul", *, multiply=None, stages: int = 1):
    """``a * b`` (exact) as partial products that each fit one 18x18 multiplier, every one of them
    registered ``stages`` times, then summed by a balanced adder tree with a register after every
    level.

    ``multiply(m, x, y, latency=, name=)``, when given, makes each partial product (the engines
    pass :func:`gatesmith.generators.dsp.multiply`, which keeps the registers in the FPGA's DSP
    block); without it, ``stages`` registers after ``*``. Returns ``(product, latency)``, latency
    :func:`mul_latency`."""
    sa, sb = a.shape(), b.shape()
    is_signed = sa.signed or sb.signed
    width = sa.width + sb.width + 3  # room for every partial sum
    shape = signed(width) if is_signed else unsigned(width)

    def parts(v, sh):
        ch = _chunks(sh.width, sh.signed)
        return [(off, v[off : off + w].as_signed() if sh.signed and off + w == sh.width
                 else v[off : off + w]) for off, w in ch]  # fmt: skip

    level = []
    for oa, ca in parts(a, sa):
        for ob, cb in parts(b, sb):
            if multiply is not None:
                r = multiply(m, ca, cb, latency=stages, name=f"{name}_p{oa}_{ob}")
            else:
                r = delay(m, ca * cb, stages, f"{name}_p{oa}_{ob}")
            level.append(r << (oa + ob) if oa + ob else r)
    lat = stages
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            r = Signal(shape, name=f"{name}_s{lat}_{i}")
            m.d.sync += r.eq(level[i] + level[i + 1] if i + 1 < len(level) else level[i])
            nxt.append(r)
        level, lat = nxt, lat + 1
    assert lat == mul_latency(sa, sb, stages)
    return level[0], lat


def greater(a, b):
    """``a > b`` for two values of one shape; signed ones compared as unsigned with their sign
    bits inverted, so that the compare is one carry chain whose carry out is the result."""
    if not a.shape().signed:
        return a > b
    n = len(a)
    return Cat(a[: n - 1], ~a[n - 1]) > Cat(b[: n - 1], ~b[n - 1])


def max_tree(m, items, name: str = "max", *, invalid_lowest: bool = False):
    """Largest value among ``items`` = [(valid, value)], by a registered comparator tree.

    Each level takes two cycles: the compare (registered, with both values), then the choice.
    ``invalid_lowest``: an item that is not valid holds a value below every valid one's, so the
    compare alone chooses (no valid bits in series with it). Returns ``(any_valid, max, latency)``; with no valid item the value is unspecified.
    """
    level, lat = list(items), 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            va, a = level[i]
            rv = Signal(name=f"{name}_v{lat}_{i}")
            r = Signal.like(a, name=f"{name}_{lat}_{i}")
            if i + 1 < len(level):
                vb, b = level[i + 1]
                tb = Signal(name=f"{name}_tb{lat}_{i}")
                a1 = Signal.like(a, name=f"{name}_a{lat}_{i}")
                b1 = Signal.like(b, name=f"{name}_b{lat}_{i}")
                v1 = Signal(name=f"{name}_v1{lat}_{i}")
                take_b = greater(b, a) if invalid_lowest else vb & (~va | greater(b, a))
                m.d.sync += [tb.eq(take_b), a1.eq(a), b1.eq(b), v1.eq(va | vb)]
                m.d.sync += [rv.eq(v1), r.eq(Mux(tb, b1, a1))]
            else:
                m.d.sync += [rv.eq(delay(m, va, 1, f"{name}_vd{lat}_{i}")),
                             r.eq(delay(m, a, 1, f"{name}_d{lat}_{i}"))]  # fmt: skip
            nxt.append((rv, r))
        level, lat = nxt, lat + 2
    return level[0][0], level[0][1], lat


def rom(values: list[int], index, name: str = "rom"):
    """Combinational lookup of a constant table (values >= 0); ``index`` past the end reads 0."""
    w = max(1, max(values).bit_length())
    return Array(Const(v, w) for v in values)[index]


def restoring_div(m, num, den, qbits: int, *, stage_bits: int = 4, name: str = "div"):
    """``floor(num / den)`` for unsigned values with quotient < 2**qbits, pipelined.

    A register follows every ``stage_bits`` quotient bits; returns ``(quotient, latency)``.
    Requires ``num >> qbits < den`` (checked by the caller's arithmetic, not here).
    """
    dw = len(den)
    rem = Signal(dw + 1, name=f"{name}_rem_in")
    m.d.comb += rem.eq(num >> qbits)
    low = num
    den_s, q = den, Const(0, qbits)
    latency = 0
    for i in reversed(range(qbits)):
        trial = Cat(low[i], rem[:dw])  # (rem << 1) | bit i of num
        ge = trial >= den_s
        rem_n = Signal(dw + 1, name=f"{name}_rem{i}")
        m.d.comb += rem_n.eq(Mux(ge, trial - den_s, trial))
        q = q | (ge << i)
        rem = rem_n
        if (qbits - i) % stage_bits == 0 and i:
            regs = [Signal.like(v, name=f"{name}_{n}{i}") for n, v in (("r", rem), ("l", low))]
            qs = Signal(qbits, name=f"{name}_q{i}")
            ds = Signal.like(den_s, name=f"{name}_d{i}")
            m.d.sync += [regs[0].eq(rem), regs[1].eq(low), qs.eq(q), ds.eq(den_s)]
            rem, low, q, den_s = regs[0], regs[1], qs, ds
            latency += 1
    return q, latency


class SeqDivider(wiring.Component):
    """Sequential restoring divider: ``quotient = floor(dividend / divisor)``, ``digit_bits``
    quotient bits a cycle (radix ``2**digit_bits``).

    Set ``dividend``, ``divisor`` and ``qbits``, a multiple of ``digit_bits`` (the quotient is
    known to be < 2**qbits, so ``dividend >> qbits < divisor``; round a bound up to whole digits)
    and pulse ``start``; ``done`` pulses :meth:`cycles` ``(qbits)`` cycles later with
    ``quotient`` valid (held until the next start). At ``start`` the dividend goes through one
    right shift by ``qbits`` (the remainder's first value above, the bits still to come below).

    Each cycle takes the next ``digit_bits`` dividend bits into the remainder and subtracts
    every multiple ``j * divisor`` (j < radix, the multiples registered at ``start``) in
    parallel; the largest that does not borrow is the digit. One carry chain and a multiplexer
    a cycle, as the radix-2 step's, with ``radix - 1`` chains side by side.
    """

    def __init__(self, *, dividend_width: int, divisor_width: int, digit_bits: int = 2):
        if digit_bits not in (1, 2):
            raise ValueError(f"digit_bits must be 1 or 2, not {digit_bits}")
        self.nw, self.dw, self.b = dividend_width, divisor_width, digit_bits
        super().__init__(
            {
                "start": wiring.In(1),
                "dividend": wiring.In(dividend_width),
                "divisor": wiring.In(divisor_width),
                "qbits": wiring.In(range(dividend_width + 1)),
                "quotient": wiring.Out(dividend_width),
                "done": wiring.Out(1),
            }
        )

    @staticmethod
    def whole(q, digit_bits: int = 2):
        """A quotient-bit bound ``q`` (an int or a Value) rounded up to whole digits: the
        ``qbits`` to give for it."""
        if digit_bits == 1:
            return q
        if isinstance(q, int):
            return q + (q & 1)
        return Cat(Const(0, 1), (q + 1)[1:])

    @staticmethod
    def cycles(qbits: int, digit_bits: int = 2) -> int:
        """Cycles from ``start`` to ``done`` for a quotient of ``qbits`` bits."""
        return max(1, -(-qbits // digit_bits)) + 1

    def elaborate(self, platform):
        m = Module()
        b, nw, dw = self.b, self.nw, self.dw
        radix = 1 << b
        rem = Signal(dw)  # below the divisor
        low = Signal(nw + b)  # the dividend's bits still to come, the next digit's on top
        mult = [Signal(dw + b, name=f"den{j}") for j in range(1, radix)]  # j * divisor
        left = Signal(range(nw // b + 2))
        busy = Signal()
        qb = self.qbits
        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            aligned = Cat(Const(0, nw + b), self.dividend) >> qb
            m.d.sync += [
                rem.eq(aligned[nw + b :]),
                low.eq(aligned[: nw + b]),
                left.eq(qb >> (b - 1)),
                self.quotient.eq(0),
                busy.eq(1),
            ]
            # shifts and one add (a multiply by a constant could be given a DSP block)
            multiples = [self.divisor, self.divisor << 1, self.divisor + (self.divisor << 1)]
            m.d.sync += [mj.eq(v) for mj, v in zip(mult, multiples)]
        with m.Elif(busy):
            trial = Cat(low[-b:], rem)  # (rem << b) | the next digit's bits
            diffs = []
            for j, mj in enumerate(mult):
                d = Signal(dw + b + 1, name=f"trial_minus{j + 1}")
                m.d.comb += d.eq(trial - mj)
                diffs.append(d)
            digit, new_rem = Const(0, b), trial
            for j, d in enumerate(diffs):  # the largest multiple that does not borrow
                ok = ~d[-1]
                digit = Mux(ok, j + 1, digit)
                new_rem = Mux(ok, d[:dw], new_rem)
            with m.If(left != 0):
                m.d.sync += [
                    rem.eq(new_rem),
                    low.eq(low << b),
                    self.quotient.eq(Cat(digit, self.quotient[:-b])),
                    left.eq(left - 1),
                ]
            with m.If(left <= 1):
                m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m


class _ReadPort:
    """A read port over every bank of a :class:`_Banked` memory: ``addr``, ``en``, ``data``."""

    def __init__(self, m, banks, depth: int, name: str):
        self.addr = Signal(range(max(depth, 2)), name=f"{name}_addr")
        self.en = Signal(name=f"{name}_en")
        ports = [bank.read_port() for bank in banks]
        for port in ports:
            m.d.comb += [port.addr.eq(self.addr), port.en.eq(self.en)]
        self.data = Cat(*(port.data for port in ports))


class _Banked:
    """A region's memory. One the host writes a 32-bit word at a time (an entry of more than one
    host word) is a bank per host word, so that every port of its block RAMs is the bank's
    width, with no per-word write enables; every other region is one memory (the output memory
    is written a whole entry at once)."""

    def __init__(self, m, r: Region):
        split = r.words > 1 and r.access != "r"
        widths = [32] * r.stride if split else [r.mem_width]
        # the host writes a region before the instructions that read it: a read of the word
        # being written in the same cycle needs no defined result, and without this attribute
        # yosys emulates read-old-data (ECP5's block RAM does not give it across its ports)
        # with a compare and a multiplexer after the block RAM, on the row reader's read data
        attrs = {"no_rw_check": 1} if r.access != "r" else None
        self.banks = []
        for k, w in enumerate(widths):
            bank = Memory(shape=unsigned(w), depth=r.depth, init=[], attrs=attrs)
            m.submodules[f"mem_{r.name}" + (f"_{k}" if split else "")] = bank
            self.banks.append(bank)
        self.depth, self.name, self._ports = r.depth, r.name, 0

    def read_port(self, m) -> _ReadPort:
        self._ports += 1
        return _ReadPort(m, self.banks, self.depth, f"{self.name}_rp{self._ports}")

    def write_port(self):
        (bank,) = self.banks  # only an unsplit memory is written whole
        return bank.write_port()


class RowContext:
    """What :meth:`RowEngine.elaborate_row` gets: row parameters, memory ports, the reader.

    * ``start``: one-cycle pulse when a row begins; the subclass pulses ``row_done`` when its
      results are all written.
    * ``length``, ``wpr`` (vector words per row), ``src``/``dst`` (row base addresses).
    * ``read(m)``: pulse ``read_start`` to stream the row's words from the input memory; two
      cycles later (the memory read and a register on its data) ``rd_valid``, ``rd_data``,
      ``rd_idx``, ``rd_last``, ``rd_lanes`` (lane valid mask) and ``params[name]`` (param
      memories' word at ``rd_idx``) are aligned, all of them registers.
    * ``wr_addr``/``wr_data``/``wr_en``: the output memory's write port.
    * ``platform``: the platform ``elaborate`` got (for :func:`gatesmith.generators.dsp.multiply`).
    """


class RowEngine(wiring.Component):
    """Base of the row engines: memories, host window, instruction checks, the row loop.

    Subclasses pass their signature members (``engine_ports()`` plus nothing else), the regions
    (exactly one ``in`` and one ``out``) and implement ``elaborate_row(m, ctx)``.

    ``multiply``: how the checks multiply (rows by words a row), ``generators.dsp.multiply``
    (hdl does not import generators): ``(m, platform, a, b, *, latency, name)``, the product
    ``latency`` (2) cycles later in a DSP block with its registers (registers around ``*``
    would leave yosys a DSP block used combinationally on ECP5, about 8 ns register to register).
    """

    def __init__(self, members: dict, *, lanes: int, max_len: int, regions: list[Region],
                 multiply):  # fmt: skip
        self.lanes, self.max_len, self.regions = lanes, max_len, regions
        self._multiply = multiply
        super().__init__(members)

    def region_layout(self):
        return layout_regions(self.regions)

    def elaborate_row(self, m, ctx: RowContext):  # pragma: no cover (abstract)
        raise NotImplementedError

    # -- host window ---------------------------------------------------------------------------
    def _host(self, m, mems):
        bus = self.host
        sel_prev = Signal(range(len(mems) + 1))
        sub_prev = Signal(8)
        hit_any = []
        rdatas = []
        for i, ((r, off), mem) in enumerate(zip(self.region_layout(), mems, strict=True)):
            sbits = (r.stride - 1).bit_length()
            hit = (bus.addr >> (r.size - 1).bit_length()) == (off >> (r.size - 1).bit_length())
            entry = (bus.addr - off)[sbits:]
            sub = bus.addr[:sbits] if sbits else Const(0, 1)
            ok = hit
            hit_any.append(ok & ((r.access != "r") | ~bus.w_en))
            rp = mem.read_port(m)
            m.d.comb += [rp.addr.eq(entry), rp.en.eq(bus.r_en & ok)]
            with m.If(bus.r_en & ok):
                m.d.sync += [sel_prev.eq(i + 1), sub_prev.eq(sub)]
            words = [rp.data[32 * k : 32 * (k + 1)] for k in range(r.stride)]
            rdatas.append(Array(words)[sub_prev] if r.stride > 1 else words[0])
            if r.access != "r":
                en = bus.w_en & ok
                for k, bank in enumerate(mem.banks):
                    wp = bank.write_port()
                    m.d.comb += [wp.addr.eq(entry), wp.data.eq(bus.w_data[: len(wp.data)])]
                    m.d.comb += wp.en.eq(en & (sub == k) if len(mem.banks) > 1 else en)
        m.d.comb += bus.err.eq(~Cat(*hit_any).any() & (bus.r_en | bus.w_en))
        with m.Switch(sel_prev):
            for i, rd in enumerate(rdatas):
                with m.Case(i + 1):
                    m.d.comb += bus.r_data.eq(rd)

    # -- the engine ----------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        mems = [_Banked(m, r) for r in self.regions]
        self._host(m, mems)
        by_role = {r.role: (r, mem) for r, mem in zip(self.regions, mems, strict=True)}
        r_in, mem_in = by_role["in"]
        r_out, mem_out = by_role["out"]

        # instruction fields
        fields = {}
        cmd_val = self.cmd.payload
        for name, (off, w) in INSTR_FIELDS.items():
            fields[name] = Signal(w, name=f"f_{name}")
        wpr = Signal(range(self.max_len + 1))
        last_lanes = Signal(range(L + 1))
        ctx = RowContext()
        ctx.platform = platform
        ctx.length, ctx.wpr = fields["len"], wpr
        ctx.src = Signal(range(max(r_in.depth, 2) * 2), name="row_src")
        ctx.dst = Signal(range(max(r_out.depth, 2) * 2), name="row_dst")
        ctx.start = Signal()
        ctx.row_done = Signal()
        rows_left = Signal(16)

        # wpr = ceil(len / L) by a multiply with an exact reciprocal (the smallest k that is exact
        # for every length, so the multiply fits one multiplier; a shift when L is a power of two)
        k = next(k for k in range(1, 32) if all(
            ((n + L - 1) * -(-(1 << k) // L)) >> k == -(-n // L) for n in range(4097 + L)))
        recip = -(-(1 << k) // L)
        # the checks, one operation per cycle: len + L - 1, wpr, rows * wpr (two cycles, and
        # (wpr - 1) L), the two ends and the last word's lanes, the comparisons
        len_up = Signal(14)
        rows_wpr = self._multiply(m, platform, fields["rows"], wpr.as_unsigned(), latency=2,
                                  name="rows_wpr")  # fmt: skip
        last_base = Signal(range(self.max_len + L + 1))
        need_in = Signal(40)
        need_out = Signal(40)

        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    for name, (off, w) in INSTR_FIELDS.items():
                        m.d.sync += fields[name].eq(cmd_val[off : off + w])
                    m.next = "SIZE"
            with m.State("SIZE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += len_up.eq(fields["len"] + (L - 1))
                m.next = "SIZE2"
            with m.State("SIZE2"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += wpr.eq((len_up * recip) >> k)
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += last_base.eq((wpr - 1) * L)
                m.next = "CHECK_MUL"
            with m.State("CHECK_MUL"):  # rows * wpr, from the operands of the cycle before
                m.d.comb += self.busy.eq(1)
                m.next = "CHECK1"
            with m.State("CHECK1"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    need_in.eq(fields["src"] + rows_wpr),
                    need_out.eq(fields["dst"] + rows_wpr),
                    last_lanes.eq(fields["len"] - last_base),
                ]
                m.next = "CHECK2"
            with m.State("CHECK2"):
                m.d.comb += self.busy.eq(1)
                bad_shape = (fields["len"] == 0) | (fields["len"] > self.max_len)
                bad_shape |= fields["rows"] == 0
                for r in self.regions:
                    if r.role == "param":
                        bad_shape |= wpr > r.depth
                oor = (need_in > r_in.depth) | (need_out > r_out.depth)
                with m.If(bad_shape | oor):
                    code = Mux(bad_shape, _BAD_SHAPE, _OUT_OF_RANGE)
                    m.d.comb += [self.done.eq(1), self.error.eq(code)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [
                        ctx.src.eq(fields["src"]),
                        ctx.dst.eq(fields["dst"]),
                        rows_left.eq(fields["rows"]),
                    ]
                    m.next = "ROW"
            with m.State("ROW"):
                m.d.comb += [self.busy.eq(1), ctx.start.eq(1)]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(ctx.row_done):
                    m.d.sync += [
                        ctx.src.eq(ctx.src + wpr),
                        ctx.dst.eq(ctx.dst + wpr),
                        rows_left.eq(rows_left - 1),
                    ]
                    with m.If(rows_left == 1):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "ROW"

        # row reader over the input memory (and the param memories at the same word index)
        rp = mem_in.read_port(m)
        running = Signal()
        idx = Signal(range(max(self.max_len, 2)))
        ctx.read_start = Signal()
        with m.If(ctx.read_start):
            m.d.sync += [running.eq(1), idx.eq(0)]
        with m.Elif(running):
            m.d.sync += idx.eq(idx + 1)
            with m.If(idx == wpr - 1):
                m.d.sync += running.eq(0)
        # the reader's ports read every cycle (their data is used only where rd_valid says): a
        # port with an enable would hold its data through a multiplexer after the block RAM
        m.d.comb += [rp.addr.eq(ctx.src + idx), rp.en.eq(1)]
        # the memories' read data is registered once (the block RAM's clock-to-out is most of a
        # cycle): the rd_* signals are aligned with that register, two cycles after the read
        rd_valid0 = Signal()
        rd_idx0 = Signal.like(idx)
        rd_last0 = Signal()
        m.d.sync += [
            rd_valid0.eq(running),
            rd_idx0.eq(idx),
            rd_last0.eq(running & (idx == wpr - 1)),
        ]
        ctx.rd_valid = delay(m, rd_valid0, 1, "rd_valid")
        ctx.rd_idx = delay(m, rd_idx0, 1, "rd_idx")
        ctx.rd_last = delay(m, rd_last0, 1, "rd_last")
        rd_word = delay(m, rp.data, 1, "rd_word")
        ctx.rd_data = [rd_word[r_in.width * i : r_in.width * (i + 1)].as_signed() for i in range(L)]
        rd_lanes0 = Signal(L)
        for i in range(L):
            inside = ~rd_last0 | (i < last_lanes)
            m.d.comb += rd_lanes0[i].eq(rd_valid0 & inside)
        ctx.rd_lanes = delay(m, rd_lanes0, 1, "rd_lanes")
        ctx.params = {}
        for r, mem in zip(self.regions, mems, strict=True):
            if r.role == "param":
                pp = mem.read_port(m)
                m.d.comb += [pp.addr.eq(idx), pp.en.eq(1)]
                pword = delay(m, pp.data, 1, f"rd_{r.name}")
                ctx.params[r.name] = [
                    pword[r.width * i : r.width * (i + 1)].as_signed() for i in range(L)
                ]
        wp = mem_out.write_port()
        ctx.wr_idx = Signal.like(idx)
        ctx.wr_en = Signal()
        ctx.wr_data = [Signal(r_out.width, name=f"wr_data{i}") for i in range(L)]
        m.d.comb += [
            wp.addr.eq(ctx.dst + ctx.wr_idx),
            wp.en.eq(ctx.wr_en),
            wp.data.eq(Cat(*ctx.wr_data)),
        ]
        m.d.comb += self.perf_macs.eq(sum((ctx.rd_lanes[i] for i in range(L)), Const(0, 5)))
        m.d.comb += self.perf_stall.eq(self.busy & ~ctx.rd_valid)
        self.elaborate_row(m, ctx)
        return m
