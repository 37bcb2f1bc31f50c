"""Student training throughput: scratch vs RCO with the teacher online (r50, r100) vs RCO from the anchor cache.

Every mode trains the same student (``--student``, default ``mbf_0.8m``, the RCO paper's 0.8M-parameter face
student) with the same ArcFace Partial-FC head through :class:`facerco.train.engine.Engine` and
:class:`facerco.distill.task.StudentTask`, on generated faces (:class:`facerco.data.synthetic.SyntheticFaces`)
held in memory, so the data path costs the same everywhere:

* ``scratch``: ArcFace only (no teacher);
* ``online_<teacher>``: ArcFace + embedding mimic, the anchor run on every batch (:class:`OnlineAnchors`), for each
  ``--teachers`` (default iresnet50 and iresnet100; random weights: speed does not depend on their values);
* ``cached``: ArcFace + mimic, targets read from an anchor-feature cache (:func:`facerco.route.cache_writer.build_cache`
  of the first teacher over the same images, plain + flipped, fp16, memory-mapped) by ``[index, flip]``.

Samples/s = images per wall-clock second over windows of ``train.log_every`` steps (data loading included), median
over the windows after the first (warm-up, cuDNN autotuning). Goals: cached / scratch >= 0.9 (the cache makes RCO
nearly free); cached / online is the speed-up over running the teacher. Images per CPU-second of the process (same
windows) and the ratios from them are printed beside the wall-clock ones because a shared CPU makes wall time noisy.
Small sizes on CPU by default (64x64, batch 16); on CUDA 112x112, batch 128, AMP fp16 (``train.amp=auto``).

    python benchmarks/distill_throughput.py                                  # CPU, about 2 minutes
    python benchmarks/distill_throughput.py --device cuda --out bench_out/distill_throughput_gpu.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import add_provenance_args, benchmark_recorder  # noqa: E402

GOAL_CACHED_VS_SCRATCH = 0.9


class FaceArray(Dataset):
    """Generated aligned faces held as uint8; items ``(normalized CHW, label)`` with ``labels``/``num_classes``."""

    def __init__(self, count: int, size: int, images_per_identity: int = 4, seed: int = 0) -> None:
        import cv2

        from facerco.data.synthetic import SyntheticFaces

        gen = SyntheticFaces(seed=seed)
        self.images = np.empty((count, size, size, 3), np.uint8)
        self.labels = np.arange(count, dtype=np.int64) // images_per_identity
        for i in range(count):
            img = gen.render(int(self.labels[i]), i % images_per_identity).image
            self.images[i] = img if img.shape[0] == size else cv2.resize(img, (size, size),
                                                                         interpolation=cv2.INTER_AREA)
        self.num_classes = int(self.labels[-1]) + 1 if count else 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from facerco.data.transforms import normalize

        return normalize(self.images[i]), int(self.labels[i])


def make_config(kind: str, model: str, run_dir: Path, size: int, batch: int, window: int, device: str,
                amp: str, mimic: float = 0.0, cache: str = "") -> Any:
    """A facerco Config for one timed run: ArcFace (s=64, m=0.5), SGD, constant lr, no validation/tensorboard."""
    from facerco.config import (
        Config,
        DataConfig,
        DistillConfig,
        LossConfig,
        ModelConfig,
        OptimConfig,
        ScheduleConfig,
        TrainConfig,
    )

    return Config(
        kind=kind,  # type: ignore[arg-type]
        data=DataConfig(num_workers=0, flip=True, image_size=size),
        model=ModelConfig(name=model),
        loss=LossConfig(name="arcface", s=64.0, m2=0.5),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(decay="constant"),
        train=TrainConfig(output=str(run_dir), epochs=1.0, batch_size=batch, grad_clip=5.0, amp=amp, seed=0,
                          device=device, log_every=window, val_every_epochs=0.0, checkpoint_every_steps=0,
                          resume=False, tensorboard=False, progress=False),
        distill=DistillConfig(strategy="final", mimic_weight=mimic, kd_weight=0.0, arcface_weight=1.0, cache=cache),
    )


def timed_fit(build_task: Callable[[Any], Any], dataset: Dataset, cfg: Any, total: int) -> dict[str, Any]:
    """Run the engine for ``total`` steps; wall and CPU rates per window of ``train.log_every`` steps.

    A callback reads the clocks after every window (the engine has synchronised the device by then: it reads the
    step's loss back); the first window (warm-up) is dropped and the median of the others reported.
    """
    from facerco.train.engine import Callback, Engine

    window, batch = cfg.train.log_every, cfg.train.batch_size

    class Clock(Callback):
        name = "clock"

        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_train_start(self, engine: Engine) -> None:
            self.marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, engine: Engine, step: int, parts: dict[str, float]) -> None:
            if step % window == 0:
                self.marks.append((time.perf_counter(), time.process_time()))

    clock = Clock()
    task = build_task(cfg)
    Engine(task, dataset, cfg, run_dir=cfg.train.output, total_steps=total, callbacks=[clock]).fit()
    wall = [window * batch / max(b[0] - a[0], 1e-9) for a, b in zip(clock.marks, clock.marks[1:])]
    cpu = [window * batch / max(b[1] - a[1], 1e-9) for a, b in zip(clock.marks, clock.marks[1:])]
    return {"samples_per_s": statistics.median(wall[1:] or wall), "windows": wall,
            "images_per_cpu_s": statistics.median(cpu[1:] or cpu), "steps": total}


def student_task_factory(num_classes: int, source: Callable[[Any], Any] | None, teacher_dim: int
                         ) -> Callable[[Any], Any]:
    """Builds the job's StudentTask (backbone + Partial-FC head + mimic) for a config; ``source`` makes anchors."""

    def build(cfg: Any) -> Any:
        from facerco.distill.task import StudentTask
        from facerco.losses.partial_fc import build_head
        from facerco.route.plan import build_stage_plan
        from facerco.train.engine import seed_everything
        from facerco.train.job import build_backbone

        seed_everything(0)
        backbone = build_backbone(cfg)
        dim = int(backbone.meta.embedding_size)
        head = build_head(cfg, dim, num_classes)
        steps = 1 << 30  # one stage that never ends: the timing run stops at its own total
        plan = build_stage_plan(["final"], steps, steps)
        anchors = source(cfg) if source is not None else _NoAnchors()
        return StudentTask(backbone, head, plan, anchors, cfg, teacher_dim or dim, "final", 0)

    return build


class _NoAnchors:
    """Anchor source of the scratch run (never asked: mimic weight 0)."""

    def embeddings(self, anchor: str, images: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("scratch run asked for anchor targets")

    def classifier(self, anchor: str) -> None:
        return None


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every BatchNorm's running statistics to those of the batch ``x``; returns the model in eval mode.

    A randomly initialised deep network in eval mode (running mean 0, var 1) does not normalise at all: an iresnet50's
    embeddings reach ~1e26 and the mimic loss overflows. After one pass with the batch statistics the embeddings are
    O(1) and image-dependent, as a trained teacher's are (speed does not depend on the weights' values).
    """
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average: one pass gives exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def make_teacher(name: str, size: int, dataset: Dataset) -> torch.nn.Module:
    """A random-weight teacher with BatchNorm statistics taken from the first 32 images of ``dataset``."""
    from facerco.models import create_model

    torch.manual_seed(0)
    model = create_model(name, **({"input_size": size} if size != 112 else {}))
    batch = torch.stack([dataset[i][0] for i in range(min(32, len(dataset)))])
    return calibrate_bn(model, batch)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from facerco.distill.anchors import CachedAnchors, OnlineAnchors
    from facerco.route.cache_reader import AnchorCache
    from facerco.route.cache_writer import build_cache
    from facerco.utils.device import resolve_device

    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    size = args.image_size or (112 if cuda else 64)
    batch = args.batch or (128 if cuda else 16)
    window = args.window or (10 if cuda else 2)
    total = window * args.windows
    t0 = time.perf_counter()
    dataset = FaceArray(batch * total, size)
    gen_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="facerco_distill_tp_") as tmp:
        base = Path(tmp)

        def cfg_for(name: str, mimic: float, cache: str = "") -> Any:
            return make_config("student", args.student, base / name, size, batch, window, device, args.amp,
                               mimic, cache)

        res = timed_fit(student_task_factory(dataset.num_classes, None, 0), dataset, cfg_for("scratch", 0.0), total)
        rows.append({"mode": "scratch", "teacher": "", **res})
        teachers = {name: make_teacher(name, size, dataset).to(device) for name in args.teachers}
        for name, teacher in teachers.items():
            dim = int(teacher.meta.embedding_size)

            def online(cfg: Any, teacher: torch.nn.Module = teacher) -> Any:
                return OnlineAnchors(lambda _anchor: (teacher, None), cfg.train.device)

            res = timed_fit(student_task_factory(dataset.num_classes, online, dim), dataset,
                            cfg_for(f"online_{name}", 1.0), total)
            rows.append({"mode": f"online_{name}", "teacher": name, **res})
        first = args.teachers[0]
        cache_dir = base / "cache"
        c0 = time.perf_counter()
        build_cache(cache_dir, {"final": (lambda: teachers[first], "generated")}, dataset,
                    batch_size=batch, device=device, progress=False)
        cache_s = time.perf_counter() - c0
        dim = int(teachers[first].meta.embedding_size)

        def cached(cfg: Any) -> Any:
            cache = AnchorCache(cache_dir)
            cache.check_dataset(dataset)
            return CachedAnchors(cache, None, cfg.train.device)

        res = timed_fit(student_task_factory(dataset.num_classes, cached, dim), dataset,
                        cfg_for("cached", 1.0, str(cache_dir)), total)
        rows.append({"mode": "cached", "teacher": f"{first} (cache)", **res, "cache_build_s": cache_s})
    by_mode = {r["mode"]: r["samples_per_s"] for r in rows}
    by_cpu = {r["mode"]: r["images_per_cpu_s"] for r in rows}
    ratios = {"cached_vs_scratch": by_mode["cached"] / by_mode["scratch"]}
    ratios_cpu = {"cached_vs_scratch": by_cpu["cached"] / by_cpu["scratch"]}
    for name in args.teachers:
        ratios[f"cached_vs_online_{name}"] = by_mode["cached"] / by_mode[f"online_{name}"]
        ratios_cpu[f"cached_vs_online_{name}"] = by_cpu["cached"] / by_cpu[f"online_{name}"]
    return {
        "benchmark": "distill_throughput", "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "student": args.student, "teachers": list(args.teachers), "image_size": size, "batch": batch,
        "window_steps": window, "windows": args.windows, "amp": args.amp, "threads": torch.get_num_threads(),
        "generated_images": len(dataset), "generate_s": gen_s, "rows": rows, "ratios": ratios, "ratios_cpu": ratios_cpu,
        "goal": {"cached_vs_scratch": GOAL_CACHED_VS_SCRATCH,
                 "met": ratios["cached_vs_scratch"] >= GOAL_CACHED_VS_SCRATCH},
        "platform": platform.platform(), "torch": torch.__version__,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"distill throughput: student {result['student']} at {result['image_size']}x{result['image_size']}, "
             f"batch {result['batch']}, {result['device']} ({result['device_name']}), amp {result['amp']}, "
             f"{result['threads']} threads",
             f"{'mode':<20} {'samples/s':>10} {'img/CPU-s':>10} {'vs scratch':>10}"]
    scratch = next(r["samples_per_s"] for r in result["rows"] if r["mode"] == "scratch")
    for r in result["rows"]:
        lines.append(f"{r['mode']:<20} {r['samples_per_s']:10.1f} {r['images_per_cpu_s']:10.1f} "
                     f"{r['samples_per_s'] / scratch:10.2f}")
    for key, value in result["ratios"].items():
        goal = f"  (goal >= {GOAL_CACHED_VS_SCRATCH}: {'met' if value >= GOAL_CACHED_VS_SCRATCH else 'NOT met'})" \
            if key == "cached_vs_scratch" else ""
        lines.append(f"{key}: {value:.2f} wall, {result['ratios_cpu'][key]:.2f} per CPU-second{goal}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--student", default="mbf_0.8m")
    parser.add_argument("--teachers", nargs="+", default=["iresnet50", "iresnet100"])
    parser.add_argument("--image-size", type=int, default=0, help="0: 112 on CUDA, 64 on CPU (multiple of 16)")
    parser.add_argument("--batch", type=int, default=0, help="0: 128 on CUDA, 16 on CPU")
    parser.add_argument("--window", type=int, default=0, help="steps per timed window (0: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--windows", type=int, default=3, help="windows per mode; the first is warm-up")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="bench_out/distill_throughput.json")
    add_provenance_args(parser)
    args = parser.parse_args(argv)
    if args.windows < 2:
        parser.error("--windows must be >= 2 (the first window is warm-up)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from facerco.utils.io import write_json

    args = parse_args(argv)
    recorder = benchmark_recorder(__file__, argv, args)
    torch.set_num_threads(args.threads)
    result = run(args)
    print(format_table(result))
    write_json(args.out, {**result, "provenance": recorder.finish()})
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
