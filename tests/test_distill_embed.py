"""The one batch-embedding path (facerco.eval.features.embed_batch) and the distillation probes built on it."""

from __future__ import annotations

import torch
from torch import nn

from facerco.distill.probe import PROBE_CHUNK, ProbeContext, probe_output, student_probe_fn
from facerco.eval.features import embed_batch
from facerco.route.anchors import ProbeOutput


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _images(n: int = 7) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_embed_batch_is_the_eval_forward_and_restores_the_mode():
    model, x = _model(), _images()
    model.train()
    stats = model[1].running_mean.clone()
    out = embed_batch(model, x)
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is back
    assert torch.equal(model[1].running_mean, stats)  # eval forward: batch-norm statistics untouched
    assert out.dtype == torch.float32 and not out.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.equal(out, model(x))
        assert torch.equal(embed_batch(model, x, flip=True), model(torch.flip(x, dims=[-1])))
    assert not model.training  # an eval-mode model stays in eval mode
    # chunks of 3 equal three forwards of 3 images; against one forward of 7 only the last bits may move (CPU gemm
    # blocking), which is why every caller keeps its own chunk size
    with torch.no_grad():
        assert torch.equal(embed_batch(model, x, chunk_size=3), torch.cat([model(c) for c in x.split(3)]))
    torch.testing.assert_close(embed_batch(model, x, chunk_size=3), out, rtol=1e-5, atol=1e-6)


def test_embed_batch_keeps_an_eval_model_in_eval_mode_and_runs_on_its_device():
    model = _model().eval()
    out = embed_batch(model, _images(), device=None)
    assert out.device == next(model.parameters()).device and not model.training


def test_probes_embed_in_eval_mode_without_touching_the_student():
    student, x = _model(2), _images(PROBE_CHUNK + 3)  # more than one chunk
    student.train()
    stats = student[1].running_mean.clone()
    ctx = ProbeContext(x, lambda name: (student, None), student, 16.0, torch.device("cpu"))
    online = student_probe_fn(student, None, ctx, use_logits=False)()
    planned = probe_output(student, None, ctx)
    assert student.training and torch.equal(student[1].running_mean, stats)
    student.eval()
    with torch.no_grad():
        chunked = torch.cat([student(c) for c in x.split(PROBE_CHUNK)])
    want = ProbeOutput.from_arrays(chunked.double().numpy()).embeddings
    assert (online.embeddings == want).all() and (planned.embeddings == want).all()
