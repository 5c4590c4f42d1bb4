"""Exact cycle model of the PIM engine (equals the RTL's cycle count, checked by tests).

Time 0 is the cycle the engine accepts the GEMV instruction (``cmd.valid & cmd.ready``); the
engine checks the fields at cycle 1, copies rounds * segments out of its DSP block at 2, checks
the weight-row range at 3 (registered), and the channel controller can issue the first activate
at cycle 4, when a rejected instruction retires instead. Every bank receives the same commands (all-bank mode), so one bank's
schedule is the engine's. Rules, for row jobs ``j = 0..J-1`` (``J = rounds * segments``, job
``j`` uses row buffer ``k = j mod nb``, ``nb`` = 1 or 2):

* ``ACT_j = max(free[k], ACT_{j-1} + 1)``: a row buffer is free ``t_rp`` cycles after its
  precharge (a single row buffer: after the previous row's precharge, so nothing overlaps; two:
  the next row opens while the current one streams).
* ``COL_{j,0} = max(ACT_j + t_rcd, COL_{j-1,last} + t_ccd)``, ``COL_{j,i} = COL_{j,i-1} + t_ccd``.
* A column command at cycle ``c`` streams ``burst`` beats at ``c+1 .. c+burst``, each beat
  ``lanes`` MACs in every bank; the row's precharge follows its last beat, so
  ``free[k] = COL_{j,last} + burst + t_rp``.
* The result of a dot product is written 7 cycles after its last beat (memory read, operand,
  the multiplier's two registers, a product register, two adder-tree registers, then the
  accumulator); the instruction retires (``done``) at ``max(last beat + 8, last beat + t_rp)``:
  results written and every row buffer precharged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import ErrorCode
from .isa import GemvInstr, check_instr

__all__ = ["Schedule", "schedule", "gemv_cycles", "bandwidth_bound", "activation_bound"]

FIRST_ACT = 4  # accept at 0, field checks at 1, the product copied at 2, the row range at 3
PIPE = 8  # last beat -> pipeline empty (result written 7 cycles after the beat)


@dataclass
class Schedule:
    acts: list[int] = field(default_factory=list)  # cycle of each activate
    cols: list[int] = field(default_factory=list)  # cycle of each column command
    done: int = 4  # cycle of the done pulse (== cycles, since accept is cycle 0)
    beats: int = 0  # beats per bank (each lanes MACs)
    error: ErrorCode = ErrorCode.NONE


def schedule(cfg, instr: GemvInstr, xoff=None) -> Schedule:
    """The command schedule of one GEMV instruction (see the module docstring)."""
    if xoff is None:
        xoff = [0] * cfg.banks
    sch = Schedule()
    sch.error = check_instr(cfg, instr, xoff)
    if sch.error != ErrorCode.NONE:
        return sch
    nb = cfg.row_buffers
    free = [FIRST_ACT] * nb
    col_ok = FIRST_ACT
    act = None
    last_col = None
    for j in range(instr.jobs):
        k = j % nb
        act = free[k] if act is None else max(free[k], act + 1)
        sch.acts.append(act)
        ncols = instr.cols_last if j % instr.segments == instr.segments - 1 else cfg.cols_per_row
        c = max(act + cfg.t_rcd, col_ok)
        for _ in range(ncols):
            sch.cols.append(c)
            last_col = c
            c += cfg.t_ccd
        col_ok = last_col + cfg.t_ccd
        free[k] = last_col + cfg.burst + cfg.t_rp
        sch.beats += ncols * cfg.burst
    last_beat = last_col + cfg.burst
    sch.done = max(last_beat + PIPE, last_beat + cfg.t_rp)
    return sch


def gemv_cycles(cfg, instr: GemvInstr, xoff=None) -> int:
    """Cycles from accepting ``instr`` to its ``done`` pulse."""
    return schedule(cfg, instr, xoff).done


def bandwidth_bound(cfg, n: int, k: int) -> float:
    """Ideal cycles for an ``n x k`` GEMV: every MAC lane of every bank busy every cycle."""
    return n * k / cfg.macs_per_cycle


def activation_bound(cfg, n: int, k: int) -> float:
    """Bandwidth bound plus the row activations a single row buffer cannot hide.

    Each bank opens ``ceil(n * ceil(k / row_size) / banks)`` rows at least, each costing
    ``t_rcd + t_rp`` cycles beyond its bursts when there is one row buffer.
    """
    rows = -(-n * -(-k // cfg.row_size) // cfg.banks)
    extra = 0 if cfg.dual_row_buffer else rows * (cfg.t_rcd + cfg.t_rp)
    return bandwidth_bound(cfg, n, k) + extra
