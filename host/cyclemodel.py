"""A cycle-level model of the controller, the DMA and device memory running a program.

:func:`simulate` steps, one clock at a time, the parts of the accelerator a program's time
depends on outside the engines, each as its RTL does it:

* the program fetcher (``hdl/axi4.py`` ``BurstReader``: one burst of 5 beats per entry, at most
  ``2 * max_burst`` words requested and not yet taken, held while the fullest queue's entries'
  words and those make ``FETCH_AHEAD``; a request presented stays until taken) and the entry
  assembler (one word a cycle, a cycle to hand the entry to its queue);
* the three queues (``SyncFIFOBuffered``: an entry written in cycle ``c`` can leave in ``c + 2``)
  and the load, store and compute units' state machines with their token counters;
* the load and store channels (``generators/accel/dma.py``) and their readers and writers;
* the interconnect (reads: fixed priority, the fetcher before the load channel; writes: one
  burst at a time, the next burst's AW taken with the last W beat when the writer has its
  words) and the simulated board's memory (``sim/harness.cpp``: bursts in order,
  ``mem_latency`` from the request to the first beat, one data bus for reads and writes with
  ``mem_cycles_per_beat`` between beats, a burst holding it from its first beat to its last,
  a waiting read and write taking it in turn, at most 8 requests waiting, a write answered
  ``mem_latency`` after its last beat);
* the on-chip COPY (``generators/accel/copy.py``): source words into its FIFO, one element a
  cycle through the requantiser, each packed word written before the pipeline moves on;
* each engine's window port, shared round robin by the load and store channels and the COPY's
  read and write (``generators/accel/top.py``).

Engine instructions take their engine's exact cycle model. The result is the number of cycles
the board's PERF_PROGRAM counter counts; cycles in which only an engine computes are skipped in
one step. Not modelled: error paths, and the host's own accesses while a program runs (the
drivers make none).
"""

from __future__ import annotations

from collections import deque

from ..generators.accel.controller import FETCH_AHEAD
from ..generators.accel.isa import ENTRY_WORDS
from ..hdl.axi4 import burst_len

__all__ = ["simulate", "Item"]

_MEM_QUEUE = 8  # requests the simulated memory holds (sim/harness.cpp)
_TAGS = 8  # the interconnect's tag FIFOs


class Item:
    """One program entry as the model sees it: ``queue`` (0 load, 1 compute, 2 store), ``hdr``
    (token bits, as ``Deps.word()``), ``kind`` and its parameters."""

    __slots__ = ("queue", "hdr", "kind", "engine", "bursts", "rows", "row_words", "cycles",
                 "copy")  # fmt: skip

    def __init__(self, queue, hdr, kind, *, engine=0, bursts=(), rows=0, row_words=0,
                 cycles=0, copy=None):  # fmt: skip
        self.queue, self.hdr, self.kind = queue, hdr, kind
        self.engine, self.bursts = engine, list(bursts)
        self.rows, self.row_words, self.cycles = rows, row_words, cycles
        # a COPY: (source engine, [elements per source word], dest engine, [per dest word])
        self.copy = copy


def dma_bursts(addr: int, rows: int, row_words: int, stride: int, max_burst: int) -> list[int]:
    """Beats of each burst of a strided 2-D transfer, as ``BurstReader``/``BurstWriter`` cut it."""
    out = []
    for r in range(rows):
        cur, left = addr + 4 * stride * r, row_words
        while left:
            b = burst_len(cur, left, max_burst)
            out.append(b)
            cur, left = cur + 4 * b, left - b
    return out


class _Fifo:
    """``SyncFIFOBuffered``: a word written in cycle ``c`` can be taken from ``c + 2``, one a
    cycle; ``level`` counts every word inside (the output register included)."""

    __slots__ = ("items", "times", "last_pop")

    def __init__(self):
        self.items, self.times, self.last_pop = deque(), deque(), -10

    def put(self, x, t):
        self.items.append(x)
        self.times.append(t)

    def ready(self, t):
        return bool(self.items) and t >= self.times[0] + 2 and t >= self.last_pop + 1

    def pop(self, t):
        self.times.popleft()
        self.last_pop = t
        return self.items.popleft()

    def __len__(self):
        return len(self.items)


