"""The host side: open a device (simulated or a board) and run work on it.

    import gatesmith.host
    with gatesmith.host.open("sim", config="accel.yaml") as dev:
        c = dev.matmul(a, b)
"""

from .device import TRANSPORTS, Device, open

__all__ = ["open", "Device", "TRANSPORTS"]

# ``torch.compile(model, backend="gatesmith", options={...})`` finds the backend through the
# ``torch_dynamo_backends`` entry point in pyproject.toml (host/torch_backend.py), so importing
# gatesmith does not import torch._dynamo; ``gatesmith.host.torch_backend.register()`` also
# registers it by hand.
