"""The cached cocotb + Verilator runner really simulates the generated Verilog."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gatesmith.sim.cocotb_runner import build_cocotb, run_cocotb, verilog_of


class _Adder(wiring.Component):
    a: In(8)
    b: In(8)
    s: Out(9)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.s.eq(self.a + self.b)
        return m


def test_runner_builds_once_and_runs():
    v = verilog_of(_Adder(), name="adder")
    first = build_cocotb(v, toplevel="adder")
    again = build_cocotb(v, toplevel="adder")
    assert first == again
    run_cocotb(v, toplevel="adder", test_module="gatesmith.tests.bench_runner_selftest")


def test_runner_reports_failures():
    class _Wrong(_Adder):
        def elaborate(self, platform):
            m = Module()
            m.d.sync += self.s.eq(self.a - self.b)
            return m

    v = verilog_of(_Wrong(), name="adder")
    try:
        run_cocotb(v, toplevel="adder", test_module="gatesmith.tests.bench_runner_selftest")
    except AssertionError as e:
        assert "1 of 1 cocotb tests failed" in str(e)
    else:
        raise AssertionError("a wrong adder passed its bench")
