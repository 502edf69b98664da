"""What the checks before training cost: an archive's SHA-256, its index, and the image checks.

For each offline archive: the SHA-256 of the file against its ``SHA256SUMS`` line, the member index,
and every image checked three ways: the first bytes only (the header check before truncated images
were caught), the default ``verify="header"`` (first and last bytes; a file whose end looks wrong is
decoded), and ``verify="full"`` (decode all). Each timing is the best of ``--reps``; ratios are
within one run.

Prints a table and writes ``bench/results/data_checks.json``.

    python bench/data_checks.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vt_drloc.base.paths import default_data_root
from vt_drloc.data.dataset import verify_samples
from vt_drloc.data.sources import load_tar
from vt_drloc.data.tar_folder import _INDEX_CACHE, _VERIFIED, check_archive_sha256, has_image_magic, read_tar_index

RESULTS = Path(__file__).resolve().parent / "results" / "data_checks.json"


def best_of(reps: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(path: Path, reps: int) -> dict:
    def sha() -> None:
        _VERIFIED.clear()
        assert check_archive_sha256(path), f"no SHA256SUMS line for {path}"

    def index() -> None:
        _INDEX_CACHE.clear()
        read_tar_index(path)

    data = load_tar(path, path.stem, skip_corrupt=False)
    stores = [(s.store, np.arange(len(s))) for s in data.splits.values()]
    images = sum(len(idx) for _, idx in stores)

    def first_bytes() -> None:
        for store, idx in stores:
            for i in idx:
                assert has_image_magic(store.read_bytes(int(i), 32))

    def verify(mode: str) -> Callable[[], None]:
        return lambda: [verify_samples(store, idx, mode, skip_corrupt=False) for store, idx in stores]

    row = {"archive": path.name, "bytes": path.stat().st_size, "images": images}
    row["sha256_s"] = best_of(reps, sha)
    row["index_s"] = best_of(reps, index)
    row["first_bytes_s"] = best_of(reps, first_bytes)
    row["header_s"] = best_of(reps, verify("header"))
    row["full_s"] = best_of(1, verify("full"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timings are the best of this many repeats")
    parser.add_argument("--root", default=None, help="folder of cifar10.tar / flowers102.tar (default: the data root)")
    args = parser.parse_args()
    root = Path(args.root) if args.root else default_data_root()
    rows = [measure(root / name, args.reps) for name in ("cifar10.tar", "flowers102.tar") if (root / name).is_file()]
    print(
        "| archive | MB | images | SHA-256 s | index s | first bytes s | header (default) s | header / first bytes | "
        "full decode s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['archive']} | {r['bytes'] / 1e6:.1f} | {r['images']:,} | {r['sha256_s']:.3f} | {r['index_s']:.3f} | "
            f"{r['first_bytes_s']:.3f} | {r['header_s']:.3f} | {r['header_s'] / r['first_bytes_s']:.2f}x | "
            f"{r['full_s']:.2f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "reps": args.reps, "rows": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
