"""t-SimCNE in plain PyTorch, step for step what tsimcne-dist does on one rank, for timing and
accuracy comparisons against the Rust trainer on the same data and config.

    python benchmarks/torch_reference.py --config configs/cpu.toml --data DIR \
        [--set key=value ...] [--threads N] [--max-steps K] [--json OUT.json]

The config is the Rust trainer's TOML with the same defaults and the same `--set` overrides.
What is replicated: data and its normalisation, the epoch permutation with the last incomplete
batch dropped, the batched augmentations, the networks, the Cauchy InfoNCE loss, the three
stages, SGD with value clipping and the warm-up + cosine schedule, the final embedding and the
kNN accuracy. Random streams are torch's, not the Rust trainer's ChaCha streams, so runs agree
in distribution, not bit for bit. `checkpoint_every`, `threads` and `max_steps` of the config
have no effect here (no checkpoints; `--threads` and `--max-steps` instead); `optimizer = "lars"`
is not replicated and is refused.

Prints one JSON line (and writes it to --json):
  images_per_s   batch_size × (steps after the first) / seconds of those steps (the first step
                 warms up allocators and kernels and is left out);
  train_seconds  wall time of all training steps;
  total_seconds  wall time from reading the data to the kNN accuracy;
  knn_accuracy   null with --max-steps, which runs stage 1 only and embeds nothing.
"""

import argparse
import copy
import gzip
import json
import math
import re
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The defaults of src/config.rs; a config file and --set change them key by key.
DEFAULTS = {
    "seed": 0,
    "batch_size": 1024,
    "epochs": [1000, 50, 450],
    "max_steps": 0,
    "train_limit": 0,
    "train_on_test": False,
    "checkpoint_every": 10,
    "threads": 0,
    "device": "auto",
    "precision": "fp32",
    "knn_k": 15,
    "model": {
        "backbone": "resnet18",
        "norm": "batch",
        "hidden_dim": 1024,
        "pretrain_dim": 128,
        "map_dim": 2,
    },
    "optim": {
        "optimizer": "sgd",
        "lr": 0.03,
        "lr_rule": "linear",
        "stage_lr_factor": [1.0, 1.0, 0.001],
        "warmup_epochs": [10, 0, 10],
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "clip_value": 4.0,
        "lars_eta": 0.001,
    },
    "augment": {
        "crop_scale": [0.2, 1.0],
        "crop_ratio": [3 / 4, 4 / 3],
        "flip_p": 0.5,
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        # tsimcne-dist's neighbour positives; this script makes t-SimCNE's pairs only.
        "neighbours": 0,
    },
}
CHOICES = {
    ("model", "backbone"): {"resnet18", "small", "tiny", "mlp"},
    ("model", "norm"): {"batch", "group"},
    ("optim", "lr_rule"): {"linear", "sqrt", "fixed"},
    ("optim", "optimizer"): {"sgd"},
    ("precision",): {"fp32", "bf16"},
    ("device",): {"auto", "cpu", "cuda"},
}
# Training images whose pixels set the normalisation, as the Rust trainer.
NORM_SAMPLE = 10_000
# Images per forward pass when embedding the whole data set.
EMBED_CHUNK = 1024
# Luminance weights of torchvision's rgb_to_grayscale.
LUMA = (0.2989, 0.587, 0.114)
# Crop tries before the centred fallback box, as torchvision's RandomResizedCrop.
CROP_TRIES = 10
# Group norm groups: 8 divides every width used.
GROUPS = 8


# --- configuration ---------------------------------------------------------------------------


def parse_value(raw):
    """A --set value as TOML; a bare word that is not TOML is a string (model.backbone=small)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if re.fullmatch(r"[A-Za-z0-9_-]+", raw):
            return raw
        raise SystemExit(f"--set value {raw!r} is not TOML")


def type_ok(default, value):
    """Whether `value` may replace `default`: the same type (an integer where a float is
    expected, as serde accepts), lists of the same length."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return (
            isinstance(value, list)
            and len(value) == len(default)
            and all(type_ok(d, v) for d, v in zip(default, value))
        )
    return isinstance(value, type(default))


