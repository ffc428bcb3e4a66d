"""Scaling study: tsimcne-dist over world sizes × global batches, with the learning-rate rule
and optimizer a config chooses; a table (CSV and Markdown) and PNG plots.

    python benchmarks/scale.py --data DIR [--config FILE] [--ranks 1,2] [--batches 256,512,1024]
        [--steps 8] [--gpus] [--set key=value ...] [--accuracy-epochs "[12,2,6]"] [--out DIR]

Each (ranks, batch) point is one short run (`--steps` steps, the first left out as warm-up),
launched with launch/local.sh: CPU ranks get one thread each, so that N ranks are N times the
hardware of one; `--gpus` uses one GPU per rank. Per point: images/s (median over steps),
seconds per step in data, compute and communication (slowest rank), the time one epoch of the
whole training split would take, and scaling efficiency = images/s ÷ (ranks × images/s of one
rank at the same per-rank batch) where that single-rank point was measured (weak scaling, the
large-batch case). With --accuracy-epochs, each batch size is also trained through a whole
schedule on the largest world size and its map's kNN accuracy is reported.

Writes OUT/scaling.csv, OUT/scaling.md and OUT/{images_per_s,efficiency,epoch_time,knn}.png.

The accuracy study (what a batch-size study is for: does the map stay as good as the batch
grows, and with which learning-rate rule?):

    python benchmarks/scale.py --accuracy --data DIR [--label NAME] --epochs "[6,1,3]"
        [--batches 256,...,16384] [--rules linear,sqrt,fixed] [--optimizers sgd,lars]
        [--lars-lr 0.3] [--ranks 2] [--gpus] [--config FILE] [--set key=value ...]

trains one whole schedule per optimizer × rule × global batch (the same epochs for all) on the
largest world size of --ranks and writes OUT/accuracy-NAME.{csv,md,png}: the map's kNN
accuracy, the final loss, images/s and time of each, and which runs diverged. Finished runs are
read back, not run again. The same command runs on GPUs with --gpus.
"""

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(ranks, batch, args, sets, folder, steps=None, must_succeed=True):
    """One tsimcne-dist run through launch/local.sh; returns its run folder (and, when it may
    fail, the finished process too)."""
    kind = ["--gpus", str(ranks)] if args.gpus else ["--cpu", str(ranks)]
    cmd = ["bash", f"{ROOT}/launch/local.sh", *kind, "--", "train", "--data", args.data, "--out", folder]
    if args.config:
        cmd += ["--config", args.config]
    settings = [f"batch_size={batch}", *sets]
    if not args.gpus:
        settings.append("threads=1")
    if steps is not None:
        # Enough images for the steps, so that no epoch boundary falls inside the timing; the
        # step log split into data, compute, wait and communication.
        settings += [f"max_steps={steps}", f"train_limit={batch * steps}", "phase_timing=true"]
    for s in settings:
        cmd += ["--set", s]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if not args.gpus:
        env["CORES"] = str(ranks)  # one thread per rank
    subprocess.run(["rm", "-rf", folder], check=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if not must_succeed:
        return folder, done
    if done.returncode != 0:
        sys.exit(f"ranks {ranks}, batch {batch} failed:\n{done.stderr[-2000:]}")
    return folder


def measure(folder, n_images):
    rows = [json.loads(line) for line in open(f"{folder}/train-log.jsonl")][1:]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    ips = med("images_per_s")
    return {
        "images_per_s": ips,
        "data_s": med("data_s"),
        "compute_s": med("compute_s"),
        "wait_s": med("wait_s"),
        "comm_s": med("comm_s"),
        "epoch_s": n_images / ips,
    }


def training_images(data, config):
    """Images in one epoch of a full run: the training split (and the test split if the config
    trains on it), as tsimcne-dist counts them."""
    sizes = {}
    for name in os.listdir(data):
        path = os.path.join(data, name)
        if name.startswith("data_batch_"):
            sizes["train"] = sizes.get("train", 0) + os.path.getsize(path) // 3073
        elif name == "test_batch.bin":
            sizes["test"] = os.path.getsize(path) // 3073
        elif name.startswith(("train-labels-idx1", "t10k-labels-idx1")):
            # The count is the second big-endian word of the labels file's header.
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                count = int.from_bytes(f.read(8)[4:], "big")
            sizes["train" if name.startswith("train") else "test"] = count
    cfg = tomllib.load(open(config, "rb")) if config else {}
    n = (sizes.get("train") or 0) + ((sizes.get("test") or 0) if cfg.get("train_on_test") else 0)
    limit = cfg.get("train_limit", 0)
    return min(n, limit) if limit else n


RULE_COLOURS = {"linear": "tab:blue", "sqrt": "tab:orange", "fixed": "tab:green"}
OPT_STYLES = {"sgd": "-", "lars": "--"}


def accuracy_study(args):
    """One whole schedule (`--epochs`) per optimizer × learning-rate rule × global batch, on the
    largest world size of --ranks; the map's kNN accuracy, the final loss, images/s and time of
    each. A run whose folder already holds its metrics is read, not run again (an interrupted
    study resumes). A run that diverges is kept in the table with its error."""
    world = max(int(r) for r in args.ranks.split(","))
    label = args.label or os.path.basename(os.path.normpath(args.data))
    rows = []
    for opt in args.optimizers.split(","):
        for rule in args.rules.split(","):
            for b in (int(x) for x in args.batches.split(",")):
                folder = f"{args.out}/runs/{label}-{opt}-{rule}-b{b}"
                sets = [*args.sets, f"epochs={args.epochs}", f"optim.optimizer={opt}", f"optim.lr_rule={rule}"]
                if opt == "lars" and args.lars_lr is not None:
                    sets.append(f"optim.lr={args.lars_lr}")
                row = {"dataset": label, "optimizer": opt, "rule": rule, "batch": b, "ranks": world}
                metrics = f"{folder}/metrics.json"
                if not os.path.exists(metrics):
                    start = time.time()
                    _, done = run(world, b, args, sets, folder, must_succeed=False)
                    row["seconds"] = time.time() - start
                    json.dump({"seconds": row["seconds"], "returncode": done.returncode, "stderr_tail": done.stderr[-3000:]}, open(f"{folder}/study.json", "w"))
                study = json.load(open(f"{folder}/study.json"))
                row["seconds"] = study["seconds"]
                steps = [json.loads(line) for line in open(f"{folder}/train-log.jsonl")] if os.path.exists(f"{folder}/train-log.jsonl") else []
                row["steps"] = len(steps)
                row["final_loss"] = steps[-1]["loss"] if steps else None
                row["images_per_s"] = statistics.median(s["images_per_s"] for s in steps[1:]) if len(steps) > 1 else None
                cfg = tomllib.load(open(f"{folder}/config.toml", "rb")) if os.path.exists(f"{folder}/config.toml") else {}
                row["peak_lr"] = cfg.get("optim", {}).get("lr", 0.0) * {"linear": b / 256, "sqrt": (b / 256) ** 0.5, "fixed": 1.0}[rule]
                if os.path.exists(metrics):
                    row["knn_accuracy"] = json.load(open(metrics))["knn_accuracy"]
                    row["status"] = "ok"
                else:
                    lines = [ln for ln in study["stderr_tail"].splitlines() if ln.startswith("tsimcne-dist:")]
                    row["knn_accuracy"] = None
                    row["status"] = lines[-1] if lines else f"exit {study['returncode']}"
                rows.append(row)
                knn = row["knn_accuracy"]
                print(f"{label} {opt} {rule} {b}: {'–' if knn is None else f'{100 * knn:.1f} %'} in {row['seconds']:.0f} s", flush=True)
    write_accuracy(rows, args.out, label)


def write_accuracy(rows, out, label):
    keys = ["dataset", "optimizer", "rule", "batch", "ranks", "peak_lr", "steps", "knn_accuracy", "final_loss", "images_per_s", "seconds", "status"]
    with open(f"{out}/accuracy-{label}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    batches = sorted({r["batch"] for r in rows})
    lines = ["| optimizer | lr rule | " + " | ".join(f"{b:,}" for b in batches) + " |", "| --- | --- |" + " --- |" * len(batches)]
    for opt in OPT_STYLES:
        for rule in RULE_COLOURS:
            sel = {r["batch"]: r for r in rows if r["optimizer"] == opt and r["rule"] == rule}
            if not sel:
                continue
            cells = []
            for b in batches:
                r = sel.get(b)
                if r is None:
                    cells.append("")
                elif r["knn_accuracy"] is None:
                    cells.append("diverged" if "not finite" in r["status"] else "failed")
                else:
                    cells.append(f"{100 * r['knn_accuracy']:.1f}")
            lines.append(f"| {opt.upper()} | {rule} | " + " | ".join(cells) + " |")
    lines += ["", "| optimizer | lr rule | global batch | peak lr | steps | kNN | final loss | images/s | time (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        knn = "–" if r["knn_accuracy"] is None else f"{100 * r['knn_accuracy']:.1f} %"
        lines.append(
            f"| {r['optimizer'].upper()} | {r['rule']} | {r['batch']:,} | {r['peak_lr']:.3g} | {r['steps']} | {knn} | "
            f"{fmt(r['final_loss'], '.3f')} | {fmt(r['images_per_s'], '.0f')} | {r['seconds']:.0f} |"
        )
    open(f"{out}/accuracy-{label}.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    for opt, style in OPT_STYLES.items():
        for rule, colour in RULE_COLOURS.items():
            sel = sorted((r for r in rows if r["optimizer"] == opt and r["rule"] == rule), key=lambda r: r["batch"])
            if not sel:
                continue
            xs = [r["batch"] for r in sel]
            ys = [None if r["knn_accuracy"] is None else 100 * r["knn_accuracy"] for r in sel]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], style, marker="o", color=colour, label=f"{opt.upper()}, {rule}")
            for x, y in zip(xs, ys):
                if y is None:
                    ax.plot(x, 10, "x", color=colour, ms=8)
    ax.axhline(10, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch")
    ax.set_ylabel("2-D map kNN accuracy (%)")
    ax.set_title(f"{label}: accuracy against batch (× at 10 %: diverged)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(f"{out}/accuracy-{label}.png")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batches", default="256,512,1024")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--gpus", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--accuracy-epochs")
    ap.add_argument("--out", default=f"{ROOT}/benchmarks/out/scale")
    ap.add_argument("--accuracy", action="store_true", help="the accuracy study: whole schedules over optimizers × lr rules × batches")
    ap.add_argument("--epochs", help="the accuracy study's epochs per stage, e.g. [6,1,3]")
    ap.add_argument("--rules", default="linear,sqrt,fixed")
    ap.add_argument("--optimizers", default="sgd,lars")
    ap.add_argument("--lars-lr", type=float, help="LARS's rate per 256 images (default: the config's, as SGD's)")
    ap.add_argument("--label", help="the data set's name in the accuracy study's files (default: the folder's name)")
    args = ap.parse_args()
    if args.accuracy:
        if not args.epochs:
            sys.exit("--accuracy needs --epochs, e.g. --epochs '[6,1,3]'")
        os.makedirs(args.out, exist_ok=True)
        accuracy_study(args)
        return
    ranks = [int(r) for r in args.ranks.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    os.makedirs(args.out, exist_ok=True)
    n_images = training_images(args.data, args.config)

    points = []
    for b in batches:
        for w in ranks:
            if b % w:
                continue
            folder = run(w, b, args, args.sets, f"{args.out}/runs/r{w}-b{b}", steps=args.steps)
            points.append({"ranks": w, "batch": b, "per_rank": b // w, **measure(folder, n_images)})
            print(f"ranks {w}, batch {b}: {points[-1]['images_per_s']:.0f} images/s", flush=True)
    single = {p["per_rank"]: p["images_per_s"] for p in points if p["ranks"] == 1}
    for p in points:
        base = single.get(p["per_rank"])
        p["efficiency"] = p["images_per_s"] / (p["ranks"] * base) if base else None
    if args.accuracy_epochs:
        for b in batches:
            w = max(r for r in ranks if b % r == 0)
            folder = run(w, b, args, [*args.sets, f"epochs={args.accuracy_epochs}"], f"{args.out}/runs/acc-b{b}")
            knn = json.load(open(f"{folder}/metrics.json"))["knn_accuracy"]
            for p in points:
                if p["batch"] == b:
                    p["knn_accuracy"] = knn
    write_tables(points, args.out)
    plot(points, args.out, ranks, batches)


def write_tables(points, out):
    keys = ["ranks", "batch", "per_rank", "images_per_s", "efficiency", "epoch_s", "data_s", "compute_s", "wait_s", "comm_s", "knn_accuracy"]
    with open(f"{out}/scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(points)
    fmt = lambda v, d: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        "| ranks | global batch | per rank | images/s | efficiency | epoch (s) | data (ms) | compute (ms) | wait (ms) | comm (ms) | kNN |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        knn = p.get("knn_accuracy")
        lines.append(
            f"| {p['ranks']} | {p['batch']} | {p['per_rank']} | {p['images_per_s']:.0f} | {fmt(p['efficiency'], 2)} "
            f"| {p['epoch_s']:.0f} | {1e3 * p['data_s']:.1f} | {1e3 * p['compute_s']:.0f} | {1e3 * p['wait_s']:.1f} "
            f"| {1e3 * p['comm_s']:.1f} "
            f"| {'–' if knn is None else f'{100 * knn:.1f} %'} |"
        )
    open(f"{out}/scaling.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(points, out, ranks, batches):
    def figure(name, ylabel, xs_key, y_key, group_key, ideal=None):
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=150)
        for g in sorted({p[group_key] for p in points}):
            sel = sorted((p for p in points if p[group_key] == g and p.get(y_key) is not None), key=lambda p: p[xs_key])
            if sel:
                ax.plot([p[xs_key] for p in sel], [p[y_key] for p in sel], "o-", label=f"{group_key.replace('_', ' ')} {g}")
        if ideal is not None:
            ax.axhline(ideal, color="grey", ls="--", lw=1, label="ideal")
        ax.set_xlabel(xs_key.replace("_", " "))
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(f"{out}/{name}.png")
        plt.close(fig)

    figure("images_per_s", "images / s", "ranks", "images_per_s", "batch")
    figure("efficiency", "scaling efficiency", "ranks", "efficiency", "per_rank", ideal=1.0)
    figure("epoch_time", "seconds per epoch", "batch", "epoch_s", "ranks")
    if any(p.get("knn_accuracy") is not None for p in points):
        figure("knn", "2-D kNN accuracy", "batch", "knn_accuracy", "ranks")


if __name__ == "__main__":
    main()
