"""The parts of benchmarks/gpu.sh that are easier in Python (standard library only, Python ≥ 3.11,
so that any python of the GPU machine will do):

    gpu_helper.py cifar DIR PER_FILE              random CIFAR-10 binary batches (5 + test)
    gpu_helper.py idx-subset SRC DST TRAIN TEST   the first images of an IDX data set, gzipped
    gpu_helper.py unpack-deb DEB DEST             a .deb's files under DEST (where dpkg is missing)
    gpu_helper.py rate RUN                        median images/s after warm-up of RUN's step log
    gpu_helper.py epochs RATE STEPS BATCH SECONDS three stage lengths that fill SECONDS
    gpu_helper.py summary WORK OUT_FILE           every figure of the check, side by side
"""

import gzip
import io
import json
import math
import re
import statistics
import struct
import sys
import tarfile
from pathlib import Path

# Steps at the start of a timed run left out of the median: allocators, cuDNN and the page
# cache warm up there.
WARMUP_MAX = 10


# --- data ------------------------------------------------------------------------------------


def cifar(folder, per_file):
    """CIFAR-10's binary layout, one label byte and 3×32×32 pixel bytes per record, random."""
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        rec = bytearray(os.urandom(per_file * 3073))
        for r in range(per_file):
            rec[r * 3073] %= 10
        (folder / name).write_bytes(rec)


def idx_subset(src, dst, n_train, n_test):
    """The first n images (and labels) of each IDX split, as gzipped IDX files."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{split}-{kind}"
            path = src / name if (src / name).exists() else src / f"{name}.gz"
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
            dims = raw[3]
            shape = list(struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims]))
            row = math.prod(shape[1:])
            shape[0] = min(n, shape[0])
            head = raw[:4] + struct.pack(f">{dims}I", *shape)
            body = raw[4 + 4 * dims : 4 + 4 * dims + shape[0] * row]
            (dst / f"{name}.gz").write_bytes(gzip.compress(head + body, compresslevel=1))


def unpack_deb(deb, dest):
    """A .deb is an `ar` archive; its data.tar.* member holds the files, relative to /."""
    raw = Path(deb).read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos : pos + 16].decode().strip()
        size = int(raw[pos + 48 : pos + 58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                # The "tar" filter keeps everything under dest; absolute symlink targets stay.
                extra = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
                tar.extractall(dest, **extra)
            return
        pos += 60 + size + (size & 1)
    raise SystemExit(f"{deb}: no data.tar member")


# --- figures ---------------------------------------------------------------------------------


def step_rows(run):
    """The step log's rows; only step, loss and images_per_s are relied on."""
    path = Path(run) / "train-log.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a timeout
        if isinstance(row, dict) and row.get("images_per_s"):
            rows.append(row)
    return rows


