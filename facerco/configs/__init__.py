"""Configs that facerco's own commands read at run time, shipped inside the package.

The repository's top-level ``configs/`` folder holds the user-facing examples (teacher and student recipes) and is
not installed. What a command reads by default lives here instead, as package data found through
:mod:`importlib.resources`, so a wheel install works from any directory: today that is ``demo/`` (the teacher and
student configs of ``facerco demo``, which the demo completes with its data paths and scale at run time).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["config_path"]


def config_path(*parts: str) -> Path:
    """File-system path of a packaged config, e.g. ``config_path("demo", "teacher.yaml")``.

    A real path, not a resource handle: ``load_config`` resolves ``_base_`` relative to the file's folder.
    """
    root = files(__name__)
    resource = root.joinpath(*parts)
    name = "/".join(parts)
    if not resource.is_file():
        raise FileNotFoundError(f"{root}/{name}: config not shipped with facerco (is the package data installed?)")
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{resource}: facerco is imported from an archive; install it as files "
                                "(pip install facerco) to read its packaged configs")
    return path
