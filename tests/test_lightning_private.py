"""Each private Lightning / PyTorch use of vt_drloc (all in vt_drloc.faces.lightning_private), run against
the installed ``pytorch_lightning``, ``lightning.pytorch`` and ``torch``.

CI runs this file on the oldest and newest supported Lightning (``make test-matrix``). A failure names the
private attribute and the version that broke it: fix vt_drloc.faces.lightning_private, not the callers.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vt_drloc.faces.lightning_private import (
    drop_state_dict_metadata,
    fit_data_source,
    nested_schedulers,
    scheduler_group_lists,
    training_dataset,
    wrap_training_step,
)

PACKAGES = ("pytorch_lightning", "lightning.pytorch")


def lightning(package: str):
    pl = importlib.import_module(package)
    return pl, f"{package} {pl.__version__}"


def tiny_classes(pl):
    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class TinyData(pl.LightningDataModule):
        def __init__(self, dataset):
            super().__init__()
            self.dataset = dataset

        def train_dataloader(self):
            return DataLoader(self.dataset, batch_size=4)

    return Tiny, TinyData


def dataset() -> TensorDataset:
    return TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))


def fit(pl, module, tmp_path, callbacks, **fit_kwargs) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer.fit(module, **fit_kwargs)


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("given", ["loader", "datamodule", "module"])
def test_fit_data_source_is_what_fit_was_given(package, given, tmp_path):
    pl, version = lightning(package)
    Tiny, TinyData = tiny_classes(pl)
    data = dataset()
    module = Tiny()
    if given == "module":
        module.train_dataloader = lambda: DataLoader(data, batch_size=4)
    fit_kwargs = {
        "loader": {"train_dataloaders": DataLoader(data, batch_size=4)},
        "datamodule": {"datamodule": TinyData(data)},
        "module": {},
    }[given]
    seen = {}

    class AtSetup(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            seen["fit_loop has _data_source"] = hasattr(trainer.fit_loop, "_data_source")
            seen["source"] = fit_data_source(trainer)
            seen["dataset"] = training_dataset(trainer)

    fit(pl, module, tmp_path, [AtSetup()], **fit_kwargs)
    fence = "vt_drloc.faces.lightning_private.fit_data_source"
    assert seen["fit_loop has _data_source"], f"{version}: trainer.fit_loop._data_source is gone; update {fence}"
    expected = {"loader": DataLoader, "datamodule": TinyData, "module": Tiny}[given]
    assert isinstance(seen["source"], expected), (
        f"{version}: trainer.fit_loop._data_source.instance at setup('fit') is {type(seen['source']).__name__}, "
        f"not the {expected.__name__} given to fit(); update {fence}"
    )
    assert seen["dataset"] is data, f"{version}: training_dataset(trainer) did not find the dataset given to fit()"


def test_fit_data_source_is_none_outside_fit():
    assert fit_data_source(object()) is None
    assert training_dataset(object()) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_training_step_instance_attribute_is_what_lightning_runs(package, tmp_path):
    """The callback's wrapper runs in place of the class's training_step, and the loss it returns is the one
    Lightning back-propagates; the undo restores the class's method."""
    pl, version = lightning(package)
    Tiny, _ = tiny_classes(pl)
    calls, losses, undo = [], [], []

    class Wrap(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            def wrap(original):
                def step(*args, **kwargs):
                    calls.append(args[1])
                    return original(*args, **kwargs) + 100.0

                return step

            undo.append(wrap_training_step(pl_module, wrap))

        def on_before_backward(self, trainer, pl_module, loss):
            losses.append(float(loss.detach()))

    module = Tiny()
    fit(pl, module, tmp_path, [Wrap()], train_dataloaders=DataLoader(dataset(), batch_size=4))
    assert calls == [0, 1], f"{version}: Lightning did not call the instance attribute training_step ({calls})"
    assert len(losses) == 2 and min(losses) > 100.0, (
        f"{version}: the loss Lightning back-propagates ({losses}) is not the one the wrapped training_step returned"
    )
    undo[0]()
    assert "training_step" not in vars(module) and module.training_step.__func__ is Tiny.training_step


def test_state_dict_metadata_drop():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.LayerNorm(2)))
    state = net.state_dict()
    metadata = getattr(state, "_metadata", None)
    assert metadata is not None and {"", "0", "1", "1.0"} <= set(metadata), (
        f"torch {torch.__version__}: Module.state_dict() no longer carries _metadata keyed by module prefix "
        f"({metadata!r}); update vt_drloc.faces.lightning_private.drop_state_dict_metadata"
    )
    drop_state_dict_metadata(state, lambda key: key == "1" or key.startswith("1."))
    assert set(state._metadata) == {"", "0"}
    for key in [k for k in state if k.startswith("1.")]:
        del state[key]
    fresh = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.LayerNorm(2)))
    missing = fresh.load_state_dict(state, strict=False).missing_keys
    assert missing == ["1.0.weight", "1.0.bias"]
    drop_state_dict_metadata({"a": torch.zeros(1)}, lambda key: True)  # a plain dict has no metadata


