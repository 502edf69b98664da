"""A Flowers-102 archive small enough to travel with a run to an accelerator machine (<= 40 MB).

Same layout and member names as the source (``flowers102/<split>/<class>/<image>.jpg``, the official
1,020 / 1,020 / 6,149 split, every image of every split kept), with each image re-encoded as a JPEG
whose shorter side is at most ``--short-side`` px. ``SHA256SUMS`` is written beside it, so the data
module verifies the copy it reads. The archive is deterministic: the same source gives the same bytes.

    python bench/make_flowers_subset.py                      # -> bench/data/flowers102.tar (+ SHA256SUMS)
    python bench/make_flowers_subset.py --per-class 1 --out-dir /tmp/tiny   # a tiny copy for a dry run

Exit status 2 with one paragraph when the source is missing or the result exceeds ``--max-mb``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

NAME = "flowers102.tar"


def shrink(data: bytes, short_side: int, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = short_side / min(width, height)
    if scale < 1:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def make_subset(
    src: Path, out_dir: Path, short_side: int = 112, quality: int = 65, per_class: int | None = None
) -> Path:
    """Write ``out_dir/flowers102.tar`` and ``out_dir/SHA256SUMS`` from ``src``; returns the archive path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / NAME
    partial = dest.with_suffix(".tar.partial")
    kept: dict[tuple[str, str], int] = defaultdict(int)
    with tarfile.open(src) as source, tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as target:
        for member in source:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            if len(parts) == 4 and per_class is not None:  # flowers102/<split>/<class>/<file>
                if kept[(parts[1], parts[2])] >= per_class:
                    continue
                kept[(parts[1], parts[2])] += 1
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.lower().endswith((".jpg", ".jpeg")):
                data = shrink(data, short_side, quality)
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            target.addfile(info, io.BytesIO(data))
    partial.replace(dest)
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    (out_dir / "SHA256SUMS").write_text(f"{digest}  {NAME}\n")
    return dest


def default_source() -> Path | None:
    from vt_drloc.base.paths import default_data_root

    root = default_data_root()
    return None if root is None else root / NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=None, help="the full flowers102.tar (default: the data root's)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "data")
    parser.add_argument("--short-side", type=int, default=112)
    parser.add_argument("--quality", type=int, default=65)
    parser.add_argument(
        "--per-class", type=int, default=None, help="keep this many images per class and split (dry runs)"
    )
    parser.add_argument("--max-mb", type=float, default=40.0)
    args = parser.parse_args(argv)
    src = args.src or default_source()
    if src is None or not Path(src).is_file():
        print(f"make_flowers_subset: no source archive at {src}; pass --src <path to flowers102.tar>.", file=sys.stderr)
        return 2
    dest = make_subset(Path(src), args.out_dir, args.short_side, args.quality, args.per_class)
    size_mb = dest.stat().st_size / 1e6
    digest = (args.out_dir / "SHA256SUMS").read_text().split()[0]
    print(f"{dest}: {size_mb:.1f} MB, sha256 {digest}")
    if size_mb > args.max_mb:
        print(
            f"make_flowers_subset: {dest} is {size_mb:.1f} MB, over --max-mb {args.max_mb}; lower --short-side "
            f"(now {args.short_side}) or --quality (now {args.quality}).",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
