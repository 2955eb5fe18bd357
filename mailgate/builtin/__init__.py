"""The files mailgate ships inside its package, found through `importlib.resources`.

Input: nothing but the installed package (trusted: written by us, installed by pip). Output:
the built-in templates directory (`templates/`: `<kind>.html` / `<kind>.txt` and their
`base` layouts), the default workflow (`automations.toml`, the rules used when no other
`[rules] file` is configured) and the text of the systemd units (`systemd/mailgate.service`,
`systemd/mailgate.socket`). The wheel carries them as package data (pyproject.toml), so they
are there whether mailgate runs from a checkout, an editable install or a plain `pip install`.

Paths are real files: an installed package is a directory on disk, and `importlib.resources`
hands its files out as they are; a package loaded from a zip archive gets them extracted to a
temporary directory for the life of the process (directories need Python 3.12 for that).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
from importlib import resources
from pathlib import Path

SYSTEMD_UNITS = ("mailgate.service", "mailgate.socket")

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def _path(*parts: str) -> Path:
    resource = resources.files(__name__).joinpath(*parts)
    if isinstance(resource, Path):
        return resource
    return _extracted.enter_context(resources.as_file(resource))


@functools.cache
def templates_dir() -> Path:
    """The directory of the built-in templates."""
    return _path("templates")


@functools.cache
def automations_file() -> Path:
    """The default workflow: `[[automations]]` entries in the format of a `[rules] file`."""
    return _path("automations.toml")


def systemd_unit(name: str) -> str:
    """The text of one of `SYSTEMD_UNITS`, as shipped (paths as the README installs them)."""
    if name not in SYSTEMD_UNITS:
        raise ValueError(f"no systemd unit {name!r} (there are {', '.join(SYSTEMD_UNITS)})")
    return resources.files(__name__).joinpath("systemd", name).read_text(encoding="utf-8")