def merge(defaults, given, where=()):
    """`given` laid over `defaults`, refusing unknown keys and values of the wrong type."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        path = where + (key,)
        name = ".".join(path)
        if key not in defaults:
            raise SystemExit(f"config: unknown key {name}")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise SystemExit(f"config: {name} must be a table")
            out[key] = merge(defaults[key], value, path)
            continue
        if not type_ok(defaults[key], value):
            raise SystemExit(f"config: {name} = {value!r} has the wrong type or length")
        if path in CHOICES and value not in CHOICES[path]:
            raise SystemExit(f"config: {name} = {value!r} is not one of {sorted(CHOICES[path])}")
        out[key] = value
    return out


def load_config(path, overrides):
    doc = tomllib.loads(Path(path).read_text()) if path else {}
    for arg in overrides:
        key, sep, raw = arg.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {arg!r}: expected key=value")
        *parents, last = key.strip().split(".")
        table = doc
        for p in parents:
            table = table.setdefault(p, {})
        table[last] = parse_value(raw.strip())
    cfg = merge(DEFAULTS, doc)
    if cfg["batch_size"] < 2 or min(cfg["epochs"]) < 1:
        raise SystemExit("config: batch_size must be ≥ 2 and every stage needs ≥ 1 epoch")
    if any(w > e for w, e in zip(cfg["optim"]["warmup_epochs"], cfg["epochs"])):
        raise SystemExit("config: a stage's warm-up is longer than the stage")
    if cfg["augment"]["neighbours"]:
        raise SystemExit("config: augment.neighbours (neighbour positives) is tsimcne-dist's alone; give --set augment.neighbours=0")
    return cfg


# --- data ------------------------------------------------------------------------------------


def read_bytes(path):
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def idx_file(folder, stem):
    """`stem` in `folder`, plain or gzipped, or None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def read_idx(images_path, labels_path):
    raw = read_bytes(images_path)
    n, h, w = (int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(3))
    images = torch.frombuffer(bytearray(raw[16 : 16 + n * h * w]), dtype=torch.uint8)
    labels = torch.frombuffer(bytearray(read_bytes(labels_path)[8 : 8 + n]), dtype=torch.uint8)
    return images.view(n, 1, h, w), labels.long()


def read_cifar(files, label_bytes):
    """CIFAR binary records: `label_bytes` label bytes (the last is the class), then 3×32×32."""
    records = torch.cat(
        [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    ).view(-1, label_bytes + 3072)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).clone()
    return images, records[:, label_bytes - 1].long()


def load_dataset(folder):
    """(train images, train labels, test images, test labels): uint8 N×C×H×W and int64 N.

    The folder holds CIFAR-10 (data_batch_1..5.bin, test_batch.bin), CIFAR-100 (train.bin,
    test.bin) or IDX files (train-/t10k-images-idx3-ubyte[.gz] with their labels); the
    archives' own sub-folders are accepted too. The test split is empty when an IDX folder has
    no t10k files.
    """
    folder = Path(folder)
    for sub in (folder, folder / "cifar-10-batches-bin", folder / "cifar-100-binary"):
        if (sub / "test_batch.bin").exists():
            files = [sub / f"data_batch_{i}.bin" for i in range(1, 6)]
            return (*read_cifar(files, 1), *read_cifar([sub / "test_batch.bin"], 1))
        if (sub / "test.bin").exists():
            return (*read_cifar([sub / "train.bin"], 2), *read_cifar([sub / "test.bin"], 2))
    train = idx_file(folder, "train-images-idx3-ubyte")
    if train is None:
        raise SystemExit(f"{folder}: found neither CIFAR batches nor IDX files")
    x, y = read_idx(train, idx_file(folder, "train-labels-idx1-ubyte"))
    test = idx_file(folder, "t10k-images-idx3-ubyte")
    if test is None:
        return x, y, x[:0], y[:0]
    return (x, y, *read_idx(test, idx_file(folder, "t10k-labels-idx1-ubyte")))


