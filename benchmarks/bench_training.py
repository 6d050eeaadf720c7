"""Stage-2 training speed: steps/s with the latent cache against re-encoding every batch.

    python benchmarks/bench_training.py [--dataset DIR] [--steps 60] [--threads 1]

Without --dataset, a dataset of synthetic demos (the tests' bag writer) is built in a
temporary folder. Trains the tiny preset on CPU with the cache (built first, timed apart),
with the cache in bfloat16, and with `--no-cache`; steps/s comes from the per-step times in
the metrics, after a warm-up, without set-up, validation or checkpoints. Prints a table and
writes JSON to benchmarks/results/training_cpu.json. Only the ratios mean much on a CPU: on
the paper's backbone the VAE encodes 61 frames of 480x640 per sample, far more than here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_io import write_result

from vam_policy.data.dataset import build_dataset, load_dataset
from vam_policy.data.episodes import EpisodeOptions, RecordingProfile
from vam_policy.machine import describe_machine
from vam_policy.train.config import IdmTrainConfig, load_train_config
from vam_policy.train.idm import train_idm

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5


def synthetic_dataset(folder: Path, episodes: int) -> Path:
    sys.path.insert(0, str(ROOT / "test"))
    from bagtools import DemoSpec, write_demo_bag

    bags = [write_demo_bag(folder / f"bag{i}", DemoSpec(duration_s=4.0, motion_offset=0.1 * i,
                                                        seed=i)).path
            for i in range(episodes)]
    profile = RecordingProfile.load(ROOT / "config" / "ur5e.yaml")
    build_dataset(bags, profile, folder / "dataset", val_fraction=0.2, progress=False,
                  options=EpisodeOptions(instruction="pick up the red cube"))
    return folder / "dataset"


def steps_per_s(records: tuple[dict[str, float], ...]) -> float:
    elapsed = [r["elapsed_s"] for r in records if "elapsed_s" in r]
    return (len(elapsed) - WARMUP_STEPS) / (elapsed[-1] - elapsed[WARMUP_STEPS - 1])


def run(dataset: Path, steps: int, work: Path) -> dict[str, object]:
    tiny = load_train_config("idm:tiny", IdmTrainConfig)
    config = dataclasses.replace(tiny, loop=dataclasses.replace(
        tiny.loop, steps=steps, eval_every=10 * steps, save_every=10 * steps))
    bf16 = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                cache_dtype="bfloat16"))
    start = time.perf_counter()
    built = train_idm(dataset, work / "build", dataclasses.replace(
        config, loop=dataclasses.replace(config.loop, steps=1)), cache_dir=work / "cache",
        progress=False)
    build_s = time.perf_counter() - start
    rows = []
    for folder, name, cfg, kwargs in (
        ("cached", "latent cache (float32)", config, {"cache_dir": work / "cache"}),
        ("cached_bf16", "latent cache (bfloat16)", bf16, {"cache_dir": work / "cache_bf16"}),
        ("live", "no cache: VAE every batch", config, {"use_cache": False}),
    ):
        result = train_idm(dataset, work / folder, cfg, progress=False, **kwargs)
        rows.append({"mode": name, "steps_per_s": steps_per_s(result.records)})
    data = load_dataset(dataset)
    return {
        "benchmark": "training stage 2 (idm)", "preset": "tiny", "device": "cpu",
        "machine": describe_machine(), "torch_threads": torch.get_num_threads(),
        "dataset": {"episodes": len(data.episodes), "train_samples": built.train_samples},
        "batch_size": config.loop.batch_size, "steps": steps,
        "cache_build_s_incl_setup": build_s, "rows": rows,
        "speedup_cache_vs_no_cache": rows[0]["steps_per_s"] / rows[2]["steps_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset or synthetic_dataset(Path(tmp), args.episodes)
        result = run(dataset, args.steps, Path(tmp) / "runs")
    print(f"\nstage 2, tiny preset, CPU ({result['torch_threads']} threads), batch "
          f"{result['batch_size']}, {result['dataset']['train_samples']} train samples")
    print(f"{'mode':30s} {'steps/s':>9s}")
    for row in result["rows"]:
        print(f"{row['mode']:30s} {row['steps_per_s']:9.1f}")
    print(f"cache vs no cache: {result['speedup_cache_vs_no_cache']:.1f}x; building the cache "
          f"(with set-up) took {result['cache_build_s_incl_setup']:.1f} s")
    write_result("training_cpu", result)


if __name__ == "__main__":
    main()
