"""Bus signatures: AXI4-Lite and the simple engine-local memory bus.

``AXI4LiteSignature`` is written from the manager's (master's) side; a subordinate takes
``In(AXI4LiteSignature(...))``. Member names follow the AXI spec (``awaddr``, ``wdata``...), so
Amaranth emits ports like ``axi__awaddr`` that cocotbext-axi finds with the prefix ``axi_``.

``MemBusSignature`` is the bus the accelerator's AXI slave uses to reach an engine's host window:
word-addressed, 32-bit data, a write takes effect at the clock edge where ``w_en`` is high, read
data is valid on the cycle after ``r_en``. ``err`` is combinational on ``addr`` and the strobes:
high when the access hits nothing (reads) or a read-only location (writes).
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AXI4LiteSignature", "MemBusSignature", "AXI_OKAY", "AXI_SLVERR", "AXI_DECERR"]

AXI_OKAY = 0b00
AXI_SLVERR = 0b10
AXI_DECERR = 0b11


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, manager's view. ``addr_width`` bits of byte address, 32-bit data."""

    def __init__(self, *, addr_width: int = 32, data_width: int = 32):
        if data_width not in (32, 64):
            raise ValueError(f"data_width must be 32 or 64, not {data_width}")
        if not 2 <= addr_width <= 64:
            raise ValueError(f"addr_width must be in 2..64, not {addr_width}")
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__(
            {
                "awaddr": Out(addr_width),
                "awprot": Out(3),
                "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width),
                "wstrb": Out(data_width // 8),
                "wvalid": Out(1),
                "wready": In(1),
                "bresp": In(2),
                "bvalid": In(1),
                "bready": Out(1),
                "araddr": Out(addr_width),
                "arprot": Out(3),
                "arvalid": Out(1),
                "arready": In(1),
                "rdata": In(data_width),
                "rresp": In(2),
                "rvalid": In(1),
                "rready": Out(1),
            }
        )

    def __eq__(self, other):
        return (
            isinstance(other, AXI4LiteSignature)
            and self.addr_width == other.addr_width
            and self.data_width == other.data_width
        )

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


class MemBusSignature(wiring.Signature):
    """Engine host window bus, requester's view (see module docstring for timing)."""

    def __init__(self, *, addr_width: int):
        if not 1 <= addr_width <= 30:
            raise ValueError(f"addr_width must be in 1..30, not {addr_width}")
        self.addr_width = addr_width
        super().__init__(
            {
                "addr": Out(addr_width),
                "w_en": Out(1),
                "w_data": Out(32),
                "r_en": Out(1),
                "r_data": In(32),
                "err": In(1),
            }
        )

    def __eq__(self, other):
        return isinstance(other, MemBusSignature) and self.addr_width == other.addr_width

    def __repr__(self):
        return f"MemBusSignature(addr_width={self.addr_width})"
