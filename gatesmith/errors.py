"""Exception classes shared by every layer; the CLI maps each class to an exit code."""


class GatesmithError(Exception):
    """Base class of every error gatesmith raises on purpose."""

    exit_code = 1


class ConfigError(GatesmithError, ValueError):
    """A configuration field (CLI flag, YAML key, Config argument) has an invalid value.

    The message names the field and says what would be valid.
    """


class UsageError(GatesmithError, ValueError):
    """A host call was given arguments it cannot run (dtype, shape, dataflow, ...)."""


class BuildError(GatesmithError):
    """A Verilator model or a bitstream could not be built (or the design does not fit)."""

    exit_code = 2


class ToolMissingError(GatesmithError):
    """An external tool (verilator, yosys, nextpnr) could not be found."""

    exit_code = 3


class DeviceError(GatesmithError):
    """The accelerator reported an error, or the host link failed (timeout, bad frame, CRC)."""

    exit_code = 4


class DeviceResetError(DeviceError):
    """The device was reset (or replaced) while a session was open: its memories, queue and
    programs are gone. The message says how it was detected; open the device again."""


class CompileError(UsageError):
    """A model cannot be compiled: it does not trace with ``torch.export``, its example or
    calibration inputs do not fit it, or it holds something the compiler cannot represent.
    The message names the cause (for a tracing failure, the exception torch raised)."""