def channel_stats(images):
    """Per-channel mean and standard deviation of `images` (pixel/255), as 1×C×1×1 tensors."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    var = (x * x).mean(dim=(0, 2, 3)) - mean * mean
    return mean.float().view(1, -1, 1, 1), var.clamp_min(1e-6).sqrt().float().view(1, -1, 1, 1)


# --- augmentation ----------------------------------------------------------------------------


def grayscale(x):
    """N×1×H×W luminance (the image itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    return (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).unsqueeze(1)


def crop_boxes(rows, height, width, aug, device):
    """Crop centres and sizes in pixels (4 × rows), drawn as torchvision's RandomResizedCrop."""
    area = height * width
    lo, hi = math.log(aug["crop_ratio"][0]), math.log(aug["crop_ratio"][1])
    scale = torch.empty(rows, CROP_TRIES, device=device).uniform_(*aug["crop_scale"])
    ratio = torch.empty(rows, CROP_TRIES, device=device).uniform_(lo, hi).exp()
    w = (area * scale * ratio).sqrt().round()
    h = (area * scale / ratio).sqrt().round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    # The first try that fits, per row; rows where none fits take the centred fallback box.
    first = ok.int().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    left = (torch.rand(rows, device=device) * (width - w + 1)).floor()
    top = (torch.rand(rows, device=device) * (height - h + 1)).floor()
    in_ratio = width / height
    if in_ratio < aug["crop_ratio"][0]:
        fw, fh = width, width / aug["crop_ratio"][0]
    elif in_ratio > aug["crop_ratio"][1]:
        fw, fh = height * aug["crop_ratio"][1], height
    else:
        fw, fh = width, height
    fits = ok.any(dim=1)
    cx = torch.where(fits, left + w / 2, width / 2)
    cy = torch.where(fits, top + h / 2, height / 2)
    return cx, cy, torch.where(fits, w, fw), torch.where(fits, h, fh)


def adjust_hue(x, shift):
    """Rotates each RGB image's hue by `shift` turns (an HSV round trip, as torchvision)."""
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = x.unbind(1)
    # Hue in sixths of a turn, by which channel is largest.
    sixths = torch.where(
        argmax == 0,
        (g - b) / safe,
        torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    sixths = sixths + 6 * shift.view(-1, 1, 1)
    sat = delta / torch.where(delta > 0, maxc, torch.ones_like(maxc))
    # HSV to RGB: channel = v·(1 − s·clamp(min(k, 4 − k), 0, 1)), k = (n + 6·hue) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + sixths.unsqueeze(1), 6)
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return maxc.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def augment(images, aug, mean, std):
    """Two normalised views per uint8 image: rows 0..B-1 the first views, B..2B-1 the second."""
    x = (images.float() / 255.0).repeat(2, 1, 1, 1)
    rows, channels, height, width = x.shape
    device = x.device

    # Crop, resize back and flip in one bilinear resampling.
    cx, cy, w, h = crop_boxes(rows, height, width, aug, device)
    sign = torch.where(torch.rand(rows, device=device) < aug["flip_p"], -1.0, 1.0)
    zero = torch.zeros(rows, device=device)
    theta = torch.stack(
        [w / width * sign, zero, 2 * cx / width - 1, zero, h / height, 2 * cy / height - 1], 1
    ).view(rows, 2, 3)
    grid = F.affine_grid(theta, [rows, channels, height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Colour jitter: brightness, contrast, saturation and hue in a random order per image.
    b, c, s, hue = aug["jitter"]
    jitter = torch.rand(rows, device=device) < aug["jitter_p"]
    factor = torch.stack(
        [torch.empty(rows, device=device).uniform_(1 - v, 1 + v) for v in (b, c, s)], 1
    )
    shift = torch.empty(rows, device=device).uniform_(-hue, hue)
    order = torch.rand(rows, 4, device=device).argsort(dim=1)
    for step in range(4):
        op = order[:, step]
        # The three blends are out = f·x + (1 − f)·other, other being 0 (brightness), the grey
        # image's mean (contrast) or the grey image (saturation); f = 1 leaves a row as it is.
        chosen = factor.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1)
        f = torch.where(jitter & (op < 3), chosen, 1.0)
        gray = grayscale(x)
        other = torch.where(
            (op == 2).view(-1, 1, 1, 1), gray, gray.mean(dim=(1, 2, 3), keepdim=True)
        )
        other = torch.where((op == 0).view(-1, 1, 1, 1), 0.0, other)
        f = f.view(-1, 1, 1, 1)
        x = (f * x + (1 - f) * other).clamp(0, 1)
        if channels == 3:
            rotate = jitter & (op == 3)
            x[rotate] = adjust_hue(x[rotate], shift[rotate]).clamp(0, 1)
    if channels == 3:
        to_gray = (torch.rand(rows, device=device) < aug["grayscale_p"]).view(-1, 1, 1, 1)
        x = torch.where(to_gray, grayscale(x).expand_as(x), x)
    return (x - mean) / std


# --- networks --------------------------------------------------------------------------------


def norm_layer(kind, channels, dims=2):
    if kind == "group":
        return nn.GroupNorm(GROUPS, channels)
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


def build_backbone(model_cfg, channels, height, width):
    """(backbone module, number of features) for `model.backbone` and `model.norm`."""
    name, norm = model_cfg["backbone"], model_cfg["norm"]
    if name in ("tiny", "small"):
        wd = 16 if name == "tiny" else 32
        widths = [(channels, wd), (wd, wd), (wd, 2 * wd), (2 * wd, 2 * wd), (2 * wd, 4 * wd)]
        layers = []
        for i, (c_in, c_out) in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                norm_layer(norm, c_out),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers), 4 * wd
    if name == "mlp":
        return (
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * height * width, 512),
                norm_layer(norm, 512, dims=1),
                nn.ReLU(inplace=True),
                nn.Linear(512, 512),
                norm_layer(norm, 512, dims=1),
                nn.ReLU(inplace=True),
            ),
            512,
        )
    # Imported here so the small backbones need nothing beyond torch.
    import torchvision

    net = torchvision.models.resnet18(norm_layer=lambda c: norm_layer(norm, c))
    # The CIFAR ResNet-18 of the paper: 3×3 stride-1 stem, no max-pool.
    net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


