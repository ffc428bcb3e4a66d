import torch

from picmap.data.batches import DeviceBatches
from picmap.model import EmbeddingNet, make_backbone
from picmap.train import Stage, TrainConfig, Trainer


def _images(n=40):
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()


def test_resident_batches_follow_the_order():
    images = _images()
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    batches = DeviceBatches(images, torch.device("cpu"), 8)
    got = [b[:, 0, 0, 0].tolist() for b in batches.epoch(order)]
    assert len(got) == len(batches) == 5
    assert got == [order[i * 8 : (i + 1) * 8].tolist() for i in range(5)]


def test_streamed_batches_equal_resident_ones_from_any_start():
    images = _images(37)  # not a multiple of the batch: the last 5 images wait for the next epoch
    order = torch.randperm(37, generator=torch.Generator().manual_seed(1))
    resident = DeviceBatches(images, torch.device("cpu"), 8)
    streamed = DeviceBatches(images, torch.device("cpu"), 8)
    streamed.streaming = True  # the host→device path, exercised on the CPU
    for start in (0, 2):
        a = [b.clone() for b in resident.epoch(order, start)]
        b = [b.clone() for b in streamed.epoch(order, start)]
        assert len(a) == len(b) == 4 - start
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_training_from_streamed_data_equals_resident_training():
    images = (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )
    stages = [Stage(2, 0.05, 1, 128, False), Stage(1, 0.05, 0, 2, True)]
    losses = []
    for streaming in (False, True):
        torch.manual_seed(0)
        backbone, dim = make_backbone("small", 1, 8)
        config = TrainConfig(stages=stages, batch_size=16, image_size=8, verbose=False)
        trainer = Trainer(EmbeddingNet(backbone, dim, 32, 128), images, config, 3)
        trainer.batches.streaming = streaming
        losses.append(trainer.run())
    assert losses[0] == losses[1]


def test_a_device_named_without_its_index_is_the_device_the_images_are_on():
    # torch.device("cuda") != torch.device("cuda:0") (the device a CUDA tensor reports); the
    # CPU shows the same mismatch with "cpu:0", so this catches it without a GPU.
    images = _images()
    for name in ("cpu", "cpu:0"):
        batches = DeviceBatches(images, torch.device(name), 8)
        assert not batches.streaming
        first = next(batches.epoch(torch.arange(40)))
        assert first[:, 0, 0, 0].tolist() == list(range(8))
