"""init_from: fine-tuning starts from a timm weight file or an earlier run's checkpoint (backbone
weights only; the DRLoc head and a classifier of another shape start new)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_train import TINY, compose_cfg

from vt_drloc import DrLocModule
from vt_drloc.app.checkpoints import load_backbone_weights
from vt_drloc.app.config import UserError
from vt_drloc.app.train import train

NAME = "vit_tiny_patch16_224"
VIT = dict(img_size=32, patch_size=4, depth=1, embed_dim=32, num_heads=2)


def module(num_classes: int = 10, seed: int = 0) -> DrLocModule:
    torch.manual_seed(seed)
    return DrLocModule(NAME, num_classes=num_classes, lambda_drloc=0.5, model_kwargs=VIT, hidden_dims=[16], num_pairs=8)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_timm_weight_file_initialises_the_backbone_only(tmp_path, fmt):
    torch.manual_seed(7)
    pretrained = timm.create_model(NAME, num_classes=100, **VIT)  # another task's classifier
    state = pretrained.state_dict()
    path = tmp_path / f"weights.{fmt if fmt != 'wrapped' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state} if fmt == "wrapped" else state, path)
    target = module()
    head_before = {k: v.clone() for k, v in target.drloc.state_dict().items()}
    classifier_before = target.model.head.weight.clone()
    report = load_backbone_weights(target.model, path)
    assert report["skipped"] == ["head.bias", "head.weight"] and report["missing"] == []
    for key, value in target.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, state[key]), key
    assert torch.equal(target.model.head.weight, classifier_before)  # 100 classes cannot fill 10: left new
    assert all(torch.equal(v, head_before[k]) for k, v in target.drloc.state_dict().items())  # DRLoc head untouched


def test_an_earlier_runs_checkpoint_initialises_the_backbone_not_the_drloc_head(tmp_path):
    earlier, target = module(seed=1), module(seed=2)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": earlier.state_dict(), "hyper_parameters": dict(earlier.hparams)}, path)
    report = load_backbone_weights(target.model, path)
    assert report["skipped"] == [] and report["missing"] == [] and "head.weight" in report["loaded"]
    assert all(torch.equal(v, earlier.model.state_dict()[k]) for k, v in target.model.state_dict().items())
    # the DRLoc head is not part of the backbone: it keeps its own (different-seed) weights
    assert not any(
        torch.equal(a, b) for a, b in zip(target.drloc.parameters(), earlier.drloc.parameters()) if a.dim() == 2
    )


def test_a_classifier_of_other_classes_starts_new_even_when_its_shape_fits(tmp_path):
    """Pretrained on five classes, fine-tuned on five others: same shape, but the classes differ."""
    earlier, target = module(seed=1), module(seed=2)
    names = [f"class{i}" for i in range(10)]
    path = tmp_path / "last.ckpt"
    ckpt = {"state_dict": earlier.state_dict(), "data_info": {"class_names": names}}
    torch.save(ckpt, path)
    classifier_before = target.model.head.weight.clone()
    report = load_backbone_weights(target.model, path, class_names=names[::-1])
    assert report["new_classes"] == ["head.bias", "head.weight"] and report["skipped"] == []
    assert torch.equal(target.model.head.weight, classifier_before)
    assert torch.equal(target.model.pos_embed, earlier.model.pos_embed)
    # the same classes (or a file that records none): the classifier is loaded
    for recorded, wanted in ((names, names), (None, names)):
        torch.save({**ckpt, "data_info": {"class_names": recorded}}, path)
        report = load_backbone_weights(target.model, path, class_names=wanted)
        assert report["new_classes"] == [] and torch.equal(target.model.head.weight, earlier.model.head.weight)


def test_unusable_files_are_refused_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone_weights(module().model, tmp_path / "nope.pth")
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), other)
    with pytest.raises(UserError, match="none of its .* tensors .* matches the backbone"):
        load_backbone_weights(module().model, other)
    junk = tmp_path / "junk.pth"
    junk.write_text("not torch")
    with pytest.raises(UserError, match="cannot be read: it is truncated or not a weight file"):
        load_backbone_weights(module().model, junk)


def test_app_init_from_runs_and_records_it(tmp_path):
    first = compose_cfg(TINY, tmp_path / "first")
    train(first)
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    second = compose_cfg([*TINY, f"init_from={ckpt}"], tmp_path / "second")
    train(second)
    results = json.loads((tmp_path / "second" / "results.json").read_text())
    assert results["init_from"] == str(ckpt) and results["init_from_loaded"] > 0
    with pytest.raises(UserError, match="init_from=.* and ckpt_path=.* are both set"):
        train(compose_cfg([*TINY, f"init_from={ckpt}", f"ckpt_path={ckpt}"], tmp_path / "third"))
    with pytest.raises(UserError, match="does not exist"):
        train(compose_cfg([*TINY, f"init_from={tmp_path / 'missing.pth'}"], tmp_path / "fourth"))


def test_pretrain_on_five_classes_then_fine_tune_on_the_other_five(tmp_path, caplog):
    """The fine-tuning cells' path through the app: data.classes, a weights-only checkpoint, a new classifier."""
    first = compose_cfg([*TINY, "data.classes=[airplane,automobile,bird,cat,deer]"], tmp_path / "pre")
    train(first)
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # Hydra's ListConfig must not reach the file
    assert saved["data_info"]["class_names"] == ["airplane", "automobile", "bird", "cat", "deer"]
    with caplog.at_level("INFO", logger="vt_drloc.train"):
        results = train(
            compose_cfg([*TINY, "data.classes=[dog,frog,horse,ship,truck]", f"init_from={ckpt}"], tmp_path / "ft")
        )
    assert (
        results["init_from_loaded"] > 0
        and "2 classifier tensors new (other classes: head.bias, head.weight)" in caplog.text
    )


