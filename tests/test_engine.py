"""Engine: schedule known answers, deterministic sampler, resume equivalence, 2-rank gloo DDP == 1 rank."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from facerco.config import ScheduleConfig, config_from_dict
from facerco.route.plan import StagedSchedule, stages_from_lengths
from facerco.train.checkpoint import load_resume
from facerco.train.engine import Callback, Engine, seed_everything
from facerco.train.precision import resolve_precision
from facerco.train.sampler import GlobalBatchSampler
from facerco.train.schedule import MultiStageSchedule, WarmupDecaySchedule, build_schedule, stage_schedule_factory
from facerco.train.task import TrainTask

# ----------------------------------------------------------------------------------------------------------------
# schedules: values computed by hand


def test_linear_warmup_then_linear_decay_known_values():
    s = WarmupDecaySchedule(total_steps=10, warmup_steps=2, decay="linear")
    # warm-up (t+1)/2; then 1 - (t-2)/8
    assert [s.lr_factor(t) for t in range(10)] == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25,
                                                                0.125])
    assert s.lr_factor(10) == 0.0


def test_cosine_and_min_factor_known_values():
    s = WarmupDecaySchedule(total_steps=4, warmup_steps=0, decay="cosine", min_factor=0.2)
    # f = 0.2 + 0.8 * (1 + cos(pi t / 4)) / 2
    expect = [0.2 + 0.8 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert [s.lr_factor(t) for t in range(5)] == pytest.approx(expect)
    assert s.lr_factor(2) == pytest.approx(0.6)


def test_step_decay_and_build_from_config():
    cfg = ScheduleConfig(warmup_epochs=0.5, decay="step", milestones=[2.0, 3.0], gamma=0.1)
    s = build_schedule(cfg, steps_per_epoch=4, total_steps=16, base_lr=0.1)
    assert s.warmup_steps == 2 and s.milestones == (8, 12)
    assert [s.lr_factor(t) for t in (0, 1, 7, 8, 11, 12, 15)] == pytest.approx([0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_multistage_restarts_local_step():
    a = WarmupDecaySchedule(total_steps=4, decay="linear")
    b = WarmupDecaySchedule(total_steps=2, warmup_steps=1, decay="constant")
    plan = stages_from_lengths(["a", "b"], [4, 2], kind="multi_stage")
    m = MultiStageSchedule(plan, lambda n: {4: a, 2: b}.get(n, a))
    assert [m.lr_factor(t) for t in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 1.0, 1.0])
    assert m.stage_of(3) == 0 and m.stage_of(4) == 1


@pytest.mark.parametrize("decay", ["linear", "cosine", "step", "constant"])
def test_multistage_is_the_staged_schedule_and_each_stage_restarts_the_run_schedule(decay):
    """One staged schedule: a restarting stage reads the config's schedule built over its own length."""
    assert MultiStageSchedule is StagedSchedule
    cfg = ScheduleConfig(warmup_epochs=0.5, decay=decay, milestones=[2.0, 3.0] if decay == "step" else [], gamma=0.1)
    plan = stages_from_lengths(["a", "b", "c"], [7, 5, 4], kind="multi_stage")
    staged = StagedSchedule(plan, stage_schedule_factory(cfg, 2, plan.total_steps, 0.1))
    for st in plan.stages:
        own = build_schedule(replace(cfg, milestones=[m * st.length / 16 for m in cfg.milestones]), 2, st.length, 0.1)
        steps = range(st.length)
        assert [staged.lr_factor(st.start + k) for k in steps] == [own.lr_factor(k) for k in steps]


def test_schedule_errors_name_the_problem():
    with pytest.raises(ValueError, match="milestones"):
        build_schedule(ScheduleConfig(decay="step"), 4, 16, 0.1)
    with pytest.raises(ValueError, match="min_lr"):
        build_schedule(ScheduleConfig(min_lr=1.0), 4, 16, 0.1)
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------------
# sampler


def test_sampler_global_batches_match_across_world_sizes_and_resume():
    one = GlobalBatchSampler(50, 8, world_size=1, rank=0, seed=3, flip=True)
    two = [GlobalBatchSampler(50, 4, world_size=2, rank=r, seed=3, flip=True) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(1)
    b1 = list(one)
    b2 = [a + b for a, b in zip(*(list(s) for s in two), strict=True)]
    assert b1 == b2 and len(b1) == 50 // 8
    flat = [i for batch in b1 for i, _ in batch]
    assert len(set(flat)) == len(flat)  # a permutation prefix, no repeats
    one.set_epoch(1, start_batch=2)
    assert list(one) == b1[2:]
    one.set_epoch(2)
    assert list(one) != b1  # another epoch, another order
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, 4, world_size=2, rank=0)


# ----------------------------------------------------------------------------------------------------------------
# a tiny task (no batch-statistics layers, so per-rank and global batches give the same math)


