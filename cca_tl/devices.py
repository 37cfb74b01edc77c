"""Device and dtype: what ``device="auto"`` and ``dtype="bfloat16"`` mean on this machine, checked early."""

from __future__ import annotations

import torch


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when torch sees a GPU, else CPU; an explicit CUDA device must exist."""
    from cca_tl.errors import DeviceError

    text = str(spec)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"Unknown device {text!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={text!r} was requested but this torch ({torch.__version__}) sees no CUDA GPU. Use "
                "--device cpu (or auto), or run on a machine with a GPU and a CUDA build of torch.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={text!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif device.type not in ("cpu", "mps"):
        raise DeviceError(f"Unsupported device {text!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


def resolve_dtype(spec: str | torch.dtype, device: torch.device) -> torch.dtype:
    """A model dtype the device can run: float32 anywhere, bfloat16 on CPUs and on GPUs that support it,
    float16 on GPUs only (torch's CPU float16 kernels are incomplete and far slower than float32)."""
    from cca_tl.errors import DeviceError

    dtype = spec if isinstance(spec, torch.dtype) else _DTYPES.get(str(spec).removeprefix("torch."))
    if dtype not in _DTYPES.values():
        raise DeviceError(f"Unsupported dtype {spec!r}: choose one of {', '.join(_DTYPES)}.")
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("float16 on the CPU is not supported here: use --dtype bfloat16 (half the memory of "
                          "float32) or float32.")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16: use --dtype float16 or float32.")
    return dtype
