"""The grid tap on many timm families: logits equal ``model(x)``, the grid is the final token grid.

Every family runs at a tiny size, for both ``tap_norm`` values, and each grid is checked against a
reference computed here, not by the tap's own code path:

* ``"post"``: the final (normed) tokens / map of ``forward_features(x)``, prefix tokens dropped and
  reshaped (or NHWC permuted) by :func:`as_grid` below;
* ``"pre"``: the tensor entering the model's final norm, caught by a hook during ``model(x)``; the
  final norm applied to the pre grid must give the post grid, and differ from it. A family with no
  final norm on its grid (``model.norm`` missing / ``nn.Identity``, or a norm only in the pooled
  head) must give the same grid either way.

Where timm's last feature map is not what ``forward_features`` ends with (PiT, Hiera, FastViT,
XCiT, CrossViT) the family names its own reference (``post_ref`` / ``pre_at``) and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import timm
import torch
from timm.models import focalnet, gcvit, metaformer, mlp_mixer, mvitv2, nest, volo
from torch import Tensor, nn

from vt_drloc import DrLocModule, GridTapError, probe_grid, tap_grid
from vt_drloc.core.tap import GridCapture

VIT = dict(img_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=2)
D4, W4 = (1, 1, 1, 1), (16, 32, 48, 64)  # one block per stage, small widths
STAGES = dict(depths=D4, dims=W4)
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second intra-op thread, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input_of(model: nn.Module, path: str, run: Callable[[], Any]) -> Tensor:
    """The first input of ``model.<path>`` while ``run()`` executes."""
    seen: list[Tensor] = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        run()
    finally:
        handle.remove()
    assert seen, f"{path} was never called"
    return seen[0]


def _output_of(model: nn.Module, path: str, x: Tensor) -> Any:
    """The output of ``model.<path>`` during ``model(x)``."""
    seen: list[Any] = []
    handle = model.get_submodule(path).register_forward_hook(lambda _m, _args, out: seen.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def pit_grid(model: nn.Module, x: Tensor) -> Tensor:
    # PiT's forward_features returns the normed class token only; its grid is the last stage's map
    return _output_of(model, "transformers", x)[0]


def hiera_grid(model: nn.Module, x: Tensor) -> Tensor:
    # Hiera's forward_features tokens are in mask-unit order; timm rerolls them into a map on request
    return model.forward_features(x, return_intermediates=True)[1][-1]


def last_stage_map(model: nn.Module, x: Tensor) -> Tensor:
    # FastViT: like EfficientNet's conv_head, timm's last feature map is the last stage, before the
    # final MobileOne conv (conv + BN + GELU, 2x the channels) that forward_features ends with
    return _input_of(model, "final_conv", lambda: model(x))


def xcit_grid(model: nn.Module, x: Tensor) -> Tensor:
    # XCiT: timm reads the grid where the XCA blocks end, before the class-attention blocks; those
    # pass the patch tokens on as a by-product, 2 (x + g LN(x)) per block, that no classifier reads
    return model.norm(_output_of(model, "blocks.1", x))


def crossvit_grid(model: nn.Module, x: Tensor) -> Tensor:
    # CrossViT: one normed token set per branch; the tap's grid is the last branch's (large patches)
    return model.forward_features(x)[-1]


@dataclass(frozen=True)
class Family:
    id: str
    model: str | type  # a timm name, or the class where the entrypoint pins the sizes shrunk here
    kwargs: dict
    size: int  # input side (px)
    side: int  # expected grid side
    channels: int | tuple[int, int]  # grid channels, or (pre, post) when the final "norm" projects
    prefix: int = 0  # class / distillation / register tokens leading the token outputs
    norm: str | None = None  # "path:cl" (norm over channels-last) or "path:cf" (over NCHW); None: none
    post_ref: Callable[[nn.Module, Tensor], Tensor] | None = None  # default: forward_features(x)
    pre_at: str | None = None  # module whose output is the pre grid; default: the final norm's input

    @property
    def name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.__name__

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        if isinstance(self.model, str):
            return timm.create_model(self.model, num_classes=7, **self.kwargs).eval()
        return self.model(num_classes=7, **self.kwargs).eval()


F = Family
SWIN = dict(img_size=32, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
MIXER = dict(img_size=32, patch_size=4, num_blocks=2, embed_dim=64)
RESMLP = dict(MIXER, mlp_ratio=4, block_layer=mlp_mixer.ResBlock, norm_layer=mlp_mixer.Affine)
TNT = dict(img_size=32, patch_size=4, depth=2, embed_dim=64, inner_dim=16, num_heads_outer=2, num_heads_inner=1)
SAM = dict(VIT, global_attn_indexes=(1,), window_size=4, neck_chans=32)
CROSSVIT = dict(
    img_size=64,
    img_scale=(1.0, 1.0),
    patch_size=(8, 16),
    embed_dim=(16, 32),
    depth=((1, 1, 0),),
    num_heads=(1, 1),
    mlp_ratio=(2, 2, 1),
)
MVITV2 = dict(cfg=mvitv2.MultiScaleVitCfg(depths=D4, embed_dim=16), img_size=(64, 64))
HIERA = dict(img_size=(64, 64), embed_dim=16, num_heads=1, stages=D4, q_pool=2)
POOLFORMER = dict(  # poolformer_s12's settings, which its entrypoint pins together with the sizes
    STAGES,
    downsample_norm=None,
    mlp_act=nn.GELU,
    mlp_bias=True,
    norm_layers=metaformer.GroupNorm1,
    layer_scale_init_values=1e-5,
    res_scale_init_values=None,
    use_mlp_head=False,
)
CONVFORMER = dict(STAGES, token_mixers=metaformer.SepConv, norm_layers=metaformer.LayerNorm2dNoBias)
EFFVIT_MSRA = dict(
    embed_dim=(16, 32, 48), depth=(1, 1, 1), num_heads=(1, 1, 1), key_dim=(8, 8, 8), window_size=(2, 2, 2)
)
SHVIT = dict(embed_dim=(32, 64, 96), partial_dim=(8, 16, 24), depth=(1, 1, 1))

FAMILIES = [
    # plain / distilled / register ViTs and their relatives: token outputs, LayerNorm over channels
    F("vit", "vit_tiny_patch16_224", VIT, 32, 8, 64, prefix=1, norm="norm:cl"),
    F("deit-distilled", "deit_tiny_distilled_patch16_224", VIT, 32, 8, 64, prefix=2, norm="norm:cl"),
    F("vit-reg4", "vit_tiny_patch16_224", dict(VIT, reg_tokens=4), 32, 8, 64, prefix=5, norm="norm:cl"),
    F("deit3", "deit3_small_patch16_224", VIT, 32, 8, 64, prefix=1, norm="norm:cl"),
    F("convit", "convit_tiny", dict(VIT, local_up_to_layer=1), 32, 8, 128, prefix=1, norm="norm:cl"),
    F("cait", "cait_xxs24_224", dict(VIT, depth_token_only=1), 32, 8, 64, prefix=1, norm="norm:cl"),
    F(
        "xcit",
        "xcit_nano_12_p16_224",
        dict(VIT, patch_size=8),
        32,
        4,
        64,
        norm="norm:cl",
        post_ref=xcit_grid,
        pre_at="blocks.1",
    ),
    F("tnt", "tnt_s_patch16_224", TNT, 32, 8, 64, prefix=1, norm="norm:cl"),
    F(
        "volo",
        volo.VOLO,
        dict(img_size=64, layers=D4, embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2)),
        64,
        4,
        64,
        prefix=1,
        norm="norm:cl",
    ),
    F("mlp-mixer", mlp_mixer.MlpMixer, MIXER, 32, 8, 64, norm="norm:cl"),
    F("resmlp", mlp_mixer.MlpMixer, RESMLP, 32, 8, 64, norm="norm:cl"),  # the final "norm" is an Affine
    # ViTs whose final norm is in the pooled head (fc_norm): nothing normalises the grid
    F("eva02", "eva02_tiny_patch14_224", VIT, 32, 8, 64, prefix=1),
    F("beit", "beit_base_patch16_224", VIT, 32, 8, 64, prefix=1),
    F("vit-relpos", "vit_relpos_small_patch16_224", VIT, 32, 8, 64),
    # SAM's ViT: the "final norm" is the neck (conv, LayerNorm2d, conv, LayerNorm2d): 64 -> 32 channels
    F("sam-vit", "samvit_base_patch16", SAM, 32, 8, (64, 32), norm="neck:cf"),
    # CrossViT: two branches, each with its own norm; the tap's grid is the last (large-patch) branch
    F("crossvit", "crossvit_tiny_240", CROSSVIT, 64, 4, 32, prefix=1, norm="norm.1:cl", post_ref=crossvit_grid),
    # hierarchical transformers
    F("swin", "swin_tiny_patch4_window7_224", SWIN, 32, 4, 32, norm="norm:cl"),
    F("swin-ape", "swin_ape_tiny_patch4_window7_224", SWIN, 32, 4, 32, norm="norm:cl"),  # vt_drloc.models.swin_ape
    F("swinv2", "swinv2_tiny_window8_256", SWIN, 32, 4, 32, norm="norm:cl"),
    F("swinv2-cr", "swinv2_cr_tiny_224", SWIN, 32, 4, 32),
    F(
        "pit", "pit_ti_224", dict(img_size=64, depth=(1, 1, 1)), 64, 2, 256, post_ref=pit_grid
    ),  # norm on the class token only
    F("twins", "twins_svt_small", dict(img_size=64, depths=D4, embed_dims=W4), 64, 2, 64, norm="norm:cl"),
    F("pvt-v2", "pvt_v2_b0", dict(depths=D4), 64, 2, 256),  # each stage ends in its own norm
    F(
        "coat-lite",
        "coat_lite_tiny",
        dict(img_size=64, embed_dims=W4, serial_depths=D4),
        64,
        2,
        64,
        prefix=1,
        norm="norm4:cl",
    ),
    F("mvitv2", mvitv2.MultiScaleVit, MVITV2, 64, 2, 128, norm="norm:cl"),
    F("levit", "levit_128s", dict(img_size=128, depth=(1, 1, 1)), 128, 2, 384),
    F("hiera", "hiera_tiny_224", HIERA, 64, 4, 128, post_ref=hiera_grid),  # forward_intermediates refuses norm=True
    F(
        "nest",
        nest.Nest,
        dict(img_size=64, patch_size=4, embed_dims=(16, 32, 64), depths=(1, 1, 1), num_heads=(1, 1, 2)),
        64,
        4,
        64,
        norm="norm:cl",
    ),
    F("davit", "davit_tiny", dict(depths=D4, embed_dims=W4, num_heads=(1, 1, 2, 2)), 64, 2, 64),
    F("gcvit", gcvit.GlobalContextVit, dict(img_size=64, depths=D4, embed_dim=16, num_heads=(1, 1, 2, 2)), 64, 2, 128),
    F("focalnet", focalnet.FocalNet, dict(depths=D4, embed_dim=16), 64, 2, 128, norm="norm:cf"),
    F(
        "tiny-vit",
        "tiny_vit_5m_224",
        dict(embed_dims=W4, depths=D4, num_heads=(1, 1, 2, 2), window_sizes=(2, 2, 2, 2)),
        64,
        2,
        64,
    ),
    F(
        "sequencer",
        "sequencer2d_s",
        dict(layers=D4, embed_dims=W4, hidden_sizes=(8, 16, 16, 16)),
        64,
        4,
        64,
        norm="norm:cl",
    ),
    # conv / attention hybrids
    F(
        "next-vit", "nextvit_small", dict(depths=(1, 1, 5, 1)), 64, 2, 1024, norm="norm:cf"
    ),  # depths[2]: a multiple of 5
    F("maxvit", "test_maxvit", dict(img_size=64), 64, 2, 128, norm="norm:cf"),
    F("coatnet", "test_coatnet", dict(img_size=64), 64, 2, 128, norm="norm:cf"),
    # EfficientFormer's 7x7 attention bias fixes its input at 224 px
    F("efficientformer", "efficientformer_l1", dict(depths=D4, embed_dims=W4, num_vit=1), 224, 7, 64, norm="norm:cl"),
    F(
        "efficientformer-v2",
        "efficientformerv2_s0",
        dict(img_size=64, depths=D4, embed_dims=W4),
        64,
        2,
        64,
        norm="norm:cf",
    ),
    F(
        "visformer",
        "visformer_tiny",
        dict(img_size=64, depth=(1, 1, 1), embed_dim=48, num_heads=2),
        64,
        2,
        96,
        norm="norm:cf",
    ),
    F("fastvit", "fastvit_t8", dict(layers=D4, embed_dims=(16, 32, 64, 128)), 64, 2, 128, post_ref=last_stage_map),
    F("mobilevit", "mobilevit_xxs", dict(), 64, 2, 320),
    F(
        "efficientvit-mit",
        "efficientvit_b0",
        dict(widths=(8, 16, 32, 64, 128), depths=(1,) * 5, head_dim=16),
        64,
        2,
        128,
    ),
    F("efficientvit-msra", "efficientvit_m0", dict(EFFVIT_MSRA, img_size=128), 128, 2, 48),
    F("swiftformer", "swiftformer_xs", dict(layers=D4, embed_dims=W4), 64, 2, 64, norm="norm:cf"),
    F("shvit", "shvit_s1", SHVIT, 128, 2, 96),
    # convnets and MetaFormers
    F("resnet", "resnet50", dict(layers=D4), 64, 2, 2048),
    F("convnext", "convnext_atto", STAGES, 64, 2, 64),
    F("convnext-head-norm-first", "convnext_atto", dict(STAGES, head_norm_first=True), 64, 2, 64, norm="norm_pre:cf"),
    F("edgenext", "edgenext_xx_small", STAGES, 64, 2, 64),
    F("poolformer", metaformer.MetaFormer, POOLFORMER, 64, 2, 64),
    F("convformer", metaformer.MetaFormer, CONVFORMER, 64, 2, 64),
    F("inception-next", "inception_next_tiny", STAGES, 64, 2, 64),
    F("mambaout", "mambaout_femto", STAGES, 64, 2, 64),
    F("repvit", "repvit_m1", dict(embed_dim=W4, depth=D4), 64, 2, 64),
    F("starnet", "starnet_s1", dict(base_dim=16, depths=D4), 64, 2, 128, norm="norm:cf"),
    F("fasternet", "fasternet_t0", dict(depths=D4, embed_dim=16), 64, 2, 128),
]


def as_grid(t: Tensor, side: int, prefix: int = 0) -> Tensor:
    """(B, C, side, side) from tokens (B, prefix + side², C), an NHWC or an NCHW map."""
    if t.dim() == 3:
        assert t.shape[1] == prefix + side * side, tuple(t.shape)
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], -1, side, side)
    if t.shape[-2:] == (side, side):
        return t
    assert t.shape[1:3] == (side, side), tuple(t.shape)
    return t.permute(0, 3, 1, 2)


def apply_norm(norm: nn.Module, grid: Tensor, layout: str) -> Tensor:
    if layout == "cl":
        return norm(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return norm(grid)


@torch.no_grad()
def perturb(norm: nn.Module) -> None:
    """Move a fresh norm's affine parameters / running stats off 1 and 0, so that it visibly acts
    (a fresh BatchNorm in eval mode is the identity up to eps)."""
    gen = torch.Generator().manual_seed(1)
    for module in norm.modules():
        for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if t.is_floating_point() and t.squeeze().dim() == 1:  # per-channel (not a conv kernel)
                if key in ("bias", "beta", "running_mean"):
                    t.normal_(0.0, 0.5, generator=gen)
                else:
                    t.uniform_(0.5, 1.5, generator=gen)


def close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_single_forward_gives_model_logits_and_final_grid(family):
    model = family.build()
    norm_path, _, layout = (family.norm or "").partition(":")
    if norm_path:
        perturb(model.get_submodule(norm_path))
    x = torch.randn(2, 3, family.size, family.size)
    pre_c, post_c = family.channels if isinstance(family.channels, tuple) else (family.channels,) * 2
    grids = {}
    with torch.no_grad():
        reference_logits = model(x)
        for tap_norm, channels in (("pre", pre_c), ("post", post_c)):
            info = probe_grid(model, family.size, name=family.name, tap_norm=tap_norm)
            assert (info.hw, info.channels) == ((family.side, family.side), channels), tap_norm
            features, grid = tap_grid(model, x, info)
            assert torch.allclose(model.forward_head(features), reference_logits, atol=ATOL), f"{tap_norm}: logits"
            assert grid.shape == (2, channels, family.side, family.side), tap_norm
            grids[tap_norm] = grid

        # post: the final (normed) tokens / map the classifier reads
        source = family.post_ref(model, x) if family.post_ref else model.forward_features(x)
        assert close(grids["post"], as_grid(source, family.side, family.prefix)), "post != forward_features grid"

        # pre: what enters the final norm; that norm maps it onto the post grid
        if not norm_path:
            assert close(grids["pre"], grids["post"]), "no final norm on the grid, yet pre != post"
            return
        norm = model.get_submodule(norm_path)
        if family.pre_at:
            entering = _output_of(model, family.pre_at, x)
        else:
            entering = _input_of(model, norm_path, lambda: model(x))
        assert close(grids["pre"], as_grid(entering, family.side, family.prefix)), "pre != input of the final norm"
        assert close(apply_norm(norm, grids["pre"], layout), grids["post"]), "final norm(pre) != post"
        assert not close(grids["pre"], grids["post"]), "final norm acts, yet pre == post"


# What DrLocCallback reads: hooks on the model's own forward (the input of ``model.norm``, or
# ``forward_features``' output). For each family and tap the captured grid is the one DrLocModule
# reads (forward_intermediates), or the callback refuses, naming tap= / DrLocModule: these families'
# norm / forward_features is not their last stage's grid in the same order (XCiT: class-attention
# blocks run before the norm; SAM: a conv neck; FastViT: a final conv; Hiera: mask-unit order;
# ConvNeXt with head_norm_first: the norm sits in the head), or is no grid at all (CrossViT's two
# branches, PiT's and CoaT-Lite's class tokens), so they must not train on a wrong grid silently.
CAPTURE_REFUSES = {
    ("xcit", "pre"),
    ("sam-vit", "pre"),
    ("crossvit", "pre"),
    ("crossvit", "post"),
    ("pit", "pre"),
    ("pit", "post"),
    ("coat-lite", "pre"),
    ("coat-lite", "post"),
    ("hiera", "pre"),
    ("hiera", "post"),
    ("fastvit", "pre"),
    ("fastvit", "post"),
    ("convnext-head-norm-first", "pre"),
}


@pytest.mark.parametrize("tap_norm", ["pre", "post"])
@pytest.mark.parametrize("family", FAMILIES, ids=[f.id for f in FAMILIES])
def test_callback_capture_reads_the_modules_grid_or_refuses(family, tap_norm):
    model = family.build()
    norm_path = (family.norm or "").partition(":")[0]
    if norm_path:
        perturb(model.get_submodule(norm_path))
    x = torch.zeros(2, 3, family.size, family.size)
    capture = GridCapture()
    capture.attach_backbone(model, tap_norm, family.id)
    if (family.id, tap_norm) in CAPTURE_REFUSES:
        with pytest.raises(GridTapError, match=r"tap='\.\.\.', or train with DrLocModule"):
            capture.probe(model, x, model)
            capture.check_backbone(model, x, tap_norm)
        return
    capture.probe(model, x, model)
    capture.check_backbone(model, x, tap_norm)
    xr = torch.randn(2, 3, family.size, family.size)
    with torch.no_grad():
        _, raw = capture.capture(model.forward_features, xr, mode="probe")
        expected = tap_grid(model, xr, probe_grid(model, family.size, tap_norm=tap_norm))[1]
    assert close(capture.to_grid(raw), expected), (family.id, tap_norm)
    capture.detach()
    assert capture.capture(model.forward_features, xr, mode="probe")[1] is None  # hooks removed


# Families at a size where their final grid cannot serve DRLoc: refused, either tap_norm, naming the
# model, the grid found and a fix. (name, create_model kwargs, input (H, W), grid found)
REFUSED = [
    ("efficientvit_m0", dict(EFFVIT_MSRA, img_size=64), (64, 64), "1x1 grid"),
    ("shvit_s1", SHVIT, (64, 64), "1x1 grid"),
    ("convnext_atto", STAGES, (64, 128), "2x4 grid"),
    ("swin_tiny_patch4_window7_224", dict(SWIN, img_size=(32, 64)), (32, 64), "4x8 grid"),
]


@pytest.mark.parametrize("tap_norm", ["pre", "post"])
@pytest.mark.parametrize("name, kwargs, size, found", REFUSED, ids=[f"{r[0]}-{r[2][0]}x{r[2][1]}" for r in REFUSED])
def test_family_without_usable_grid_is_refused(name, kwargs, size, found, tap_norm):
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    with pytest.raises(GridTapError) as err:
        probe_grid(model, size, name=name, tap_norm=tap_norm)
    message = str(err.value)
    assert f"'{name}'" in message and found in message and "Fix:" in message, message


def test_module_single_forward_matches_model_in_eval_mode():
    module = DrLocModule("deit_tiny_distilled_patch16_224", num_classes=5, lambda_drloc=0.1, model_kwargs=VIT).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, grid = module.forward_with_grid(x)
        assert torch.allclose(logits, module.model(x), atol=1e-6)
    assert grid.shape == (3, 64, 8, 8)


class PooledOnly(nn.Module):
    """A classifier whose features are already pooled: no grid to tap."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.num_features = 8

    def forward_features(self, x):
        return self.conv(x).mean((2, 3))


