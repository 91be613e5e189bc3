"""Which int8 arithmetic this host's onnxruntime runs: exact, or pairs of products saturating in int16.

onnxruntime (MLAS) picks its int8 GEMM/convolution kernels from the CPU's features at start-up:

- x86-64 with AVX-512 VNNI, AVX-VNNI or AMX-INT8: u8 x s8 products are summed four at a time straight into
  int32 (vpdpbusd, AMX tiles). Exact.
- x86-64 with AVX2 (or AVX-512BW) but none of those: u8 x s8 products are summed by pairs into a *saturating*
  int16 (vpmaddubsw) before the exact int32 sum. A pair a[k]*w[k] + a[k+1]*w[k+1] beyond [-32768, 32767] is
  clipped, so large same-sign weights times large activations come out wrong (see quant/saturation.py).
- ARM (NEON, dot-product, i8mm kernels): exact.
- Anything else (x86 without AVX2, whose SSE kernels widen to 16 bits; other architectures; an x86 host whose
  /proc/cpuinfo cannot be read): OTHER, not known to saturate.

The answer is read from /proc/cpuinfo and platform.machine(), never by running onnxruntime. The environment
variable INT8TUNE_INT8_PATH (one of "vnni", "avx2", "arm", "other") overrides it: tests use it, and so must a
run under user-mode emulation (qemu-x86_64 -cpu Haswell), where /proc/cpuinfo still shows the real host's flags
while onnxruntime sees the emulated CPU through CPUID.
"""

from __future__ import annotations

import os
import platform
from enum import Enum
from functools import lru_cache

from .errors import ConfigError

ENV_OVERRIDE = "INT8TUNE_INT8_PATH"
CPUINFO = "/proc/cpuinfo"

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = {"x86_64", "amd64", "i386", "i486", "i586", "i686", "x86"}


class Int8Path(str, Enum):
    """The int8 kernel family onnxruntime's CPU provider uses on this host."""

    VNNI = "vnni"  # x86 with avx512_vnni, avx_vnni or amx_int8: int32 sums, exact
    AVX2 = "avx2"  # x86 with AVX2 (or AVX-512BW) and no VNNI: pairs saturate in int16
    ARM = "arm"  # exact
    OTHER = "other"  # not known to saturate (x86 without AVX2, unknown architecture or flags)

    @property
    def exact(self) -> bool:
        """True unless pairs of u8 x s8 products may saturate."""
        return self is not Int8Path.AVX2


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", empty) when unreadable."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


@lru_cache(maxsize=1)
def _detected() -> Int8Path:
    machine = platform.machine().lower()
    if machine in _X86:
        _, flags = _cpuinfo()
        if flags & VNNI_FLAGS:
            return Int8Path.VNNI
        if "avx2" in flags:
            return Int8Path.AVX2
        return Int8Path.OTHER
    if machine.startswith(("aarch64", "arm")):
        return Int8Path.ARM
    return Int8Path.OTHER


def _override() -> Int8Path | None:
    value = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if not value:
        return None
    try:
        return Int8Path(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Int8Path)
        raise ConfigError(f"{ENV_OVERRIDE}={value!r}: expected one of {allowed}") from None


def host_int8_path() -> Int8Path:
    """The int8 path of this host: INT8TUNE_INT8_PATH if set (read on every call), else the cached detection."""
    override = _override()
    return _detected() if override is None else override


_DESCRIPTIONS = {
    Int8Path.VNNI: "onnxruntime's int8 kernels sum in int32, exact",
    Int8Path.AVX2: "onnxruntime's U8S8 kernels add pairs of products in a saturating int16",
    Int8Path.ARM: "onnxruntime's int8 kernels sum in int32, exact",
    Int8Path.OTHER: "onnxruntime's int8 kernels are not known to saturate here",
}


def describe_host() -> str:
    """One line for logs and reports: CPU model, the instruction family that decides, and what it means."""
    path = host_int8_path()
    if _override() is not None:  # /proc/cpuinfo describes the real host, not the one the override stands for
        isa = {Int8Path.VNNI: "x86-64 with VNNI", Int8Path.AVX2: "x86-64 AVX2 without VNNI",
               Int8Path.ARM: "ARM", Int8Path.OTHER: "unclassified CPU"}[path]
        return f"{isa} (set by {ENV_OVERRIDE}={path.value}): {_DESCRIPTIONS[path]}"
    model, flags = _cpuinfo()
    machine = platform.machine() or "unknown machine"
    if path is Int8Path.VNNI:
        have = [name for name, flag in (("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"),
                                        ("AMX-INT8", "amx_int8")) if flag in flags]
        isa = "x86-64 with " + " and ".join(have)
    elif path is Int8Path.AVX2:
        isa = "x86-64 " + ("AVX-512" if "avx512bw" in flags else "AVX2") + " without VNNI"
    elif path is Int8Path.OTHER and machine.lower() in _X86:
        isa = "x86-64 without AVX2" if flags else f"x86-64 without a readable {CPUINFO}"
    else:
        isa = machine
    name = f"{model}, " if model else ""
    return f"{name}{isa}: {_DESCRIPTIONS[path]}"
