"""CvT, T2T-ViT and Swin-APE (vt_drloc.models): timm registration, sizes, and timm's model surface."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vt_drloc.models import MODEL_NAMES, CvT, SwinTransformerAPE, T2TViT
from vt_drloc.models.t2t_vit import TokenPerformer

C32 = [n for n in MODEL_NAMES if n.endswith("_c32")]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _gmacs(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Multiply-accumulates (1e9) of one forward; math SDPA so the attention matmuls are counted."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x)
    return counter.get_total_flops() / 2e9, out


@pytest.fixture(scope="module")
def models_224():
    torch.manual_seed(0)
    return {name: timm.create_model(name).eval() for name in ("cvt_13", "t2t_vit_14")}


@pytest.fixture(scope="module")
def models_c32():
    """One eval-mode 10-class instance of each 32-px family; tests that modify a model deep-copy it."""
    torch.manual_seed(0)
    return {name: timm.create_model(name, num_classes=10).eval() for name in ("cvt_13_c32", "t2t_vit_14_c32")}


# ----------------------------------------------------------------------------- registry
def test_names_registered_and_owned_by_vt_drloc():
    for name in MODEL_NAMES:
        assert timm.is_model(name), name
        fn = timm.models.model_entrypoint(name)
        assert fn.__module__ in ("vt_drloc.models.cvt", "vt_drloc.models.t2t_vit", "vt_drloc.models.swin_ape"), (
            name,
            fn.__module__,
        )
    # timm itself ships none of these (a clash would have rerouted the entrypoint above to timm.models.*)
    assert set(timm.list_models("cvt_*")) == {n for n in MODEL_NAMES if n.startswith("cvt_")}
    assert set(timm.list_models("t2t_*")) == {n for n in MODEL_NAMES if n.startswith("t2t_")}
    assert set(timm.list_models("swin_ape*")) == {n for n in MODEL_NAMES if n.startswith("swin_ape")}
    assert timm.list_models(pretrained=True, filter="cvt_*") == []


def test_create_model_after_import_vt_drloc_only():
    """Registration must happen on plain ``import vt_drloc`` (fresh interpreter)."""
    code = (
        "import vt_drloc, timm; "
        "m = timm.create_model('cvt_13', device='meta'); "
        "t = timm.create_model('t2t_vit_14', device='meta'); "
        "print(type(m).__name__, type(t).__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["CvT", "T2TViT"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_cfg(name):
    cfg = timm.get_pretrained_cfg(name).to_dict()
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["input_size"] == ((3, 32, 32) if name.endswith("_c32") else (3, 224, 224))
    assert not cfg.get("url") and not cfg.get("hf_hub_id") and not cfg.get("file")


@pytest.mark.parametrize("name", ["cvt_13", "t2t_vit_14_c32"])
def test_pretrained_true_raises(name):
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model(name, pretrained=True)


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "name, expected",
    [
        ("cvt_13", 20.0e6),
        ("cvt_13_c32", 20.0e6),
        ("cvt_21", 31.6e6),
        ("t2t_vit_14", 21.5e6),
        ("t2t_vit_14_c32", 21.5e6),
        ("t2t_vit_t_14", 21.5e6),
    ],
)
def test_param_counts(name, expected):
    model = timm.create_model(name, device="meta")  # no memory, no init
    n = _n_params(model)
    assert abs(n - expected) / expected < 0.01, f"{name}: {n:,} parameters, expected ~{expected:,.0f}"


@pytest.mark.parametrize(
    "name, exact",
    [
        ("cvt_13", 19_997_480),
        ("cvt_21", 31_622_696),
        ("cvt_13_drloc", 19_936_296),
        ("t2t_vit_14", 21_465_806),
        ("t2t_vit_t_14", 21_465_422),
        ("swin_ape_tiny_patch4_window7_224", 28_589_410),
    ],
)
def test_param_counts_are_pinned_exactly(name, exact):
    # pinned to the parameter, so a change of the layers these models are built from (timm.layers)
    # that adds, drops or reshapes a weight is caught, not only a change of 1 %
    assert _n_params(timm.create_model(name, device="meta")) == exact


def test_param_count_cpu_build_matches_meta(models_224):
    assert _n_params(models_224["cvt_13"]) == _n_params(timm.create_model("cvt_13", device="meta"))
    assert _n_params(models_224["t2t_vit_14"]) == _n_params(timm.create_model("t2t_vit_14", device="meta"))


@pytest.mark.parametrize("name, gmacs", [("cvt_13", 4.5), ("t2t_vit_14", 4.8)])
def test_224_macs_and_logits_shape(models_224, name, gmacs):
    model = models_224[name]
    measured, out = _gmacs(model, torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert abs(measured - gmacs) / gmacs < 0.05, f"{name}: {measured:.2f} GMACs, paper {gmacs}"


# ----------------------------------------------------------------------------- forward surface at 224
@pytest.mark.parametrize("name", ["cvt_13", "t2t_vit_14"])
def test_224_features_intermediates_head(models_224, name):
    model = models_224[name]
    assert model.grid_size == (14, 14) and model.num_prefix_tokens == 1 and model.num_features == 384
    assert model.img_size == (224, 224) and model.global_pool == "token"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x, indices=1, norm=True)
        logits = model(x)
        split_logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (1, 1 + 196, 384)
    assert len(inter) == 1 and inter[0].shape == (1, 384, 14, 14)
    torch.testing.assert_close(final, feats)
    grid_from_feats = feats[:, 1:].transpose(1, 2).reshape(1, 384, 14, 14)
    torch.testing.assert_close(inter[0], grid_from_feats)
    assert logits.shape == (1, 1000)
    torch.testing.assert_close(split_logits, logits)
    torch.testing.assert_close(pre, feats[:, 0])


# ----------------------------------------------------------------------------- 32-px variants
@pytest.mark.parametrize("name", C32)
def test_c32_grid_size(name):
    model = timm.create_model(name, device="meta")
    assert model.img_size == (32, 32) and model.grid_size == (8, 8) and model.patch_size == 4


@pytest.mark.parametrize("name", ["cvt_13_c32", "t2t_vit_14_c32"])
def test_c32_shapes_and_grid(models_c32, name):
    model = models_c32[name]
    assert model.img_size == (32, 32) and model.grid_size == (8, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        final, inter = model.forward_intermediates(x, indices=1, norm=True)
        _, raw = model.forward_intermediates(x, indices=1, norm=False)
    assert feats.shape == (2, 1 + 64, 384)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(model.forward_head(feats), logits)
    torch.testing.assert_close(final, feats)
    assert inter[0].shape == (2, 384, 8, 8)
    torch.testing.assert_close(inter[0], feats[:, 1:].transpose(1, 2).reshape(2, 384, 8, 8))
    assert not torch.allclose(raw[0], inter[0])  # norm=False really is the pre-norm grid


def test_cvt_intermediates_all_stages(models_c32):
    model = models_c32["cvt_13_c32"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
        nlc = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True, stop_early=True)
    assert [tuple(t.shape) for t in inter] == [(2, 64, 32, 32), (2, 192, 16, 16), (2, 384, 8, 8)]
    assert [i["reduction"] for i in model.feature_info] == [1, 2, 4]
    assert nlc[0].shape == (2, 32 * 32, 64)
    torch.testing.assert_close(nlc[0], inter[0].flatten(2).transpose(1, 2))
    # no position embedding: any input size works, grid follows the strides
    with torch.no_grad():
        big = model.forward_intermediates(torch.randn(1, 3, 48, 48), indices=1, intermediates_only=True)
    assert big[0].shape == (1, 384, 12, 12)


def test_t2t_intermediates_all_blocks_and_fixed_size(models_c32):
    model = models_c32["t2t_vit_14_c32"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
    assert len(inter) == 14 and all(t.shape == (1, 384, 8, 8) for t in inter)
    assert len(model.feature_info) == 14 and model.feature_info[-1]["reduction"] == 4
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    "name, out_indices, shapes",
    [
        ("cvt_13_c32", (0, 1), [(1, 64, 32, 32), (1, 192, 16, 16)]),  # prunes stage 3 and the final norm
        ("t2t_vit_t_14_c32", (-1,), [(1, 384, 8, 8)]),
    ],
)
def test_features_only_getter(name, out_indices, shapes):
    shallow = dict(depths=(1, 1, 1)) if name.startswith("cvt") else dict(depth=2)  # same interface, cheaper
    model = timm.create_model(name, features_only=True, out_indices=out_indices, **shallow).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == shapes
    assert model.feature_info.channels() == [s[1] for s in shapes]


def test_t2t_position_embedding_is_fixed_sinusoid(models_c32):
    model = models_c32["t2t_vit_14_c32"]
    pe = model.pos_embed[0]
    assert pe.shape == (65, 384)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()
    pos, i = 5, 10  # channel 2i = sin(pos / 10000^(2i/d)), 2i+1 = cos(...)
    angle = pos / 10000 ** (2 * i / 384)
    assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.all(pe[0, 0::2] == 0) and torch.all(pe[0, 1::2] == 1)


def test_default_t2t_attention_is_performer():
    perf = timm.create_model("t2t_vit_14", device="meta")
    trans = timm.create_model("t2t_vit_t_14", device="meta")
    assert perf.patch_embed.t2t_attn == "performer"
    assert all(isinstance(m, TokenPerformer) for m in perf.patch_embed.token_layers)
    assert trans.patch_embed.t2t_attn == "transformer"


def test_performer_approximates_softmax_attention():
    """With many random features, the FAVOR+ estimate converges to exact softmax attention."""
    torch.manual_seed(0)
    layer = TokenPerformer(dim=8, out_dim=16, kernel_ratio=512)  # 8192 orthogonal random features
    q = 0.25 * torch.randn(2, 20, 16)
    k = 0.25 * torch.randn(2, 20, 16)
    v = torch.randn(2, 20, 16)
    exact = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    approx = layer.attention(q, k, v)
    assert (approx - exact).abs().max().item() < 0.05
    # and it is not trivially the uniform average
    assert (v.mean(dim=1, keepdim=True).expand_as(exact) - exact).abs().max().item() > 0.05


# ----------------------------------------------------------------------------- kwargs, head, training
def test_create_model_kwargs():
    model = timm.create_model("cvt_13_c32", num_classes=7, drop_path_rate=0.2, global_pool="avg", device="meta")
    assert isinstance(model, CvT) and model.num_classes == 7 and model.drop_path_rate == 0.2
    assert model.global_pool == "avg"
    last_block = model.stages[-1].blocks[-1]
    assert last_block.drop_path1.drop_prob == pytest.approx(0.2)
    assert isinstance(model.stages[0].blocks[0].drop_path1, torch.nn.Identity)  # first rate is 0
    t2t = timm.create_model("t2t_vit_14", img_size=64, num_classes=3, drop_path_rate=0.1, device="meta")
    assert isinstance(t2t, T2TViT) and t2t.grid_size == (4, 4) and t2t.num_classes == 3
    assert t2t.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    c = timm.create_model("cvt_13", img_size=96, device="meta")
    assert c.grid_size == (6, 6)


@pytest.mark.parametrize("name", ["cvt_13_c32", "t2t_vit_14_c32"])
def test_reset_classifier_and_no_weight_decay(models_c32, name):
    model = copy.deepcopy(models_c32[name])
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.num_classes == 5
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    model.reset_classifier(0, "avg")
    with torch.no_grad():
        pooled = model(x)
        feats = model.forward_features(x)
    assert pooled.shape == (2, 384)
    torch.testing.assert_close(pooled, feats[:, 1:].mean(dim=1))
    params = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert any(n.endswith("cls_token") for n in nwd)
    assert all(n in params for n in nwd if n != "pos_embed")


@pytest.mark.parametrize("name", ["cvt_13_c32", "t2t_vit_14_c32"])
def test_backward_reaches_every_parameter(models_c32, name):
    model = copy.deepcopy(models_c32[name]).train()
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("name", ["cvt_13_c32", "t2t_vit_14_c32"])
def test_checkpoint_path_roundtrip(models_c32, name, tmp_path):
    src = copy.deepcopy(models_c32[name])
    with torch.no_grad():
        for m in src.modules():  # make BatchNorm running stats non-trivial so they must be restored
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    loaded = timm.create_model(name, num_classes=10, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = src(x), loaded(x)
    torch.testing.assert_close(got, ref)
    loaded_sd = loaded.state_dict()
    for key, value in src.state_dict().items():  # incl. BN statistics and the Performer's random features
        assert torch.equal(loaded_sd[key], value), key


@pytest.mark.parametrize("name", ["cvt_13_c32", "t2t_vit_14_c32"])
def test_one_drloc_module_optimisation_step(name):
    from vt_drloc import DrLocModule

    torch.manual_seed(0)
    module = DrLocModule(name, num_classes=10, lambda_drloc=0.1, lambda_schedule="constant", drloc_seed=0)
    assert module.grid_info.hw == (8, 8) and module.drloc.reduced_hw == (8, 8)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    loss = module.training_step((x, y), 0)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("drloc.head") for n in changed)
    assert any(n.startswith("model.") and "head" not in n.split(".")[1] for n in changed)


# ----------------------------------------------------------------------------- Swin with an absolute position embedding
SWIN_SMALL = dict(
    num_classes=10, img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 2), num_heads=(1, 2)
)


def test_swin_ape_is_timms_swin_plus_one_position_embedding():
    torch.manual_seed(0)
    ape = timm.create_model("swin_ape_tiny_patch4_window7_224", **SWIN_SMALL).eval()
    swin = timm.create_model("swin_tiny_patch4_window7_224", **SWIN_SMALL).eval()
    assert isinstance(ape, SwinTransformerAPE)
    extra = set(ape.state_dict()) - set(swin.state_dict())
    assert extra == {"patch_embed.absolute_pos_embed"} and set(swin.state_dict()) <= set(ape.state_dict())
    pos = ape.patch_embed.absolute_pos_embed
    assert tuple(pos.shape) == (1, 16, 16, 16)  # one embedding per cell of the 16x16 patch grid, NHWC
    assert _n_params(ape) - _n_params(swin) == 16 * 16 * 16
    assert 0.018 < pos.std().item() < 0.022 and abs(pos.mean().item()) < 0.002  # timm's trunc_normal_(std=0.02)
    assert "patch_embed.absolute_pos_embed" in ape.no_weight_decay()
    assert swin.no_weight_decay() <= ape.no_weight_decay()

    # with timm's weights and a zero embedding it is timm's Swin; the embedding is what it adds
    ape.load_state_dict(swin.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pos.zero_()
        torch.testing.assert_close(ape(x), swin(x))
        pos.normal_(0, 0.02)
        assert not torch.allclose(ape(x), swin(x), atol=1e-4)
        # forward_intermediates (the DRLoc tap's route) sees the embedding too
        final, _ = ape.forward_intermediates(x, indices=1, norm=True)
        torch.testing.assert_close(final, ape.forward_features(x))


def test_swin_ape_other_input_sizes_resample_the_embedding():
    torch.manual_seed(0)
    dynamic = timm.create_model("swin_ape_tiny_patch4_window7_224", **dict(SWIN_SMALL, strict_img_size=False)).eval()
    with torch.no_grad():
        assert dynamic.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 16, 16, 32)
    model = timm.create_model("swin_ape_tiny_patch4_window7_224", **SWIN_SMALL).eval()
    before = model.patch_embed.absolute_pos_embed.detach().clone()
    model.set_input_size(img_size=(64, 64))
    after = model.patch_embed.absolute_pos_embed
    assert tuple(after.shape) == (1, 32, 32, 16) and isinstance(after, torch.nn.Parameter)
    # bicubic upsampling by 2 keeps the embedding's scale and mean
    assert abs(after.mean().item() - before.mean().item()) < 5e-3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    # the same size again keeps the Parameter itself (optimizers hold it) and its requires_grad
    after.requires_grad_(False)
    model.set_input_size(img_size=(64, 64))
    assert model.patch_embed.absolute_pos_embed is after and not after.requires_grad
    # timm's re-initialisation reaches the embedding too
    with torch.no_grad():
        after.zero_()
    model.init_weights(needs_reset=True)
    assert 0.015 < model.patch_embed.absolute_pos_embed.std().item() < 0.025


def test_swin_ape_refuses_another_embed_layer():
    from timm.layers import PatchEmbed

    with pytest.raises(ValueError, match="builds its own embed_layer"):
        SwinTransformerAPE(embed_layer=PatchEmbed, **SWIN_SMALL)
