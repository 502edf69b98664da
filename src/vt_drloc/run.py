"""Pieces shared by ``vt_drloc.train`` and ``vt_drloc.eval``: config checks that run before any
training, checkpoint validation, the printed config tree, throughput and ``results.json``."""

from __future__ import annotations

import difflib
import functools
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from vt_drloc.drloc import DRLOC_MODES, SCHEDULES, TARGETS

CONFIG_PACKAGE = "vt_drloc.conf"
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"
SELECTABLE_GROUPS = ("model", "data", "experiment", "trainer", "drloc", "optim", "callbacks", "logger")


class UserError(Exception):
    """A mistake in what the user asked for: reported as one paragraph, exit code 2, no traceback."""


def exit_on_user_error(task):
    """Wrap a Hydra task so a :class:`UserError` prints one paragraph and exits with code 2.

    (Hydra itself would print its own hint and exit 1.)"""

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped


def run_cli(hydra_main, argv: list[str] | None = None) -> None:
    """Check group choices in ``argv``, then run ``hydra_main``; bad input exits with code 2."""
    argv = sys.argv[1:] if argv is None else argv
    exit_on_user_error(check_group_choices)(argv)
    hydra_main()


# ---------------------------------------------------------------------------------- config groups
def config_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files(CONFIG_PACKAGE)))


def group_options(group: str, extra_dirs: Iterable[Path] = ()) -> list[str]:
    """Config names available in ``group`` (the packaged configs plus any ``--config-dir``)."""
    names: set[str] = set()
    for root in (config_dir(), *extra_dirs):
        folder = Path(root) / group
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def check_group_choices(argv: list[str]) -> None:
    """Unknown ``model=`` / ``data=`` / ``experiment=`` ... choices, with close matches, before Hydra runs."""
    extra = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            extra.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            extra.append(Path(arg.split("=", 1)[1]))
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~").removeprefix("override ")
        if key not in SELECTABLE_GROUPS or value in ("", "null"):
            continue
        options = group_options(key, extra)
        for choice in value.split(","):  # multirun sweeps: model=a,b
            if choice not in options:
                close = difflib.get_close_matches(choice, options, n=4, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise UserError(
                    f"unknown {key} config {choice!r}.{hint} Available {key} configs: {', '.join(options)}. "
                    f"Add your own with --config-dir <dir> holding {key}/<name>.yaml."
                )


# ---------------------------------------------------------------------------------- checks
def check_drloc_config(drloc: Mapping[str, Any]) -> None:
    lam = drloc["lambda_drloc"]
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise UserError(f"drloc.lambda_drloc={lam} is invalid: use a number >= 0 (0 trains the baseline without DRLoc; the paper uses 0.1-0.5).")
    size = drloc["sample_size"]
    if not isinstance(size, int) or size < 1:
        raise UserError(f"drloc.sample_size={size} is invalid: use an integer >= 1 (the paper samples 64 pairs per image).")
    for key, choices in (("mode", DRLOC_MODES), ("target", TARGETS), ("schedule", SCHEDULES)):
        if drloc[key] not in choices:
            raise UserError(f"drloc.{key}={drloc[key]!r} is invalid: choose one of {', '.join(choices)}.")
    grid = drloc["grid_size"]
    if grid is not None and (not isinstance(grid, int) or grid < 2):
        raise UserError(f"drloc.grid_size={grid} is invalid: use an integer >= 2 (the paper pools to 7) or null to keep the grid.")


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint written by vt_drloc, with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={str(path)!r} does not exist. Pass the .ckpt file of an earlier run, e.g. <run dir>/checkpoints/last.ckpt.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or needs arbitrary unpickling
        raise UserError(f"ckpt_path={str(path)!r} is not a vt_drloc checkpoint that can be loaded safely ({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"ckpt_path={str(path)!r} is not a Lightning checkpoint of DrLocModule (no state_dict / hyper_parameters).")
    hparams = checkpoint["hyper_parameters"]
    if "model_name" not in hparams:
        raise UserError(f"ckpt_path={str(path)!r} was not written by DrLocModule (its hyper-parameters have no model_name).")
    return checkpoint


def check_resume_checkpoint(path: str | Path, model_name: str, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    checkpoint = load_checkpoint_file(path)
    hparams = checkpoint["hyper_parameters"]
    if hparams["model_name"] != model_name or dict(hparams.get("model_kwargs") or {}) != dict(model_kwargs):
        raise UserError(
            f"ckpt_path={str(path)!r} holds model {hparams['model_name']!r} with {dict(hparams.get('model_kwargs') or {})}, "
            f"but this run builds {model_name!r} with {dict(model_kwargs)}. Select the matching model config "
            "(model=...) or start a new run without ckpt_path."
        )
    return checkpoint


def check_output_dir(output_dir: Path) -> None:
    """Refuse a folder that already holds a run, and one we cannot write to."""
    if (output_dir / "results.json").exists() or any((output_dir / "checkpoints").glob("*.ckpt")):
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


# ---------------------------------------------------------------------------------- reporting
def print_config_tree(cfg: DictConfig, order: Iterable[str] = ("model", "data", "drloc", "optim", "trainer", "callbacks", "logger", "paths")) -> None:
    """Print the composed config as a rich tree, one branch per group."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key))
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


class Throughput(pl.Callback):
    """Training images per second, timed over training batches only (validation excluded)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch[0].shape[0]) * trainer.world_size

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def metric(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def write_results(output_dir: Path, results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` (atomically: temporary file, then rename)."""
    path = output_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return path
