"""The step model of docs/scaling.md against ranks on emulated links (benchmarks/links.sh).

    .venv/bin/python benchmarks/links.py OUT [--fit-on tiny|2]

OUT holds one folder per run, NET-RANKS-RATE (e.g. tiny-4-1gbit), each with the run folder
`run/` of a few steps timed by phase (the first step left out; medians of the rest; each phase
the slowest rank's). Per link, the model's α (latency per hop) and β (bandwidth) are fitted,
by least squares on relative error, to the three collectives of the runs chosen by --fit-on:
the small network's (`tiny`, at 2 and 4 ranks: the default) or the 2-rank runs' (`2`, both
networks):

    all-gather      (W−1)/W · 2B·d·4 bytes / β  + 2·log2(W)·α     the projections
    reduce-scatter  (W−1)/W · 2B·d·4 bytes / β  + 2·log2(W)·α     their gradients
    all-reduce      2(W−1)/W · 4(P+2) bytes / β + 2·log2(W)·α     the parameters' gradients

and then predict the other runs' collectives and step time on the same link (their measured
data, compute and wait time plus the predicted communication). Writes OUT/links-FIT.csv,
OUT/links-FIT.md and OUT/{collectives,predicted_steps}-FIT.png.
"""

import argparse
import csv
import json
import math
import os
import statistics
import struct
import tomllib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLLECTIVES = ("gather", "scatter", "reduce")
RATE_ORDER = ["200mbit", "1gbit", "10gbit", "none"]


