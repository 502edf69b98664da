"""Checkpoints of the app: reading a run's checkpoint safely, resuming in place, refusing to
overwrite a finished run, and initialising a backbone from a checkpoint file (``init_from``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vt_drloc.config import UserError


def load_checkpoint_file(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint written by vt_drloc, with ``weights_only=True``.

    vt_drloc's own checkpoints hold only tensors and plain types, so they always load this way.
    A file that needs arbitrary unpickling (which can run code) is refused unless ``trust`` is
    set (``trust_checkpoint=true`` on the command line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={str(path)!r} does not exist. Pass the .ckpt file of an earlier run, e.g. <run dir>/checkpoints/last.ckpt.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or needs arbitrary unpickling
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
        if not trust:
            raise UserError(
                f"ckpt_path={str(path)!r} is not a vt_drloc checkpoint that can be loaded safely ({reason}). Loading it would "
                "need full unpickling, which can run arbitrary code: pass trust_checkpoint=true only if you trust its origin."
            ) from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise UserError(f"ckpt_path={str(path)!r} cannot be read even with trust_checkpoint=true ({type(err2).__name__}: {err2}).") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"ckpt_path={str(path)!r} is not a Lightning checkpoint of DrLocModule (no state_dict / hyper_parameters).")
    hparams = checkpoint["hyper_parameters"]
    if "model_name" not in hparams:
        raise UserError(f"ckpt_path={str(path)!r} was not written by DrLocModule (its hyper-parameters have no model_name).")
    return checkpoint


def check_resume_checkpoint(path: str | Path, model_name: str, model_kwargs: Mapping[str, Any], trust: bool = False) -> dict[str, Any]:
    checkpoint = load_checkpoint_file(path, trust=trust)
    hparams = checkpoint["hyper_parameters"]
    if hparams["model_name"] != model_name or dict(hparams.get("model_kwargs") or {}) != dict(model_kwargs):
        raise UserError(
            f"ckpt_path={str(path)!r} holds model {hparams['model_name']!r} with {dict(hparams.get('model_kwargs') or {})}, "
            f"but this run builds {model_name!r} with {dict(model_kwargs)}. Select the matching model config "
            "(model=...) or start a new run without ckpt_path."
        )
    return checkpoint


def resolve_resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``ckpt_path=last`` means ``<output dir>/checkpoints/last.ckpt`` (resume a killed run in place)."""
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(
            f"ckpt_path=last resumes the run in its own folder, but {str(last)!r} does not exist. Set hydra.run.dir to the "
            "folder of the interrupted run, or pass ckpt_path=<path to a .ckpt file>."
        )
    return str(last)


def _inside(path: str | Path, folder: Path) -> bool:
    try:
        Path(path).expanduser().resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(output_dir: Path, resume_from: str | Path | None = None) -> None:
    """Refuse a folder that already holds a run, and one we cannot write to.

    An unfinished run (no ``results.json``) may be continued in place when ``resume_from`` is one
    of its own checkpoints (``ckpt_path=last``)."""
    in_place = resume_from is not None and _inside(resume_from, output_dir) and not (output_dir / "results.json").exists()
    if not in_place and ((output_dir / "results.json").exists() or any((output_dir / "checkpoints").glob("*.ckpt"))):
        raise UserError(
            f"output dir {str(output_dir)!r} already holds a run (results.json or checkpoints); nothing was overwritten. "
            "Choose another hydra.run.dir, or resume with ckpt_path=<its last.ckpt> (a resumed run writes to a new folder)."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output dir {str(output_dir)!r} is not writable ({err.strerror}); set paths.log_dir or hydra.run.dir to a writable folder.") from None
