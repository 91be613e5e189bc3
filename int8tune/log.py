"""The library's one named logger. Only the CLI prints; the library logs."""

import logging

logger = logging.getLogger("int8tune")

_warned: set[str] = set()


def warn_once(message: str, *args) -> None:
    """A warning about a file's content that every write of the same table would repeat (start/, tuned/ and
    calibration/ each write one): logged the first time its text appears in this process."""
    text = message % args if args else message
    if text not in _warned:
        _warned.add(text)
        logger.warning("%s", text)
