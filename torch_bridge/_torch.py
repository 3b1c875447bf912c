"""The one place torch_bridge imports torch, so that a missing torch gives an ImportError that says what to do."""

from __future__ import annotations

try:
    import torch
    import torch.utils.data
except ImportError as exc:  # torch is an optional dependency of zarrforge
    raise ImportError(
        "zarrforge.torch_bridge needs PyTorch, which is not installed; "
        'install it with pip install "zarrforge[torch]"'
        f" (or see https://pytorch.org/get-started/locally/ for a CUDA build). Original error: {exc}"
    ) from exc

__all__ = ["torch"]