class TinyTask(TrainTask):
    rank_local_prefixes = ()

    def __init__(self, classes: int = 5, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.PReLU(), nn.Dropout(dropout),
                                      nn.Linear(16, 8))
        self.head = nn.Linear(8, classes, bias=False)

    def training_step(self, images, labels, step, **kwargs):
        logits = self.head(self.backbone(images))
        return {"loss": nn.functional.cross_entropy(logits, labels), "acc": (logits.argmax(1) == labels).float().mean()}


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, classes: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _cfg(out: Path, **train):
    base = {"output": str(out), "epochs": 3, "batch_size": 8, "log_every": 1, "tensorboard": False,
            "progress": False, "checkpoint_every_steps": 2, "grad_clip": 1.0}
    base.update(train)
    return config_from_dict({"train": base, "data": {"num_workers": 0, "flip": True},
                             "schedule": {"warmup_epochs": 0.5, "decay": "cosine"}, "optim": {"lr": 0.1}})


class LossTrace(Callback):
    name = "trace"

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, engine, step, parts):
        self.losses.append(parts["loss"])


def _fit(out: Path, **train):
    seed_everything(0)
    task = TinyTask()
    trace = LossTrace()
    result = Engine(task, TinyData(), _cfg(out, **train), callbacks=[trace]).fit()
    return task, trace.losses, result


def test_engine_trains_logs_and_checkpoints(tmp_path):
    task, losses, result = _fit(tmp_path / "run")
    assert result.step == result.total_steps == 18 and result.steps_per_epoch == 6
    assert losses[-1] < losses[0]
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 18
    payload = load_resume(tmp_path / "run" / "last.pt")
    assert payload["step"] == 18 and payload["meta"]["global_batch"] == 8


def test_resume_mid_epoch_is_bitwise_identical(tmp_path):
    full, losses_full, _ = _fit(tmp_path / "full")
    # stop after 7 steps (mid-epoch 2, checkpoint at step 7 via stop), then resume to the end in a fresh engine
    _fit(tmp_path / "cut", max_steps=7)
    assert load_resume(tmp_path / "cut" / "last.pt")["step"] == 7
    resumed, losses_resumed, result = _fit(tmp_path / "cut")
    assert result.resumed_from == 7
    assert losses_resumed == losses_full[7:]  # exact floats: same data order, flips, dropout RNG
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert sum('"event": "train"' in line for line in lines) == 18


def test_resume_refuses_changed_batch(tmp_path):
    _fit(tmp_path / "r", max_steps=2)
    with pytest.raises(ValueError, match="global_batch"):
        _fit(tmp_path / "r", batch_size=4)


def test_bf16_autocast_on_cpu_runs(tmp_path):
    _, losses, _ = _fit(tmp_path / "bf16", amp="bf16", epochs=1)
    assert all(math.isfinite(v) for v in losses)


# ----------------------------------------------------------------------------------------------------------------
# DDP: 2 gloo ranks with batch 4 == 1 rank with batch 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from facerco.train import distributed as fdist

    info = fdist.init_distributed(torch.device("cpu"))
    seed_everything(0)
    task = TinyTask(dropout=0.0)  # dropout masks are drawn per rank, so they cannot match one process
    trace = LossTrace()
    cfg = _cfg(Path(out), batch_size=8 // world, checkpoint_every_steps=0)
    Engine(task, TinyData(), cfg, callbacks=[trace], dist_info=info).fit()
    if rank == 0:
        torch.save({"state": task.state_dict(), "losses": torch.tensor(trace.losses)}, Path(out) / "final.pt")
    fdist.cleanup()


@pytest.mark.distributed
def test_ddp_two_gloo_ranks_match_one_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    saved = dict(os.environ)
    try:
        _ddp_worker(0, 1, _free_port(), str(tmp_path / "single"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    a = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "final.pt", weights_only=True)
    # Tolerance: the global-batch mean is summed in a different order (two half-batch means averaged by
    # all-reduce vs one mean), so float32 rounding differs; 18 SGD steps keep it below 1e-5.
    torch.testing.assert_close(a["losses"], b["losses"], rtol=1e-5, atol=1e-6)
    for name in b["state"]:
        torch.testing.assert_close(a["state"][name], b["state"][name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_config_must_match_run_config(tmp_path):
    from facerco.config import dump_config
    from facerco.train.job import check_resume_config

    cfg = _cfg(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    check_resume_config(tmp_path, cfg)  # nothing to resume yet: no last.pt
    (tmp_path / "last.pt").write_bytes(b"")
    check_resume_config(tmp_path, _cfg(tmp_path, progress=True, max_steps=3))  # free keys
    changed = _cfg(tmp_path)
    changed.optim.lr = 0.2
    with pytest.raises(ValueError, match=r"optim.lr: 0.1 -> 0.2"):
        check_resume_config(tmp_path, changed)
