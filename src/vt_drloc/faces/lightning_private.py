"""The one place vt_drloc reads private names of Lightning and PyTorch.

Each function below stands for one use that no public API serves; everything else in vt_drloc uses
public APIs only. ``tests/test_lightning_private.py`` runs each of them against the installed
``pytorch_lightning``, ``lightning.pytorch`` and ``torch`` (the CI matrix runs it on the oldest and newest
supported Lightning), so an upgrade that removes a name or changes its meaning fails there, loudly,
rather than silently in a user's run.

Nothing here imports Lightning: the functions read attributes of the objects they are given, so the
pure-PyTorch modules (``vt_drloc.optim``) may use them too.

==========================================  ===========================================================
private name                                why it is read
==========================================  ===========================================================
``trainer.fit_loop._data_source.instance``  at ``setup("fit")`` the loaders are not built yet and
                                            Lightning has no public handle on what ``fit`` was given
``state_dict._metadata``                    torch's per-module version record travels beside the keys;
                                            a state-dict hook that drops keys must drop theirs too
``scheduler._last_lr``                      torch's per-group list behind ``get_last_lr()``; it must
                                            grow with the optimizer's parameter groups
``scheduler._schedulers``                   the children of ``SequentialLR`` / ``ChainedScheduler``
``pl_module.training_step`` as an           not a private name but a private behaviour: Lightning
instance attribute                          calls the method through the instance, so an instance
                                            attribute set by the callback is what runs
==========================================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vt_drloc.core.tap import patch_method

__all__ = [
    "SCHEDULER_GROUP_LISTS",
    "drop_state_dict_metadata",
    "fit_data_source",
    "nested_schedulers",
    "scheduler_group_lists",
    "training_dataset",
    "wrap_training_step",
]


def fit_data_source(trainer: Any) -> Any:
    """What ``trainer.fit`` was given as training data: the loader(s), a datamodule or the module
    (whose ``train_dataloader`` serves them); None when unknown (no fit running, or Lightning moved it).

    Private: ``trainer.fit_loop._data_source.instance`` (both packages, 2.0 to at least 2.6)."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    return getattr(source, "instance", None)


def training_dataset(trainer: Any) -> Any:
    """The dataset the trainer will fit on, found without iterating any loader (None if unknown).

    At ``setup("fit")`` the fit loop has not built its loaders yet: the data source is read with
    :func:`fit_data_source`, falling back to the trainer's (public) ``datamodule``."""
    loader = fit_data_source(trainer)
    if loader is not None and not hasattr(loader, "dataset") and hasattr(loader, "train_dataloader"):
        loader = loader.train_dataloader()  # a datamodule or module given to fit
    if loader is None and getattr(trainer, "datamodule", None) is not None:
        loader = trainer.datamodule.train_dataloader()
    if isinstance(loader, Mapping):
        loader = next(iter(loader.values()), None)
    elif isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    return getattr(loader, "dataset", None)


def drop_state_dict_metadata(state_dict: Any, drop: Callable[[str], bool]) -> None:
    """Remove the entries of a ``state_dict``'s version metadata whose module prefix ``drop`` accepts.

    Private: ``state_dict._metadata`` (torch's ``Module.state_dict`` attaches it; ``load_state_dict``
    reads it). A missing one is fine: a plain dict carries none."""
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if drop(k)]:
            del metadata[key]


# per-parameter-group lists of torch's (and timm's) LR schedulers; _last_lr is private (get_last_lr's list)
SCHEDULER_GROUP_LISTS = ("base_lrs", "lr_lambdas", "min_lrs", "max_lrs", "_last_lr", "base_values")


def scheduler_group_lists(scheduler: Any) -> Iterator[tuple[str, list]]:
    """(name, list) of each per-parameter-group list that ``scheduler`` holds, to be extended in place
    when parameter groups are added after the scheduler was built.

    Private: ``_last_lr`` (torch's ``LRScheduler``; ``get_last_lr()`` returns it)."""
    for name in SCHEDULER_GROUP_LISTS:
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            yield name, values


def nested_schedulers(scheduler: Any) -> tuple[Any, ...]:
    """The schedulers a ``SequentialLR`` / ``ChainedScheduler`` drives (empty for any other).

    Private: ``_schedulers`` (torch offers no public accessor)."""
    return tuple(getattr(scheduler, "_schedulers", None) or ())


def wrap_training_step(pl_module: Any, wrap: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Make ``pl_module.training_step`` run ``wrap(original)`` for the rest of the fit; returns the undo.

    Private behaviour: Lightning (every strategy, DDP's wrapper included) calls
    ``pl_module.training_step`` through the instance, so an instance attribute takes precedence over
    the class's method. No public hook lets a callback change the loss ``training_step`` returns."""
    return patch_method(pl_module, "training_step", wrap)
