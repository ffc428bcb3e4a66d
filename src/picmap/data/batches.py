"""Batches of uint8 images (or feature rows) on the training device, from data on the device
or on the host."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` name one device, reading a missing index as the one meant.

    ``torch.device("cuda")`` is the current CUDA device, which a tensor reports as ``cuda:0``;
    and a CPU is one device whatever index it is given. Plain ``==`` says they differ.
    """

    def index(device: torch.device) -> int:
        if device.type == "cpu":
            return 0
        if device.index is not None:
            return device.index
        return torch.cuda.current_device() if device.type == "cuda" else 0

    return a.type == b.type and index(a) == index(b)


class DeviceBatches:
    """Serve the batches of an epoch on ``device``.

    With ``part=(rank, parts)`` each batch of ``batch_size`` images is split into ``parts``
    equal shares and this process gets share ``rank``: processes that walk the same order
    together see every image of a batch exactly once.

    When the images already live on ``device`` a batch is one indexing operation. Otherwise
    (the data does not fit in GPU memory) each batch is gathered on the host into one of two
    pinned buffers and copied asynchronously, one step ahead, on a stream of its own, so the
    copy overlaps the previous step's compute and the GPU does not wait.
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device,
        batch_size: int,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        rank, parts = part
        if batch_size % parts:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by the number of processes ({parts})"
            )
        self.images = images
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.share = batch_size // parts
        self._offset = rank * self.share
        self.streaming = not same_device(images.device, self.device)
        pin = self.streaming and self.device.type == "cuda"
        shape = (self.share, *images.shape[1:])
        self._buffers = [torch.empty(shape, dtype=images.dtype, pin_memory=pin) for _ in range(2)]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        # Copies queued on the compute stream would wait for the step before them.
        self._copy_stream = torch.cuda.Stream(self.device) if pin else None

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def epoch(self, order: torch.Tensor, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches ``start, start+1, …`` of the epoch whose image order is ``order``."""
        if not self.streaming:
            order = order.to(self.images.device)
            for step in range(start, len(self)):
                yield self.images[self._indices(order, step)]
            return
        order = order.cpu()
        ahead = self._send(order, start) if start < len(self) else None
        for step in range(start, len(self)):
            current = ahead
            if self._copy_stream is not None:
                compute = torch.cuda.current_stream(self.device)
                self._copied[step % 2].wait(compute)  # the compute stream waits, not the host
                current.record_stream(compute)  # its memory is not reused while compute reads it
            ahead = self._send(order, step + 1) if step + 1 < len(self) else None
            yield current

    def _indices(self, order: torch.Tensor, step: int) -> torch.Tensor:
        first = step * self.batch_size + self._offset
        return order[first : first + self.share]

    def _send(self, order: torch.Tensor, step: int) -> torch.Tensor:
        slot = step % 2
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the buffer's previous copy has finished
        torch.index_select(self.images, 0, self._indices(order, step), out=self._buffers[slot])
        if self._copy_stream is None:
            return self._buffers[slot].to(self.device)
        with torch.cuda.stream(self._copy_stream):
            batch = self._buffers[slot].to(self.device, non_blocking=True)
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record(self._copy_stream)
        return batch
