"""``DrLocCallback``: the DRLoc loss in an existing Lightning project, without editing its module.

::

    trainer = pl.Trainer(callbacks=[DrLocCallback(lambda_drloc=0.1)])
    trainer.fit(MyLightningModule(), datamodule)

How it works (all undone in ``teardown``, so the module is left as it was):

* ``setup("fit")``: finds the backbone (the unique timm model among the module's submodules, or
  ``backbone="model.encoder"``; for a non-timm backbone, ``tap="model.blocks"`` names the module
  whose output is the token sequence / grid), sizes the grid with one no-grad forward of a zero
  batch in eval mode, and attaches a :class:`~vt_drloc.drloc.DrLocLoss` (which owns the head) to
  the module as the submodule ``_drloc_loss``. Being a submodule, the head is moved to the device,
  cast by the precision plugin and wrapped by DDP together with the module. The module's
  ``training_step`` is wrapped (an instance attribute) so that the loss it returns becomes
  ``loss + λ·L_drloc``, with L_drloc computed from the grid captured during that same forward,
  i.e. inside the same autocast region and the same DDP-wrapped forward.
* ``on_fit_start``: if the user's optimizer does not already hold the head's parameters, they are
  added as parameter groups with the first group's hyper-parameters (weights decayed, biases not,
  as in :func:`~vt_drloc.module.weight_decay_groups`) and ``initial_lr`` set; per-group lists of the
  LR schedulers (``base_lrs``, ``lr_lambdas``, ``min_lrs``, ...) are extended with the first group's
  entry, and a warning says so once.
* Checkpoints: the head's weights are kept OUT of the module's ``state_dict`` (a state-dict hook on
  the module strips ``_drloc_loss.*``, so even ``weights_only`` checkpoints load strictly into the
  user's class without the callback). They live in the callback's own ``state_dict()``
  (``checkpoint["callbacks"]["DrLocCallback"]["head"]``, with the pair sampler's state), and the
  head's optimizer state sits in ``checkpoint["optimizer_states"]`` as extra parameter groups, so
  resuming with the callback restores both.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from vt_drloc.drloc import DrLocLoss, drloc_lambda, epoch_progress, pair_generator, reduced_grid_hw
from vt_drloc.module import _plain, weight_decay_groups
from vt_drloc.tap import MIN_GRID, GridTapError, _num_prefix_tokens, check_tap_norm, final_norm, model_input_size, tokens_to_grid

HEAD_ATTR = "_drloc_loss"
GRID_FORMATS = ("auto", "tokens", "NCHW", "NHWC")
SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)
_PREFIX_ATTRS = ("num_prefix_tokens", "cls_token", "dist_token", "reg_token")
# per-parameter-group lists of torch (and timm) LR schedulers
_SCHEDULER_GROUP_LISTS = ("base_lrs", "lr_lambdas", "min_lrs", "max_lrs", "_last_lr", "base_values")


def is_timm_model(module: nn.Module) -> bool:
    """A timm model: ``forward_features`` + ``forward_head`` and made by timm (or ``timm.create_model``)."""
    has_surface = callable(getattr(module, "forward_features", None)) and callable(getattr(module, "forward_head", None))
    from_timm = type(module).__module__.startswith("timm.") or getattr(module, "pretrained_cfg", None) is not None
    return has_surface and from_timm


def find_timm_models(root: nn.Module) -> list[str]:
    """Names of the outermost timm models among ``root``'s submodules (``""`` for ``root`` itself)."""
    found: list[str] = []
    for name, module in root.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f in found):
            continue
        if is_timm_model(module):
            found.append(name)
    return found


