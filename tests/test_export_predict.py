"""The way out of a run (issue 26): export to timm's Hub layout, predict on new images, the
checkpoint's record of class names and preprocessing, and the README's "Use the model" commands."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from image_folders import make_image_folder
from safetensors.torch import load_file
from test_train import TINY, cli, compose_cfg

from vt_drloc import DrLocModule
from vt_drloc.app.config import UserError
from vt_drloc.app.export import export_checkpoint
from vt_drloc.app.predict import predict
from vt_drloc.app.train import train

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny ViT run on CIFAR-10 (32 px, 1 epoch) with DRLoc."""
    out = tmp_path_factory.mktemp("export") / "run"
    train(compose_cfg(TINY, out))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of 6 images of other sizes (40 px and 32 px) and the same files as a .tar."""
    root = tmp_path_factory.mktemp("images")
    folder = make_image_folder(
        root, name="new", classes=("x", "y"), per_class=3, splits=("batch",), size=32, vary_height=True
    )
    tar = root / "new.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(folder, arcname=".")
    return folder, tar


def test_the_checkpoint_records_class_names_and_preprocessing(run_dir):
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    info = checkpoint["data_info"]
    assert info["class_names"] == CIFAR10 and info["dataset"] == "cifar10" and info["img_size"] == 32
    assert info["mean"] == pytest.approx([0.4914, 0.4822, 0.4465]) and info["interpolation"] == "bicubic"
    module = DrLocModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert module.data_info == info


def test_export_loads_in_plain_timm_with_the_checkpoints_logits(run_dir, tmp_path):
    out = tmp_path / "exported"
    done = cli("vt_drloc.export", [f"ckpt_path={run_dir}", f"out={out}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no DRLoc head
    assert not any(k.startswith("drloc") for k in load_file(str(out / "model.safetensors")))
    config = json.loads((out / "config.json").read_text())
    assert (
        config["architecture"] == "vit_tiny_patch16_224"
        and config["num_classes"] == 10
        and config["label_names"] == CIFAR10
    )
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["std"] == pytest.approx(
        [0.247, 0.2435, 0.2616]
    )
    # a fresh interpreter that never imports vt_drloc
    script = (
        "import sys, timm, torch\n"
        f"model = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        "x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))\n"
        "with torch.no_grad(): logits = model(x)\n"
        "assert not any(m.startswith('vt_drloc') for m in sys.modules), 'vt_drloc was imported'\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    module = DrLocModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True).eval()
    with torch.no_grad():
        expected = module(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(torch.load(tmp_path / "logits.pt", weights_only=True), expected)


def test_export_keeps_the_drloc_head_on_request_and_never_overwrites(run_dir, tmp_path):
    out = tmp_path / "with_head"
    export_checkpoint(run_dir / "checkpoints" / "last.ckpt", out, keep_drloc_head=True)
    module = DrLocModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    head = load_file(str(out / "drloc_head.safetensors"))
    assert head.keys() == module.drloc.state_dict().keys()
    assert all(torch.equal(v, module.drloc.state_dict()[k]) for k, v in head.items())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    refused = cli("vt_drloc.export", [f"ckpt_path={run_dir}", f"out={out}"], tmp_path)
    assert (
        refused.returncode == 2
        and "already exists and is not empty" in refused.stderr
        and "overwrite=true" in refused.stderr
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "notes.txt"} == before
    export_checkpoint(run_dir, out, overwrite=True)  # the head of the earlier export goes, the user's file stays
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


def test_export_refuses_a_checkpoint_without_backbone_weights(tmp_path):
    path = tmp_path / "head_only.ckpt"
    torch.save(
        {
            "state_dict": {"drloc.layers.0.weight": torch.zeros(2, 2)},
            "hyper_parameters": {"model_name": "vit_tiny_patch16_224"},
        },
        path,
    )
    with pytest.raises(UserError, match="holds no backbone weights .*no model.\\* tensors"):
        export_checkpoint(path, tmp_path / "out")
    with pytest.raises(UserError, match="is a folder without checkpoints/last.ckpt"):
        export_checkpoint(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_checkpoint_that_predates_data_info(run_dir, images, tmp_path):
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    del checkpoint["data_info"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match="predates vt_drloc's data_info .* preprocessing is unknown"):
        predict(tmp_path / "old.ckpt", images[0])


def test_predict_on_a_folder_and_a_tar_names_the_classes(run_dir, images, tmp_path):
    folder, tar = images
    from_folder = predict(run_dir, folder, top_k=3, progress=False)
    from_tar = predict(run_dir / "checkpoints" / "last.ckpt", tar, top_k=3, progress=False)
    assert [r["path"] for r in from_folder] == sorted(f"batch/{c}/{i:03d}.jpg" for c in "xy" for i in range(3))
    assert [r["path"] for r in from_tar] == [f"./{r['path']}" for r in from_folder]
    for a, b in zip(from_folder, from_tar):
        assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
        assert list(a) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
        names = {a["class_1"], a["class_2"], a["class_3"]}
        assert names <= set(CIFAR10) and len(names) == 3
        assert 1 >= a["prob_1"] >= a["prob_2"] >= a["prob_3"] > 0
    # the same probabilities as the checkpoint's own module on the eval transform of a 32 px image
    module = DrLocModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True).eval()
    from PIL import Image

    from vt_drloc.data.info import eval_transform_of

    x = eval_transform_of(module.data_info)(Image.open(folder / "batch" / "x" / "000.jpg").convert("RGB"))  # 32 x 32
    with torch.no_grad():
        probs = module(x[None]).softmax(-1)[0]
    assert from_folder[0]["prob_1"] == pytest.approx(probs.max().item(), abs=1e-6)
    assert from_folder[0]["class_1"] == CIFAR10[probs.argmax().item()]


def test_predict_cli_writes_the_csv_and_refuses_bad_input(run_dir, images, tmp_path):
    folder, tar = images
    out = tmp_path / "preds.csv"
    done = cli("vt_drloc.predict", [f"ckpt_path={run_dir}", f"input={tar}", f"out={out}", "top_k=2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert rows[0]["class_1"] in CIFAR10 and 0 < float(rows[0]["prob_1"]) <= 1
    written = out.read_bytes()
    again = cli(
        "vt_drloc.predict",
        [f"ckpt_path={run_dir}", f"input={tmp_path / 'nowhere'}", f"out={tmp_path / 'x.csv'}"],
        tmp_path,
    )
    assert again.returncode == 2 and "input=" in again.stderr and "does not exist" in again.stderr
    with pytest.raises(UserError, match="top_k=0 must be a positive integer"):
        predict(run_dir, folder, top_k=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        predict(run_dir, tmp_path / "empty")
    with pytest.raises(UserError, match="ckpt_path=.* does not exist"):
        predict(tmp_path / "missing.ckpt", folder)
    assert out.read_bytes() == written


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_use_the_model_commands_run(run_dir, images, tmp_path):
    folder, _ = images
    section = _section("Use the model")
    placeholder = "outputs/train/runs/2026-01-01_12-00-00"

    def fill(code: str) -> str:
        return code.replace(placeholder, str(run_dir)).replace("my_images/", f"{folder}/")

    (shell,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert "python -m vt_drloc.export" in shell and "python -m vt_drloc.predict" in shell
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONWARNINGS="ignore"
    )
    done = subprocess.run(
        ["bash", "-ec", fill(shell)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "export" / "model.safetensors").is_file()
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 6 and rows[0]["class_1"] in CIFAR10 and "prob_3" in rows[0]

    namespace: dict = {}
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(fill("\n".join(blocks)), "README.md", "exec"), namespace)
    assert namespace["labels"] == CIFAR10 and namespace["rows"][0]["class_1"] in CIFAR10
    image = __import__("PIL.Image").Image.open(folder / "batch" / "x" / "000.jpg").convert("RGB")
    assert tuple(namespace["transform"](image).shape) == (3, 32, 32)
    with torch.no_grad():
        assert namespace["model"](namespace["transform"](image)[None]).shape == (1, 10)


def test_eval_prints_one_named_table_per_split(run_dir, tmp_path, capsys):
    from vt_drloc.app.eval import evaluate

    overrides = [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "data=cifar10",
        "data.num_workers=0",
        "data.batch_size=64",
        "print_config=false",
    ]
    overrides += ["data.samples_per_class=4", "+trainer.limit_test_batches=2"]
    results = evaluate(compose_cfg(overrides, tmp_path / "eval", config_name="eval"))
    out = capsys.readouterr().out
    assert "val split of cifar10" in out and "test split of cifar10" in out
    val_table, test_table = (
        out[out.index("val split of cifar10") : out.index("test split of cifar10")],
        out[out.index("test split of cifar10") :],
    )
    assert "val/acc1" in val_table and "test/acc1" not in val_table and "test/acc1" in test_table
    assert f"{results['val_acc1']:.4f}" in val_table and f"{results['test_acc1']:.4f}" in test_table


def test_vt_drlocs_own_cvt_exports_and_loads_in_timm_after_import(tmp_path):
    import timm

    torch.manual_seed(0)
    kwargs = dict(img_size=32, embed_dims=[16, 32, 64], depths=[1, 1, 1], num_heads=[1, 1, 2])
    module = DrLocModule(
        "cvt_13_c32", num_classes=3, lambda_drloc=0.1, model_kwargs=kwargs, hidden_dims=[16], num_pairs=8
    )
    info = dict(dataset="folder", class_names=["a", "b", "c"], img_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    path = tmp_path / "cvt.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "data_info": info}, path)
    out = export_checkpoint(path, tmp_path / "cvt")
    loaded = timm.create_model(
        f"local-dir:{out}", pretrained=True
    ).eval()  # vt_drloc is imported: cvt_13_c32 is registered
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), module.model.eval()(x))
    assert loaded.pretrained_cfg["label_names"] == ["a", "b", "c"]
