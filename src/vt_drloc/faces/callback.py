"""``DrLocCallback``: the DRLoc loss in an existing Lightning project, without editing its module.

::

    trainer = pl.Trainer(callbacks=[DrLocCallback(lambda_drloc=0.1)])
    trainer.fit(MyLightningModule(), datamodule)

How it works (all undone in ``teardown``, so the module is left as it was):

Written once as :class:`DrLocCallbackBase` and built for each Lightning package:
``vt_drloc.DrLocCallback`` (``pytorch_lightning``) and ``vt_drloc.lightning.DrLocCallback``
(``lightning.pytorch``). The loss, λ, pair sampler and logging are the shared
:class:`~vt_drloc.faces.objective.DrLocObjective`; finding and reading the grid is
:class:`~vt_drloc.core.tap.GridCapture`.

* ``setup("fit")``: finds the backbone (the unique timm model among the module's submodules, or
  ``backbone="model.encoder"``; for a non-timm backbone, ``tap="model.blocks"`` names the module
  whose output is the token sequence / grid), sizes the grid with one no-grad forward of a zero
  batch in eval mode (through the backbone, or the submodule that holds the tap: the module's own
  ``forward`` is never needed; input size from ``input_size=``, the model, ``example_input_array``
  or the first training sample), and attaches a :class:`~vt_drloc.core.DrLocLoss` (which owns the head) to
  the module as the submodule ``_drloc_loss``. Being a submodule, the head is moved to the device,
  cast by the precision plugin and wrapped by DDP together with the module. The module's
  ``training_step`` is wrapped (an instance attribute) so that the loss it returns becomes
  ``loss + λ·L_drloc``, with L_drloc computed from the grid captured during that same forward,
  i.e. inside the same autocast region and the same DDP-wrapped forward.
* ``on_fit_start``: if the user's optimizer does not already hold the head's parameters, they are
  added as parameter groups with the first group's hyper-parameters (weights decayed, biases not,
  as in :func:`~vt_drloc.faces.optim.weight_decay_groups`) and ``initial_lr`` set; per-group lists of the
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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from vt_drloc.base.lightning_api import PYTORCH_LIGHTNING, LightningAPI
from vt_drloc.core import DrLocLoss
from vt_drloc.core.discover import (
    FORMAT_LAYOUTS,
    PROBE_BATCH,
    ForwardRecord,
    GridReading,
    GridSource,
    find_final_grid,
    grid_readings,
    named_prefix_tokens,
)
from vt_drloc.core.errors import DrLocConfigError
from vt_drloc.core.stages import MultiScaleDrLocLoss, StageCapture, probe_stage_grids
from vt_drloc.core.tap import (
    GRID_FORMATS,
    MIN_GRID,
    GridCapture,
    GridTapError,
    final_norm,
    find_backbone,
    find_timm_models,
    is_timm_model,
    prefix_owner,
    probe_input,
)
from vt_drloc.faces.lightning_private import drop_state_dict_metadata, training_dataset, wrap_training_step
from vt_drloc.faces.objective import DrLocConfig, DrLocObjective, log_step, plain
from vt_drloc.faces.optim import add_param_groups

__all__ = ["GRID_FORMATS", "HEAD_ATTR", "DrLocCallback", "DrLocCallbackBase", "find_timm_models", "is_timm_model"]

HEAD_ATTR = "_drloc_loss"


class DrLocCallbackBase:
    """Adds λ·L_drloc (Liu et al., NeurIPS 2021) to the loss of an existing LightningModule.

    Args:
        lambda_drloc: λ (paper: 0.5 Swin-T, 0.1 CvT-13 / T2T-ViT-14); default: ``drloc``'s, else 0.1.
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
            Default: the size the backbone is built for (``img_size``), else the module's
            ``example_input_array``, else the first training sample, else a timm model's default.
        in_chans: channels of that batch (default: as the input size, else the model's ``in_chans``, else 3).
        drloc: the DRLoc options (:class:`~vt_drloc.faces.objective.DrLocConfig` or a mapping of its
            fields, the keys of ``conf/drloc``); the same fields may be given as keyword arguments
            (vt_drloc 0.1 names accepted). ``tap_norm`` applies to a backbone read through
            ``forward_features`` (``"pre"``: the input of its final ``norm``, ``"post"``: its output)
            and is ignored with ``tap=`` (the named module's output is the grid).

    Logs ``train/drloc`` (L_drloc, unweighted; multi-scale: the sum over stages, each stage also as
    ``train/drloc_stage<i>`` per epoch) and ``train/lambda``. With ``stages`` other than ``"last"`` the
    earlier stages are found by what runs (:mod:`vt_drloc.core.stages`) and listed in ``stage_sources``.
    Refuses manual optimisation and sharded strategies (FSDP, DeepSpeed, ModelParallel).
    """

    lightning: LightningAPI

    def __init__(
        self,
        lambda_drloc: float | None = None,
        backbone: str | None = None,
        tap: str | None = None,
        prefix_tokens: int | None = None,
        grid_format: str = "auto",
        input_size: Sequence[int] | int | None = None,
        in_chans: int | None = None,
        drloc: DrLocConfig | Mapping[str, Any] | None = None,
        **drloc_options: Any,
    ):
        super().__init__()
        if lambda_drloc is not None:
            drloc_options["lambda_drloc"] = lambda_drloc
        self.objective = DrLocObjective(DrLocConfig.build(drloc, **drloc_options))
        self.capture = GridCapture(grid_format, prefix_tokens)  # validates both
        self.backbone = backbone
        self.tap = tap
        self.input_size = plain(input_size)
        self.in_chans = in_chans
        self._module: Any = None
        self._trainer: Any = None  # the trainer of the fit the callback is attached to (current_lambda)
        self._batch_idx = 0  # the training batch λ is at
        self._undo: list[Callable[[], None]] = []
        self._warned: set[str] = set()
        self.grid_source: GridSource | None = None
        # multi-scale (drloc stages): the earlier stages' grids, and whether the final grid is one of the stages
        self.stage_sources: list[GridSource] = []
        self.final_is_stage = True
        self.stage_capture = StageCapture()
        self._probe_runner: nn.Module | None = None  # the runner that accepted the setup probe (discovery route)
        self._head_groups = 0  # parameter groups on_fit_start appended to the user's optimizer

    # ------------------------------------------------------------------ public helpers
    @property
    def config(self) -> DrLocConfig:
        """The DRLoc options."""
        return self.objective.config

    @property
    def lambda_drloc(self) -> float:
        return self.objective.config.lambda_drloc

    @property
    def loss(self) -> DrLocLoss | MultiScaleDrLocLoss | None:
        """The DRLoc loss (owning the head), or None before the first ``setup``."""
        return self.objective.loss

    @property
    def head(self) -> nn.Module | None:
        """The offset-prediction MLP (``self.loss.head``; multi-scale: a ``ModuleList`` of the stages' heads),
        or None before the first ``setup``."""
        if isinstance(self.loss, MultiScaleDrLocLoss):
            return nn.ModuleList(stage.head for stage in self.loss.stages)
        return None if self.loss is None else self.loss.head

    @property
    def num_head_params(self) -> int:
        """Parameters of the DRLoc head (0 before the first ``setup``)."""
        return self.objective.num_head_params

    @property
    def current_lambda(self) -> float:
        """λ in effect for the current training step (the schedule's start outside ``fit``), as on DrLocModule."""
        return self.objective.current_lambda(self._trainer, self._batch_idx)

    def _error(self, message: str) -> Exception:
        return DrLocConfigError(message)

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return  # validate / test / predict run the module exactly as without the callback
        self._detach()  # a setup without teardown (e.g. a second fit after an interrupted one)
        self._refuse(trainer, pl_module)
        try:
            self._attach(trainer, pl_module)
        except BaseException:
            self._detach()
            raise

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._detach()

    def _refuse(self, trainer: Any, pl_module: Any) -> None:
        cls = type(pl_module).__name__
        if isinstance(trainer.strategy, self.lightning.sharded_strategies):
            raise self._error(
                f"DrLocCallback does not support the sharded strategy {type(trainer.strategy).__name__}: it attaches "
                "the DRLoc head to the module at setup and adds the head's parameters to the optimizer afterwards, "
                "which FSDP / DeepSpeed / ModelParallel cannot take once they have sharded the parameters. Use "
                "strategy='ddp' (or a single device), or build vt_drloc.core.DrLocLoss into your module yourself."
            )
        if not pl_module.automatic_optimization:
            raise self._error(
                f"DrLocCallback cannot be used with manual optimisation ({cls}.automatic_optimization is False): it "
                "adds λ·L_drloc to the loss that training_step returns, and Lightning back-propagates that loss only "
                "under automatic optimisation. With manual optimisation, add vt_drloc.core.DrLocLoss to your module "
                "and include λ·drloc(grid) in the loss you pass to manual_backward."
            )
        if isinstance(getattr(pl_module, "drloc", None), DrLocLoss):
            raise self._error(
                f"{cls} already trains DRLoc (it has a DrLocLoss as .drloc, e.g. DrLocModule with lambda_drloc > 0); "
                "use either DrLocModule or DrLocCallback, not both."
            )
        if hasattr(pl_module, HEAD_ATTR):  # a submodule too: nn.Module.__getattr__ finds it
            raise self._error(
                f"{cls} already has an attribute {HEAD_ATTR!r}: another DrLocCallback is attached (use one), or the "
                "module uses the name DrLocCallback reserves for its head."
            )

    def _resolve(self, trainer: Any, pl_module: Any) -> tuple[nn.Module | None, nn.Module | None, str]:
        """(backbone, tap module, backbone name), found by :func:`~vt_drloc.core.tap.find_backbone`."""
        if self.backbone is None and self.tap is None and not find_timm_models(pl_module):
            # the backbone may be built in configure_model, which Lightning calls right after setup;
            # the hook is documented as idempotent, so building it now is allowed.
            if self.lightning.is_overridden("configure_model", pl_module, self.lightning.LightningModule):
                with trainer.strategy.tensor_init_context():
                    pl_module.configure_model()
        return find_backbone(pl_module, self.backbone, self.tap)

    def _runners(self, pl_module: Any, backbone: nn.Module | None) -> list[nn.Module]:
        """What the probe may run on an image batch, in order: the backbone; else the top-level submodule that
        holds the tap; else the module itself (when it defines ``forward``) and its top-level submodules,
        largest first (so a module that defines only ``training_step`` needs no ``forward``)."""
        if backbone is not None:
            return [backbone]
        children = dict(pl_module.named_children())
        if self.tap is not None and "." in self.tap and self.tap.split(".")[0] in children:
            return [children[self.tap.split(".")[0]]]
        own = [pl_module] if self.lightning.is_overridden("forward", pl_module, self.lightning.LightningModule) else []
        ranked = sorted(children.values(), key=lambda m: -sum(p.numel() for p in m.parameters()))
        return own + [m for m in ranked if any(True for _ in m.parameters())]

    def _probe_batch(self, trainer: Any, pl_module: Any, runner: nn.Module) -> Tensor:
        param = next(iter(runner.parameters()), None)
        x = probe_input(
            runner,
            input_size=self.input_size,
            in_chans=self.in_chans,
            example_input=getattr(pl_module, "example_input_array", None),
            training_dataset=lambda: training_dataset(trainer),
            device=param.device if param is not None else torch.device("cpu"),
            dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32,
        )
        if x is None:
            raise self._error(
                f"DrLocCallback cannot tell the input size of {type(runner).__name__}; it runs one forward of a zero "
                "batch at setup to size the DRLoc head. Pass input_size=(H, W) (and in_chans=...), set the "
                "module's example_input_array, or give the trainer a map-style training dataset."
            )
        return x

    def _record_forward(self, trainer: Any, pl_module: Any, runners: list[nn.Module]) -> tuple[ForwardRecord, Tensor]:
        """One recorded no-grad forward of a zero batch in eval mode (modes restored) through the first runner
        that accepts an image batch."""
        errors = []
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            for runner in runners:
                x = self._probe_batch(trainer, pl_module, runner)
                try:
                    record = ForwardRecord(pl_module, runner, x, skip=(HEAD_ATTR,))
                    self._probe_runner = runner  # the stages' probe (multi-scale) runs what ran here
                    return record, x
                except Exception as err:
                    errors.append(f"{type(runner).__name__}: {type(err).__name__}: {err}")
        finally:
            for module, mode in modes:
                module.training = mode
        raise GridTapError(
            f"DRLoc could not run {type(pl_module).__name__} on a zero image batch to find its final grid "
            f"({'; '.join(errors) or 'no submodule with parameters'}). Name the backbone with backbone='...' (a "
            "submodule that takes an image batch) and, if needed, input_size=(H, W) / in_chans=..."
        )

    def _prefix_for(self, pl_module: Any, path: str) -> int | None:
        """Prefix tokens: the user's, else those named by the nearest ancestor of ``path`` that names any."""
        if self.capture.prefix_tokens is not None:
            return self.capture.prefix_tokens
        parts = path.split(".") if path else []
        modules = dict(pl_module.named_modules())
        for depth in range(len(parts), -1, -1):
            count = named_prefix_tokens(modules.get(".".join(parts[:depth])))
            if count is not None:
                return count
        return None

    def _tapped_grid(self, pl_module: Any, record: ForwardRecord, x: Tensor) -> tuple[nn.Module, GridReading]:
        """The named tap's module and the reading of its output; refuses a tap before the transformer blocks."""
        model = type(pl_module).__name__
        outputs = [out for out in record.outputs if out.name == self.tap]
        if not outputs:
            raise GridTapError(
                f"DRLoc: a forward of {model} never reached tap={self.tap!r}. The candidates:\n{record.candidates()}"
            )
        out = outputs[0]
        if out.tensor is None:
            raise GridTapError(
                f"DRLoc: tap={self.tap!r} returns {out.kind}, which holds no tensor DRLoc reads (a tensor, or a "
                f"ModelOutput / dict / dataclass with last_hidden_state; unnamed tuple elements are never read). Name "
                f"a module that returns the grid; the candidates:\n{record.candidates()}"
            )
        if not record.after_blocks(out):
            raise GridTapError(
                f"DRLoc refuses tap={self.tap!r}: its output {tuple(out.tensor.shape)} is computed before any "
                "transformer block of the model (a patch embedding or input layer), so DRLoc would train the patch "
                "embeddings, not the final grid the paper's loss reads. Name a module after the last block; the "
                f"candidates:\n{record.candidates()}"
            )
        layouts = FORMAT_LAYOUTS[self.capture.grid_format]
        readings = grid_readings(
            out.tensor, PROBE_BATCH, tuple(x.shape[-2:]), self._prefix_for(pl_module, self.tap), layouts
        )
        if not readings:
            raise GridTapError(
                f"DRLoc: the output of tap={self.tap!r} {tuple(out.tensor.shape)} is not a usable grid at input "
                f"{tuple(x.shape[-2:])}: it is neither tokens (B, N, C) / (N, B, C) with N = k*k + prefix tokens, nor "
                "NCHW / NHWC. Set prefix_tokens= (class / register tokens) or grid_format= to match it, or name "
                f"another module; the candidates:\n{record.candidates()}"
            )
        if len(readings) > 1:
            owner = prefix_owner(pl_module, self.tap)
            if owner is not None and getattr(owner, "num_features", None) is not None:
                readings = [r for r in readings if r.channels == owner.num_features] or readings
            if len(readings) > 1:
                raise GridTapError(
                    f"DRLoc cannot tell the layout of tap={self.tap!r}'s output {tuple(out.tensor.shape)}: it reads as "
                    f"{'; or '.join(r.describe() for r in readings)}. Pass grid_format= to choose."
                )
        return out.module, readings[0]

    def _attach(self, trainer: Any, pl_module: Any) -> None:
        backbone, tap_module, backbone_name = self._resolve(trainer, pl_module)
        self._module = pl_module
        capture = self.capture
        timm_route = (
            tap_module is None and backbone is not None and callable(getattr(backbone, "forward_features", None))
        )
        if timm_route:
            capture.attach_backbone(backbone, self.config.tap_norm, backbone_name)
            self._undo.append(capture.detach)
            x = self._probe_batch(trainer, pl_module, backbone)
            channels, height, width = capture.probe(backbone, x, pl_module)
            capture.check_backbone(backbone, x, self.config.tap_norm)
            layout = {"tokens": "BNC"}.get(capture.format, capture.format)
            norm = final_norm(backbone) if "final norm" in capture.name else None
            names = {id(m): n for n, m in backbone.named_modules()}
            path = _join(backbone_name, names[id(norm)]) if norm is not None else backbone_name
            point = "input" if norm is not None else "output"
            self.grid_source = GridSource(path, point, layout, capture.prefix, (height, width), channels, "backbone")
        else:
            root_name = backbone_name if backbone is not None and tap_module is None else ""
            runners = self._runners(pl_module, backbone)
            record, x = self._record_forward(trainer, pl_module, runners)
            if tap_module is not None:
                module, reading = self._tapped_grid(pl_module, record, x)
                path, point, found = self.tap, "output", "tap"
            else:
                chosen, reading, point = find_final_grid(
                    record,
                    tuple(x.shape[-2:]),
                    prefix_for=lambda name: self._prefix_for(pl_module, name),
                    layouts=FORMAT_LAYOUTS[capture.grid_format],
                    tap_norm=self.config.tap_norm,
                    model_name=type(pl_module).__name__,
                    within=root_name,
                )
                module, path, found = chosen.module, chosen.name, "discovered"
            height, width, channels = reading.height, reading.width, reading.channels
            if min(height, width) < MIN_GRID:
                raise GridTapError(
                    f"DRLoc: {path!r} yields a {height}x{width} grid of {channels} channels at input "
                    f"{tuple(x.shape[-2:])}; DRLoc needs at least {MIN_GRID}x{MIN_GRID}. Use a smaller patch / stride "
                    "or a larger input, or name an earlier stage with tap=..."
                )
            capture.reading = reading
            if point == "input":
                capture.hook_norm_input(module, f"input of {path!r}", None)
            else:
                capture.hook_output(module, f"output of {path!r}", None)
            self._undo.append(capture.detach)
            self.grid_source = GridSource(
                path, point, reading.layout, reading.prefix_tokens, (height, width), channels, found
            )
        self.lightning.rank_zero_info(f"DrLocCallback reads the DRLoc grid from the {self.grid_source}")
        specs = self._attach_stages(
            trainer, pl_module, backbone, backbone_name if timm_route else root_name, (height, width)
        )
        specs += [(channels, (height, width))] if self.final_is_stage else []

        param = next(iter(pl_module.parameters()), None)
        loss = self.objective.build_losses(specs).to(param.device if param is not None else "cpu")
        self.objective.loss = loss
        pl_module.add_module(HEAD_ATTR, loss)
        self._undo.append(lambda: delattr(pl_module, HEAD_ATTR) if hasattr(pl_module, HEAD_ATTR) else None)
        self._keep_head_out_of_state_dict(pl_module)
        self._wrap_training_step(trainer, pl_module)

    def _attach_stages(
        self, trainer: Any, pl_module: Any, backbone: nn.Module | None, within: str, final_hw: tuple[int, int]
    ) -> list[tuple[int, tuple[int, int]]]:
        """Multi-scale (``stages``): find the earlier stages' grids by what runs, hook their inputs, and return
        their ``(channels, (H, W))``; nothing for ``stages="last"``."""
        self.stage_sources, self.final_is_stage = [], True
        if self.config.stages == "last":
            return []
        runner = backbone if backbone is not None else self._probe_runner
        x = self._probe_batch(trainer, pl_module, runner)
        earlier, self.final_is_stage = probe_stage_grids(
            runner,
            x,
            final_hw,
            self.config.stages,
            type(pl_module).__name__,
            root=pl_module,
            layouts=FORMAT_LAYOUTS[self.capture.grid_format],
            within=within,
            skip=(HEAD_ATTR,),
        )
        self.stage_capture.attach(pl_module, earlier)
        self._undo.append(self.stage_capture.detach)
        for stage in earlier:
            r = stage.reading
            self.stage_sources.append(
                GridSource(stage.module, "stage", r.layout, r.prefix_tokens, (r.height, r.width), r.channels)
            )
        listed = "; ".join(str(source) for source in self.stage_sources) or "none"
        final = "and the final grid" if self.final_is_stage else "without the final grid"
        self.lightning.rank_zero_info(f"DrLocCallback multi-scale stages={self.config.stages!r}: {listed}; {final}")
        return [(r.channels, (r.height, r.width)) for r in (stage.reading for stage in earlier)]

    def _keep_head_out_of_state_dict(self, pl_module: Any) -> None:
        """The head lives in the callback's state: the module's state_dict neither holds nor needs it."""
        prefix_key = HEAD_ATTR + "."

        def strip_head(module, state_dict, prefix, local_metadata):
            for key in [k for k in state_dict if k.startswith(prefix + prefix_key)]:
                del state_dict[key]
            drop_state_dict_metadata(state_dict, lambda k: k == prefix + HEAD_ATTR or k.startswith(prefix + prefix_key))

        def allow_missing_head(module, incompatible_keys):
            missing = incompatible_keys.missing_keys
            missing[:] = [k for k in missing if HEAD_ATTR not in k.split(".")]

        self._undo.append(pl_module.register_state_dict_post_hook(strip_head).remove)
        self._undo.append(pl_module.register_load_state_dict_post_hook(allow_missing_head).remove)

    def _wrap_training_step(self, trainer: Any, pl_module: Any) -> None:
        def wrap(original: Callable) -> Callable:
            return lambda *args, **kwargs: self._training_step(trainer, pl_module, original, *args, **kwargs)

        self._undo.append(wrap_training_step(pl_module, wrap))

    def _detach(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._module = None

    # ------------------------------------------------------------------ training step
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._trainer, self._batch_idx = trainer, batch_idx

    def _training_step(self, trainer: Any, pl_module: Any, original: Callable, *args: Any, **kwargs: Any) -> Any:
        self.stage_capture.start()
        out, raw = self.capture.capture(original, *args, **kwargs)
        if out is None:  # the user skipped this batch
            return out
        if isinstance(out, Tensor):
            loss = out
        elif isinstance(out, Mapping) and "loss" in out:
            loss = out["loss"]
        else:
            raise self._error(
                f"DrLocCallback: {type(pl_module).__name__}.training_step returned {type(out).__name__}; it must "
                "return the loss tensor or a dict with 'loss' for the DRLoc term to be added."
            )
        if raw is None:
            raise RuntimeError(
                f"DrLocCallback: {type(pl_module).__name__}.training_step did not run the {self.capture.name} with "
                "gradients enabled, so there is no grid for the DRLoc loss. Point backbone= / tap= at the network it "
                "trains."
            )
        if self.capture.calls > 1 and "calls" not in self._warned:
            self._warned.add("calls")
            self.lightning.rank_zero_warn(
                f"DrLocCallback: training_step ran the {self.capture.name} {self.capture.calls} times; DRLoc uses the "
                "grid of the first forward that requires grad."
            )
        grid = self.capture.to_grid(raw)
        if self.stage_sources:
            stages = self.stage_capture.grids()
            if stages is None:
                raise RuntimeError(
                    f"DrLocCallback: {type(pl_module).__name__}.training_step did not run every DRLoc stage "
                    f"({', '.join(repr(s.module) for s in self.stage_sources)}) with gradients enabled."
                )
            grid = stages + ([grid] if self.final_is_stage else [])
        step = self.objective.step(grid, trainer, self._batch_idx)
        log_step(pl_module, step)
        total = loss + step.lam * step.drloc
        return total if isinstance(out, Tensor) else {**out, "loss": total}

    # ------------------------------------------------------------------ optimizer
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._module is None or self.loss is None:
            return
        if not trainer.optimizers:
            self.lightning.rank_zero_warn(
                "DrLocCallback: the module configured no optimizer, so the DRLoc head will not be trained."
            )
            return
        optimizer = trainer.optimizers[0]
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        added = add_param_groups(optimizer, self.loss, schedulers, weight_decay=self.config.head_weight_decay)
        self._head_groups = added
        if added and schedulers and "scheduler" not in self._warned:
            self._warned.add("scheduler")
            self.lightning.rank_zero_warn(
                f"DrLocCallback added the DRLoc head's parameters to {type(optimizer).__name__} as {added} new "
                "parameter group(s) with the hyper-parameters of group 0. Your LR scheduler(s) "
                f"({', '.join(type(s).__name__ for s in schedulers)}) were built before these groups existed: their "
                "per-group lists (base_lrs, lr_lambdas, min_lrs, ...) were extended with group 0's entry, which "
                "covers torch's schedulers, but a custom scheduler may not schedule the new groups. To control them "
                "yourself, build the optimizer over self.parameters(), which includes the head (attached before "
                "configure_optimizers)."
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.loss is None:
            return {}
        return {"head": self.loss.state_dict(), **self.objective.checkpoint_state()}

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Moves the head's optimizer groups (and their entries in the LR schedulers' per-group lists) out of
        the checkpoint's optimizer / scheduler states into this callback's state: the trainer's states then
        hold exactly the user's groups, so a Trainer without DrLocCallback resumes the checkpoint."""
        added, states = self._head_groups, checkpoint.get("optimizer_states")
        if not added or not states or self.state_key not in checkpoint.get("callbacks", {}):
            return
        groups, param_state = states[0]["param_groups"], states[0]["state"]
        head_groups = groups[-added:]
        del groups[-added:]
        ids = {i for group in head_groups for i in group["params"]}
        head_state = {i: param_state.pop(i) for i in list(param_state) if i in ids}
        schedulers = []
        for scheduler in checkpoint.get("lr_schedulers", []):
            tails = {
                k: v[len(groups) :]
                for k, v in scheduler.items()
                if isinstance(v, list) and len(v) == len(groups) + added
            }
            scheduler.update({k: v[: len(groups)] for k, v in scheduler.items() if k in tails})
            schedulers.append(tails)
        checkpoint["callbacks"][self.state_key]["head_optimizer"] = {
            "param_groups": head_groups,
            "state": head_state,
            "lr_schedulers": schedulers,
        }

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Puts the head's optimizer groups back (see :meth:`on_save_checkpoint`) before Lightning restores
        the optimizer, which by then holds the head's groups again (added in ``on_fit_start``)."""
        stash = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("head_optimizer")
        if not stash or not checkpoint.get("optimizer_states"):
            return
        checkpoint["optimizer_states"][0]["param_groups"].extend(stash["param_groups"])
        checkpoint["optimizer_states"][0]["state"].update(stash["state"])
        for scheduler, tails in zip(checkpoint.get("lr_schedulers", []), stash["lr_schedulers"]):
            for key, tail in tails.items():
                scheduler[key] = list(scheduler[key]) + list(tail)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("head") is not None:
            self.objective.load_head_state(state_dict["head"])  # now, or when setup builds the head
        self.objective.load_checkpoint_state(state_dict)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


class DrLocCallback(DrLocCallbackBase, PYTORCH_LIGHTNING.Callback):
    __doc__ = DrLocCallbackBase.__doc__
    lightning = PYTORCH_LIGHTNING
