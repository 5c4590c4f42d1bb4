"""The host side: open a device (simulated or a board) and run work on it.

    import gatesmith.host
    with gatesmith.host.open("sim", config="accel.yaml") as dev:
        c = dev.matmul(a, b)
"""

from .device import TRANSPORTS, Device, open

__all__ = ["open", "Device", "TRANSPORTS"]


def _register_torch_backend() -> None:
    """``torch.compile(model, backend="gatesmith", options={...})``: see host/torch_backend.py."""
    from .torch_backend import register

    register()


_register_torch_backend()
