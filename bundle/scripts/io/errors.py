"""What can go wrong with one input of a batch run, and how it is told: the exception types the readers raise and
:func:`describe_error`, which turns any exception into the words of a report row.

* :class:`InputError`: a problem of one file (corrupt header, undecodable pixels, ...), its message already in words
  for the report; the file's row becomes ``failed``.
* :class:`ImageTooLarge`: an image, or a header or codestream claiming one, above the pixel limit; refused before
  anything of its size is allocated.
* :class:`NotARadiograph`: a readable image that is not something to segment (blank, no finite pixel values); the
  file's row becomes ``skipped`` with the reason.

And what stops a whole run: :class:`RunFault` (a batch run's output folder, the weights of any run that loads them).
"""

from __future__ import annotations

import os

__all__ = [
    "InputError",
    "ImageTooLarge",
    "NotARadiograph",
    "RunFault",
    "describe_error",
    "first_line",
    "is_input_failure",
]


class InputError(ValueError):
    """A problem of one input file, in words for the run report (no exception type needed in front of it).

    Args:
        message: what is wrong, for a person.
        step: the step of the pipeline that found it, as the report names it (``"reading the header"``); ``""``
            when the message says it all; ``None`` to let the caller name the step.
    """

    def __init__(self, message: str = "", step: str | None = None) -> None:
        super().__init__(message, step)  # both in args: the exception pickles (DataLoader workers) with its step

    @property
    def step(self) -> str | None:
        return self.args[1] if len(self.args) > 1 else None

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImageTooLarge(InputError):
    """An image (or a header claiming one) above the pixel limit: refused before anything of its size is allocated."""


class NotARadiograph(InputError):
    """A readable image with nothing to segment (e.g. every pixel the same value): skipped, not failed."""


def is_input_failure(exc: BaseException) -> bool:
    """Whether an exception caught while processing one input is that input's failure (anything but an interrupt or
    an exit). Not only ``Exception``s: a decoder written in Rust panics with ``pyo3_runtime.PanicException``, a
    ``BaseException`` (pylibjpeg-rle does, on a corrupt RLE segment), which must fail the file, not end the run."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (pydicom lists each decoder's failure on a line of its own), at most
    ``limit`` characters (decoders can be verbose)."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """The words for a report row: the message of the error behind ``exc``.

    MONAI's ``apply_transform`` wraps a transform's error in ``RuntimeError("applying transform ...")``, which only
    names the transform, so those wrappers are skipped. :class:`InputError` messages are given as they are; other
    exceptions (a library's own) keep their type in front (``"KeyError: ..."``), which is often all they say. A
    leading ``"<path>: "`` is dropped (the report row already names the file).
    """
    while exc.__cause__ is not None and str(exc).startswith("applying transform"):
        exc = exc.__cause__
    text = first_line(exc)
    if path is not None:
        for prefix in (os.fspath(path), os.path.abspath(os.fspath(path))):
            if text.startswith(prefix + ": "):
                text = text[len(prefix) + 2 :]
    if isinstance(exc, InputError):
        return text or "unreadable input"
    return f"{type(exc).__name__}: {text}".rstrip(": ")


class RunFault(SystemExit):
    """A fault of the run, not of one input (the output folder is not writable, the disk is full, the weights do not
    fit the network): it ends the run with exit status 1 and a message that says what to do, without a traceback.

    A ``SystemExit``, so that ignite's engine and ``monai.bundle`` let it through (they catch ``Exception``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"Run stopped: {message}")
        self.message = message

    def __reduce__(self):  # raised in a worker process, it comes back with its own message
        return type(self), (self.message,)
