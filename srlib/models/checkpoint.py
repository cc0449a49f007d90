"""Reading checkpoint files: bare state dicts, wrapped ones, and TorchScript modules."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..errors import ModelError

__all__ = ["WRAPPER_KEYS", "load_state_dict", "read_checkpoint"]

#: Keys under which training frameworks nest the state dict, tried in this order.
WRAPPER_KEYS = ("params_ema", "params", "model", "state_dict")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") for name in zf.namelist())


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor] | torch.jit.ScriptModule:
    """Read a ``.pth``/``.pt`` file: a TorchScript module, or a state dict.

    State dicts may be bare or nested under one of :data:`WRAPPER_KEYS`; ``module.``
    prefixes (from ``DataParallel``/``DistributedDataParallel``) are stripped.

    Parameters
    ----------
    path : str or Path
        Checkpoint file.

    Returns
    -------
    dict or torch.jit.ScriptModule
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist; pass the path of a .pth file")
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # torch raises RuntimeError and others for torn archives
            raise ModelError(f"cannot read TorchScript module {path}: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}; the file is "
                             "corrupt or truncated: export or copy it again") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise ModelError(f"cannot read checkpoint {path}: {err}") from err
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"checkpoint {path} holds no state dict: expected tensors by name, bare or under "
            f"one of {list(WRAPPER_KEYS)}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` with ``strict=True``; on mismatch say which keys and shapes differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {missing[:8]}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}")
        if shapes:
            lines.append(f"shape mismatches ({len(shapes)}): {shapes[:8]}")
        raise ModelError(
            f"{where} does not fit the architecture: " + "; ".join(lines)
            + ". Pass the architecture options the checkpoint was trained with "
            "(embed_dim, depths, num_heads, window_size, img_size, upsampler, in_chans, "
            "out_chans, upscale)."
        )
    module.load_state_dict(state, strict=True)

