"""Data loaders: random-crop batches for training (RandomCrops, and TorchCrops for a torch
DataLoader), many small selections at once (read_boxes) and ordered block streaming
(iter_blocks)."""

from .boxes import read_boxes
from .crops import RandomCrops
from .stream import iter_blocks


def __getattr__(name: str):
    # torch is optional and slow to import: only those who ask for the adapter pay for it
    if name == "TorchCrops":
        from .torch_dataset import TorchCrops

        return TorchCrops
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RandomCrops", "TorchCrops", "iter_blocks", "read_boxes"]
