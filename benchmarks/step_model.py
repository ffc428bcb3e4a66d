"""A model of one tsimcne-dist step on W devices, and the scaling efficiency it predicts.

    python benchmarks/step_model.py [--images-per-s 2500,10000] [--per-device-batch 128]
        [--fit benchmarks/out/scale/scaling.csv]

One step with b images per device and global batch B = W·b, no overlap of compute and
communication (tsimcne-dist runs them one after the other):
    compute      b / r                       r: one device's images/s (measured)
    all-gather   (W−1)/W · 2B·d·4 bytes / β   the projections, d = 128 floats per view
    reduce-scat. (W−1)/W · 2B·d·4 bytes / β   their gradients, each rank keeping its own rows
    all-reduce   2(W−1)/W · 4P bytes / β      the parameter gradients, P = 11.83 M (ResNet-18
                                              11.17 M + head 0.66 M), plus the loss and flags
    latency      3 · 2·log2(W) · α            three collectives, tree-shaped at scale
    loss         12·b·B·d / F                 the rows-vs-all matmuls forward and backward
β is the bus bandwidth per device of the slowest link a ring crosses: NVLink inside a node of 8,
InfiniBand between nodes. Efficiency = time of one device's step at b / time at W.
With --fit, α and β of this machine's MPI are fitted to the comm seconds of the CPU runs at
two ranks and the fit is checked against every measured point.
"""

import argparse
import csv
import math

D = 128
PARAMS = 11.83e6
LINKS = {  # name: (bus bandwidth per device in bytes/s, latency per hop in s)
    "NVLink (8 GPUs, NVSwitch)": (350e9, 8e-6),
    "InfiniBand NDR 400 Gb/s per GPU": (45e9, 10e-6),
    "InfiniBand HDR 200 Gb/s per GPU": (22e9, 10e-6),
}
FLOPS = 200e12  # effective bf16 matmul rate for the loss (an H100-class device)


def comm_seconds(w, b, beta, alpha, params=PARAMS):
    if w == 1:
        return 0.0
    z = 2 * w * b * D * 4
    frac = (w - 1) / w
    return 2 * frac * z / beta + 2 * frac * 4 * params / beta + 3 * 2 * math.log2(w) * alpha


def step_seconds(w, b, rate, beta, alpha):
    return b / rate + comm_seconds(w, b, beta, alpha) + 12 * b * w * b * D / FLOPS


def predictions(rates, b):
    rows = []
    for rate in rates:
        for w in (8, 64, 512):
            link = "NVLink (8 GPUs, NVSwitch)" if w == 8 else "InfiniBand NDR 400 Gb/s per GPU"
            beta, alpha = LINKS[link]
            t1 = step_seconds(1, b, rate, beta, alpha)
            tw = step_seconds(w, b, rate, beta, alpha)
            rows.append((rate, w, w * b, link, tw * 1e3, comm_seconds(w, b, beta, alpha) * 1e3, t1 / tw))
    print("| images/s of one GPU | GPUs | global batch | slowest link | step (ms) | comm (ms) | efficiency |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rate, w, bb, link, t, c, e in rows:
        print(f"| {rate:.0f} | {w} | {bb} | {link} | {t:.1f} | {c:.1f} | {100 * e:.0f} % |")


def fit(path, params):
    """α, β of this machine's MPI from the CPU points (network of `params` trained floats);
    then every point checked against the fitted model."""
    pts = [p for p in csv.DictReader(open(path)) if int(p["ranks"]) > 1]
    if len(pts) < 2:
        print("(need at least two multi-rank points to fit)")
        return
    # comm = α·k + bytes/β with k = 6·log2(W) and bytes per the model above; least squares.
    xs = []
    for p in pts:
        w, b = int(p["ranks"]), int(p["per_rank"])
        frac = (w - 1) / w
        bytes_ = 2 * frac * 2 * w * b * D * 4 + 2 * frac * 4 * params
        xs.append((6 * math.log2(w), bytes_, float(p["comm_s"])))
    n = len(xs)
    sa = sum(k * k for k, _, _ in xs)
    sb = sum(by * by for _, by, _ in xs)
    sab = sum(k * by for k, by, _ in xs)
    sya = sum(k * y for k, _, y in xs)
    syb = sum(by * y for _, by, y in xs)
    det = sa * sb - sab * sab
    alpha = (sya * sb - syb * sab) / det
    inv_beta = (sa * syb - sab * sya) / det
    print(f"fitted on {n} points: α = {alpha * 1e6:.1f} µs, β = {1 / inv_beta / 1e9:.2f} GB/s")
    print("| ranks | global batch | comm measured (ms) | comm model (ms) |")
    print("| --- | --- | --- | --- |")
    for (k, by, y), p in zip(xs, pts):
        print(f"| {p['ranks']} | {p['batch']} | {1e3 * y:.1f} | {1e3 * (alpha * k + by * inv_beta):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-s", default="2500,10000")
    ap.add_argument("--per-device-batch", type=int, default=128)
    ap.add_argument("--fit")
    ap.add_argument("--fit-params", type=float, default=233e3, help="trained floats of the fitted runs' network (tiny CNN + head: 233 k)")
    args = ap.parse_args()
    predictions([float(r) for r in args.images_per_s.split(",")], args.per_device_batch)
    if args.fit:
        fit(args.fit, args.fit_params)


if __name__ == "__main__":
    main()
