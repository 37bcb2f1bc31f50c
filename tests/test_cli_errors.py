"""`facerco` commands and data_prep scripts fail with one line on stderr; `--debug` shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facerco.cli import error_line, run_guarded

ROOT = Path(__file__).resolve().parents[1]


def _inputs(tmp: Path) -> dict[str, list[str]]:
    """Each case: a command line that fails on bad input (files made here), without its --debug flag."""
    (tmp / "faces" / "a").mkdir(parents=True)
    (tmp / "faces" / "a" / "1.jpg").write_bytes(b"x")
    (tmp / "plain_file").write_text("not a folder\n")
    (tmp / "bad.yaml").write_text("train: [1, 2\n  x: }\n")  # the YAML parser's message spans several lines
    return {
        "pack_out_under_a_file": ["-m", "facerco", "pack", str(tmp / "faces"), str(tmp / "plain_file" / "out")],
        "config_bad_yaml": ["-m", "facerco", "config", "show", str(tmp / "bad.yaml")],
        "msceleb_missing_tsv": [str(ROOT / "data_prep" / "msceleb_tsv.py"), str(tmp / "no.tsv"), str(tmp / "o")],
        "rec_realign_not_a_dataset": [
            str(ROOT / "data_prep" / "rec_realign.py"),
            str(tmp / "faces"),
            str(tmp / "o"),
            "--detector",
            "landmarks",
            "--landmarks",
            str(tmp / "plain_file"),
        ],
    }


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("case", ["pack_out_under_a_file", "config_bad_yaml", "msceleb_missing_tsv",
                                  "rec_realign_not_a_dataset"])
def test_bad_input_gives_one_line_error_and_debug_gives_traceback(tmp_path, case):
    args = _inputs(tmp_path)[case]
    proc = _run(args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ": error: " in lines[0] and str(tmp_path) in lines[0]  # names the file it is about
    debug = _run([*args, "--debug"])
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def test_debug_before_the_command_name(tmp_path):
    args = _inputs(tmp_path)["pack_out_under_a_file"]
    proc = _run([*args[:2], "--debug", *args[2:]])
    assert "Traceback (most recent call last)" in proc.stderr


def test_error_line_names_unexpected_types_and_joins_lines(capsys):
    assert error_line(ValueError("a.tsv: line 3:\n  bad")) == "a.tsv: line 3: bad"
    assert error_line(NotADirectoryError(20, "Not a directory", "x/out")) == "x/out: Not a directory"
    assert error_line(KeyError("loss")).startswith("KeyError: 'loss' (rerun with --debug")

    def boom() -> int:
        raise TypeError("unexpected")

    assert run_guarded("prog", boom) == 1
    assert capsys.readouterr().err == "prog: error: TypeError: unexpected (rerun with --debug for the traceback)\n"
    with pytest.raises(TypeError):
        run_guarded("prog", boom, debug=True)


def test_building_the_parser_does_not_import_torch() -> None:
    """`facerco --help` and every command's parsing stay fast: torch (2 s to import) loads only when a command runs."""
    import subprocess
    import sys

    code = "import sys; from facerco.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
