"""Accelerators specialised to a compiled schedule (host/compiler/specialise.py).

Golden-level checks (no simulated board): the specialised config keeps exactly what the
schedule uses, and compiling the model again for it gives the same outputs bit for bit. That
the board equals the golden model for any config is what test_compiler/test_chain check.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gatesmith.cli import main
from gatesmith.config import AccelConfig, load_config
from gatesmith.errors import UsageError
from gatesmith.generators.gelu.config import GeluConfig
from gatesmith.generators.layernorm.config import LayerNormConfig
from gatesmith.generators.softmax.config import SoftmaxConfig
from gatesmith.generators.systolic.config import SystolicConfig
from gatesmith.host.compiler import compile
from gatesmith.host.compiler.specialise import specialise

from .test_compiler import CALIB, CFG, HELD_OUT, SEED, Encoder, _model

FULL = AccelConfig(name="full", engines=(
    GeluConfig(lanes=4, depth=64, max_len=64),
    LayerNormConfig(lanes=4, depth=64, max_len=64),
    SoftmaxConfig(lanes=4, depth=64, max_len=64),
    SystolicConfig(rows=4, cols=4, spad_depth=128, acc_depth=64,
                   dataflows=("os", "ws", "is"))))  # fmt: skip


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.f2 = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.f2(F.gelu(self.f1(x)))


def _mlp():
    torch.manual_seed(SEED)
    return MLP().eval()


def test_mlp_drops_unused_engines_and_dataflows():
    c = compile(_mlp(), CALIB[0], FULL, calibration=CALIB)
    spec, notes = specialise(c)
    assert [type(e).kind for e in spec.engines] == ["gelu", "systolic"]
    picked = {c.consts[op]["schedule"]["dataflow"] for op, (e, _) in c.placement.items()
              if e == "systolic"}  # fmt: skip
    assert c.alloc  # the GELU output stays in the scratchpad for f2: COPY and WS are needed
    assert set(spec.engine("systolic").dataflows) == picked | {"ws"}
    assert spec.copy_unit and spec.name == "full_spec"
    assert "dropped the layernorm engine: no op of the schedule runs on it" in notes
    again = compile(_mlp(), CALIB[0], spec, calibration=CALIB)
    assert torch.equal(again.run(HELD_OUT), c.run(HELD_OUT))
    assert {k: v[0] for k, v in again.placement.items()} == {k: v[0] for k, v in c.placement.items()}


def test_linear_only_drops_the_copy_unit():
    torch.manual_seed(SEED)
    m = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8)).eval()
    c = compile(m, CALIB[0], FULL, calibration=CALIB)
    spec, notes = specialise(c)
    assert [type(e).kind for e in spec.engines] == ["systolic"] and not spec.copy_unit
    assert "dropped the COPY unit: the schedule runs no chain on chip" in notes
    assert torch.equal(compile(m, CALIB[0], spec, calibration=CALIB).run(HELD_OUT),
                       c.run(HELD_OUT))  # fmt: skip


def test_encoder_keeps_copy_and_the_sequential_variant_drops_it():
    m = _model(Encoder)
    c = compile(m, CALIB[0], CFG, calibration=CALIB)
    spec, _ = specialise(c)
    assert spec.copy_unit and {type(e).kind for e in spec.engines} == {
        "gelu", "layernorm", "softmax", "systolic"}
    assert set(spec.engine("systolic").dataflows) == {"os", "ws"}  # fused attention needs both
    seq, notes = specialise(c, variant="sequential")
    assert not seq.copy_unit and seq.name == "chain_seq"
    assert "dropped the COPY unit: the sequential variant chains nothing on chip" in notes
    base = compile(m, CALIB[0], CFG, calibration=CALIB, mode="sequential")
    on_seq = compile(m, CALIB[0], seq, calibration=CALIB)  # auto mode: no COPY, op by op
    assert all(r.startswith(("in the attention chain", "attention chain, op by op"))
               for e, r in on_seq.placement.values() if e == "attention")  # fmt: skip
    assert torch.equal(on_seq.run(HELD_OUT), base.run(HELD_OUT))
    assert torch.equal(base.run(HELD_OUT), c.run(HELD_OUT))  # the three variants: test_variants


def test_bad_variant_and_cli(tmp_path):
    c = compile(_mlp(), CALIB[0], FULL, calibration=CALIB)
    with pytest.raises(UsageError, match="must be one of schedule, dataflow, sequential, not 'x'"):
        specialise(c, variant="x")
    model = tmp_path / "mlp.py"
    model.write_text(
        "import torch\nfrom tests.test_specialise import _mlp\n"
        "def model():\n    return _mlp()\n"
        "def example_inputs():\n    return (torch.randn(1, 8, 32),)\n"
    )
    cfg = tmp_path / "full.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(FULL.to_dict()))
    assert main(["compile", str(model), "--config", str(cfg), "-o", str(tmp_path / "out"),
                 "--specialise"]) == 0  # fmt: skip
    spec = load_config(tmp_path / "out" / "specialised.yaml")
    assert [type(e).kind for e in spec.engines] == ["gelu", "systolic"]
    assert not load_config(tmp_path / "out" / "sequential.yaml").copy_unit
    assert load_config(tmp_path / "out" / "dataflow.yaml").copy_unit
    assert "dropped the layernorm engine" in (tmp_path / "out" / "specialised.md").read_text()