def test_model_without_grid_raises_the_documented_error():
    with pytest.raises(GridTapError, match=r"'pooled'.*no spatial grid.*smaller"):
        probe_grid(PooledOnly(), 16, name="pooled")


def test_grid_too_small_names_model_grid_and_fix():
    with pytest.raises(GridTapError) as err:
        DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.1, model_kwargs=dict(VIT, patch_size=32))
    message = str(err.value)
    assert "'vit_tiny_patch16_224'" in message and "1x1 grid" in message and "patch" in message and "32x32" in message


def test_non_square_grid_is_refused():
    with pytest.raises(GridTapError, match=r"8x16 grid.*not square|not square.*8x16"):
        DrLocModule("vit_tiny_patch16_224", num_classes=10, lambda_drloc=0.1, model_kwargs=dict(VIT, img_size=(32, 64)))


class TokensOnly(nn.Module):
    """Hand-written ViT-like model: forward_features returns (B, 1 + 16, C), no forward_intermediates;
    with ``final_norm`` a LayerNorm ends forward_features, as in timm's ViT."""

    num_prefix_tokens = 1
    num_features = 12

    def __init__(self, final_norm: bool = False):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 12))
        self.norm = nn.LayerNorm(12) if final_norm else nn.Identity()
        self.head = nn.Linear(12, 3)

    def forward_features(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.norm(torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1))

    def forward_head(self, x):
        return self.head(x[:, 0])


