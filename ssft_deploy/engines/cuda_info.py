"""The CUDA driver, asked directly (ctypes on libcuda): device count, a device's name, the
driver version. No CUDA Python package is imported; every answer is empty where no driver is."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _driver():
    """The initialised driver library, or None."""
    lib = ctypes.util.find_library("cuda")
    for name in filter(None, (lib, "libcuda.so.1", "nvcuda.dll")):
        try:
            cuda = ctypes.CDLL(name)
        except OSError:
            continue
        return cuda if cuda.cuInit(0) == 0 else None
    return None


def device_count() -> int:
    """GPUs the CUDA driver sees (0 where no driver)."""
    cuda, count = _driver(), ctypes.c_int(0)
    if cuda is None or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def device_info(device_id: int) -> dict[str, str] | None:
    """``{"name", "driver"}`` of CUDA device ``device_id``; None without a driver or device."""
    cuda = _driver()
    if cuda is None or not 0 <= device_id < device_count():
        return None
    dev, version, name = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(256)
    if (cuda.cuDeviceGet(ctypes.byref(dev), int(device_id)) != 0
            or cuda.cuDeviceGetName(name, 256, dev) != 0
            or cuda.cuDriverGetVersion(ctypes.byref(version)) != 0):
        return None
    return {"name": name.value.decode("utf-8", "replace"), "driver": str(version.value)}
