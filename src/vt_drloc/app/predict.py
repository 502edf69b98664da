"""Predict classes of new images:
``python -m vt_drloc.predict ckpt_path=<run dir, .ckpt or export dir> input=<folder or .tar>``.

Writes a CSV with one row per image: its path (inside the folder or the tar), then the ``top_k``
class names and probabilities. Images get the checkpoint's own eval preprocessing (size,
resize / crop, normalisation, recorded in the checkpoint's ``data_info``). The same from Python::

    from vt_drloc.app.predict import predict
    rows = predict("logs/train/runs/<run>", "my_images/", top_k=3)
    rows[0]  # {"path": "a.jpg", "class_1": "cat", "prob_1": 0.91, "class_2": ..., ...}
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import timm
import torch
from omegaconf import DictConfig
from PIL import Image

from vt_drloc.app.checkpoints import load_checkpoint_file
from vt_drloc.app.config import CONFIG_PATH, UserError, exit_on_user_error, run_cli
from vt_drloc.app.export import backbone_state, resolve_checkpoint
from vt_drloc.data.info import predict_transform_of

log = logging.getLogger("vt_drloc.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def is_export_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def load_classifier(ckpt_path: str | Path, trust_checkpoint: bool = False) -> tuple[torch.nn.Module, Any, list[str]]:
    """The timm model (eval mode), its eval transform and class names, from a run folder, a ``.ckpt``
    or a folder written by :mod:`vt_drloc.app.export`."""
    path = Path(str(ckpt_path)).expanduser() if ckpt_path not in (None, "") else None
    if path is not None and is_export_dir(path):
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
        config = json.loads((path / "config.json").read_text())
        info = (config.get("vt_drloc") or {}).get("data_info") or {}
        names = list(config.get("label_names") or [])
        if info.get("img_size"):
            transform = predict_transform_of(info)
        else:  # exported elsewhere: timm's reading of its pretrained_cfg
            transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    else:
        ckpt = resolve_checkpoint(path)
        checkpoint = load_checkpoint_file(ckpt, trust=trust_checkpoint)
        state = backbone_state(checkpoint, ckpt)
        hparams = checkpoint["hyper_parameters"]
        model_args = {k: v for k, v in dict(hparams.get("model_kwargs") or {}).items() if k != "pretrained"}
        model = timm.create_model(
            str(hparams["model_name"]).split(".")[0], num_classes=hparams["num_classes"], **model_args
        )
        model.load_state_dict(state)
        info = dict(checkpoint.get("data_info") or {})
        if not info.get("img_size"):
            raise UserError(
                f"ckpt_path={str(ckpt)!r} predates vt_drloc's data_info (class names and preprocessing are not in it), "
                "so its preprocessing is unknown. Evaluate it with vt_drloc.eval, or retrain / resume it once to "
                "record them."
            )
        transform, names = predict_transform_of(info), list(info["class_names"])
    num_classes = model.num_classes
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return model.eval(), transform, names


def list_images(source: str | Path) -> list[str]:
    """Image paths of a folder (recursive, relative to it) or members of a ``.tar``, sorted."""
    if source in (None, ""):
        raise UserError("input is not set. Pass input=<a folder of images> or input=<an uncompressed .tar of images>.")
    path = Path(str(source)).expanduser()
    if path.is_dir():
        names = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            names = sorted(
                m.name for m in tar.getmembers() if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES
            )
    elif path.is_file():
        raise UserError(
            f"input={str(path)!r} is neither a folder nor a .tar archive. Pass a folder of images or a .tar of images."
        )
    else:
        raise UserError(f"input={str(path)!r} does not exist. Pass a folder of images or a .tar of images.")
    if not names:
        raise UserError(f"input={str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return names


def _read_images(source: Path, names: list[str]) -> Iterator[tuple[str, Image.Image]]:
    tar = tarfile.open(source) if source.is_file() else None
    try:
        for name in names:
            try:
                if tar is not None:
                    data = tar.extractfile(name).read()
                    image = Image.open(io.BytesIO(data))
                else:
                    image = Image.open(source / name)
                yield name, image.convert("RGB")
            except (OSError, tarfile.TarError) as err:
                raise UserError(
                    f"{name!r} in input={str(source)!r} is not a readable image ({err}); remove it or fix it."
                ) from None
    finally:
        if tar is not None:
            tar.close()


@torch.no_grad()
def predict(
    ckpt_path: str | Path,
    input: str | Path,
    top_k: int = 5,
    batch_size: int = 64,
    progress: bool = True,
    trust_checkpoint: bool = False,
) -> list[dict[str, Any]]:
    """Top-``top_k`` classes of every image in ``input`` (a folder or a ``.tar``), with the model of
    ``ckpt_path`` (a run folder, a ``.ckpt`` or an export folder) and its own eval preprocessing.

    Returns one dict per image: ``path``, then ``class_1``, ``prob_1``, ... ``class_k``, ``prob_k``."""
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        raise UserError(f"top_k={top_k!r} must be a positive integer (the number of classes listed per image).")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r} must be a positive integer.")
    model, transform, names = load_classifier(ckpt_path, trust_checkpoint)
    paths = list_images(input)
    source = Path(str(input)).expanduser()
    k = min(int(top_k), len(names))
    rows: list[dict[str, Any]] = []
    from rich.progress import track

    batches = [paths[i : i + int(batch_size)] for i in range(0, len(paths), int(batch_size))]
    images = _read_images(source, paths)
    for batch in track(batches, description=f"predicting {len(paths)} images", disable=not progress):
        pixels = torch.stack([transform(next(images)[1]) for _ in batch])
        probs = model(pixels).float().softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
        for path, p_row, i_row in zip(batch, top_p.tolist(), top_i.tolist()):
            row: dict[str, Any] = {"path": path}
            for rank, (p, i) in enumerate(zip(p_row, i_row), start=1):
                row[f"class_{rank}"], row[f"prob_{rank}"] = names[i], round(p, 6)
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], out: Path) -> None:
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    out = Path(str(cfg.out)).expanduser()
    if out.exists() and not cfg.overwrite:
        raise UserError(
            f"out={str(out)!r} already exists; nothing was written. Pass another out=<file.csv>, or overwrite=true."
        )
    if not out.parent.is_dir():
        raise UserError(
            f"out={str(out)!r}: its folder {str(out.parent)!r} does not exist; create it or pass another out=."
        )
    rows = predict(
        cfg.ckpt_path,
        cfg.input,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        progress=cfg.progress,
        trust_checkpoint=cfg.trust_checkpoint,
    )
    write_csv(rows, out)
    print(f"wrote {len(rows)} predictions to {out}")


def main() -> None:
    """Console entry point (``vt-drloc-predict`` / ``python -m vt_drloc.predict``)."""
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