def schedulers(optimizer):
    return {
        "LambdaLR": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch),
        "StepLR": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
        "CosineAnnealingLR": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4),
        "SequentialLR": lambda: torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [
                torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=1),
                torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5),
            ],
            milestones=[1],
        ),
        "ChainedScheduler": lambda: torch.optim.lr_scheduler.ChainedScheduler(
            [
                torch.optim.lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=1),
                torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5),
            ]
        ),
    }


@pytest.mark.parametrize("name", list(schedulers(None)))
def test_scheduler_lists_follow_an_added_group(name):
    """A group added after the scheduler was built, with the lists from scheduler_group_lists /
    nested_schedulers extended by group 0's entry, follows group 0's schedule and shows in get_last_lr()."""
    version = f"torch {torch.__version__}"
    first = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(first.parameters(), lr=1.0)
    scheduler = schedulers(optimizer)[name]()
    children = nested_schedulers(scheduler)
    if name in ("SequentialLR", "ChainedScheduler"):
        assert len(children) == 2, f"{version}: {name}._schedulers no longer lists its schedulers ({children!r})"
    else:
        assert children == ()
    for sched in (scheduler, *children):
        names = dict(scheduler_group_lists(sched))
        assert "_last_lr" in names and names["_last_lr"] is sched.get_last_lr(), (
            f"{version}: {type(sched).__name__}._last_lr is no longer the list get_last_lr() returns"
        )
    optimizer.add_param_group(
        {
            **{k: v for k, v in optimizer.param_groups[0].items() if k != "params"},
            "params": [nn.Parameter(torch.zeros(1))],
        }
    )

    def extend(sched):
        for _, values in scheduler_group_lists(sched):
            if len(values) == 1:
                values.append(values[0])
        for child in nested_schedulers(sched):
            extend(child)

    extend(scheduler)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs[1] == pytest.approx(lrs[0]), f"{version}: {name} did not schedule the added group ({lrs})"
        assert len(scheduler.get_last_lr()) == 2, f"{version}: {name}.get_last_lr() did not follow _last_lr"


def test_is_norm_covers_every_public_batch_and_instance_norm():
    """core.discover.is_norm names torch's norms by their public classes (no private base class): every public
    nn class derived from torch's batch-norm base is among them."""
    from vt_drloc.core.discover import is_norm

    base = nn.modules.batchnorm._NormBase  # read here only, to list what the public classes must cover
    public = [cls for cls in vars(nn).values() if isinstance(cls, type) and issubclass(cls, base) and cls is not base]
    assert {"BatchNorm2d", "InstanceNorm2d", "SyncBatchNorm"} <= {cls.__name__ for cls in public}
    for cls in public:
        module = cls.__new__(cls)  # no __init__: lazy modules need no shape to be classified
        assert is_norm(module), f"torch {torch.__version__}: core.discover.is_norm misses nn.{cls.__name__}"
    assert not is_norm(nn.Linear(2, 2))


# the modules allowed to read another package's private names, and why
PRIVATE_READERS = {
    "faces/lightning_private.py": "the fence: Lightning's and torch's private names",
    "models/_layers.py": "timm's feature_take_indices lives in the private timm.models._features only",
}


def test_no_other_module_reads_a_private_name():
    """Outside PRIVATE_READERS, no module of src/vt_drloc reads ``obj._name`` of another object (self / cls
    aside), asks getattr / hasattr for ``"_name"`` or imports from a private module of another package."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "vt_drloc"

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def own(node: ast.expr) -> bool:
        return isinstance(node, ast.Name) and node.id in ("self", "cls")

    found = []
    for path in sorted(src.rglob("*.py")):
        where = path.relative_to(src).as_posix()
        if where in PRIVATE_READERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and private(node.attr) and not own(node.value):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and private(node.args[1].value)
                and not own(node.args[0])
            ):
                found.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
            elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("vt_drloc."):
                if any(private(part) for part in node.module.split(".")):
                    found.append(f"{where}:{node.lineno}: from {node.module}")
    assert not found, "private names read outside vt_drloc.faces.lightning_private:\n" + "\n".join(found)
