"""Every invalid config value is rejected with a message naming the field and the valid range."""

import pytest

from gatesmith.config import AccelConfig, load_config
from gatesmith.errors import ConfigError
from gatesmith.generators.systolic.config import SystolicConfig


def _err(data) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(data)
    return str(e.value)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"rows": 65}, "engines.systolic.rows must be an integer in 1..64, not 65"),
        ({"rows": 0}, "engines.systolic.rows must be an integer in 1..64, not 0"),
        ({"cols": "8"}, "engines.systolic.cols must be an integer, not '8'"),
        ({"dtype": "int9"},
         "engines.systolic.dtype must be one of int4, int8, int16, uint4, uint8, uint16, "
         "not 'int9'"),
        ({"dataflows": []}, "engines.systolic.dataflows must be a non-empty subset of os, ws, is, "
                            "not []"),
        ({"dataflows": ["os", "xs"]},
         "engines.systolic.dataflows must be a non-empty subset of os, ws, is, not 'xs'"),
        ({"dataflows": ["os", "os"]},
         "engines.systolic.dataflows must not repeat an entry, not ['os', 'os']"),
        ({"acc_width": 12}, "engines.systolic.acc_width must be an integer in 16..64, not 12"),
        ({"accumulation": "wallace"},
         "engines.systolic.accumulation must be cpa or carry_save, not 'wallace'"),
        ({"spad_depth": 1000},
         "engines.systolic.spad_depth must be a power of two in 16..65536, not 1000"),
        ({"rowz": 4}, "engines.systolic has no field 'rowz'; valid fields are acc_depth, "
                      "acc_width, accumulation, cols, dataflows, dtype, rows, spad_depth"),
    ],
)  # fmt: skip
def test_systolic_field_errors(fields, message):
    assert _err({"engines": {"systolic": fields}}) == message


def test_int16_needs_a_wide_accumulator():
    assert _err({"engines": {"systolic": {"dtype": "int16", "acc_width": 24}}}) == (
        "engines.systolic.acc_width must be an integer in 32..64, not 24"
    )


def test_top_level_errors(tmp_path):
    assert _err({"engines": {"tpu": {}}}).startswith("engines has no engine 'tpu'; valid engines are")
    assert _err({"queue_depth": 3}) == "queue_depth must be one of 2, 4, 8, 16, 32, 64, not 3"
    assert _err({"perf_counters": "some"}) == (
        "perf_counters must be one of all, minimal, not 'some'"
    )
    assert AccelConfig().perf_counters == "all"
    assert _err({"speed": 1}).startswith("config has no field 'speed'; valid fields are baud,")
    assert _err(str(tmp_path / "nope.yaml")) == f"config file {str(tmp_path / 'nope.yaml')!r} does not exist"
    bad = tmp_path / "bad.yaml"
    bad.write_text("engines: [unclosed\n")
    assert _err(str(bad)).startswith(f"config file {str(bad)!r} is not valid YAML")
    assert _err(42) == (
        "config must be a path to a YAML file, a mapping, an AccelConfig or an engine Config, not int"
    )


def test_yaml_roundtrip(tmp_path):
    p = tmp_path / "accel.yaml"
    p.write_text(
        "name: demo\nengines:\n  systolic: {rows: 4, cols: 2, dtype: int4, dataflows: [ws]}\n"
    )
    cfg = load_config(p)
    assert cfg.engine("systolic") == SystolicConfig(rows=4, cols=2, dtype="int4", dataflows=("ws",))
    assert AccelConfig.from_dict(cfg.to_dict()) == cfg
    assert load_config(cfg.engine("systolic")).engines == cfg.engines


def test_engine_order_survives_the_identity_rom_json():
    # engine i's window is at 0x0100_0000 * (i + 1): the JSON must keep the order
    cfg = load_config({"engines": {"systolic": {"rows": 2}, "gelu": {}, "bitserial": {}}})
    again = AccelConfig.from_dict(__import__("json").loads(cfg.to_json()))
    assert [type(e).kind for e in again.engines] == ["systolic", "gelu", "bitserial"]
    assert again == cfg