def test_fallback_through_forward_features_handles_prefix_tokens():
    model = TokensOnly()
    info = probe_grid(model, 16)
    assert info.strategy == "features" and info.hw == (4, 4) and info.prefix_tokens == 1
    x = torch.randn(2, 3, 16, 16)
    features, grid = tap_grid(model, x, info)
    assert torch.allclose(grid, model.embed(x))


def test_fallback_reads_the_final_norm_input_for_pre_and_its_output_for_post():
    model = TokensOnly(final_norm=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        embedded = model.embed(x)
        for tap_norm, expected in (("pre", embedded), ("post", apply_norm(model.norm, embedded, "cl"))):
            info = probe_grid(model, 16, tap_norm=tap_norm)
            assert info.strategy == "features" and info.hw == (4, 4) and info.prefix_tokens == 1
            features, grid = tap_grid(model, x, info)
            assert torch.allclose(model.forward_head(features), model.head(model.forward_features(x)[:, 0]))
            assert close(grid, expected), tap_norm


def test_callback_capture_check_takes_half_precision_and_non_square_grids():
    """The check compares in the model's own dtype, within its rounding, and has no squareness rule
    of its own (DrLocLoss takes non-square grids)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=7, **VIT).eval().to(torch.bfloat16)
    capture = GridCapture()
    capture.attach_backbone(vit, "pre", "vit")
    x = torch.zeros(2, 3, 32, 32, dtype=torch.bfloat16)
    assert capture.probe(vit, x, vit) == (64, 8, 8)
    capture.check_backbone(vit, x, "pre")

    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=7, **dict(SWIN, img_size=(32, 64))).eval()
    capture = GridCapture()
    capture.attach_backbone(swin, "post", "swin")
    x = torch.zeros(2, 3, 32, 64)
    assert capture.probe(swin, x, swin) == (32, 4, 8)
    capture.check_backbone(swin, x, "post")
