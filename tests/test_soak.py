"""Soak (``tests/soak.py``): random DMA / GEMM / on-chip chain programs on the "chain" board,
every result checked bit for bit against the golden models. The default tier retires a few
hundred instructions; the slow tier a fixed 20,000 with another seed."""

import pytest

import gatesmith.host

from .test_chain import CFG
from .soak import STEPS, soak


@pytest.fixture(scope="module")
def dev():
    with gatesmith.host.open("sim", config=CFG) as d:
        yield d


def test_soak_default(dev):
    seed = 20261203
    counts = soak(dev, seed=seed, instructions=500)
    print(f"soak seed {seed}: {counts}")
    assert counts["retired"] >= 500
    assert all(counts[k] > 0 for k in STEPS), counts  # every kind of step ran


@pytest.mark.slow
def test_soak_slow(dev):
    seed = 7
    counts = soak(dev, seed=seed, instructions=20000)
    print(f"soak seed {seed}: {counts}")
    assert counts["retired"] >= 20000
