"""Training throughput of the PyPI `tsimcne` package (0.4.24), on the images and backbones that
benchmarks/torch_reference.py and tsimcne-dist use.

    python benchmarks/reference_tsimcne.py --data DIR --backbone tiny|resnet18 \
        --batch-size B --images N --threads T [--workers W] [--json OUT.json]

Fits one epoch of stage 1 on the first N training images (PIL images, as tsimcne expects:
grey for Fashion-MNIST, RGB for CIFAR) on the CPU, with tsimcne's own data loader and
augmentations (torchvision, per image), Lightning module, loss, optimizer, learning-rate
schedule and gradient clipping. The backbone is the same module torch_reference.py builds; the
projection head is tsimcne's own features → 1024 → 128 MLP. tsimcne's "resnet18" string
backbone is torchvision's ImageNet ResNet-18 (7×7 stride-2 stem and max-pool), not the CIFAR
variant, and its CIFAR variant ("resnet18_sm_kernel") is built for 3 channels only, so a module
is passed for both backbones.

Prints one JSON line (and writes it to --json), the shape torch_reference.py prints:
  images_per_s   images of the batches after the first / seconds from the end of the first
                 batch to the end of the epoch (DataLoader start-up and warm-up left out);
  train_seconds  wall time of the Lightning fit (one epoch, with its set-up);
  total_seconds  wall time from reading the data to the end of the fit;
  knn_accuracy   always null (one epoch of stage 1 makes no map);
  steps          optimizer steps (N // B: the last incomplete batch is dropped, as in
                 tsimcne-dist).

TSimCNE.fit() cannot train in tsimcne 0.4.24 without changes to the package, so this script
does for stage 1 what fit() does, from the package's own parts, and works around each fault
from outside the package:
  - fit() builds its Lightning module with `warmup=`, a keyword PLtSimCNE does not take (it
    takes `warmup_epochs`): every fit() ends in a TypeError before training. The module and
    the Trainer are built here as fit() builds them, with the keyword PLtSimCNE takes.
  - Its pair dataset yields ((view 1, view 2), label), which PLtSimCNE.forward hands to the
    network as a list (TypeError in the first convolution); only its ffcv loader's layout
    (view 1, label, view 2) is stacked into 2B rows. ViewPairs yields that layout, and the
    loader is made with data_transform="is_included".
  - PLtSimCNE.on_fit_end reads trainer.datamodule, None when the loader is passed on its own
    (AttributeError after the last epoch); the loader is passed inside a data module.
  - TSimCNE(trainer_kwargs=...) stores the result of dict.update (None); the Trainer is built
    here with tsimcne's defaults (value clipping at 4) plus the CPU settings.
  - TSimCNE never sets `use_ffcv`, which its default augmentation path reads; that path is not
    taken (the views come from ViewPairs, with tsimcne's own get_transforms_unnormalized).
"""

import argparse
import time

import lightning
import torch
from PIL import Image
from tsimcne import TSimCNE
from tsimcne.imagedistortions import get_transforms_unnormalized
from tsimcne.models.simclr_like import make_projection_head
from tsimcne.tsimcne import PLtSimCNE

from torch_reference import DEFAULTS, build_backbone, load_dataset, report


class ViewPairs(torch.utils.data.Dataset):
    """(view 1, label, view 2) per image, each view drawn by `transform`.

    This is the batch layout PLtSimCNE.forward stacks into the 2B rows of the loss (its ffcv
    loader's). tsimcne 0.4.24's own pair dataset yields ((view 1, view 2), label), which
    forward hands to the network as a list, so its default loader cannot train.
    """

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        return self.transform(image), label, self.transform(image)


class LoaderData(lightning.LightningDataModule):
    """tsimcne's loader as a data module: PLtSimCNE.on_fit_end reads trainer.datamodule, which
    is None when the loader is passed on its own (as TSimCNE.fit passes it)."""

    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


class SteadyTimer(lightning.Callback):
    """Seconds and images from the end of the first training batch to the end of the epoch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.started = time.perf_counter()
            self.images = 0
        else:
            # A batch is (first views, labels, second views).
            self.images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of CIFAR batches or IDX files")
    ap.add_argument("--backbone", choices=["tiny", "resnet18"], required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--images", type=int, required=True, help="first N training images")
    ap.add_argument("--threads", type=int, default=2)
    # 0: augment in the training process, so the whole run uses the same --threads cores as the
    # other programs; tsimcne's own default is 8 worker processes.
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", help="also write the result line here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    train_x, train_y, _, _ = load_dataset(args.data)
    n = min(args.images, len(train_x))
    if n // args.batch_size < 2:
        raise SystemExit("--images must hold at least two batches: the first one is not timed")
    _, channels, height, width = train_x.shape
    # tsimcne takes a dataset of (PIL image, label); a list of pairs serves as one.
    dataset = [
        (
            Image.fromarray(img[0].numpy(), "L")
            if channels == 1
            else Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB"),
            int(label),
        )
        for img, label in zip(train_x[:n], train_y[:n])
    ]

    backbone, features = build_backbone(
        dict(DEFAULTS["model"], backbone=args.backbone), channels, height, width
    )
    # Only the data loader and the batch-size rule for the learning rate are taken from TSimCNE.
    tsimcne = TSimCNE(
        total_epochs=[1],
        batch_size=args.batch_size,
        num_workers=args.workers,
        # Given, because the image size cannot be read from ViewPairs' items.
        image_size=(height, width),
        dl_kwargs={"drop_last": True},
        # tsimcne's default "medium" lets oneDNN run float32 matmuls in bfloat16 on CPUs that
        # have it; the other programs compute in float32.
        float32_matmul_precision="highest",
    )
    # tsimcne's own augmentations, as its default path would build them; "is_included" tells
    # the loader that the dataset draws the views itself.
    transform = get_transforms_unnormalized(size=(height, width), setting="contrastive")
    loader = tsimcne.make_dataloader(ViewPairs(dataset, transform), True, "is_included")
    # Stage 1 as fit() builds it. warmup_epochs=0: tsimcne's automatic warm-up is 10 epochs
    # from lr 0, which would leave a one-epoch run at lr 0; without it every step updates.
    module = PLtSimCNE(
        backbone=backbone,
        projection_head=make_projection_head("mlp", features, 1024, 128),
        n_epochs=1,
        batch_size=args.batch_size,
        lr=tsimcne.learning_rates[0],
        warmup_epochs=0,
        out_dim=128,
    )
    timer = SteadyTimer()
    trainer = lightning.Trainer(
        max_epochs=1,
        devices=1,
        accelerator="cpu",
        gradient_clip_val=4,
        gradient_clip_algorithm="value",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=LoaderData(loader))
    finished = time.perf_counter()

    result = {
        "program": "tsimcne-0.4.24",
        "images_per_s": timer.images / timer.seconds,
        "train_seconds": finished - fit_started,
        "total_seconds": finished - started,
        "knn_accuracy": None,
        "steps": n // args.batch_size,
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