def _submodule(root: nn.Module, path: str, arg: str) -> nn.Module:
    names = dict(root.named_modules())
    if path not in names:
        close = difflib.get_close_matches(path, [n for n in names if n], n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise MisconfigurationException(f"DrLocCallback({arg}={path!r}): {type(root).__name__} has no submodule {path!r}.{hint}")
    return names[path]


def _extend_scheduler(scheduler: Any, old_groups: int, added: int) -> None:
    """Give a scheduler built for ``old_groups`` parameter groups entries for ``added`` more (copies of group 0's)."""
    for attr in _SCHEDULER_GROUP_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == old_groups and values:
            values.extend([values[0]] * added)
    for child in getattr(scheduler, "_schedulers", None) or ():
        _extend_scheduler(child, old_groups, added)


class DrLocCallback(Callback):
    """Adds λ·L_drloc (Liu et al., NeurIPS 2021) to the loss of an existing LightningModule.

    Args:
        lambda_drloc: λ (paper: 0.5 Swin-T, 0.1 CvT-13 / T2T-ViT-14).
        backbone: dotted name of the backbone inside the LightningModule (e.g. ``"model.encoder"``).
            Default: the unique timm model among its submodules. A backbone used without ``tap``
            must have timm's ``forward_features``; its output (tokens (B, N, C), NCHW or NHWC) is
            the grid, prefix tokens removed.
        tap: dotted name of the module whose output is the final token sequence (B, N, C) or grid
            (B, C, H, W) / (B, H, W, C), for backbones that are not timm models (e.g.
            ``"model.blocks"``). Its output is captured with a forward hook.
        prefix_tokens: class / distillation / register tokens at the start of the sequence.
            Default: read from the backbone or the tap's nearest parent that has
            ``num_prefix_tokens`` / ``cls_token`` / ``dist_token`` / ``reg_token``; else 0.
        grid_format: ``"auto"`` (default), ``"tokens"``, ``"NCHW"`` or ``"NHWC"``: layout of the tapped
            output. ``auto``: 3-D is tokens; 4-D uses the model's ``output_fmt`` / ``num_features``,
            else the square spatial dimensions.
        input_size: (H, W) (or an int) of the zero batch used once at setup to size the grid.
            Default: the timm model's own input size, else the module's ``example_input_array``.
        in_chans: channels of that batch (default: the model's ``in_chans``, else 3).
        drloc_mode, sample_size, drloc_target, head_hidden_dims, grid_size, head_init, class_head:
            see :class:`vt_drloc.drloc.DrLocLoss`.
        tap_norm: for a backbone read through ``forward_features``: ``"pre"`` (default, as the
            released Swin-T / ViT) reads the input of the backbone's final ``norm``, ``"post"`` its
            output (the released T2T-ViT). A backbone without a final norm gives the same grid
            either way; ignored with ``tap=`` (the named module's output is the grid).
        lambda_schedule, lambda_warmup_epochs, lambda_decay_epochs, lambda_interval: see
            :func:`vt_drloc.drloc.drloc_lambda` and :func:`vt_drloc.drloc.epoch_progress`
            (defaults as in :class:`~vt_drloc.module.DrLocModule`).
        drloc_seed: seed of the pair sampler (default: the global seed), plus the rank.

    Logs ``train/drloc`` (L_drloc, unweighted) and ``train/lambda``. Refuses manual optimisation
    and sharded strategies (FSDP, DeepSpeed, ModelParallel).
    """

    def __init__(
        self,
        lambda_drloc: float = 0.1,
        backbone: str | None = None,
        tap: str | None = None,
        prefix_tokens: int | None = None,
        grid_format: str = "auto",
        input_size: Sequence[int] | int | None = None,
        in_chans: int | None = None,
        drloc_mode: str = "l1",
        sample_size: int = 64,
        drloc_target: str = "abs",
        head_hidden_dims: Sequence[int] | str = "released",
        grid_size: int | None = 7,
        lambda_schedule: str = "warmup_decay",
        lambda_warmup_epochs: float = 20,
        drloc_seed: int | None = None,
        tap_norm: str = "pre",
        head_init: str = "released",
        class_head: str = "released",
        lambda_decay_epochs: float | None = None,
        lambda_interval: str = "step",
    ):
        super().__init__()
        head_hidden_dims = _plain(head_hidden_dims)
        if not isinstance(head_hidden_dims, str):
            head_hidden_dims = [int(d) for d in head_hidden_dims]
        input_size = _plain(input_size)
        if grid_format not in GRID_FORMATS:
            raise ValueError(f"grid_format={grid_format!r} is not valid; choose one of {', '.join(map(repr, GRID_FORMATS))}")
        if prefix_tokens is not None and int(prefix_tokens) < 0:
            raise ValueError(f"prefix_tokens={prefix_tokens} must be >= 0")
        drloc_lambda(lambda_drloc, 0.0, None, lambda_schedule, lambda_warmup_epochs, lambda_decay_epochs)  # validates λ and schedule
        epoch_progress(0, 0, None, lambda_interval)
        check_tap_norm(tap_norm)
        # validates mode, target, sample_size, hidden dims, grid_size and the head options with the core's own checks
        DrLocLoss(1, drloc_mode, sample_size, drloc_target, head_hidden_dims, grid_size, grid_hw=(MIN_GRID, MIN_GRID),
                  head_init=head_init, class_head=class_head)
        self.lambda_drloc = float(lambda_drloc)
        self.backbone = backbone
        self.tap = tap
        self.prefix_tokens = None if prefix_tokens is None else int(prefix_tokens)
        self.grid_format = grid_format
        self.input_size = input_size
        self.in_chans = in_chans
        self.drloc_mode = drloc_mode
        self.sample_size = int(sample_size)
        self.drloc_target = drloc_target
        self.head_hidden_dims = head_hidden_dims
        self.grid_size = grid_size
        self.lambda_schedule = lambda_schedule
        self.lambda_warmup_epochs = lambda_warmup_epochs
        self.lambda_decay_epochs = lambda_decay_epochs
        self.lambda_interval = lambda_interval
        self.drloc_seed = drloc_seed
        self.tap_norm = tap_norm
        self.head_init = head_init
        self.class_head = class_head

        self.loss: DrLocLoss | None = None  # owned by the callback; attached to the module while fitting
        self._pending_head_state: Mapping[str, Tensor] | None = None
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None
        self._batch_idx = 0
        self._module: pl.LightningModule | None = None
        self._undo: list[Callable[[], None]] = []
        self._tap_name = ""
        self._backbone_name = ""
        self._format = "tokens"
        self._prefix = 0
        self._owner: nn.Module | None = None
        self._capturing = False
        self._captured: Any = None
        self._calls = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ public helpers
    @property
    def head(self) -> nn.Module | None:
        """The offset-prediction MLP (``self.loss.head``), or None before the first ``setup``."""
        return None if self.loss is None else self.loss.head

    @property
    def num_head_params(self) -> int:
        """Parameters of the DRLoc head (0 before the first ``setup``)."""
        return 0 if self.loss is None else sum(p.numel() for p in self.loss.parameters())

    def current_lambda(self, trainer: pl.Trainer) -> float:
        """λ for the current training step."""
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        progress = epoch_progress(trainer.current_epoch, self._batch_idx, trainer.num_training_batches, self.lambda_interval)
        return drloc_lambda(
            self.lambda_drloc, progress, max_epochs, self.lambda_schedule, self.lambda_warmup_epochs, self.lambda_decay_epochs
        )

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # validate / test / predict run the module exactly as without the callback
        self._detach()  # a setup without teardown (e.g. a second fit after an interrupted one)
        self._refuse(trainer, pl_module)
        try:
            self._attach(trainer, pl_module)
        except BaseException:
            self._detach()
            raise

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach()

    def _refuse(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cls = type(pl_module).__name__
        if isinstance(trainer.strategy, SHARDED_STRATEGIES):
            raise MisconfigurationException(
                f"DrLocCallback does not support the sharded strategy {type(trainer.strategy).__name__}: it attaches the "
                "DRLoc head to the module at setup and adds the head's parameters to the optimizer afterwards, which "
                "FSDP / DeepSpeed / ModelParallel cannot take once they have sharded the parameters. Use "
                "strategy='ddp' (or a single device), or build vt_drloc.drloc.DrLocLoss into your module yourself."
            )
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"DrLocCallback cannot be used with manual optimisation ({cls}.automatic_optimization is False): it "
                "adds λ·L_drloc to the loss that training_step returns, and Lightning back-propagates that loss only "
                "under automatic optimisation. With manual optimisation, add vt_drloc.drloc.DrLocLoss to your module "
                "and include λ·drloc(grid) in the loss you pass to manual_backward."
            )
        if getattr(pl_module, "drloc", None) is not None and isinstance(getattr(pl_module, "drloc"), DrLocLoss):
            raise MisconfigurationException(
                f"{cls} already trains DRLoc (it has a DrLocLoss as .drloc, e.g. DrLocModule with lambda_drloc > 0); "
                "use either DrLocModule or DrLocCallback, not both."
            )
        if HEAD_ATTR in pl_module._modules or hasattr(pl_module, HEAD_ATTR):
            raise MisconfigurationException(
                f"{cls} already has an attribute {HEAD_ATTR!r}: another DrLocCallback is attached (use one), or the "
                "module uses the name DrLocCallback reserves for its head."
            )

    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[nn.Module | None, nn.Module | None]:
        """(backbone, tap module). Exactly one route: a backbone with ``forward_features``, or a tap."""
        if self.backbone is None and self.tap is None and not find_timm_models(pl_module):
            # the backbone may be built in configure_model, which Lightning calls right after setup;
            # the hook is documented as idempotent, so building it now is allowed.
            if is_overridden("configure_model", pl_module, pl.LightningModule):
                with trainer.strategy.tensor_init_context():
                    pl_module.configure_model()
        backbone = _submodule(pl_module, self.backbone, "backbone") if self.backbone is not None else None
        if self.tap is not None:
            return backbone, _submodule(pl_module, self.tap, "tap")
        if backbone is None:
            found = find_timm_models(pl_module)
            cls = type(pl_module).__name__
            if not found:
                raise MisconfigurationException(
                    f"DrLocCallback found no timm model among the submodules of {cls}. Name the backbone with "
                    "backbone='model.encoder' (a module with forward_features), or, for a backbone that is not a timm "
                    "model, name the module whose output is the token sequence with tap='model.blocks'."
                )
            if len(found) > 1:
                raise MisconfigurationException(
                    f"DrLocCallback found {len(found)} timm models in {cls}: {', '.join(repr(n or '<module>') for n in found)}. "
                    "Name the one to train with DRLoc: DrLocCallback(backbone=...)."
                )
            backbone = pl_module if found[0] == "" else _submodule(pl_module, found[0], "backbone")
            self._backbone_name = found[0] or type(pl_module).__name__
        else:
            self._backbone_name = self.backbone
        if not callable(getattr(backbone, "forward_features", None)):
            raise MisconfigurationException(
                f"DrLocCallback(backbone={self.backbone!r}): {type(backbone).__name__} has no forward_features; name "
                "the module whose output is the token sequence or grid with tap='...' instead."
            )
        return backbone, None

    def _attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone, tap_module = self._resolve(trainer, pl_module)
        self._module = pl_module
        if tap_module is not None:
            self._tap_name = f"tap {self.tap!r}"
            handle = tap_module.register_forward_hook(lambda _m, _args, output: self._record(output))
            self._undo.append(handle.remove)
            self._owner = backbone if backbone is not None else self._prefix_owner(pl_module, self.tap)
        elif self.tap_norm == "pre" and (norm := final_norm(backbone)) is not None:
            # the input of the final norm: the last stage's tokens in forward_features' own layout
            self._tap_name = f"backbone {self._backbone_name!r} (input of its final norm)"
            handle = norm.register_forward_pre_hook(lambda _m, args: self._record(args[0]))
            self._undo.append(handle.remove)
            self._owner = backbone
        else:
            self._tap_name = f"backbone {self._backbone_name!r} (forward_features)"
            self._wrap_forward_features(backbone)
            self._owner = backbone
        runner = backbone if backbone is not None else pl_module
        channels, height, width, device = self._probe(pl_module, runner, backbone, tap_module)

        loss = self.loss  # kept from an earlier fit (or resumed) when the grid is the same
        reduced_hw = reduced_grid_hw((height, width), self.grid_size)
        if loss is None or loss.head.in_dim != channels or loss.reduced_hw != reduced_hw:
            loss = DrLocLoss(
                channels,
                mode=self.drloc_mode,
                sample_size=self.sample_size,
                target=self.drloc_target,
                hidden_dims=self.head_hidden_dims,
                grid_size=self.grid_size,
                grid_hw=(height, width),
                head_init=self.head_init,
                class_head=self.class_head,
            )
        if self._pending_head_state is not None:
            loss.load_state_dict(self._pending_head_state)
            self._pending_head_state = None
        self.loss = loss.to(device)
        pl_module.add_module(HEAD_ATTR, self.loss)
        self._undo.append(lambda: pl_module._modules.pop(HEAD_ATTR, None))

        # keep the head out of the module's state_dict, and let the module load without it
        prefix_key = HEAD_ATTR + "."

        def strip_head(module, state_dict, prefix, local_metadata):
            for key in [k for k in state_dict if k.startswith(prefix + prefix_key)]:
                del state_dict[key]
            metadata = getattr(state_dict, "_metadata", None)
            if metadata is not None:
                for key in [k for k in metadata if k == prefix + HEAD_ATTR or k.startswith(prefix + prefix_key)]:
                    del metadata[key]

        def allow_missing_head(module, incompatible_keys):
            missing = incompatible_keys.missing_keys
            missing[:] = [k for k in missing if HEAD_ATTR not in k.split(".")]

        self._undo.append(pl_module.register_state_dict_post_hook(strip_head).remove)
        self._undo.append(pl_module.register_load_state_dict_post_hook(allow_missing_head).remove)

        original = pl_module.training_step
        had_instance_attr = "training_step" in pl_module.__dict__

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._training_step(trainer, pl_module, original, *args, **kwargs)

        pl_module.training_step = training_step

        def restore_training_step() -> None:
            if had_instance_attr:
                pl_module.training_step = original
            else:
                pl_module.__dict__.pop("training_step", None)

        self._undo.append(restore_training_step)

    def _detach(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._module = None
        self._capturing = False
        self._captured = None

    # ------------------------------------------------------------------ grid capture
    def _record(self, output: Any) -> None:
        if not self._capturing:
            return
        self._calls += 1
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        if self._captured is None and (self._capturing == "probe" or getattr(output, "requires_grad", False)):
            self._captured = output

    def _wrap_forward_features(self, backbone: nn.Module) -> None:
        original = backbone.forward_features
        had_instance_attr = "forward_features" in backbone.__dict__

        @functools.wraps(original)
        def forward_features(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self._record(out)
            return out

        backbone.forward_features = forward_features

        def restore() -> None:
            if had_instance_attr:
                backbone.forward_features = original
            else:
                backbone.__dict__.pop("forward_features", None)

        self._undo.append(restore)

    @staticmethod
    def _prefix_owner(pl_module: nn.Module, tap: str) -> nn.Module | None:
        """Nearest parent of the tap (or the tap itself) that knows its prefix tokens."""
        parts = tap.split(".")
        modules = dict(pl_module.named_modules())
        for depth in range(len(parts), -1, -1):
            module = modules.get(".".join(parts[:depth]))
            if module is not None and any(getattr(module, a, None) is not None for a in _PREFIX_ATTRS):
                return module
        return None

    def _probe_input(self, pl_module: pl.LightningModule, runner: nn.Module, backbone: nn.Module | None, device, dtype) -> Tensor:
        owner = backbone if backbone is not None else runner
        in_chans = self.in_chans or getattr(owner, "in_chans", None)
        if in_chans is None:
            in_chans = (getattr(owner, "pretrained_cfg", None) or {}).get("input_size", (3,))[0]
        if self.input_size is not None:
            size = self.input_size
            hw = (size, size) if isinstance(size, int) else (int(size[-2]), int(size[-1]))
        elif backbone is not None and (is_timm_model(backbone) or getattr(backbone, "img_size", None) is not None
                                       or getattr(getattr(backbone, "patch_embed", None), "img_size", None) is not None):
            hw = model_input_size(backbone)
        elif runner is pl_module and isinstance(pl_module.example_input_array, Tensor):
            return torch.zeros_like(pl_module.example_input_array[:2], device=device)
        else:
            raise MisconfigurationException(
                f"DrLocCallback cannot tell the input size of {type(owner).__name__}; it runs one forward of a zero "
                "batch at setup to size the DRLoc head. Pass input_size=(H, W) (and in_chans=...), or set the "
                "module's example_input_array."
            )
        return torch.zeros(2, int(in_chans), *hw, device=device, dtype=dtype)

    def _probe(self, pl_module, runner, backbone, tap_module) -> tuple[int, int, int, torch.device]:
        """One no-grad forward of a zero batch (eval mode) through the real tap: the grid's C, H, W."""
        param = next(iter(runner.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = self._probe_input(pl_module, runner, backbone, device, dtype)
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        self._capturing, self._captured, self._calls = "probe", None, 0
        try:
            with torch.no_grad():
                runner(x)
        except Exception as err:
            raise GridTapError(
                f"DrLocCallback could not run {type(runner).__name__} on a zero batch of shape {tuple(x.shape)} to size "
                f"the DRLoc head: {type(err).__name__}: {err}. Pass input_size=(H, W) / in_chans=... as the model expects."
            ) from err
        finally:
            raw = self._captured
            self._capturing, self._captured = False, None
            for module, mode in modes:
                module.training = mode
        if raw is None:
            raise GridTapError(f"DrLocCallback: a forward of {type(runner).__name__} never reached the {self._tap_name}.")
        if not isinstance(raw, Tensor):
            raise GridTapError(f"DrLocCallback: the {self._tap_name} returned {type(raw).__name__}, not a tensor.")
        self._format = self._resolve_format(raw)
        if self._format == "tokens":
            self._prefix = self.prefix_tokens if self.prefix_tokens is not None else (
                _num_prefix_tokens(self._owner) if self._owner is not None else 0
            )
        try:
            grid = self._to_grid(raw)
        except GridTapError as err:
            raise GridTapError(
                f"DrLocCallback: the {self._tap_name} output {tuple(raw.shape)} is not a usable grid: {err}. "
                "Set prefix_tokens= (class / register tokens) or grid_format= to match it."
            ) from err
        _, channels, height, width = grid.shape
        if min(height, width) < MIN_GRID:
            raise GridTapError(
                f"DrLocCallback: the {self._tap_name} yields a {height}x{width} grid of {channels} channels at input "
                f"{tuple(x.shape[-2:])}; DRLoc needs at least {MIN_GRID}x{MIN_GRID}. Use a smaller patch / stride or a "
                "larger input, or tap an earlier stage."
            )
        return int(channels), int(height), int(width), device

    def _resolve_format(self, raw: Tensor) -> str:
        if self.grid_format != "auto":
            expected = 3 if self.grid_format == "tokens" else 4
            if raw.dim() != expected:
                raise GridTapError(f"grid_format={self.grid_format!r} expects a {expected}-D output, the {self._tap_name} gave {tuple(raw.shape)}")
            return self.grid_format
        if raw.dim() == 3:
            return "tokens"
        if raw.dim() != 4:
            raise GridTapError(f"DrLocCallback: the {self._tap_name} output {tuple(raw.shape)} holds no spatial grid; expected (B, N, C), NCHW or NHWC.")
        owner = self._owner
        if owner is not None and (getattr(owner, "output_fmt", None) is not None or getattr(owner, "num_features", None) is not None):
            return "NCHW" if tokens_to_grid(raw, owner) is raw else "NHWC"
        _, d1, d2, d3 = raw.shape
        if d2 == d3 and d1 != d2:
            return "NCHW"
        if d1 == d2 and d3 != d1:
            return "NHWC"
        raise GridTapError(f"DrLocCallback cannot tell whether the {self._tap_name} output {tuple(raw.shape)} is NCHW or NHWC; pass grid_format=.")

    def _to_grid(self, raw: Tensor) -> Tensor:
        if self._format == "tokens":
            return tokens_to_grid(raw, self._owner or nn.Module(), self._prefix)
        return raw.permute(0, 3, 1, 2) if self._format == "NHWC" else raw

    # ------------------------------------------------------------------ training step
    def _sampler(self, device: torch.device, rank: int) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = pair_generator(device, self.drloc_seed, rank, self._generator_state)
            self._generator_state = None
        return self._generator

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def _training_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, original: Callable, *args: Any, **kwargs: Any) -> Any:
        self._capturing, self._captured, self._calls = "train", None, 0
        try:
            out = original(*args, **kwargs)
            raw = self._captured
        finally:
            self._capturing, self._captured = False, None
        if out is None:  # the user skipped this batch
            return out
        if isinstance(out, Tensor):
            loss = out
        elif isinstance(out, Mapping) and "loss" in out:
            loss = out["loss"]
        else:
            raise MisconfigurationException(
                f"DrLocCallback: {type(pl_module).__name__}.training_step returned {type(out).__name__}; it must return "
                "the loss tensor or a dict with 'loss' for the DRLoc term to be added."
            )
        if raw is None:
            raise RuntimeError(
                f"DrLocCallback: {type(pl_module).__name__}.training_step did not run the {self._tap_name} with gradients "
                "enabled, so there is no grid for the DRLoc loss. Point backbone= / tap= at the network it trains."
            )
        if self._calls > 1 and "calls" not in self._warned:
            self._warned.add("calls")
            rank_zero_warn(
                f"DrLocCallback: training_step ran the {self._tap_name} {self._calls} times; DRLoc uses the grid of the "
                "first forward that requires grad."
            )
        grid = self._to_grid(raw)
        drloc = self.loss(grid, generator=self._sampler(grid.device, trainer.global_rank))
        lam = self.current_lambda(trainer)
        total = loss + lam * drloc
        pl_module.log("train/drloc", drloc, on_step=True, on_epoch=True, sync_dist=True)
        pl_module.log("train/lambda", lam, on_step=True, on_epoch=False)
        if isinstance(out, Tensor):
            return total
        return {**out, "loss": total}

    # ------------------------------------------------------------------ optimizer
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._module is None or self.loss is None:
            return
        if not trainer.optimizers:
            rank_zero_warn("DrLocCallback: the module configured no optimizer, so the DRLoc head will not be trained.")
            return
        optimizer = trainer.optimizers[0]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = {id(p) for p in self.loss.parameters() if id(p) not in held}
        if not missing:
            return  # configure_optimizers already covered the head (e.g. it used self.parameters())
        template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        template["initial_lr"] = template.get("initial_lr", template["lr"])
        weight_decay = template.get("weight_decay", 0.0) or 0.0
        if weight_decay > 0:
            groups = weight_decay_groups([self.loss], weight_decay)
        else:
            groups = [{"params": list(self.loss.parameters())}]
        old_groups = len(optimizer.param_groups)
        added = 0
        for group in groups:
            params = [p for p in group["params"] if id(p) in missing]
            if params:
                optimizer.add_param_group({**template, **group, "params": params})
                added += 1
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        for scheduler in schedulers:
            _extend_scheduler(scheduler, old_groups, added)
        if schedulers and "scheduler" not in self._warned:
            self._warned.add("scheduler")
            rank_zero_warn(
                f"DrLocCallback added the DRLoc head's parameters to {type(optimizer).__name__} as {added} new parameter "
                f"group(s) with the hyper-parameters of group 0. Your LR scheduler(s) "
                f"({', '.join(type(s).__name__ for s in schedulers)}) were built before these groups existed: their "
                "per-group lists (base_lrs, lr_lambdas, min_lrs, ...) were extended with group 0's entry, which covers "
                "torch's schedulers, but a custom scheduler may not schedule the new groups. To control them yourself, "
                "build the optimizer over self.parameters(), which includes the head (attached before configure_optimizers)."
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.loss is None:
            return {}
        state: dict[str, Any] = {"head": self.loss.state_dict()}
        if self._generator is not None:
            state["sampler_state"] = self._generator.get_state()
        elif self._generator_state is not None:
            state["sampler_state"] = self._generator_state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        head = state_dict.get("head")
        if head is not None:
            if self.loss is not None:
                self.loss.load_state_dict(head)
            else:
                self._pending_head_state = head  # applied when setup builds the head
        if state_dict.get("sampler_state") is not None:
            self._generator_state = state_dict["sampler_state"].cpu()
            self._generator = None
