"""A deliberately slow model, importable by a test and by the subprocess it kills."""

from __future__ import annotations

import time

import torch

import srlib


class SlowBicubic(torch.nn.Module):
    """Bicubic that sleeps in each forward pass, so a writer can be killed mid-way."""

    def __init__(self, delay: float = 0.15) -> None:
        super().__init__()
        self.inner = srlib.load_model("bicubic").build()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.inner(x)


def spec() -> srlib.ModelSpec:
    return srlib.load_model(SlowBicubic(), blend="trim", halo=2, patch_size=256)
