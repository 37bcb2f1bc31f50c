"""Reconstructed provenance of the results committed before provenance was recorded (issue 22, item 1).

The JSON files under ``benchmarks/results/`` written before :mod:`_provenance` existed hold no commit, tree state or
start time. This script adds to each a ``"provenance"`` block marked ``"recorded": false, "reconstructed": true``
with what git history shows, and nothing else:

* ``added_by``: the commit that added the file (``git log --diff-filter=A``), and every later commit that changed it;
* the run's window: it ended before the adding commit (or before an earlier commit that already quotes its numbers,
  ``end_before``); it started at most ``seconds_total`` (when the JSON holds it) before that, and, assuming the run
  used the script as committed, no earlier than the last commit that changed the script before that latest start (an
  uncommitted edit cannot be ruled out, so this is an assumption, said so);
* ``library_commit_most_likely``: HEAD at the latest possible start (with a duration), else the last commit before
  the end (then only the latest of the candidates, said in ``basis``), with the other commits the window allows;
* ``changed_during_run``: commits touching ``facerco/``, ``benchmarks/`` or ``configs/`` that fall certainly inside
  the run (after the latest start and before the earliest end) or possibly (inside the widest window). Worker
  processes started after such a commit imported the changed code.

Times are committer dates. Whether the tree was dirty at the time cannot be known from git and is ``null``. Only
history up to ``RECORDING_STARTS`` (the commit that added :mod:`_provenance`) is read, so the commit that writes
these blocks does not count as a change of the results and a rerun gives the same blocks.

    python benchmarks/_reconstruct_provenance.py           # rewrite the blocks (idempotent)
    python benchmarks/_reconstruct_provenance.py --check   # exit 1 if a block differs from what git shows now
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
LIBRARY = ("facerco/", "configs/", "benchmarks/")  # benchmarks/: its scripts only (see _library)
RECORDING_STARTS = "ac984fd"
METHOD = ("git log --format='%H %ct %s' --name-only (committer times); git log --diff-filter=A -- FILE; "
          "window = [last commit of the script at or before the latest start, adding commit]")


@dataclass(frozen=True)
class Commit:
    sha: str
    time: int
    subject: str
    files: tuple[str, ...]

    def brief(self, files: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"commit": self.sha[:12], "time": _iso(self.time), "subject": self.subject[:140]}
        if files:
            out["library_files"] = [f for f in self.files if _library(f)]
        return out


# What only a reader of the history and the README can say, per file: the script that wrote it and the facts the
# numbers rest on. Everything else is computed from git.
FILES: dict[str, dict[str, Any]] = {
    "rco_lfw.json": {
        "script": "benchmarks/rco_lfw.py", "indent": 2,
        "note": "Pre-registered LFW study, written by rco_lfw.py in one call (command in the file). Its pilot and "
                "counted seeds ran in --jobs 2 worker processes started per seed group, so a commit inside the "
                "window reached the workers started after it. The teacher run (runs/teacher_lfw_study, ~25 min) "
                "was trained before this call and is not covered by this window.",
    },
    "rco_fmnist.json": {
        "script": "benchmarks/rco_fmnist.py", "indent": 2,
        "note": "Closed-set study, counted call (command in the file). benchmarks/README says 'library at commit "
                "e99b1fc, the runner as committed in a8fe594'; by the window, HEAD at the start was the commit "
                "below, and the library files that differ between e99b1fc and it are listed in "
                "library_files_differing_from_readme_commit. The teacher and the pilot seed's students were "
                "trained by earlier pilot calls into the same output folder (reused here, their code not "
                "recorded); the counted seeds ran in --jobs 2 workers started after the pilot gate.",
        "readme_commit": "e99b1fc",
    },
    "export_int8.json": {
        "script": "benchmarks/export.py", "indent": 2,
        "note": "export.py benchmark (command in the file); the JSON holds no duration, so the window is from the "
                "script's last commit before the adding commit to the adding commit. It calibrates with entropy on "
                "300 images (batches of 16, a short last batch), which per 8fabaf0's message failed before that "
                "commit, so the run most likely came after 8fabaf0 (06:06:40). The student it measured "
                "(/tmp/int8_lfw/student_mimic_final) was trained outside this window.",
    },
    "loader.json": {
        "script": "benchmarks/loader.py", "indent": 2, "end_before": "965aa94",
        "command": "nice -n 10 python benchmarks/loader.py --out benchmarks/results/loader.json (benchmarks/README)",
        "note": "loader.py benchmark (benchmarks/README: nice -n 10 python benchmarks/loader.py --out "
                "benchmarks/results/loader.json); no command or duration in the file. Its engine-loader rows need "
                "the script's commit below; its numbers (e.g. 3,142 / 2,516 img/s for the float loader with 1 "
                "worker) are already quoted in benchmarks/README by 965aa94, so the run ended before that commit, "
                "although the file was committed only later.",
    },
    "rco_fmnist_gate.json": {
        "script": "benchmarks/rco_fmnist.py", "indent": 1,
        "command": "python benchmarks/rco_fmnist.py --seeds 0 --out bench_out/fm_pilot_* with each attempt's settings "
                   "(16 calls; each attempt's 'out' and settings are in the file)",
        "note": "Not one run: a hand-assembled summary of the 16 pilot calls of the closed-set gate (each attempt "
                "names its output folder), added and extended by the commits listed, so no single library commit "
                "applies. Their times were not recorded; the window runs from the script's last commit before the "
                "file was added (the 55k/5k/10k protocol version) to the file's last change; the ResNet-teacher "
                "attempts need --teacher-kind, first committed in e99b1fc (08:01:23), if the committed script "
                "was used. The "
                "attempts record each teacher's test accuracy (teacher_test): test numbers were computed and "
                "visible during the pilot search (issue 22, item 2; pilots no longer compute them).",
        "whole_history": True,
    },
}


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def history() -> list[Commit]:
    """Every commit, oldest first, with the files it changed."""
    commits, current = [], None
    for line in _git("log", "--reverse", "--format=@@%H %ct %s", "--name-only").splitlines():
        if line.startswith("@@"):
            sha, t, subject = (line[2:].split(" ", 2) + [""])[:3]
            current = [sha, int(t), subject, []]
            commits.append(current)
        elif line.strip() and current is not None:
            current[3].append(line.strip())
    return [Commit(s, t, subj, tuple(f)) for s, t, subj, f in commits]


def _library(path: str) -> bool:
    """Code a run imports or reads: the package, configs and the benchmark scripts (not their READMEs/results)."""
    return path.startswith(LIBRARY) and (not path.startswith("benchmarks/") or path.endswith((".py", ".sh")))


def _find(commits: list[Commit], prefix: str) -> Commit:
    return next(c for c in commits if c.sha.startswith(prefix))


def touching(commits: list[Commit], path: str) -> list[Commit]:
    return [c for c in commits if path in c.files]


def _pinned_versions(sha: str) -> dict[str, str]:
    """The package pins of setup.cfg at ``sha`` (what a fresh install at that commit got), name -> version."""
    pins = {}
    for line in _git("show", f"{sha}:setup.cfg").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name and " " not in name:
            pins[name] = version
    return pins


def _threads(data: dict[str, Any]) -> int | None:
    """Torch threads per process as the file states them (a ``threads`` key, ``machine.threads_per_job`` or the
    command's ``--threads N``)."""
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    for value in (data.get("threads"), machine.get("threads_per_job")):
        if isinstance(value, int):
            return value
    words = str(data.get("command", "")).split()
    return int(words[words.index("--threads") + 1]) if "--threads" in words[:-1] else None


def _recovered(data: dict[str, Any], commit: Commit, basis: str, command: str | None) -> dict[str, Any]:
    """Commit, versions, CPU, threads and command as far as git and the file itself tell them."""
    machine = data.get("machine")
    return {"commit": commit.sha, "commit_basis": basis,
            "versions": {"pinned_at_commit": _pinned_versions(commit.sha),
                         "in_file": {k: data[k] for k in ("torch", "onnxruntime", "versions") if k in data}},
            "cpu": {"in_file": {k: v for k, v in (("machine", machine), ("cpu_flags", data.get("cpu_flags")))
                                if v is not None} or None,
                    "model": None, "note": "the CPU model was not recorded by the run"},
            "torch_threads": _threads(data), "torch_threads_note": None if _threads(data) else "not recorded",
            "command": data.get("command") or command}


def window_block(name: str, spec: dict[str, Any], data: dict[str, Any], commits: list[Commit]) -> dict[str, Any]:
    """The reconstructed block of one results file (see the module docstring for the rules)."""
    path = f"benchmarks/results/{name}"
    own = touching(commits, path)
    added, changed_later = own[0], own[1:]
    duration = data.get("seconds_total")
    series = bool(spec.get("whole_history"))
    end = _find(commits, spec["end_before"]) if spec.get("end_before") else own[-1] if series else added
    end_latest = end.time
    start_latest = end_latest - (duration or 0)
    script_commit = [c for c in touching(commits, spec["script"]) if c.time <= (added.time if series else start_latest)
                     ][-1]
    start_earliest = script_commit.time
    end_earliest = start_earliest + duration if duration else start_earliest
    head = [c for c in commits if (c.time <= start_latest if duration else c.time < end_latest)][-1]
    basis = ("several calls over the window: no single commit" if series else
             "HEAD at the latest possible start (seconds_total before the end)" if duration else
             "the last commit before the end; no duration recorded, so every candidate is possible")
    candidates = [c for c in commits if start_earliest <= c.time <= start_latest]
    lib = [c for c in commits if any(_library(f) for f in c.files) and c.sha not in (added.sha, end.sha)]
    certain = [c for c in lib if start_latest < c.time <= end_earliest] if duration else []
    possible = [c for c in lib if start_earliest < c.time <= end_latest and c not in certain]
    block: dict[str, Any] = {
        "recorded": False, "reconstructed": True, "dirty": None,
        **_recovered(data, end if series else head,
                     "the commit that last changed the file (several calls: no single library commit)" if series
                     else "library_commit_most_likely (see basis)", spec.get("command")),
        "added_by": added.brief(files=False), "changed_later_by": [c.brief(files=False) for c in changed_later],
        "script": spec["script"], "script_commit_assumed": script_commit.brief(files=False),
        "seconds_total": duration,
        "window": {"start_earliest": _iso(start_earliest), "start_latest": _iso(start_latest),
                   "end_earliest": _iso(end_earliest) if duration else None, "end_latest": _iso(end_latest),
                   "end_before": end.brief(files=False)},
        "library_commit_most_likely": None if series else head.brief(files=False), "basis": basis,
        "library_commit_candidates": [c.sha[:12] for c in candidates],
        "changed_during_run_certainly": [c.brief() for c in certain],
        "changed_during_run_possibly": [c.brief() for c in possible],
        "library_files_changed_during_run": sorted({f for c in certain + possible for f in c.files if _library(f)}),
        "note": spec["note"] + " Reconstructed from git history after the fact, never recorded by the run; the "
                "tree's uncommitted state at the time is unknown.",
        "method": METHOD,
    }
    if spec.get("readme_commit"):
        diff = _git("diff", "--name-only", spec["readme_commit"], head.sha, "--", "facerco").split()
        block["library_files_differing_from_readme_commit"] = {"readme_commit": spec["readme_commit"],
                                                               "versus": head.sha[:12], "count": len(diff),
                                                               "files": diff}
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a block would change")
    args = parser.parse_args(argv)
    commits = history()
    cutoff = _find(commits, RECORDING_STARTS).time
    commits = [c for c in commits if c.time <= cutoff]
    stale = []
    for name, spec in FILES.items():
        path = RESULTS / name
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("provenance", {}).get("recorded"):
            continue  # a recorded block is never replaced
        block = window_block(name, spec, {k: v for k, v in data.items() if k != "provenance"}, commits)
        if data.get("provenance") != block:
            stale.append(name)
            if not args.check:
                data["provenance"] = block
                path.write_text(json.dumps(data, indent=spec["indent"]) + "\n", encoding="utf-8")
    print(("differ: " if args.check else "rewritten: ") + (", ".join(stale) or "none"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
