"""t-SNE of the raw pixels, the baseline a t-SimCNE map is read against, scored the way
tsimcne-dist scores its maps: 2-D kNN accuracy (k = 15), fitted on the training split and
scored on the test split, over every image of the data folder.

    python benchmarks/pixel_tsne.py --data DIR [--threads N] [--json OUT.json]

Pixels are scaled to [0, 1] and reduced to 50 principal components first (as usual for t-SNE of
images); openTSNE with its defaults (perplexity 30, PCA initialisation) then embeds them.
"""

import argparse
import time

import numpy as np
from openTSNE import TSNE
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from torch_reference import load_dataset, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = load_dataset(args.data)
    images = np.concatenate([x_train.numpy(), x_test.numpy()])
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255
    reduced = PCA(n_components=50, random_state=0).fit_transform(pixels)
    embedding = np.asarray(TSNE(n_jobs=args.threads, random_state=0).fit(reduced))
    n_train = len(x_train)
    knn = KNeighborsClassifier(n_neighbors=15).fit(embedding[:n_train], y_train.numpy())
    result = {
        "program": "pixel-tsne",
        "knn_accuracy": float(knn.score(embedding[n_train:], y_test.numpy())),
        "total_seconds": time.perf_counter() - started,
        "images": len(pixels),
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