class Network(nn.Module):
    """Backbone → Linear(hidden) → ReLU → one of two readouts, both built from the start.

    With `bf16`, the trunk (everything before the readout) runs under bfloat16 autocast and the
    readout in float32, as the Rust trainer's precision = "bf16".
    """

    def __init__(self, model_cfg, channels, height, width, bf16=False):
        super().__init__()
        self.bf16 = bf16
        self.backbone, features = build_backbone(model_cfg, channels, height, width)
        self.hidden = nn.Linear(features, model_cfg["hidden_dim"])
        self.pretrain_out = nn.Linear(model_cfg["hidden_dim"], model_cfg["pretrain_dim"])
        self.map_out = nn.Linear(model_cfg["hidden_dim"], model_cfg["map_dim"])

    def trunk(self, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return F.relu(self.hidden(self.backbone(x))).float()

    def forward(self, x, stage):
        return (self.pretrain_out if stage == 0 else self.map_out)(self.trunk(x))


# --- loss, schedule, metric ------------------------------------------------------------------


def cauchy_infonce(z):
    """Mean over the 2B rows of −log(sim(i, pos(i)) / Σ_{j≠i} sim(i, j)), sim = 1/(1+d²)."""
    z = z.float()
    rows = z.shape[0]
    sq = (z * z).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * z @ z.T).clamp_min(0)
    logits = -torch.log1p(d2)
    logits = logits.masked_fill(torch.eye(rows, dtype=torch.bool, device=z.device), float("-inf"))
    partner = (torch.arange(rows, device=z.device) + rows // 2) % rows
    return F.cross_entropy(logits, partner)


def peak_lr(cfg, stage):
    ratio = cfg["batch_size"] / 256
    scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "fixed": 1.0}[cfg["optim"]["lr_rule"]]
    return cfg["optim"]["lr"] * scale * cfg["optim"]["stage_lr_factor"][stage]


def learning_rate(cfg, stage, t, steps_per_epoch):
    """Step `t` of `stage`: linear warm-up over the warm-up epochs, then cosine to zero."""
    peak = peak_lr(cfg, stage)
    warm = cfg["optim"]["warmup_epochs"][stage] * steps_per_epoch
    total = cfg["epochs"][stage] * steps_per_epoch
    if t < warm:
        return peak * (t + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(total - warm, 1)))


def knn_accuracy(refs, ref_labels, queries, labels, k, leave_one_out):
    """Fraction of queries whose majority label among their k nearest refs is their own; ties
    go to the smallest label. With `leave_one_out` the queries are the refs and skip themselves."""
    skip = int(leave_one_out)
    k = min(k, refs.shape[0] - skip)
    classes = int(ref_labels.max()) + 1
    correct = 0
    for start in range(0, queries.shape[0], 512):
        d = torch.cdist(queries[start : start + 512], refs)
        nearest = d.topk(k + skip, dim=1, largest=False).indices[:, skip:]
        votes = F.one_hot(ref_labels[nearest], classes).sum(1)
        # argmax returns the first maximum: the smallest of the tied labels.
        correct += (votes.argmax(1) == labels[start : start + 512]).sum().item()
    return correct / queries.shape[0]


# --- the run ---------------------------------------------------------------------------------


