"""Checkpoints of the app: reading a run's checkpoint safely, resuming in place, refusing to
overwrite a finished run, and initialising a backbone from a checkpoint file (``init_from``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vt_drloc.app.config import UserError
from vt_drloc.app.pos_embed import resample_position_embeddings


def load_error(err: BaseException) -> str:
    """``err`` in one short line, for a message."""
    text = str(err)
    detail = next(
        (line for line in text.splitlines() if "Unsupported global" in line), text.splitlines()[0] if text else ""
    )
    return f"{type(err).__name__}: {detail[:200]}" if detail else type(err).__name__


def needs_unpickling(err: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a readable file because it holds objects other
    than tensors and plain types (trusting it would load it), as opposed to a truncated / corrupt file."""
    return "Unsupported global" in str(err)


def load_checkpoint_file(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint written by vt_drloc, with ``weights_only=True``.

    vt_drloc's own checkpoints hold only tensors and plain types, so they always load this way.
    A file that needs arbitrary unpickling (which can run code) is refused unless ``trust`` is
    set (``trust_checkpoint=true`` on the command line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"ckpt_path={str(path)!r} does not exist. Pass the .ckpt file of an earlier run, "
            "e.g. <run dir>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or needs arbitrary unpickling
        reason = load_error(err)
        if not needs_unpickling(err):
            raise UserError(
                f"ckpt_path={str(path)!r} cannot be read: it is truncated or not a checkpoint ({reason}); "
                "trust_checkpoint would not help. Pass an intact .ckpt (e.g. <run dir>/checkpoints/last.ckpt, or the "
                "best one beside it)."
            ) from None
        if not trust:
            raise UserError(
                f"ckpt_path={str(path)!r} is not a vt_drloc checkpoint that can be loaded safely ({reason}). Loading "
                "it would need full unpickling, which can run arbitrary code: pass trust_checkpoint=true only if you "
                "trust its origin."
            ) from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise UserError(
                f"ckpt_path={str(path)!r} cannot be read even with trust_checkpoint=true ({type(err2).__name__}: "
                f"{err2})."
            ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(
            f"ckpt_path={str(path)!r} is not a Lightning checkpoint of DrLocModule (no state_dict / hyper_parameters)."
        )
    hparams = checkpoint["hyper_parameters"]
    if "model_name" not in hparams:
        raise UserError(
            f"ckpt_path={str(path)!r} was not written by DrLocModule (its hyper-parameters have no model_name)."
        )
    return checkpoint


def check_resume_checkpoint(
    path: str | Path, model_name: str, model_kwargs: Mapping[str, Any], trust: bool = False
) -> dict[str, Any]:
    checkpoint = load_checkpoint_file(path, trust=trust)
    hparams = checkpoint["hyper_parameters"]
    if hparams["model_name"] != model_name or dict(hparams.get("model_kwargs") or {}) != dict(model_kwargs):
        raise UserError(
            f"ckpt_path={str(path)!r} holds model {hparams['model_name']!r} with "
            f"{dict(hparams.get('model_kwargs') or {})}, but this run builds {model_name!r} with {dict(model_kwargs)}. "
            "Select the matching model config (model=...) or start a new run without ckpt_path."
        )
    return checkpoint


def resolve_resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means ``<output dir>/checkpoints/last.ckpt`` (resume a killed run in place)."""
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(
            f"ckpt_path=last resumes the run in its own folder, but {str(last)!r} does not exist. Set hydra.run.dir to "
            "the folder of the interrupted run, or pass ckpt_path=<path to a .ckpt file>."
        )
    return str(last)


def _inside(path: str | Path, folder: Path) -> bool:
    try:
        Path(path).expanduser().resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def finished(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds a finished run: a ``results.json`` not marked ``interrupted``."""
    path = output_dir / "results.json"
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") != "interrupted"
    except (OSError, ValueError):
        return True  # unreadable: treat as finished, never overwrite it


def check_output_dir(output_dir: Path, resume_from: str | Path | None = None) -> None:
    """Refuse a folder that already holds a run, and one we cannot write to.

    An unfinished run (no ``results.json``, or one marked ``interrupted``) may be continued in place
    when ``resume_from`` is one of its own checkpoints (``ckpt_path=last``)."""
    in_place = resume_from is not None and _inside(resume_from, output_dir) and not finished(output_dir)
    if not in_place and ((output_dir / "results.json").exists() or any((output_dir / "checkpoints").glob("*.ckpt"))):
        raise UserError(
            f"output dir {str(output_dir)!r} already holds a run (results.json or checkpoints); nothing was "
            "overwritten. Choose another hydra.run.dir, or resume with ckpt_path=<its last.ckpt> (a resumed run "
            "writes to a new folder)."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output dir {str(output_dir)!r} is not writable ({err.strerror}); set paths.log_dir or hydra.run.dir to a "
            "writable folder."
        ) from None


# ---------------------------------------------------------------------------------- init_from
_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_PREFIXES = ("model.", "module.", "backbone.", "net.")


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a timm / torchvision weight file (``.pth``, ``.bin``,
    ``.safetensors``), or a Lightning checkpoint of an earlier run (its ``state_dict``)."""
    return read_weight_file(path, trust)[0]


def read_weight_file(path: str | Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """:func:`read_state_dict`'s tensors and the class names the file records, if any: a run's
    ``.ckpt`` (``data_info``), or an export's ``model.safetensors`` (``label_names`` of the
    ``config.json`` beside it); ``None`` for a plain weight file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"init_from={str(path)!r} does not exist. Pass a timm weight file (.pth / .safetensors) or the .ckpt of an "
            "earlier run."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        config = path.with_name("config.json")
        names = json.loads(config.read_text()).get("label_names") if config.is_file() else None
        return load_file(str(path), device="cpu"), names
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:
        if not needs_unpickling(err):
            raise UserError(
                f"init_from={str(path)!r} cannot be read: it is truncated or not a weight file ({load_error(err)}); "
                "trust_checkpoint would not help. Pass a timm weight file (.pth / .safetensors) or the .ckpt of an "
                "earlier run."
            ) from None
        hint = (
            "" if trust else " The file needs full unpickling: pass trust_checkpoint=true only if you trust its origin."
        )
        raise UserError(f"init_from={str(path)!r} cannot be read as weights ({load_error(err)}).{hint}") from None
    info = data.get("data_info") if isinstance(data, Mapping) else None
    names = list(info["class_names"]) if isinstance(info, Mapping) and info.get("class_names") else None
    for key in _STATE_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"init_from={str(path)!r} holds no state dict of tensors.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, names


def classifier_keys(backbone: torch.nn.Module) -> set[str]:
    """State-dict keys of ``backbone``'s classifier (timm's ``get_classifier()``); empty if it has none."""
    get = getattr(backbone, "get_classifier", None)
    classifier = get() if callable(get) else None
    if not isinstance(classifier, torch.nn.Module):
        return set()
    for name, module in backbone.named_modules():
        if module is classifier and name:
            return {f"{name}.{k}" for k in classifier.state_dict()}
    return set()


def load_backbone_weights(
    backbone: torch.nn.Module, path: str | Path, trust: bool = False, class_names: list[str] | None = None
) -> dict[str, list[str]]:
    """Initialise ``backbone`` (the timm model, e.g. ``DrLocModule.model``) from the weights in ``path``
    for fine-tuning; the DRLoc head (and anything else outside the backbone) stays new.

    Keys are matched as they are, or after dropping one wrapper prefix (``model.`` of a
    ``DrLocModule`` checkpoint, ``module.`` of DDP, ...). Tensors whose shape differs (the
    classifier of a model trained on other classes) are skipped and stay as initialised, except
    position embeddings of another resolution, which are resampled
    (:func:`vt_drloc.app.pos_embed.resample_position_embeddings`). When ``class_names`` (the new
    task's) differ from the names the file records, the classifier starts new even if its shape
    fits (pretraining on five classes, fine-tuning on five others): listed in ``"new_classes"``.
    Returns ``{"loaded": [...], "resampled": [...], "skipped": [...], "new_classes": [...],
    "missing": [...]}`` (backbone keys); raises :class:`~vt_drloc.app.config.UserError` when nothing
    matches.

    >>> import timm, tempfile, os
    >>> src = timm.create_model("vit_tiny_patch16_224", num_classes=100, img_size=32, patch_size=4, depth=1)
    >>> dst = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "vit.pth"); torch.save(src.state_dict(), path)
    >>> report = load_backbone_weights(dst, path)
    >>> report["skipped"], torch.equal(src.pos_embed, dst.pos_embed)
    (['head.bias', 'head.weight'], True)
    """
    state, recorded = read_weight_file(path, trust)
    own = backbone.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", *_PREFIXES):
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in own}
        if len(candidate) > len(best):
            best = candidate
    best, resampled = resample_position_embeddings(backbone, best)  # another resolution: resample, not skip
    other_task = class_names is not None and recorded is not None and list(class_names) != list(recorded)
    new_classes = sorted(classifier_keys(backbone) & set(best)) if other_task else []
    loaded = {k: v for k, v in best.items() if v.shape == own[k].shape and k not in new_classes}
    if not loaded:
        example = ", ".join(list(state)[:3])
        raise UserError(
            f"init_from={str(path)!r}: none of its {len(state)} tensors (e.g. {example}) matches the backbone "
            f"{type(backbone).__name__} (e.g. {', '.join(list(own)[:3])}). Use weights of the same model (model=...)."
        )
    backbone.load_state_dict(loaded, strict=False)
    return {
        "loaded": sorted(loaded),
        "resampled": sorted(resampled),
        "skipped": sorted(k for k in best if k not in loaded and k not in new_classes),
        "new_classes": new_classes,
        "missing": sorted(k for k in own if k not in best),
    }
