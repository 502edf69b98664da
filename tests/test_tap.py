"""The grid tap on many timm families: logits equal ``model(x)``, the grid is the final token grid."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vt_drloc import DrLocModule, GridTapError, probe_grid, tap_grid
from vt_drloc.tap import tokens_to_grid

VIT = dict(img_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=2)

# (name, create_model kwargs, input size, expected grid side, prefix tokens in forward_features)
FAMILIES = [
    ("vit_tiny_patch16_224", VIT, 32, 8, 1),
    ("deit_tiny_distilled_patch16_224", VIT, 32, 8, 2),
    ("vit_tiny_patch16_224", dict(VIT, reg_tokens=4), 32, 8, 5),
    ("swin_tiny_patch4_window7_224", dict(img_size=32, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)), 32, 4, None),
    ("pit_ti_224", dict(img_size=64, depth=(1, 1, 1)), 64, 2, None),
    ("twins_svt_small", dict(img_size=64, depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64)), 64, 2, None),
    ("pvt_v2_b0", dict(depths=(1, 1, 1, 1)), 64, 2, None),
    ("convit_tiny", dict(VIT, local_up_to_layer=1), 32, 8, 1),
    ("cait_xxs24_224", dict(VIT, depth_token_only=1), 32, 8, 1),
    ("xcit_nano_12_p16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2), 32, 4, 1),
    ("coat_lite_tiny", dict(img_size=64, embed_dims=(16, 32, 48, 64), serial_depths=(1, 1, 1, 1)), 64, 2, 1),
    ("mvitv2_tiny", dict(img_size=64), 64, 2, None),
    ("resnet50", dict(), 64, 2, None),
    ("levit_128s", dict(img_size=128, depth=(1, 1, 1)), 128, 2, None),
]


@pytest.mark.parametrize("name, kwargs, size, side, prefix", FAMILIES, ids=[f"{f[0]}-{i}" for i, f in enumerate(FAMILIES)])
def test_single_forward_gives_model_logits_and_final_grid(name, kwargs, size, side, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    info = probe_grid(model, size, name=name)
    assert info.hw == (side, side)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features, grid = tap_grid(model, x, info)
        logits = model.forward_head(features)
        reference = model(x)
        plain_features = model.forward_features(x)
    assert torch.allclose(logits, reference, atol=1e-5), name
    assert grid.shape == (2, info.channels, side, side)
    if prefix is not None:
        # token models: the grid is the final (normed) patch tokens, prefix tokens dropped
        expected = plain_features[:, prefix:].transpose(1, 2).reshape(2, -1, side, side)
        assert torch.allclose(grid, expected, atol=1e-5), name
    elif isinstance(plain_features, torch.Tensor) and plain_features.dim() == 4:
        expected = tokens_to_grid(plain_features, model)
        assert torch.allclose(grid, expected, atol=1e-5), name


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


def test_fallback_through_forward_features_handles_prefix_tokens():
    class TokensOnly(nn.Module):
        """Hand-written ViT-like model: forward_features returns (B, 1 + 16, C), no forward_intermediates."""

        num_prefix_tokens = 1
        num_features = 12

        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 12, 4, 4)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 12))
            self.head = nn.Linear(12, 3)

        def forward_features(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            return torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)

        def forward_head(self, x):
            return self.head(x[:, 0])

    model = TokensOnly()
    info = probe_grid(model, 16)
    assert info.strategy == "features" and info.hw == (4, 4) and info.prefix_tokens == 1
    x = torch.randn(2, 3, 16, 16)
    features, grid = tap_grid(model, x, info)
    assert torch.allclose(grid, model.embed(x))
