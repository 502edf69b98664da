"""The app's configuration checks: the composed Hydra config is checked before anything is
built (clear one-paragraph errors, exit 2), the CLI wrapper and the printed config tree."""

from __future__ import annotations

import difflib
import functools
import math
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vt_drloc.faces.objective import RENAMED_OPTIONS, DrLocConfig

CONFIG_PACKAGE = "vt_drloc.conf"
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"
SELECTABLE_GROUPS = (
    "model",
    "data",
    "experiment",
    "trainer",
    "drloc",
    "optim",
    "callbacks",
    "logger",
    "hparams_search",
)


class UserError(Exception):
    """A mistake in what the user asked for: reported as one paragraph, exit code 2, no traceback."""


class RunStopped(Exception):
    """Training stopped for a reason that is not the user's mistake (e.g. the loss became NaN):
    reported as one paragraph without a traceback, exit code :attr:`exit_code` (3)."""

    exit_code = 3


class RunInterrupted(RunStopped):
    """SIGINT / SIGTERM stopped training; a resumable checkpoint was saved. Exit code 128 + the signal's
    number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process the signal ended."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 130 if signal_name == "SIGINT" else 143


def exit_on_user_error(task):
    """Wrap a Hydra task so a :class:`UserError` prints one paragraph and exits with code 2, and a
    :class:`RunStopped` (a run that had to stop, e.g. a non-finite loss) with code 3.

    (Hydra itself would print its own hint and exit 1.)"""

    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except RunStopped as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None

    return wrapped


# The data modules speak Python (root=..., download=True); the app's user types Hydra overrides.
_CLI_SPELLING = (
    ("samples_per_class=", "data.samples_per_class="),
    ("train_fraction", "data.train_fraction"),
    ("pass root=", "pass data.root="),
    (" root=<", " data.root=<"),
    ("download=True", "data.download=true"),
    ("folder_name=", "data.folder_name="),
    ("(root=", "(data.root="),
    ("skip_corrupt=True", "data.skip_corrupt=true"),
)


def prepare_data_checked(datamodule: Any, stage: str, test: bool = False) -> None:
    """``prepare_data()`` + ``setup(stage)``; a data set that is missing, laid out wrongly, corrupt
    (archive or image), or without a split to ``test`` on is a :class:`UserError` of one paragraph
    in the command line's spelling (``data.root=...``, ``data.download=true``), raised before any
    model is built."""
    from vt_drloc.data.sources import DatasetLayoutError, DatasetNotFoundError
    from vt_drloc.data.tar_folder import CorruptImageError

    try:
        datamodule.prepare_data()
        datamodule.setup(stage)
        if test and getattr(datamodule, "test_dataset", False) is None:
            raise DatasetLayoutError(
                f"{datamodule.source} has neither a test nor a val split, so test=true (the default) would fail after "
                "training: add a test/<class>/ folder (or val/<class>/, which then also serves as the test set), or "
                "pass test=false"
            )
    except (
        DatasetNotFoundError,
        DatasetLayoutError,
        CorruptImageError,
        ValueError,
    ) as err:  # ValueError: e.g. samples_per_class too large
        lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
        # one paragraph: items end in ";", the last item before a heading ("How to get it:") in "."
        ends = [";" if i + 1 < len(lines) and not lines[i + 1].endswith(":") else "." for i in range(len(lines))]
        text = " ".join(line if line[-1] in ".:;" else line + end for line, end in zip(lines, ends))
        for python, cli in _CLI_SPELLING:
            text = text.replace(python, cli)
        raise UserError(text) from None


# a model config's flat DRLoc keys of vt_drloc 0.2 -> its `drloc:` mapping's (conf/drloc still reads the flat ones)
MODEL_DRLOC_KEYS = {
    "drloc_tap_norm": "tap_norm",
    "drloc_grid_size": "pool_target",
    "drloc_head_init": "head_init",
    "drloc_lambda": "lambda_drloc",
}


def warn_flat_model_drloc_keys(model: Mapping[str, Any] | None) -> None:
    """One FutureWarning per flat ``drloc_*`` key of a model config (a user's own, written for vt_drloc 0.2)."""
    import warnings

    for old, new in MODEL_DRLOC_KEYS.items():
        if model is not None and old in model:
            warnings.warn(
                f"model.{old} is now model.drloc.{new}; the old key works until vt_drloc 0.3",
                FutureWarning,
                stacklevel=2,
            )


# command-line keys of vt_drloc 0.2 -> today's (issue 27, one meaning per name): rewritten, with one warning
# each, until vt_drloc 0.3. drloc.* are the DRLoc options' (objective.RENAMED_OPTIONS), optim.* the learning rate's.
OLD_CLI_KEYS = {
    **{f"drloc.{old}": f"drloc.{new}" for old, new in RENAMED_OPTIONS.items()},
    "optim.warmup_epochs": "optim.lr_warmup_epochs",
    "optim.decay_epochs": "optim.lr_decay_epochs",
    "optim.min_lr": "optim.lr_min",
    "optim.warmup_prefix": "optim.lr_warmup_prefix",
    **{f"model.{old}": f"model.drloc.{new}" for old, new in MODEL_DRLOC_KEYS.items()},
}


def rewrite_old_cli_keys(argv: list[str]) -> list[str]:
    """``argv`` with each old key of :data:`OLD_CLI_KEYS` (``drloc.sample_size=16``, ``+optim.min_lr=0``, ...)
    spelled by its new name, and one FutureWarning per old key."""
    import warnings

    rewritten = []
    for arg in argv:
        match = re.fullmatch(r"([+~]*)([\w.]+)(=.*)?", arg, flags=re.S)
        if match and match.group(2) in OLD_CLI_KEYS:
            old, new = match.group(2), OLD_CLI_KEYS[match.group(2)]
            warnings.warn(f"{old} is now {new}; the old key works until vt_drloc 0.3", FutureWarning, stacklevel=2)
            arg = f"{match.group(1)}{new}{match.group(3) or ''}"
        rewritten.append(arg)
    return rewritten


def run_cli(hydra_main, argv: list[str] | None = None) -> None:
    """Rewrite old keys and check group choices in ``argv``, then run ``hydra_main``; bad input exits with code 2."""
    if argv is None:
        sys.argv[1:] = rewrite_old_cli_keys(sys.argv[1:])  # Hydra reads sys.argv
        argv = sys.argv[1:]
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
    """The ``drloc`` group, checked by the rules both faces use (building its
    :class:`~vt_drloc.faces.objective.DrLocConfig`), the bad key spelled as on the command line."""
    try:
        DrLocConfig.build(drloc)
    except (TypeError, ValueError) as err:
        message = str(err)
        # the rules name the option first ("num_pairs=0 must be >= 1 ..."): spell it as on the CLI
        message = f"drloc.{message}" if re.match(r"\w+=", message) else f"drloc config: {message}"
        raise UserError(
            f"{message}. Set it as drloc.<option>=<value>; the options and their defaults are in "
            "conf/drloc/default.yaml and docs/fidelity.md."
        ) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_or_null(value: Any) -> bool:
    return value is None or (_is_number(value) and value > 0)


def check_run_config(cfg: DictConfig) -> None:
    """The user-facing keys that Lightning / the module would accept silently or fail on late and
    cryptically (ZeroDivisionError, a run that trains nothing). Run before anything is built."""
    problems: list[str] = []
    warn_flat_model_drloc_keys(cfg.get("model"))

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key}={OmegaConf.select(cfg, key)!r} is invalid: {rule}")

    need(_is_int(cfg.seed) and 0 <= cfg.seed < 2**32, "seed", "use an integer in [0, 2**32)")
    for key in ("test", "print_config", "trust_checkpoint"):
        if key in cfg:
            need(isinstance(cfg[key], bool), key, "use true or false")
    optim, trainer = cfg.get("optim"), cfg.get("trainer")
    for key, rule in (
        ("lr_batch_scale", "use a batch size > 0 (the paper: 512), or null to use lr as given"),
        (
            "lr_decay_epochs",
            "use the epoch at which the cosine reaches lr_min (a number > 0), or null for trainer.max_epochs",
        ),
    ):
        if optim is not None and key in optim:
            need(_positive_or_null(optim[key]), f"optim.{key}", rule)
    if optim is not None and "lr_warmup_prefix" in optim:
        need(
            isinstance(optim.lr_warmup_prefix, bool),
            "optim.lr_warmup_prefix",
            "use true (cosine after the warm-up) or false (timm / released)",
        )
    if trainer is not None:
        epochs = trainer.get("max_epochs")
        need(
            epochs is None or (_is_int(epochs) and epochs >= 1),
            "trainer.max_epochs",
            "use an integer >= 1: the learning rate's cosine and λ's schedule end at the run's last epoch, so a run "
            "without a limit (-1) has no schedule, and 0 would train nothing",
        )
        clip = trainer.get("gradient_clip_val")
        need(
            clip is None or (_is_number(clip) and clip >= 0),
            "trainer.gradient_clip_val",
            "use a number >= 0, or null for no clipping",
        )
        algo = trainer.get("gradient_clip_algorithm")
        need(algo is None or algo in ("norm", "value"), "trainer.gradient_clip_algorithm", "use norm or value")
        accumulate = trainer.get("accumulate_grad_batches")
        need(
            accumulate is None or (_is_int(accumulate) and accumulate >= 1),
            "trainer.accumulate_grad_batches",
            "use an integer >= 1",
        )
        every = trainer.get("check_val_every_n_epoch")
        need(
            every is None or (_is_int(every) and every >= 1),
            "trainer.check_val_every_n_epoch",
            "use an integer >= 1, or null",
        )
        log_every = trainer.get("log_every_n_steps")
        need(
            log_every is None or (_is_int(log_every) and log_every >= 1),
            "trainer.log_every_n_steps",
            "use an integer >= 1",
        )
        for split in ("train", "val", "test"):
            limit = trainer.get(f"limit_{split}_batches")
            rule = "use a fraction in (0, 1], a number of batches >= 1, or null for all" + (
                "" if split != "train" else "; 0 would train nothing"
            )
            ok = (
                limit is None
                or (_is_int(limit) and limit >= (1 if split == "train" else 0))
                or (isinstance(limit, float) and (0 < limit <= 1 or (split != "train" and limit == 0)))
            )
            need(ok, f"trainer.limit_{split}_batches", rule)
    if problems:
        raise UserError("; ".join(problems) + ".")


# What a mandatory (???) key of a config group means, for the error that names it.
MISSING_HINTS = {
    "data.folder_name": "the name of your data set's folder (or .tar) under data.root, laid out as "
    "<name>/<split>/<class>/<image>, with a train split and val and/or test",
}


def instantiate_checked(group: str, node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that reports a rejected value of ``group`` as a :class:`UserError`
    (the constructor's own message, without Hydra's wrapping and traceback)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import MissingMandatoryValue

    try:
        return instantiate(node, **kwargs)
    except MissingMandatoryValue as err:  # a key the group leaves as ??? for the user to set
        key = getattr(err, "full_key", None) or "?"
        raise UserError(
            f"{key} must be set with {group}=...: {MISSING_HINTS.get(str(key), 'give it on the command line')} "
            f"(e.g. {key}=<value>)."
        ) from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError, ImportError, MisconfigurationException)):
            target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
            raise UserError(f"{group} config ({target}): {cause}") from None
        if cause is not None:
            raise cause from None  # not the user's value: the constructor's own error, unwrapped
        raise


def print_config_tree(
    cfg: DictConfig,
    order: Iterable[str] = ("model", "data", "drloc", "optim", "trainer", "callbacks", "logger", "paths"),
) -> None:
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
