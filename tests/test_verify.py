"""``gatesmith verify`` (flows/verify.py) on accelerators with and without each engine.

Each config runs the AXI4-Lite bench that holds for every accelerator plus the verify bench of
each engine it has (``EngineSpec.verify``), and nothing for the engines it lacks. The engine
configs are those of the engines' own Verilator tests, so their builds are shared (cached).
"""

import inspect

import pytest
from rich.console import Console

from gatesmith.config import AccelConfig
from gatesmith.flows.verify import AXI_BENCH, engine_bench, verify, verify_plan
from gatesmith.generators.bitserial.config import BitserialConfig
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.pim.config import PimConfig
from gatesmith.generators.registry import engines
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

GELU = GeluConfig(method="rom", in_dtype="int8", in_frac=4, lanes=4, depth=128)
SOFTMAX = SoftmaxConfig(method="online", in_dtype="int16", in_frac=8, lanes=4, depth=256)
PIM = PimConfig(banks=3, lanes=4, row_size=32, burst=2, t_ccd=3, t_rcd=5, t_rp=3,
                rows_per_bank=16, vector_depth=128, result_depth=8)  # fmt: skip
LAYERNORM = LayerNormConfig(in_dtype="int16", in_frac=8, lanes=3, depth=128, max_len=128)
BITSERIAL = BitserialConfig(lanes=4, pes=4, bits_per_cycle=2, group_size=8, w_depth=512,
                            a_depth=512, g_depth=256, r_depth=128)  # fmt: skip
SYSTOLIC = SystolicConfig(rows=2, cols=2, spad_depth=64, acc_depth=64)

CONFIGS = {
    "gelu": AccelConfig(name="gelu_only", engines=(GELU,)),
    "softmax": AccelConfig(name="softmax_only", engines=(SOFTMAX,)),
    "pim": AccelConfig(name="pim_only", engines=(PIM,)),
    "mixed": AccelConfig(name="mixed", engines=(SOFTMAX, PIM, GELU)),
    "all": AccelConfig(name="all", engines=(SYSTOLIC, GELU, BITSERIAL, SOFTMAX, PIM, LAYERNORM),
                       link_max_words=64),  # fmt: skip
}


def _verify(cfg, **kw):
    con = Console(stderr=True, width=160)
    rep = verify(cfg, seed=3, count=2, console=con, **kw)
    print(f"seed 3, config {cfg.to_json()}")
    return rep


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plan_runs_exactly_the_engines_of_the_config(name):
    cfg = CONFIGS[name]
    plan = verify_plan(cfg)
    assert plan[0] == ("accelerator", AXI_BENCH)
    assert [kind for kind, _ in plan[1:]] == [type(e).kind for e in cfg.engines]


def test_every_engine_registers_a_verify_bench():
    for kind, spec in engines().items():
        fn = engine_bench(kind)
        assert callable(fn), f"{kind}: {spec.verify!r}"
        params = inspect.signature(fn).parameters
        assert {"seed", "count", "cocotb", "progress"} <= set(params), (kind, list(params))


# softmax-only and PIM-only run the same engine benches as "mixed" (same engine builds); what
# they add is one accelerator build each, so they wait for the slow tier.
@pytest.mark.parametrize("name", ["gelu", pytest.param("softmax", marks=pytest.mark.slow),
                                  pytest.param("pim", marks=pytest.mark.slow), "mixed"])
def test_verify_passes(name):
    cfg = CONFIGS[name]
    rep = _verify(cfg)
    assert rep.ok, rep.rows
    checks = [check for check, *_ in rep.rows]
    assert checks[0] == "cocotb bench_axi"
    assert len(checks) == 1 + len(cfg.engines), checks  # one row per engine bench
    for e in cfg.engines:
        assert any(f"({type(e).kind})" in c or type(e).kind in c for c in checks), checks


def test_engine_bench_reports_a_mismatch(monkeypatch):
    """A golden model that disagrees with the RTL makes the engine's bench fail, naming its log."""
    import gatesmith.generators.gelu.model as gm

    real = gm.gelu_model
    monkeypatch.setattr(gm, "gelu_model", lambda x, cfg: real(x, cfg) ^ 1)
    cfg = CONFIGS["gelu"]
    with pytest.raises(AssertionError, match=r"1 of 1 cocotb tests failed in "
                       r"gatesmith\.tests\.bench_nonlinear_rows; log: "):  # fmt: skip
        engine_bench("gelu")(cfg, GELU, seed=3, count=2, cocotb=True)


def test_verify_without_cocotb_checks_nothing_is_not_a_pass():
    rep = _verify(CONFIGS["gelu"], cocotb=False)
    assert not rep.ok
    assert rep.rows == [("verify", "-", False,
                         "no check ran: every bench of this config is a cocotb bench")]


@pytest.mark.parametrize("name", ["2x2-all", pytest.param("3x2-os-cs", marks=pytest.mark.slow)])
def test_systolic_axi_bench(name):
    """The systolic engine's AXI4-Lite GEMM bench on the configs of test_axi_bench (same build)."""
    from gatesmith.generators.accel.top import Accelerator
    from gatesmith.tests.test_axi_bench import CONFIGS as SYSTOLIC_CONFIGS

    cfg = AccelConfig(engines=(SYSTOLIC_CONFIGS[name],))
    run_cocotb(verilog_of(Accelerator(cfg), name="accel"), toplevel="accel",
               test_module="gatesmith.tests.bench_axi_systolic",
               env={"GATESMITH_CFG": cfg.to_json(), "GATESMITH_SEED": "7"})  # fmt: skip


@pytest.mark.slow
def test_verify_every_engine():
    """All six engines in one accelerator, the systolic GEMMs through the simulated board too."""
    cfg = CONFIGS["all"]
    rep = _verify(cfg)
    assert rep.ok, rep.rows
    assert {r[0] for r in rep.rows} >= {"cocotb bench_axi", "cocotb bench_axi_systolic",
                                        "cocotb bench_pim", "cocotb bench_bitserial"}
