"""TorchCrops: RandomCrops as a ``torch.utils.data.IterableDataset`` (torch is optional)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .crops import RandomCrops


class TorchCrops(IterableDataset):
    """Batches of :class:`RandomCrops` as dicts of ``torch.Tensor``, for a DataLoader.

    Use ``DataLoader(TorchCrops(crops), batch_size=None, num_workers=k)``: the batches are
    already batched. Worker ``w`` of ``k`` reads batches ``w, w + k, w + 2k, ...`` of the
    epoch, so together the workers yield each batch of the epoch once, and the same ones
    for a seed whatever ``k`` (in an order that depends on ``k``). As with torch's
    DistributedSampler, call :meth:`set_epoch` before each epoch for new crops.

    Parameters
    ----------
    crops : RandomCrops
    """

    def __init__(self, crops: RandomCrops) -> None:
        super().__init__()
        self.crops = crops
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Which epoch the next iteration reads (its crops follow from the seed and it)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = range(worker, len(self.crops), workers)
        for batch in self.crops.iter_epoch(self.epoch, mine):
            yield {name: torch.from_numpy(values) for name, values in batch.items()}
