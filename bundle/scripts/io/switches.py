"""On/off switches as users type them: ``monai.bundle run ... --write_seg false`` passes the string ``"false"``
(Python's ``fire`` turns only ``False`` into a bool), which Python would take as true; ``--write_seg 0`` arrives as
the integer 0. :func:`is_on` is the one reader of every on/off option of every config (re-exported by
:mod:`scripts.settings`); it lives here, at the bottom of the package, so that the readers can take a switch too.
"""

from __future__ import annotations

__all__ = ["is_on", "ON_WORDS", "OFF_WORDS"]

ON_WORDS = ("true", "yes", "on", "1")
OFF_WORDS = ("false", "no", "off", "0")


def is_on(value: bool | int | str | None) -> bool:
    """Whether a switch is on: ``True``/``False``, ``1``/``0``, or one of the words ``true/false``, ``yes/no``,
    ``on/off``, ``1/0`` in any case (surrounding spaces ignored).

    Raises:
        ValueError: anything else (a typo such as ``"flase"`` must not silently mean off), naming the accepted words.
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    raise ValueError(
        f"{value!r} is not an on/off value: use one of {', '.join(ON_WORDS)} (on) or {', '.join(OFF_WORDS)} (off), "
        "in any case"
    )