def trained_floats(run):
    """Floats trained in stage 1 (trunk, hidden layer, 128-D readout), read from the newest
    checkpoint's safetensors header."""
    ck = sorted(d for d in os.listdir(f"{run}/checkpoints") if d.startswith("step-"))[-1]
    with open(f"{run}/checkpoints/{ck}/state.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        top = name.split(".")[0]
        if top in ("backbone", "hidden", "pretrain_out") and "running_" not in name and "num_batches" not in name:
            total += math.prod(t["shape"])
    return total


def measure(folder):
    net, ranks, rate = os.path.basename(folder).rsplit("-", 2)
    run = f"{folder}/run"
    cfg = tomllib.load(open(f"{run}/config.toml", "rb"))
    batch = cfg["batch_size"]
    dim = cfg.get("model", {}).get("pretrain_dim", 128)
    steps = [json.loads(line) for line in open(f"{run}/train-log.jsonl")][1:]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    w = int(ranks)
    frac = (w - 1) / w
    p = trained_floats(run)
    row = {
        "net": net,
        "ranks": w,
        "rate": rate,
        "batch": batch,
        "params": p,
        "step_s": statistics.median(batch / s["images_per_s"] for s in steps),
        "other_s": med("data_s") + med("compute_s") + med("wait_s"),
        "comm_s": med("comm_s"),
    }
    sizes = {"gather": frac * 2 * batch * dim * 4, "scatter": frac * 2 * batch * dim * 4, "reduce": 2 * frac * 4 * (p + 2)}
    for c in COLLECTIVES:
        row[f"{c}_s"] = med(f"{c}_s")
        row[f"{c}_bytes"] = sizes[c]
    row["hops"] = 2 * math.log2(w)
    return row


def fit(points):
    """α, β minimising the relative error of α·hops + bytes/β over `points` (hops, bytes, s)."""
    a = np.array([[h / t, b / t] for h, b, t in points])
    coef, *_ = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)
    alpha, inv_beta = coef
    return alpha, 1 / inv_beta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--fit-on", default="tiny", choices=["tiny", "2"])
    args = ap.parse_args()
    out, suffix = args.out, args.fit_on
    fitted = (lambda r: r["net"] == "tiny") if args.fit_on == "tiny" else (lambda r: r["ranks"] == 2)  # noqa: E731
    what = "the tiny network's collectives (2 and 4 ranks)" if args.fit_on == "tiny" else "the 2-rank runs' collectives (both networks)"
    rows = [measure(f"{out}/{d}") for d in sorted(os.listdir(out)) if os.path.isfile(f"{out}/{d}/run/train-log.jsonl")]
    rows.sort(key=lambda r: (not fitted(r), r["net"], r["ranks"], RATE_ORDER.index(r["rate"])))
    rates = [r for r in RATE_ORDER if any(x["rate"] == r for x in rows)]
    fits = {}
    for rate in rates:
        pts = [(r["hops"], r[f"{c}_bytes"], r[f"{c}_s"]) for r in rows if r["rate"] == rate and fitted(r) for c in COLLECTIVES]
        fits[rate] = fit(pts)
    for r in rows:
        alpha, beta = fits[r["rate"]]
        r["comm_model_s"] = sum(alpha * r["hops"] + r[f"{c}_bytes"] / beta for c in COLLECTIVES)
        r["step_model_s"] = r["other_s"] + r["comm_model_s"]
        r["step_error"] = r["step_model_s"] / r["step_s"] - 1
        r["comm_error"] = r["comm_model_s"] / r["comm_s"] - 1

    keys = ["net", "ranks", "rate", "batch", "params", "gather_s", "scatter_s", "reduce_s", "comm_s", "other_s", "step_s", "comm_model_s", "step_model_s", "step_error", "comm_error"]
    with open(f"{out}/links-{suffix}.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)

    ms = lambda s: f"{1e3 * s:.1f}"  # noqa: E731
    lines = ["## The link settings and each collective's time (ms; medians, slowest rank)", ""]
    lines += ["| network | ranks | link | global batch | all-gather | reduce-scatter | all-reduce | comm | comm share of step | step |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['ranks']} | {r['rate']} | {r['batch']} | {ms(r['gather_s'])} | {ms(r['scatter_s'])} | "
            f"{ms(r['reduce_s'])} | {ms(r['comm_s'])} | {100 * r['comm_s'] / r['step_s']:.0f} % | {ms(r['step_s'])} |"
        )
    lines += ["", f"## α and β fitted per link on {what}", ""]
    lines += ["| link | α (µs per hop) | β (Gbit/s) |", "| --- | --- | --- |"]
    for rate in rates:
        alpha, beta = fits[rate]
        lines.append(f"| {rate} | {1e6 * alpha:.0f} | {8 * beta / 1e9:.2f} |")
    lines += ["", "## The model against the measured step (ms)", ""]
    lines += ["| network | ranks | link | comm measured | comm model | step measured | step model | step error | fitted on |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['ranks']} | {r['rate']} | {ms(r['comm_s'])} | {ms(r['comm_model_s'])} | {ms(r['step_s'])} | "
            f"{ms(r['step_model_s'])} | {100 * r['step_error']:+.0f} % | {'yes' if fitted(r) else 'no'} |"
        )
    held = [r for r in rows if not fitted(r)]
    if held:
        worst = max(held, key=lambda r: abs(r["step_error"]))
        lines += ["", f"Settings not fitted on: {len(held)}; the largest step error {100 * worst['step_error']:+.0f} % "
                  f"({worst['net']}, {worst['ranks']} ranks, {worst['rate']}); within 20 %: "
                  f"{sum(abs(r['step_error']) <= 0.2 for r in held)} of {len(held)}."]
    open(f"{out}/links-{suffix}.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = dict(zip(rates, ["tab:red", "tab:orange", "tab:green", "tab:blue"]))
    marks = {"gather": "o", "scatter": "s", "reduce": "^"}
    xs = np.logspace(3, 8.5, 50)
    for rate in rates:
        alpha, beta = fits[rate]
        for w, style in ((2, "-"), (4, ":")):
            ax.plot(xs, 1e3 * (alpha * 2 * math.log2(w) + xs / beta), style, color=colours[rate], lw=1)
        for r in rows:
            if r["rate"] != rate:
                continue
            for c in COLLECTIVES:
                ax.scatter(r[f"{c}_bytes"], 1e3 * r[f"{c}_s"], color=colours[rate], marker=marks[c],
                           facecolors="none" if not fitted(r) else colours[rate], s=28)
        ax.plot([], [], color=colours[rate], label=f"link {rate}")
    for c, m in marks.items():
        ax.scatter([], [], color="grey", marker=m, label=c)
    ax.set(xscale="log", yscale="log", xlabel="bytes per rank in the model ((W−1)/W · size; all-reduce 2×)",
           ylabel="time (ms)", title="Collectives on emulated links: measured and fitted\n(filled: fitted on; open: predicted; line 2 ranks, dotted 4)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/collectives-{suffix}.png", dpi=120)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for r in rows:
        ax.scatter(1e3 * r["step_s"], 1e3 * r["step_model_s"], color=colours[r["rate"]], marker="o" if r["ranks"] == 2 else "s",
                   facecolors="none" if not fitted(r) else colours[r["rate"]])
    lo = 0.5 * 1e3 * min(r["step_s"] for r in rows)
    hi = 2 * 1e3 * max(r["step_s"] for r in rows)
    grid = np.array([lo, hi])
    ax.plot(grid, grid, "k-", lw=0.8)
    ax.fill_between(grid, 0.8 * grid, 1.2 * grid, color="grey", alpha=0.2, label="±20 %")
    for rate in rates:
        ax.scatter([], [], color=colours[rate], label=rate)
    ax.set(xscale="log", yscale="log", xlabel="measured step (ms)", ylabel="model (ms)",
           title="Step time: model against measurement\n(open: not fitted on; circle 2 ranks, square 4)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/predicted_steps-{suffix}.png", dpi=120)


if __name__ == "__main__":
    main()