class _Reader:
    """``BurstReader``: bursts in order while ``owed + beats <= depth``; words into a FIFO."""

    def __init__(self, depth):
        self.depth = depth
        self.bursts = deque()
        self.active_from = None  # cycle the transfer becomes active
        self.owed = 0
        self.buf = _Fifo()

    def start(self, bursts, t):
        self.bursts = deque(bursts)
        self.active_from = t + 1

    def want(self, t):
        return (self.active_from is not None and t >= self.active_from and bool(self.bursts)
                and self.owed + self.bursts[0] <= self.depth)  # fmt: skip

    def busy(self, t):
        active = self.active_from is not None and bool(self.bursts)
        return active or self.owed != 0


class _Writer:
    """``BurstWriter``: asks for a burst once its FIFO holds the burst's words, then sends them."""

    def __init__(self, depth):
        self.depth = depth
        self.bursts = deque()
        self.active_from = None
        self.buf = _Fifo()
        self.left = 0  # beats of the burst being sent (the W state)
        self.w_from = None  # cycle the W state begins
        self.unacked = 0

    def start(self, bursts, t):
        self.bursts = deque(bursts)
        self.active_from = t + 1

    def level(self, t):  # inner words + the output register (occupied once readable)
        return len(self.buf)

    def want_aw(self, t, leaving=0):
        """The next burst's words are in the FIFO, ``leaving`` of them not counted (1: asked
        with the last beat of the burst before, in the W state)."""
        return (self.left == leaving and self.active_from is not None and t >= self.active_from
                and bool(self.bursts) and len(self.buf) - leaving >= self.bursts[0])  # fmt: skip

    def busy(self):
        return bool(self.bursts) or self.unacked != 0 or self.left != 0


class _Copy:
    """``CopyUnit``: source words into an 8-deep FIFO (a read only while fewer than 7 are in it
    or in flight; a granted read's data arrives two cycles later, through the window stage), one
    element a cycle through a 4-stage requantiser (multiply, add, shift, saturate) into the
    packer, each packed word into a 2-entry write buffer whose head is the window write
    presented; the pipeline moves only while the buffer is not full. ``done`` waits for the last
    write to land (the cycle after its grant)."""

    def __init__(self):
        self.running = False

    def start(self, spec, t):
        self.src_eng, self.src, self.dst_eng, self.dst = spec
        self.src, self.dst = deque(self.src), deque(self.dst)
        self.running = True
        self.q = _Fifo()
        self.landing = None  # elements of the word granted last cycle
        self.arriving = None  # elements of the word whose data arrives this cycle
        self.wlag = False  # a write granted last cycle
        self.cur = 0  # elements left in the word being unpacked (0: none)
        self.v = [False] * 4  # the requantiser's stages, first to last
        self.plane = 0
        self.pending = 0  # words in the write buffer

    def rd_req(self, t):
        return (self.running and bool(self.src)
                and len(self.q) + (self.landing is not None) + (self.arriving is not None)
                < 7)  # fmt: skip

    def done(self):
        return self.running and not self.dst and not self.pending and not self.wlag

    def step(self, t, rd_grant, wr_grant):
        """One cycle; the requests were made from the state before it."""
        go = self.pending < 2
        if self.arriving is not None:
            self.q.put(self.arriving, t)
        self.arriving = self.landing
        self.landing = self.src.popleft() if rd_grant else None
        self.wlag = bool(wr_grant)
        v0 = self.cur > 0
        push = False
        if go:
            if self.v[-1]:
                if self.plane + 1 == self.dst[0]:
                    self.dst.popleft()
                    self.plane = 0
                    push = True
                else:
                    self.plane += 1
            taking = self.q.ready(t) and self.cur <= 1
            if taking:
                self.cur = self.q.pop(t)
            elif self.cur:
                self.cur -= 1
            self.v = [v0] + self.v[:-1]
        self.pending += push - bool(wr_grant)


