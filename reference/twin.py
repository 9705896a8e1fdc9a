"""The PyTorch twin of `scratch.tutorial_network`: Conv2d(C, F, 3, bias=False) -> MaxPool2d(2) -> Flatten -> Linear."""

from __future__ import annotations

import torch
from torch import nn


class TutorialTwin(nn.Module):
    """The tutorial CNN in PyTorch; `forward` takes an NCHW image batch and returns logits."""

    def __init__(
        self,
        image_shape: tuple[int, int] = (28, 28),
        num_filters: int = 8,
        num_classes: int = 10,
        in_channels: int = 1,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.conv = nn.Conv2d(in_channels, num_filters, kernel_size=3, bias=False, dtype=dtype)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.dense = nn.Linear(num_filters * self.pooled_hw[0] * self.pooled_hw[1], num_classes, dtype=dtype)

    @property
    def pooled_hw(self) -> tuple[int, int]:
        """Height and width after the valid 3x3 conv and the flooring 2x2 pool."""
        return (self.image_shape[0] - 2) // 2, (self.image_shape[1] - 2) // 2

    @property
    def pooled_shape(self) -> tuple[int, int, int]:
        """The pool output in scratch's HWC layout."""
        return (*self.pooled_hw, self.conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(N, classes)` for an `(N, C, H, W)` batch."""
        return self.dense(self.flatten(self.pool(self.conv(x))))
