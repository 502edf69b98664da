"""Export a trained run as a timm model: ``python -m vt_drloc.export ckpt_path=<run dir or .ckpt> [out=<dir>]``.

Writes ``model.safetensors`` + ``config.json`` in the layout timm uses for models on the Hugging
Face Hub (architecture, model arguments, num_classes, input size, mean / std, interpolation,
crop, label names), with timm's own :func:`timm.models.save_for_hf`, so that::

    model = timm.create_model("local-dir:<out>", pretrained=True)

loads it (vt_drloc's own architectures, ``cvt_13``, ``t2t_vit_14``, ...: after ``import vt_drloc``).
The export loads itself back that way and checks that its logits equal the checkpoint's. The DRLoc
head is a training aid and is left out; ``keep_drloc_head=true`` adds it as ``drloc_head.safetensors``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hydra
import timm
import torch
from omegaconf import DictConfig

from vt_drloc.app.checkpoints import load_checkpoint_file
from vt_drloc.app.config import CONFIG_PATH, UserError, exit_on_user_error, run_cli
from vt_drloc.data.info import timm_pretrained_cfg

log = logging.getLogger("vt_drloc.export")

EXPORT_FILES = ("model.safetensors", "config.json", "drloc_head.safetensors")


def resolve_checkpoint(ckpt_path: str | Path | None, what: str = "ckpt_path") -> Path:
    """A ``.ckpt`` file, or a run folder (its ``checkpoints/last.ckpt``)."""
    if ckpt_path in (None, ""):
        raise UserError(
            f"{what} is not set. Pass {what}=<run dir> (uses its checkpoints/last.ckpt) or {what}=<file.ckpt>."
        )
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(
                f"{what}={str(path)!r} is a folder without checkpoints/last.ckpt. Pass a run folder of vt_drloc.train "
                "or a .ckpt file."
            )
        return last
    if not path.is_file():
        raise UserError(f"{what}={str(path)!r} does not exist. Pass a run folder of vt_drloc.train or a .ckpt file.")
    return path


def default_out_dir(ckpt: Path) -> Path:
    """``<run dir>/export`` for ``<run dir>/checkpoints/<name>.ckpt``, else ``<name>_export`` beside the file."""
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export"
    return ckpt.with_name(f"{ckpt.stem}_export")


def backbone_state(checkpoint: dict[str, Any], ckpt: Path) -> dict[str, torch.Tensor]:
    """The timm model's tensors (``model.*`` of the DrLocModule); refuses a checkpoint without them."""
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if not state:
        keys = ", ".join(list(checkpoint["state_dict"])[:4]) or "none"
        raise UserError(
            f"ckpt_path={str(ckpt)!r} holds no backbone weights (no model.* tensors; it has: {keys}), e.g. a "
            "checkpoint of the DRLoc head or λ schedule alone. Export the last.ckpt of a vt_drloc.train run "
            "(DrLocModule)."
        )
    return state


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} is a file; pass a folder for the exported model.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"out={str(out)!r} already exists and is not empty; nothing was written. Pass another out=<dir>, or "
            "overwrite=true to replace the exported files in it (model.safetensors, config.json, "
            "drloc_head.safetensors)."
        )


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path | None = None,
    keep_drloc_head: bool = False,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
) -> Path:
    """Export the checkpoint (or run folder) ``ckpt_path`` to ``out`` and verify it; returns ``out``."""
    ckpt = resolve_checkpoint(ckpt_path)
    checkpoint = load_checkpoint_file(ckpt, trust=trust_checkpoint)
    state = backbone_state(checkpoint, ckpt)
    out = Path(out).expanduser() if out not in (None, "") else default_out_dir(ckpt)
    check_out_dir(out, overwrite)
    hparams = checkpoint["hyper_parameters"]
    info = dict(checkpoint.get("data_info") or {})
    architecture = str(hparams["model_name"]).split(".")[0]  # a pretrained tag names weights, not an architecture
    model_args = {k: v for k, v in dict(hparams.get("model_kwargs") or {}).items() if k != "pretrained"}
    model = timm.create_model(architecture, num_classes=hparams["num_classes"], **model_args)
    model.load_state_dict(state)
    model.eval()

    model_config: dict[str, Any] = {
        # timm's default cfg names its own pretrained weights (tag, license): these weights are the run's
        "pretrained_cfg": {"tag": "vt_drloc", "license": None},
        "vt_drloc": {"ckpt_path": str(ckpt), "data_info": info, "drloc": hparams.get("drloc")},
    }
    data_config = None
    if info.get("class_names"):
        model_config["label_names"] = list(info["class_names"])
        data_config = timm_pretrained_cfg(info)
        data_config.pop("num_classes")
    else:
        log.warning(
            "%s predates data_info (vt_drloc 0.3): no class names and timm's default preprocessing in config.json", ckpt
        )
    drloc_head = {k[len("drloc.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("drloc.")}
    if keep_drloc_head and not drloc_head:
        raise UserError(
            f"keep_drloc_head=true but ckpt_path={str(ckpt)!r} holds no DRLoc head (it was trained with λ = 0)."
        )

    # write into a fresh folder beside out, then move the files in: a failed export leaves out as it was
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp)
        timm.models.save_for_hf(
            model,
            str(staging),
            model_config=model_config,
            model_args=model_args,
            safe_serialization=True,
            data_config=data_config,
        )
        if keep_drloc_head:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in drloc_head.items()}, str(staging / "drloc_head.safetensors"))
        verify_export(staging, model, info)
        out.mkdir(parents=True, exist_ok=True)
        for name in EXPORT_FILES:
            if (staging / name).is_file():
                shutil.move(str(staging / name), str(out / name))
            elif (out / name).is_file() and name == "drloc_head.safetensors":
                (out / name).unlink()  # an earlier export's head would not belong to these weights
    log.info(
        "exported %s to %s (%s); load it with timm.create_model('local-dir:%s', pretrained=True)",
        ckpt,
        out,
        architecture,
        out,
    )
    return out


def verify_export(folder: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Load ``folder`` as timm does and check the logits equal ``model``'s on a seeded random batch."""
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    size = int(info.get("img_size") or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    if not torch.equal(expected, got):
        raise RuntimeError(
            "the exported model's logits differ from the checkpoint's (max |diff| "
            f"{(expected - got).abs().max().item():.3g}); nothing was written"
        )
    config = json.loads((folder / "config.json").read_text())
    if info.get("class_names") and config.get("label_names") != list(info["class_names"]):
        raise RuntimeError("config.json lost the class names; nothing was written")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    out = export_checkpoint(
        cfg.ckpt_path,
        out=cfg.get("out"),
        keep_drloc_head=bool(cfg.keep_drloc_head),
        overwrite=bool(cfg.overwrite),
        trust_checkpoint=bool(cfg.trust_checkpoint),
    )
    print(f"exported to {out}\n  load it: timm.create_model('local-dir:{out}', pretrained=True)")


def main() -> None:
    """Console entry point (``vt-drloc-export`` / ``python -m vt_drloc.export``)."""
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