def simulate(items: list[Item], *, queue_depth: int, mem_latency: int, beat: int,
             max_burst: int, n_engines: int, copy_unit: bool = True, code_addr: int = 0,
             limit: int = 50_000_000) -> int:  # fmt: skip
    """PERF_PROGRAM cycles of the program ``items`` (see the module docstring), fetched from
    device memory at byte ``code_addr`` (an entry that crosses 4 KiB is two bursts)."""
    n = len(items)
    fr = _Reader(2 * max_burst)
    fr.start(dma_bursts(code_addr, n, ENTRY_WORDS, ENTRY_WORDS, max_burst), 0)  # start: cycle 0
    t = 1  # PERF_PROGRAM counts from here
    words = 0  # words of the entry being assembled
    entry_valid = False
    fetched = 0
    queues = [_Fifo(), _Fifo(), _Fifo()]
    tok = {"l2c": 0, "c2l": 0, "c2s": 0, "s2c": 0}
    dtok = []  # this cycle's token changes (name, +-1), applied at its end
    # memory
    mem_ar = deque()  # [beats, ready_at, owner ('f' fetcher, 'l' load)]
    rbeat = wbeat = 0
    mem_aw = deque()  # beats
    next_beat = 0  # the data bus, shared by reads and writes, is free from this cycle
    bus_owner, bus_last = 0, 2  # the burst holding the bus (0 none, 1 read, 2 write); served last
    mem_b = deque()  # ready_at
    ic_wr_data = False  # the interconnect's write FSM is in DATA
    # units
    lu = {"state": "IDLE", "item": None}
    su = {"state": "IDLE", "item": None}
    cu = {"state": "IDLE", "item": None, "until": 0}
    ld = {"running": False, "left": 0, "eng": 0, "lag": False, "reader": _Reader(2 * max_burst)}
    st = {"running": False, "left": 0, "eng": 0, "inflight": False, "inflight2": False,
          "writer": _Writer(2 * max_burst)}
    cp = _Copy()
    n_ports = 4 if copy_unit else 2  # window ports: load, store (, COPY read, COPY write)
    rr_last = [0] * max(1, n_engines)  # round robin: the last granted port per engine
    ldr, wr = ld["reader"], st["writer"]
    f_waiting = False  # the fetcher's request presented and not yet taken
    q0, q1, q2 = queues

    def f_wants(t):  # the fetcher presents a request (the controller's hold, BurstReader's rule)
        if not fr.want(t):
            return False
        return f_waiting or ENTRY_WORDS * max(len(q0), len(q1), len(q2)) + fr.owed < FETCH_AHEAD

    while t < limit:
        # ---- registered state at the start of the cycle ------------------------------------------
        if (fetched == n and not entry_valid and not fr.busy(t) and not any(queues)
                and lu["state"] == su["state"] == cu["state"] == "IDLE"):  # fmt: skip
            return t  # PERF_PROGRAM stops: every entry fetched and retired
        cp_done = cp.done()
        # (a granted window word reaches the engine the next cycle; a store's read data arrives
        # the cycle after that)
        ld_done = ld["running"] and ld["left"] == 0 and not ld["lag"] and not ldr.busy(t)
        st_done = (st["running"] and st["left"] == 0 and not st["inflight"] and not st["inflight2"]
                   and not wr.busy())  # fmt: skip
        # ---- memory: this cycle's handshakes ------------------------------------------------
        w_valid = ic_wr_data and wr.left > 0 and wr.buf.ready(t)
        own = bus_owner
        if not own:
            rc, wc = bool(mem_ar) and t >= mem_ar[0][1], w_valid and bool(mem_aw)
            own = (3 - bus_last) if rc and wc else 1 if rc else 2 if wc else 0
        offer = own if t >= next_beat else 0
        r_owner = mem_ar[0][2] if offer == 1 else None
        b_fire = bool(mem_b) and t >= mem_b[0]
        # ---- AR arbitration: the fetcher before the load channel -----------------------------
        # (the tag FIFO and the memory's request queue fill and drain together, so ARVALID is
        # never high while ARREADY is low and the interconnect's grant lock never engages)
        ar_ok = len(mem_ar) < min(_MEM_QUEUE, _TAGS)
        f_valid = f_wants(t)
        grant = "f" if f_valid else ("l" if ld["reader"].want(t) else None)
        ar_fire = grant if ar_ok else None
        f_waiting = f_valid and ar_fire != "f"
        # ---- R beat into its reader's FIFO ------------------------------------------------------
        if r_owner is not None:
            rd = fr if r_owner == "f" else ld["reader"]
            rd.buf.put(None, t)
            rbeat += 1
            next_beat, bus_owner = t + beat, 1
            if rbeat == mem_ar[0][0]:
                mem_ar.popleft()
                rbeat, bus_owner, bus_last = 0, 0, 1
        if ar_fire:
            rd = fr if ar_fire == "f" else ld["reader"]
            b = rd.bursts.popleft()
            rd.owed += b
            mem_ar.append([b, t + mem_latency, ar_fire])
        # ---- the entry assembler and classification ---------------------------------------------
        accepted = False
        if entry_valid:
            it = items[fetched]
            q = queues[it.queue]
            if len(q) - q.ready(t) < queue_depth - 1:  # w_rdy: the inner FIFO has room
                q.put(it, t)
                accepted = True
        if not entry_valid and fr.buf.ready(t):
            fr.buf.pop(t)
            fr.owed -= 1
            words += 1
        # ---- window ports: the load channel writes, the store channel reads ---------------------
        ld_req = ld["running"] and ld["left"] > 0 and ldr.buf.ready(t)
        st_req = (st["running"] and st["left"] > 0
                  and (wr.depth - wr.level(t)) > st["inflight"] + st["inflight2"])  # fmt: skip
        if cp.running:
            reqs = {}  # engine -> requesting ports
            for port, on, eng in ((0, ld_req, ld["eng"]), (1, st_req, st["eng"]),
                                  (2, cp.rd_req(t), cp.src_eng), (3, cp.pending > 0, cp.dst_eng)):
                if on:
                    reqs.setdefault(eng, []).append(port)
            granted = set()
            for eng, ports in reqs.items():
                last = rr_last[eng]
                j = min(ports, key=lambda p: (p - last - 1) % n_ports)
                granted.add(j)
                rr_last[eng] = j
            ld_grant, st_grant = 0 in granted, 1 in granted
        elif ld_req and st_req and ld["eng"] == st["eng"]:  # the two alternate
            ld_grant = rr_last[ld["eng"]] != 0
            st_grant = not ld_grant
            rr_last[ld["eng"]] = 0 if ld_grant else 1
        else:
            ld_grant, st_grant = ld_req, st_req
            if ld_req:
                rr_last[ld["eng"]] = 0
            if st_req:
                rr_last[st["eng"]] = 1
        if ld_grant:
            ldr.buf.pop(t)
            ldr.owed -= 1
            ld["left"] -= 1
        st_inflight_now = st["inflight2"]
        if cp.running and not cp_done:
            cp.step(t, 2 in granted, 3 in granted)  # (granted: set when cp.running)
        # ---- writes: AW, W beats, B -------------------------------------------------------------
        w_fire = w_valid and offer == 2
        # AW: in IDLE, or with the last W beat (the writer's next burst's words in hand, that
        # beat not counted); the memory holds 8 requests, the B tag FIFO 8 bursts
        aw_fire = (len(mem_aw) < _MEM_QUEUE and len(mem_aw) + len(mem_b) < _TAGS
                   and (wr.want_aw(t) if not ic_wr_data
                        else w_fire and wr.want_aw(t, leaving=1)))  # fmt: skip
        if w_fire:
            wr.buf.pop(t)
            wr.left -= 1
            wbeat += 1
            next_beat, bus_owner = t + beat, 2
            if wbeat == mem_aw[0]:
                mem_aw.popleft()
                wbeat, bus_owner, bus_last = 0, 0, 2
                mem_b.append(t + mem_latency)
        if st_inflight_now:
            wr.buf.put(None, t)
        if b_fire:
            mem_b.popleft()
            wr.unacked -= 1
        # ---- the load and store units ------------------------------------------------------------
        starts = []
        for unit, q, chan, wait, give, pop_bit, push_bit, done in (
            (lu, queues[0], ld, "c2l", "l2c", 2, 8, ld_done),
            (su, queues[2], st, "c2s", "s2c", 1, 4, st_done),
        ):
            s = unit["state"]
            if s == "IDLE":
                if q.ready(t) and (not q.items[0].hdr & pop_bit or tok[wait]):
                    unit["item"] = q.pop(t)
                    if unit["item"].hdr & pop_bit:
                        dtok.append((wait, -1))
                    unit["state"] = "CHECK"
            elif s == "CHECK":
                starts.append((chan, unit["item"]))
                unit["state"] = "RUN"
            elif s == "RUN":
                if done:
                    chan["running"] = False
                    unit["state"] = "RETIRE"
            elif s == "RETIRE":
                if unit["item"].hdr & push_bit:
                    dtok.append((give, 1))
                unit["state"] = "IDLE"
        # ---- the compute unit -------------------------------------------------------------------
        s = cu["state"]
        if s == "IDLE":
            q = queues[1]
            if q.ready(t):
                h = q.items[0].hdr
                if (not h & 1 or tok["l2c"]) and (not h & 2 or tok["s2c"]):
                    cu["item"] = q.pop(t)
                    if h & 1:
                        dtok.append(("l2c", -1))
                    if h & 2:
                        dtok.append(("s2c", -1))
                    cu["state"] = "DISPATCH"
        elif s == "DISPATCH":
            it = cu["item"]
            if it.kind == "engine":
                cu["until"], cu["state"] = t + it.cycles, "WAIT"
            elif it.kind == "copy":
                cp.start(it.copy, t)
                cu["state"] = "COPY"
            elif it.kind == "sync":
                if (not queues[0] and not queues[2] and lu["state"] == "IDLE"
                        and su["state"] == "IDLE"):  # fmt: skip
                    cu["state"] = "RETIRE"
            else:
                cu["state"] = "RETIRE"
        elif s == "WAIT":
            if t >= cu["until"]:
                cu["state"] = "RETIRE"
        elif s == "COPY":
            if cp_done:
                cp.running = False
                cu["state"] = "RETIRE"
        elif s == "RETIRE":
            h = cu["item"].hdr
            if h & 4:
                dtok.append(("c2l", 1))
            if h & 8:
                dtok.append(("c2s", 1))
            cu["state"] = "IDLE"
        # ---- register updates --------------------------------------------------------------------
        if aw_fire:
            b = wr.bursts.popleft()
            wr.left = b
            wr.unacked += 1
            mem_aw.append(b)
            ic_wr_data = True
        elif ic_wr_data and wr.left == 0:
            ic_wr_data = False
        st["inflight2"], st["inflight"] = st["inflight"], st_grant
        ld["lag"] = ld_grant
        if st_grant:
            st["left"] -= 1
        for chan, it in starts:
            chan.update(running=True, left=it.rows * it.row_words, eng=it.engine)
            (ldr if chan is ld else wr).start(it.bursts, t)
        if dtok:
            for name, d in dtok:
                tok[name] += d
            dtok.clear()
        if accepted:
            entry_valid = False
            fetched += 1
        elif words == ENTRY_WORDS:
            entry_valid, words = True, 0
        # skip the cycles in which only an engine computes: no memory traffic, no DMA, the
        # load and store units waiting for tokens only the compute unit gives, the fetcher done
        # or held by a full queue
        if cu["state"] == "WAIT" and t + 1 < cu["until"] and _quiet(
                fr, entry_valid, words, items, fetched, queues, queue_depth, tok, lu, su, ld, st,
                cp, mem_ar, mem_aw, mem_b, t, f_wants(t + 1)):  # fmt: skip
            t = cu["until"]
            continue
        t += 1
    raise RuntimeError("the program model did not finish")


def _quiet(fr, entry_valid, words, items, fetched, queues, depth, tok, lu, su, ld, st, cp,
           mem_ar, mem_aw, mem_b, t, f_wants) -> bool:  # fmt: skip
    """True when nothing but the compute unit's engine can change state until it finishes."""
    if mem_ar or mem_aw or mem_b or ld["running"] or st["running"] or cp.running:
        return False
    if lu["state"] != "IDLE" or su["state"] != "IDLE":
        return False
    for q, bit, name in ((queues[0], 2, "c2l"), (queues[2], 1, "c2s")):
        if q.items and (not q.items[0].hdr & bit or tok[name]):
            return False  # the unit will start it
    if f_wants or len(fr.buf) or words:
        return False
    if entry_valid:
        q = queues[items[fetched].queue]
        return len(q) - q.ready(t + 1) >= depth - 1  # held: its queue is full
    return True
