"""On/off settings as ``monai.bundle``'s command line passes them."""

from __future__ import annotations

__all__ = ["is_on"]


def is_on(value: bool | int | str | None) -> bool:
    """Whether a config switch is on. ``monai.bundle run ... --resume true`` passes the string ``"true"`` (and
    ``--resume false`` the string ``"false"``, which Python would take as true): ``True``, ``1``, ``"true"`` and
    ``"1"`` (any case) are on, everything else is off."""
    return str(value).strip().lower() in ("true", "1")
