"""Training-step time with DRLoc on vs off: same model, batch, seed, in one run.

    python bench/overhead.py [--models swin_tiny_patch4_window7_224 vit_small_patch16_224]
                             [--batch 16] [--img 224] [--steps 6] [--device cpu]

Each step is DrLocModule.training_step + backward + AdamW step. The two variants are timed
alternately (off, on, off, on, ...) so drifts in machine load hit both equally. Two ratios are
reported: median on-time over median off-time, fastest over fastest (the least disturbed by
other processes on a shared machine), and the median of the per-step ratios (each on-step beside
its off-step). Prints a table and writes bench/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from vt_drloc import DrLocModule

warnings.filterwarnings("ignore")


def build(name: str, lam: float, seed: int, device: str) -> tuple[DrLocModule, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    module = DrLocModule(name, num_classes=100, lambda_drloc=lam, schedule="constant", seed=seed).to(device)
    module.train()
    return module, torch.optim.AdamW(module.parameters(), lr=1e-4)


def step(module: DrLocModule, optimizer, x, y, index: int) -> None:
    loss = module.training_step((x, y), index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(name: str, batch: int, img: int, steps: int, warmup: int, device: str, seed: int = 0) -> dict:
    variants = {"off": build(name, 0.0, seed, device), "on": build(name, 0.5, seed, device)}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img, img, generator=g).to(device)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(warmup + steps):
        for key, (module, optimizer) in variants.items():
            sync(device)
            start = time.perf_counter()
            step(module, optimizer, x, y, i)
            sync(device)
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    on_module = variants["on"][0]
    med_off, med_on = statistics.median(times["off"]), statistics.median(times["on"])
    return {
        "model": name,
        "grid": list(on_module.grid_info.hw),
        "grid_for_loss": list(on_module.drloc.reduced_hw),
        "backbone_params": on_module.num_backbone_params,
        "head_params": on_module.num_head_params,
        "batch": batch,
        "img": img,
        "steps": steps,
        "step_s_off": med_off,
        "step_s_on": med_on,
        "ratio": med_on / med_off,
        "step_s_off_min": min(times["off"]),
        "step_s_on_min": min(times["on"]),
        "ratio_min": min(times["on"]) / min(times["off"]),
        # each on-step is timed right after its off-step, under nearly the same machine load
        "ratio_paired": statistics.median(on / off for on, off in zip(times["on"], times["off"])),
        "times_off": times["off"],
        "times_on": times["on"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224", "vit_small_patch16_224"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = parser.parse_args()
    rows = [bench_model(m, args.batch, args.img, args.steps, args.warmup, args.device) for m in args.models]
    header = (
        f"{'model':30} {'grid':>6} {'loss grid':>9} {'head/backbone':>13} {'off s/step':>10} {'on s/step':>10} "
        f"{'ratio':>6} {'off min':>8} {'on min':>8} {'ratio min':>9} {'paired':>7}"
    )
    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} img={args.img} steps={args.steps}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        share = f"{r['head_params'] / 1e6:.2f}M/{r['backbone_params'] / 1e6:.1f}M"
        print(
            f"{r['model']:30} {'x'.join(map(str, r['grid'])):>6} {'x'.join(map(str, r['grid_for_loss'])):>9} {share:>13} "
            f"{r['step_s_off']:>10.3f} {r['step_s_on']:>10.3f} {r['ratio']:>6.3f} "
            f"{r['step_s_off_min']:>8.3f} {r['step_s_on_min']:>8.3f} {r['ratio_min']:>9.3f} {r['ratio_paired']:>7.3f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