def timed(rows):
    """The rows after warm-up: the first third of the steps, at most WARMUP_MAX, and at least
    the first one."""
    skip = max(1, min(WARMUP_MAX, len(rows) // 3))
    return rows[skip:]


def median_rate(run):
    rows = timed(step_rows(run))
    return statistics.median(r["images_per_s"] for r in rows) if rows else None


def epochs(rate, steps, batch, seconds):
    """Stage lengths in the proportions of configs/cpu.toml (12 : 2 : 6) whose training takes
    about `seconds` at `rate` images/s."""
    per_epoch = steps * batch / rate
    total = max(3, min(600, int(seconds / per_epoch)))
    s1 = max(1, round(total * 0.6))
    s2 = max(1, round(total * 0.1))
    s3 = max(1, total - s1 - s2)
    return [s1, s2, s3]


def read_stages(work):
    """stages.tsv: name, exit status, seconds, time limit, one line per stage that ran."""
    stages = {}
    path = Path(work) / "stages.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, seconds, limit = line.split("\t")
            stages[name] = {"rc": int(rc), "seconds": int(seconds), "limit": int(limit)}
    return stages


def log_text(work, name):
    path = Path(work) / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def fmt(value, spec, missing="n/a"):
    return format(value, spec) if value is not None else missing


def status_word(stage):
    if stage is None:
        return "not run"
    if stage["rc"] == 0:
        return "ok"
    if stage["rc"] in (124, 137):
        return f"timed out after {stage['limit']} s"
    return f"failed (exit {stage['rc']})"


def summary(work, out_file):
    work = Path(work)
    stages = read_stages(work)
    params = json.loads((work / "params.json").read_text())
    lines = [(work / "header.txt").read_text().rstrip(), ""]
    figures = {}  # key = value lines for scripts (tests/gpu_script.rs reads them)

    # Epoch time on the paper config: tsimcne-dist's step log and the script's JSON.
    rows = []
    spe = params["cifar_steps_per_epoch"]
    batch = params["cifar_batch"]
    for prog, label in (("tsimcne", "tsimcne-dist"), ("torch", "pytorch-script")):
        for prec in ("f32", "bf16"):
            name = f"{prog}-{prec}"
            run = work / "runs" / name
            stage = stages.get(name)
            median = mean = steps = None
            if prog == "tsimcne":
                logged = re.search(r"steps_per_epoch=(\d+)", log_text(work, name))
                if logged:
                    spe = int(logged.group(1))
                all_rows = step_rows(run)
                after = all_rows[1:]
                steps = len(all_rows)
                median = median_rate(run)
                if after:  # as the script counts: every step after the first
                    mean = batch * len(after) / sum(batch / r["images_per_s"] for r in after)
            else:
                path = work / "runs" / f"{name}.json"
                if path.exists():
                    result = json.loads(path.read_text())
                    mean, steps = result.get("images_per_s"), result.get("steps")
            rate = median if median is not None else mean
            epoch_s = spe * batch / rate if rate else None
            figures[f"{name}_images_per_s"] = mean
            if prog == "tsimcne":
                figures[f"{name}_median_images_per_s"] = median
            figures[f"{name}_epoch_s"] = epoch_s
            rows.append((label, prec, median, mean, epoch_s, steps, status_word(stage)))
    lines.append(
        f"Epoch time, {params['cifar_what']}: {spe} steps/epoch × step time "
        f"(tsimcne-dist: its median step after warm-up; the script: its mean)"
    )
    lines.append(
        f"  {'program':<15} {'prec':<5} {'median img/s':>12} {'mean img/s':>11} "
        f"{'epoch s':>8} {'steps':>6}  status"
    )
    for label, prec, median, mean, epoch_s, steps, word in rows:
        lines.append(
            f"  {label:<15} {prec:<5} {fmt(median, '12.1f'):>12} {fmt(mean, '11.1f'):>11} "
            f"{fmt(epoch_s, '8.2f'):>8} {fmt(steps, '6d'):>6}  {word}"
        )

    def ratio(a, b):
        x, y = figures.get(a), figures.get(b)
        return x / y if x and y else None

    for prec in ("f32", "bf16"):
        figures[f"ratio_{prec}"] = ratio(f"tsimcne-{prec}_images_per_s", f"torch-{prec}_images_per_s")
    lines.append(
        "  tsimcne-dist ÷ pytorch-script, mean images/s: "
        f"f32 {fmt(figures['ratio_f32'], '.2f')}, bf16 {fmt(figures['ratio_bf16'], '.2f')}; "
        "bf16 ÷ f32: "
        f"tsimcne-dist {fmt(ratio('tsimcne-bf16_images_per_s', 'tsimcne-f32_images_per_s'), '.2f')}, "
        f"pytorch-script {fmt(ratio('torch-bf16_images_per_s', 'torch-f32_images_per_s'), '.2f')}"
    )
    lines.append("")

    # NCCL at world size 1.
    stage = stages.get("nccl")
    text = log_text(work, "nccl")
    nccl_steps = len(step_rows(work / "runs" / "nccl"))
    if params["device"] != "cuda":
        seen = "NCCL not used on device=cpu (rehearsal: the MPI collectives ran)"
    elif "Init COMPLETE" in text:
        seen = "NCCL initialised its communicator ('Init COMPLETE' in the log)"
        version = re.search(r"NCCL version (\S+)", text)
        if version:
            seen += f", NCCL {version.group(1)}"
    elif "NCCL INFO" in text:
        seen = "NCCL logged, but no 'Init COMPLETE' line"
    else:
        seen = "no NCCL log line seen"
    nccl = f"{status_word(stage)}, {nccl_steps} steps, {seen}"
    if stage is not None and stage["rc"] == 0 and nccl_steps > 0:
        nccl = "ran: " + nccl
    figures["nccl"] = nccl
    figures["nccl_images_per_s"] = median_rate(work / "runs" / "nccl")
    lines.append(f"NCCL at world size 1 ({params['fashion_what']}, max_steps): {nccl}")
    lines.append(f"  median images/s {fmt(figures['nccl_images_per_s'], '.1f')}")
    lines.append("")

    # Fashion-MNIST quality run.
    stage = stages.get("fashion")
    metrics_path = work / "runs" / "fashion" / "metrics.json"
    accuracy = None
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("knn_accuracy") is not None:
            accuracy = 100.0 * metrics["knn_accuracy"]
    figures["fashion_knn_accuracy_percent"] = accuracy
    figures["fashion_epochs"] = params.get("fashion_epochs")
    seconds = stage["seconds"] if stage else None
    lines.append(
        f"Fashion-MNIST quality run ({params['fashion_what']}, epochs {params.get('fashion_epochs')}): "
        f"kNN accuracy {fmt(accuracy, '.2f')} %, {fmt(seconds, 'd')} s, {status_word(stage)}"
    )
    lines.append("")

    lines.append("Stages (exit status, seconds, time limit):")
    for name, s in stages.items():
        lines.append(f"  {name:<14} {s['rc']:>4} {s['seconds']:>5} s  (limit {s['limit']} s)")
    lines.append("")
    lines.append("Figures:")
    for key, value in figures.items():
        shown = f"{value:.4f}" if isinstance(value, float) else ("n/a" if value is None else value)
        lines.append(f"  {key} = {shown}")

    # The end of every failed stage's log here; the whole logs are in logs.tar.gz.
    for name, s in stages.items():
        if s["rc"] != 0:
            tail = log_text(work, name).splitlines()[-40:]
            lines.append("")
            lines.append(f"--- {name}: exit {s['rc']}, last {len(tail)} lines of logs/{name}.log")
            lines.extend(tail)
    Path(out_file).write_text("\n".join(lines) + "\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "cifar":
        cifar(args[0], int(args[1]))
    elif cmd == "idx-subset":
        idx_subset(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "unpack-deb":
        unpack_deb(args[0], args[1])
    elif cmd == "rate":
        rate = median_rate(args[0])
        if rate is not None:
            print(f"{rate:.3f}")
    elif cmd == "epochs":
        print(json.dumps(epochs(float(args[0]), int(args[1]), int(args[2]), float(args[3])), separators=(",", ":")))
    elif cmd == "summary":
        summary(args[0], args[1])
    else:
        raise SystemExit(f"unknown command {cmd}; see the docstring")


if __name__ == "__main__":
    main()
