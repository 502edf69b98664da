"""The tar reader of vt_drloc.data.tar_folder against timm's ``ReaderImageInTar``, on the offline
CIFAR-10 archive: time to index the archive (60,000 images) and to read random members' bytes.

    python bench/tar_reader.py [--archive ../shared/data/cifar10.tar] [--reads 5000]

Prints a table and writes bench/results/tar_reader.json. Each reader's index is built in a fresh
state (no cache); reads are the same random members for both, in the same order.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from timm.data.readers.reader_image_in_tar import ReaderImageInTar

from vt_drloc.data import tar_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archive", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.tar")
    )
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tar_reader.json"))
    args = parser.parse_args()

    tar_folder._INDEX_CACHE.clear()
    t0 = time.perf_counter()
    index = tar_folder.read_tar_index(args.archive)
    ours_index_s = time.perf_counter() - t0
    members = [i for i, name in enumerate(index.names) if name.endswith(".jpg")]
    store = tar_folder.TarStore(
        args.archive, [index.names[i] for i in members], index.offsets[members], index.sizes[members]
    )

    t0 = time.perf_counter()
    timm_reader = ReaderImageInTar(args.archive)
    timm_index_s = time.perf_counter() - t0
    assert len(timm_reader) == len(store), (len(timm_reader), len(store))

    picks = random.Random(0).sample(range(len(store)), min(args.reads, len(store)))
    t0 = time.perf_counter()
    ours_bytes = sum(len(store.read_bytes(i)) for i in picks)
    ours_read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    timm_bytes = sum(len(timm_reader[i][0].read()) for i in picks)
    timm_read_s = time.perf_counter() - t0

    rows = [
        ("vt_drloc TarStore", ours_index_s, ours_read_s, ours_bytes),
        ("timm ReaderImageInTar", timm_index_s, timm_read_s, timm_bytes),
    ]
    print(f"archive {args.archive}: {len(store):,} images; {len(picks):,} random reads\n")
    print("| reader | index s | reads / s |")
    print("|---|---|---|")
    for name, index_s, read_s, _ in rows:
        print(f"| {name} | {index_s:.2f} | {len(picks) / read_s:,.0f} |")
    print(
        f"\nratio timm / ours: index {timm_index_s / ours_index_s:.1f}x, reads "
        f"{ours_read_s and timm_read_s / ours_read_s:.1f}x"
    )
    result = {
        "archive": args.archive,
        "images": len(store),
        "reads": len(picks),
        "rows": [{"reader": n, "index_s": i, "read_s": r, "bytes": b} for n, i, r, b in rows],
        "index_ratio_timm_over_ours": timm_index_s / ours_index_s,
        "read_ratio_timm_over_ours": timm_read_s / ours_read_s,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