def test_a_32px_checkpoint_fine_tunes_at_64px_with_resampled_position_embeddings(tmp_path, caplog):
    from timm.layers import resample_abs_pos_embed

    small = module(seed=3)  # 32 px: an 8x8 grid + class token
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, path)
    torch.manual_seed(4)
    large = DrLocModule(
        NAME, num_classes=10, lambda_drloc=0.5, model_kwargs={**VIT, "img_size": 64}, hidden_dims=[16], num_pairs=8
    )
    assert tuple(large.model.pos_embed.shape) == (1, 257, 32)
    with caplog.at_level("INFO", logger="vt_drloc.init_from"):
        report = load_backbone_weights(large.model, path)
    assert report["resampled"] == ["pos_embed"] and "pos_embed" in report["loaded"]
    assert report["skipped"] == [] and report["missing"] == []
    expected = resample_abs_pos_embed(
        small.model.pos_embed.detach(), new_size=[16, 16], old_size=[8, 8], num_prefix_tokens=1
    )
    assert torch.equal(large.model.pos_embed.detach(), expected)
    assert torch.equal(
        large.model.pos_embed[:, :1], small.model.pos_embed[:, :1]
    )  # the class token's is kept as it was
    assert torch.equal(large.model.blocks[0].attn.qkv.weight, small.model.blocks[0].attn.qkv.weight)
    assert "resampled pos_embed from (1, 65, 32) to (1, 257, 32)" in caplog.text
    with torch.no_grad():
        assert large(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_app_init_from_across_resolutions_logs_what_was_resampled(tmp_path, caplog):
    first = compose_cfg(TINY, tmp_path / "first")
    train(first)
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with caplog.at_level("INFO"):
        train(compose_cfg([*TINY, f"init_from={ckpt}", "model.img_size=64"], tmp_path / "second"))
    assert "1 resampled to this resolution (pos_embed)" in caplog.text and "0 newly initialised" in caplog.text
    results = json.loads((tmp_path / "second" / "results.json").read_text())
    assert results["img_size"] == 64 and results["init_from_loaded"] > 0
