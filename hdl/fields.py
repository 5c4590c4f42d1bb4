"""Instruction and register layouts described once, as ``amaranth.lib.data`` Structs.

An engine declares its instruction as a Struct (bit 0 first; ``opcode`` in bits [7:0]; padding
fields named ``reserved...``). The RTL decodes with the Struct (``GemmInstr(cmd.payload)``) or
with :func:`struct_fields`'s offsets; the host encodes with :func:`pack_struct`, which
range-checks every field, so the two can never disagree.
"""

from amaranth.lib import data

__all__ = ["struct_fields", "pack_struct"]


def struct_fields(layout) -> dict:
    """``{name: (bit offset, width)}`` of a Struct's fields, without the opcode and padding."""
    return {
        name: (f.offset, f.width)
        for name, f in data.Layout.cast(layout)
        if name != "opcode" and not name.startswith("reserved")
    }


def pack_struct(layout, **values) -> list:
    """The 32-bit words of ``layout`` holding ``values`` (padding is zero).

    Every field but the padding must be given and fit its width: a ValueError names the field.
    """
    lay = data.Layout.cast(layout)
    value, names = 0, set()
    for name, f in lay:
        names.add(name)
        if name not in values:
            if name.startswith("reserved"):
                continue
            raise ValueError(f"{name} is missing")
        v = values[name]
        if isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int) or not 0 <= v < (1 << f.width):
            raise ValueError(f"{name} must be an integer in 0..{(1 << f.width) - 1}, not {v!r}")
        value |= v << f.offset
    extra = sorted(set(values) - names)
    if extra:
        raise ValueError(f"{extra[0]} is not a field (fields: {', '.join(sorted(names))})")
    return [(value >> (32 * i)) & 0xFFFF_FFFF for i in range(-(-lay.size // 32))]
