"""The library's one named logger. Only the CLI prints; the library logs."""

import logging

logger = logging.getLogger("int8tune")
