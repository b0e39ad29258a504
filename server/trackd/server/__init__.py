"""trackd's server: `trackd serve` (see trackd.server.__main__)."""

import runpy
from importlib.util import find_spec
from pathlib import Path


def _version() -> str:
    """The version written once, in trackd/client/_version.py, read from the file so that
    the server does not import the client package."""
    spec = find_spec("trackd.client")
    assert spec is not None and spec.submodule_search_locations is not None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "_version.py"
        if path.is_file():
            return str(runpy.run_path(str(path))["__version__"])
    raise ImportError("trackd/client/_version.py is missing")


__version__ = _version()