def report(result, json_path):
    """Prints a benchmark's result as one JSON line, and writes it to `json_path` if given."""
    line = json.dumps(result)
    print(line)
    if json_path:
        Path(json_path).write_text(line + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", help="TOML config (defaults: the paper's recipe)")
    ap.add_argument("--data", required=True, help="folder of CIFAR batches or IDX files")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, help="time K steps of stage 1 only (K ≥ 2)")
    ap.add_argument("--json", help="also write the result line here")
    args = ap.parse_args()
    if args.max_steps is not None and args.max_steps < 2:
        raise SystemExit("--max-steps must be ≥ 2: the first step is warm-up and is not timed")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cfg = load_config(args.config, args.overrides)
    want_cuda = cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit('device = "cuda" but torch sees no GPU')
    device = torch.device("cuda" if want_cuda else "cpu")
    torch.manual_seed(cfg["seed"])

    started = time.perf_counter()
    train_x, train_y, test_x, test_y = load_dataset(args.data)
    pool = torch.cat([train_x, test_x]) if cfg["train_on_test"] else train_x
    n_train = min(cfg["train_limit"] or len(pool), len(pool))
    batch = cfg["batch_size"]
    if n_train < batch:
        raise SystemExit(f"batch_size = {batch} is larger than the {n_train} training images")
    images = pool[:n_train].to(device)
    mean, std = (t.to(device) for t in channel_stats(pool[: min(n_train, NORM_SAMPLE)]))
    _, channels, height, width = images.shape
    net = Network(cfg["model"], channels, height, width, cfg["precision"] == "bf16").to(device)
    steps_per_epoch = n_train // batch
    o = cfg["optim"]
    # One optimizer over every parameter: a parameter without a gradient in a stage is skipped
    # and keeps its momentum buffer for a later stage, as the Rust trainer's buffers by name.
    opt = torch.optim.SGD(
        net.parameters(), lr=0.0, momentum=o["momentum"], weight_decay=o["weight_decay"]
    )
    trained = {
        0: [*net.backbone.parameters(), *net.hidden.parameters(), *net.pretrain_out.parameters()],
        1: [*net.map_out.parameters()],
        2: [*net.backbone.parameters(), *net.hidden.parameters(), *net.map_out.parameters()],
    }

    def step(stage, idx, lr):
        views = augment(images[idx], cfg["augment"], mean, std)
        if stage == 1:
            # Stage 2 trains the map readout only; batch norm still runs in training mode.
            with torch.no_grad():
                hidden = net.trunk(views)
            z = net.map_out(hidden)
        else:
            z = net(views, stage)
        loss = cauchy_infonce(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o["clip_value"] > 0:
            nn.utils.clip_grad_value_(trained[stage], o["clip_value"])
        opt.param_groups[0]["lr"] = lr
        opt.step()
        value = loss.item()  # also waits for the device, so the step's time is its own
        if not math.isfinite(value):
            raise SystemExit(f"the loss became {value} in stage {stage + 1}; lower optim.lr")
        return value

    net.train()
    times = []
    stages = [0] if args.max_steps else [0, 1, 2]
    train_started = time.perf_counter()
    for stage in stages:
        epochs = cfg["epochs"][stage]
        if args.max_steps:
            epochs = math.ceil(args.max_steps / steps_per_epoch)
        t = 0
        for epoch in range(epochs):
            order = torch.randperm(n_train, device=device)
            losses = []
            for k in range(steps_per_epoch):
                if args.max_steps and len(times) == args.max_steps:
                    break
                tick = time.perf_counter()
                lr = learning_rate(cfg, stage, t, steps_per_epoch)
                losses.append(step(stage, order[k * batch : (k + 1) * batch], lr))
                times.append(time.perf_counter() - tick)
                t += 1
            mean_loss = sum(losses) / len(losses)
            print(
                f"stage {stage + 1} epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}",
                file=sys.stderr,
            )
    train_seconds = time.perf_counter() - train_started

    accuracy = None
    if not args.max_steps:
        net.eval()
        everything = torch.cat([train_x, test_x])
        with torch.no_grad():
            embedding = torch.cat(
                [
                    net((chunk.to(device).float() / 255.0 - mean) / std, 2).float().cpu()
                    for chunk in everything.split(EMBED_CHUNK)
                ]
            )
        n, k = len(train_x), cfg["knn_k"]
        if len(test_x):
            accuracy = knn_accuracy(embedding[:n], train_y, embedding[n:], test_y, k, False)
        else:
            # No test split (an IDX folder without t10k files): leave-one-out, as the Rust trainer.
            accuracy = knn_accuracy(embedding, train_y, embedding, train_y, k, True)

    result = {
        "program": "pytorch-script",
        "images_per_s": batch * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else None,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "knn_accuracy": accuracy,
        "steps": len(times),
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
