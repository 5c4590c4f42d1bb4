"""Property tests of the device-memory allocator (host/memory.py)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatesmith.errors import DeviceError, UsageError
from gatesmith.host.memory import Allocator

CAP = 1 << 16

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(1, CAP // 4)),
        st.tuples(st.just("free"), st.integers(0, 1000)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_allocations_never_overlap_and_frees_coalesce(seq):
    a = Allocator(CAP, align=64)
    live: dict[int, int] = {}
    for op, n in seq:
        if op == "alloc":
            try:
                addr = a.alloc(n)
            except DeviceError:
                # refused only when no free piece is large enough
                assert a.largest_free() < -(-n // 64) * 64
                continue
            assert addr % 64 == 0 and 0 <= addr and addr + n <= CAP
            for b, m in live.items():
                assert addr + n <= b or b + m <= addr, "overlap"
            live[addr] = n
        elif live:
            addr = sorted(live)[n % len(live)]
            a.free(addr)
            del live[addr]
        used = sum(-(-m // 64) * 64 for m in live.values())
        assert a.free_bytes() + used == CAP
    for addr in list(live):
        a.free(addr)
    # everything freed: one piece again, the whole memory allocatable at once
    assert a.largest_free() == CAP
    assert a.alloc(CAP) == 0


def test_errors():
    a = Allocator(4096)
    x = a.alloc(100, "x")
    with pytest.raises(UsageError, match="not an allocated buffer"):
        a.free(x + 64)
    with pytest.raises(UsageError, match="positive number of bytes"):
        a.alloc(0)
    with pytest.raises(DeviceError, match=r"device memory is full: 5000 bytes requested, 3968 free "
                       r"in 1 pieces \(largest 3968\); allocated: x 128 B at 0x0"):  # fmt: skip
        a.alloc(5000)
    a.free(x)
    with pytest.raises(UsageError):
        a.free(x)
