"""Training-step time with DRLoc on vs off, and what head width and pair count cost: same model,
batch, seed, in one run.

    python bench/overhead.py [--models swin_tiny_patch4_window7_224 vit_small_patch16_224]
                             [--batch 16] [--img 224] [--steps 10] [--device cpu]
    python bench/overhead.py --study [--models vit_study swin_study cvt_study] [--batch 64]
                             [--variants released head2c m16 head2c_m16]

Default: paper-size timm models at 224 px, DRLoc as the released code builds it (λ 0.5).
``--study``: the small models of the data-scarcity study (``conf/model/<name>.yaml``, composed with
``experiment=study_cifar10`` exactly as ``python -m vt_drloc.train`` builds them, 32 px, batch 64),
each DRLoc variant against DRLoc off:

- ``released``: the released head (two hidden layers of 512), m = 64 pairs per image;
- ``head2c``: hidden layers of 2·C (C = channels of the final grid), m = 64;
- ``m16`` / ``m32``: the released head with m = 16 / 32 pairs;
- ``head2c_m16``: both.

Each step is ``training_step`` + backward + optimizer step. Variants are timed alternately
(off, v1, v2, ..., off, v1, ...) so drifts in machine load hit all equally. Per variant: median
step time over off's, fastest over fastest (the least disturbed by other processes), and the median
of per-step ratios (each step beside its off-step of the same round). Prints a table and writes
bench/results/overhead.json (``--study``: overhead_study.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from vt_drloc import DrLocModule

warnings.filterwarnings("ignore")
STUDY_VARIANTS = {
    "released": [],
    "head2c": ["drloc.hidden_dims=[{2c},{2c}]"],
    "m16": ["drloc.num_pairs=16"],
    "m32": ["drloc.num_pairs=32"],
    "head2c_m16": ["drloc.hidden_dims=[{2c},{2c}]", "drloc.num_pairs=16"],
}


def paper_builder(name: str) -> Callable[[str], DrLocModule]:
    def build(variant: str) -> DrLocModule:
        return DrLocModule(
            name, num_classes=100, lambda_drloc=0.0 if variant == "off" else 0.5, schedule="constant", seed=0
        )

    return build


def study_builder(model: str) -> Callable[[str], DrLocModule]:
    """Modules built by the app's own config path (vt_drloc.app.train.build_module), λ constant."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from vt_drloc.app.train import build_module

    def cfg(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="vt_drloc.conf", version_base="1.3"):
            return compose(
                "train", overrides=["experiment=study_cifar10", f"model={model}", "drloc.schedule=constant", *overrides]
            )

    channels = build_module(cfg(["drloc.lambda_drloc=1"]), 10, 1.0).grid_info.channels

    def build(variant: str) -> DrLocModule:
        if variant == "off":
            return build_module(cfg([]), 10, 0.0)
        overrides = [o.replace("{2c}", str(2 * channels)) for o in STUDY_VARIANTS[variant]]
        return build_module(cfg(overrides), 10, 1.0)

    return build


def step(module: DrLocModule, optimizer, x, y, index: int) -> None:
    loss = module.training_step((x, y), index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(
    label: str,
    build: Callable[[str], DrLocModule],
    variants: list[str],
    batch: int,
    img: int,
    steps: int,
    warmup: int,
    device: str,
) -> list[dict]:
    modules = {}
    for variant in ["off", *variants]:
        torch.manual_seed(0)
        module = build(variant).to(device).train()
        modules[variant] = (module, torch.optim.AdamW(module.parameters(), lr=1e-4))
    g = torch.Generator().manual_seed(0)
    num_classes = modules["off"][0].hparams.num_classes
    x = torch.randn(batch, 3, img, img, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    times: dict[str, list[float]] = {k: [] for k in modules}
    for i in range(warmup + steps):
        for key, (module, optimizer) in modules.items():
            sync(device)
            start = time.perf_counter()
            step(module, optimizer, x, y, i)
            sync(device)
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    off = times["off"]
    rows = []
    for variant in variants:
        module, on = modules[variant][0], times[variant]
        rows.append(
            {
                "model": label,
                "variant": variant,
                "grid": list(module.grid_info.hw),
                "grid_for_loss": list(module.drloc.reduced_hw),
                "hidden_dims": list(module.drloc.head.hidden_dims),
                "sample_size": module.drloc.sample_size,
                "backbone_params": module.num_backbone_params,
                "head_params": module.num_head_params,
                "batch": batch,
                "img": img,
                "steps": steps,
                "step_s_off": statistics.median(off),
                "step_s_on": statistics.median(on),
                "ratio": statistics.median(on) / statistics.median(off),
                "step_s_off_min": min(off),
                "step_s_on_min": min(on),
                "ratio_min": min(on) / min(off),
                # each step is timed in the same round as its off-step, under nearly the same load
                "ratio_paired": statistics.median(a / b for a, b in zip(on, off)),
                "times_off": off,
                "times_on": on,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", action="store_true", help="the study's small models at 32 px, head variants")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(STUDY_VARIANTS))
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--img", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.study:
        models = args.models or ["vit_study", "swin_study", "cvt_study"]
        variants = args.variants or ["released", "head2c", "m16", "head2c_m16"]
        batch, img, builders = args.batch or 64, args.img or 32, {m: study_builder(m) for m in models}
        out = Path(args.out or Path(__file__).parent / "results" / "overhead_study.json")
    else:
        models = args.models or ["swin_tiny_patch4_window7_224", "vit_small_patch16_224"]
        variants = ["released"]
        batch, img, builders = args.batch or 16, args.img or 224, {m: paper_builder(m) for m in models}
        out = Path(args.out or Path(__file__).parent / "results" / "overhead.json")
    rows = [
        r
        for m in models
        for r in bench_model(m, builders[m], variants, batch, img, args.steps, args.warmup, args.device)
    ]
    header = (
        f"{'model':30} {'variant':>10} {'loss grid':>9} {'head':>9} {'m':>3} {'head/backbone':>13} {'off s/step':>10} "
        f"{'on s/step':>10} {'ratio':>6} {'ratio min':>9} {'paired':>7}"
    )
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} batch={batch} img={img} "
        f"steps={args.steps}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        share = f"{r['head_params'] / 1e6:.2f}M/{r['backbone_params'] / 1e6:.1f}M"
        print(
            f"{r['model']:30} {r['variant']:>10} {'x'.join(map(str, r['grid_for_loss'])):>9} "
            f"{'-'.join(map(str, r['hidden_dims'])):>9} {r['sample_size']:>3} {share:>13} {r['step_s_off']:>10.3f} "
            f"{r['step_s_on']:>10.3f} {r['ratio']:>6.3f} {r['ratio_min']:>9.3f} {r['ratio_paired']:>7.3f}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
