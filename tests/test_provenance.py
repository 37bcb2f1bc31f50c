"""benchmarks/_provenance.py (issue 22, item 1): what a results JSON records, and the dirty-tree refusal."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _provenance  # noqa: E402

KEYS = {"recorded", "commit", "dirty", "dirty_files", "allow_dirty", "counted", "versions", "cpu", "torch_threads",
        "command", "argv", "started", "ended", "seconds"}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture()
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-commit git checkout that the recorder takes for its own."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(root, "init", "-q")
    (root / "a.py").write_text("x = 1\n")
    _git(root, "add", "a.py")
    _git(root, "commit", "-q", "-m", "one")
    monkeypatch.setattr(_provenance, "REPO", root)
    return root


def test_clean_tree_records_commit_and_every_key(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench.py", "--out", "a b.json"])
    block = _provenance.Recorder(threads=3).finish(note="x")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert set(block) >= KEYS
    assert block["recorded"] is True and block["counted"] is True and block["allow_dirty"] is False
    assert block["commit"] == head.strip() and block["dirty"] is False and block["dirty_files"] == []
    assert block["argv"] == ["bench.py", "--out", "a b.json"] and block["command"] == "bench.py --out 'a b.json'"
    assert block["torch_threads"] == 3 and block["note"] == "x" and block["seconds"] >= 0
    assert {"facerco", "torch", "numpy", "onnxruntime", "faiss", "dlib", "python"} <= set(block["versions"])
    assert {"model", "flags", "logical_cpus"} <= set(block["cpu"])
    if block["cpu"]["flags"] is not None:
        assert {"avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"} <= set(block["cpu"]["flags"])
    json.dumps(block)  # JSON-ready


def test_counted_run_refuses_a_dirty_tree_in_one_line(repo: Path) -> None:
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("")
    with pytest.raises(SystemExit) as err:
        _provenance.Recorder()
    message = str(err.value)
    assert "\n" not in message and "dirty tree (2 changed files: " in message and "a.py" in message
    assert "--allow-dirty" in message


def test_dirty_tree_is_recorded_when_allowed_or_not_counted(repo: Path) -> None:
    (repo / "a.py").write_text("x = 2\n")
    allowed = _provenance.Recorder(allow_dirty=True).finish()
    assert allowed["dirty"] is True and allowed["allow_dirty"] is True and allowed["dirty_files"] == ["a.py"]
    pilot = _provenance.Recorder(counted=False).finish()
    assert pilot["dirty"] is True and pilot["counted"] is False and pilot["allow_dirty"] is False


def test_dirty_list_is_capped(repo: Path) -> None:
    for k in range(_provenance.DIRTY_LIST_CAP + 5):
        (repo / f"f{k}.txt").write_text("")
    state = _provenance.git_state()
    assert state["dirty_count"] == _provenance.DIRTY_LIST_CAP + 5
    assert len(state["dirty_files"]) == _provenance.DIRTY_LIST_CAP


def test_outside_a_checkout_commit_and_dirty_are_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "plain").mkdir()
    monkeypatch.setattr(_provenance, "REPO", tmp_path / "plain")
    block = _provenance.Recorder().finish()  # counted, but nothing to refuse
    assert block["commit"] is None and block["dirty"] is None and block["dirty_files"] is None


def test_allow_dirty_flag() -> None:
    parser = argparse.ArgumentParser()
    _provenance.add_provenance_args(parser)
    assert parser.parse_args([]).allow_dirty is False
    assert parser.parse_args(["--allow-dirty"]).allow_dirty is True


def test_a_tree_changed_during_the_run_shows(repo: Path) -> None:
    recorder = _provenance.Recorder(counted=False)
    assert recorder.finish()["tree_changed"] is False
    (repo / "a.py").write_text("x = 3\n")
    block = recorder.finish()
    assert block["tree_changed"] is True and block["dirty"] is False and block["at_end"]["dirty_files"] == ["a.py"]
    again = _provenance.Recorder(counted=False)
    (repo / "a.py").write_text("x = 4\n")  # same path still dirty, other content: the diff hash differs
    assert again.finish()["tree_changed"] is True


def test_command_line_and_counted_output(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "loader.py"
    assert _provenance.command_line(script, ["--out", "x"]) == ["benchmarks/loader.py", "--out", "x"]
    assert _provenance.command_line(script, None) == sys.argv
    assert _provenance.counted_output(ROOT / "benchmarks" / "results" / "loader.json")
    assert not _provenance.counted_output(tmp_path / "loader.json")
    assert not _provenance.counted_output("bench_out/loader.json")


def test_a_benchmark_writing_a_counted_result_refuses_a_dirty_tree(repo: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """models_complexity.py as the example of every benchmark: --out under the results folder is counted."""
    import models_complexity

    results = tmp_path / "results"
    monkeypatch.setattr(_provenance, "RESULTS", results)
    (repo / "a.py").write_text("x = 2\n")
    argv = ["--models", "iresnet_tiny", "--no-latency", "--out", str(results / "c.json")]
    with pytest.raises(SystemExit, match="refusing to write a counted result from a dirty tree"):
        models_complexity.main(argv)
    assert not (results / "c.json").exists()
    assert models_complexity.main([*argv, "--allow-dirty"]) == 0
    block = json.loads((results / "c.json").read_text())["provenance"]
    assert block["counted"] and block["allow_dirty"] and block["dirty_files"] == ["a.py"]
    assert block["argv"][0].endswith("benchmarks/models_complexity.py") and block["argv"][1:] == [*argv,
                                                                                                   "--allow-dirty"]
    assert models_complexity.main(["--models", "iresnet_tiny", "--no-latency", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["provenance"]["counted"] is False  # not under results/


def test_every_committed_result_carries_provenance_never_presented_as_recorded_when_reconstructed() -> None:
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert results
    for path in results:
        block = json.loads(path.read_text())["provenance"]
        # a reconstructed block names the commit git history points to, always with how it was inferred
        assert block["recorded"] is True or (block["recorded"] is False and block["reconstructed"] is True
                                             and block["commit"] and block["commit_basis"] and block["note"]), path.name


def test_reconstructed_blocks_are_what_git_history_shows() -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"], capture_output=True,
                      text=True).stdout.strip() != "false":
        pytest.skip("needs the full git history of a checkout")
    import _reconstruct_provenance

    assert _reconstruct_provenance.main(["--check"]) == 0
