"""The one exception type of vt_drloc's configuration checks.

Every check that both faces (``DrLocModule``, ``DrLocCallback``, under ``pytorch_lightning`` and
``lightning``) make of their arguments, of the model they are given and of the grid they tap raises
:class:`DrLocConfigError` or a subclass of it, so one ``except DrLocConfigError`` catches them all.
It is a ``ValueError``: a wrong value was passed, and code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DrLocConfigError", "DrLocOptionError", "check_choice"]


class DrLocConfigError(ValueError):
    """A DRLoc option, backbone or tap that cannot work; the message names the value and the fix."""


class DrLocOptionError(DrLocConfigError, TypeError):
    """An unknown DRLoc option name, or one given twice (also a ``TypeError``, as for a wrong keyword)."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise :class:`DrLocConfigError` naming ``value`` and the valid ``choices`` unless it is one of them."""
    if value not in choices:
        raise DrLocConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
