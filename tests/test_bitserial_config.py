"""BitserialConfig validation: every message, in full."""

import pytest

from gatesmith.config import AccelConfig
from gatesmith.errors import ConfigError
from gatesmith.generators.bitserial import SPEC, BitserialConfig
from gatesmith.generators.bitserial import model as M
from gatesmith.generators.bitserial.engine import BitserialEngine, window_layout
from gatesmith.generators.registry import engines


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(lanes=65), ValueError, "lanes must be an integer in 1..64, not 65"),
    (dict(lanes=12), ValueError, "lanes must be a power of two in 1..64, not 12"),
    (dict(lanes="4"), TypeError, "lanes must be an integer, not '4'"),
    (dict(pes=0), ValueError, "pes must be an integer in 1..64, not 0"),
    (dict(w_max_bits=9), ValueError, "w_max_bits must be an integer in 1..8, not 9"),
    (dict(a_max_bits=0), ValueError, "a_max_bits must be an integer in 1..8, not 0"),
    (dict(bits_per_cycle=3), ValueError, "bits_per_cycle must be 1, 2 or 4, not 3"),
    (dict(encodings=()), ValueError,
     "encodings must be a non-empty subset of twos, bipolar, not ()"),
    (dict(encodings="twos"), ValueError,
     "encodings must be a non-empty subset of twos, bipolar, not 'twos'"),
    (dict(encodings=("ones",)), ValueError,
     "encodings must be a non-empty subset of twos, bipolar, not 'ones'"),
    (dict(encodings=("twos", "twos")), ValueError,
     "encodings must not repeat an entry, not ['twos', 'twos']"),
    (dict(bitmod=1), TypeError, "bitmod must be a bool, not 1"),
    (dict(w_max_bits=3), ValueError, "bitmod needs w_max_bits >= 4, not 3"),
    (dict(group_size=8, lanes=16), ValueError,
     "group_size must be a multiple of lanes (16), not 8"),
    (dict(group_size=96), ValueError, "group_size must be a power of two in 1..4096, not 96"),
    (dict(acc_width=31), ValueError, "acc_width must be an integer in 32..64, not 31"),
    (dict(w_depth=8), ValueError, "w_depth must be an integer in 16..65536, not 8"),
    (dict(r_depth=100), ValueError, "r_depth must be a power of two in 16..65536, not 100"),
])
def test_config_errors(kw, exc, msg):
    with pytest.raises(exc) as e:
        BitserialConfig(**kw)
    assert str(e.value) == msg


def test_registered_and_from_yaml_dict():
    assert engines()["bitserial"] is SPEC
    assert set(SPEC.opcodes.values()) <= set(range(0x30, 0x40))
    cfg = AccelConfig.from_dict({"engines": {"bitserial": {"lanes": 8, "encodings": "twos"}}})
    assert cfg.engine("bitserial") == BitserialConfig(lanes=8, encodings=("twos",))
    with pytest.raises(ConfigError) as e:
        AccelConfig.from_dict({"engines": {"bitserial": {"lanes": 65}}})
    assert str(e.value) == "engines.bitserial.lanes must be an integer in 1..64, not 65"
    with pytest.raises(TypeError) as e:
        BitserialEngine(object())
    assert str(e.value) == "cfg must be a BitserialConfig, not object"


def test_instruction_round_trip_and_windows():
    ins = M.Instr(m=5, n=1000, k=65535, w_bits=3, a_bits=7, w_enc="bipolar", mixed=True,
                  scaled=True, w_base=65535, a_base=1, g_base=2, r_base=40000)
    assert M.Instr.from_words(ins.words()) == ins
    assert ins.words()[0] & 0xFF == 0x30
    wins = window_layout(BitserialConfig())
    spans = sorted((w.offset, w.offset + w.depth * w.stride) for w in wins)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # regions do not overlap
    assert spans[-1][1] <= 1 << 22
    cyc = M.cycles(BitserialConfig(), M.Instr(m=1, n=8, k=16, w_bits=8))
    assert cyc == 4 + BitserialEngine.overhead_cycles
