"""gatesmith: ML accelerators from parameters, and a torch model split between them and a GPU.

``gatesmith.compile(model, example_inputs, device=dev)`` is
:func:`gatesmith.host.torch_backend.compile` (imported on first use, so ``import gatesmith``
stays light).
"""


def compile(model, example_inputs, **kwargs):  # noqa: A001 - the entry point's public name
    """Split ``model`` between the accelerator and the GPU/CPU: see host/torch_backend.py."""
    from .host.torch_backend import compile as _compile

    return _compile(model, example_inputs, **kwargs)
