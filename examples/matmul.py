"""A GEMM on the simulated accelerator, in every dataflow it was built with.

    .venv/bin/python examples/matmul.py
"""

import torch

import gatesmith.host

with gatesmith.host.open("sim", config="examples/demo.yaml", progress=print) as dev:
    a = torch.randint(-128, 128, (100, 300), dtype=torch.int8)
    b = torch.randint(-128, 128, (300, 70), dtype=torch.int8)
    for dataflow in dev.config.engine("systolic").dataflows:
        dev.reset_perf()
        c = dev.matmul(a, b, dataflow=dataflow)
        assert torch.equal(c.long(), a.long() @ b.long())
        p = dev.perf()
        ideal = a.shape[0] * a.shape[1] * b.shape[1] / 64
        print(f"{dataflow}: exact, {p['busy']} compute cycles, utilisation {ideal / p['busy']:.1%}")
