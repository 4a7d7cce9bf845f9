"""The CPU a run is on: what it is (for every speed figure), and one allocator setting that makes it faster.

    cpu_model()            # 'AMD EPYC 9R14 ...' from /proc/cpuinfo (platform.processor() elsewhere)
    cpu_capability()       # 'AVX2', 'AVX512', 'AVX512_BF16'-class ISA that ATen dispatches to
    matmul_gflops('fp32')  # a 1024^2 matmul probe: what this machine does right now, in GFLOP/s
    keep_freed_memory()    # glibc: reuse freed buffers instead of returning them to the kernel
"""
import ctypes
import ctypes.util
import os
import platform
import time

import torch

_MALLOC = {"done": False}
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>


def cpu_model():
    """The CPU's model name ('AMD EPYC 7B13', 'Intel(R) Xeon(R) Platinum 8481C', ...)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability():
    """The instruction set ATen's CPU kernels use ('AVX2', 'AVX512', ...); honours ATEN_CPU_CAPABILITY."""
    return torch.backends.cpu.get_cpu_capability()


def matmul_gflops(precision="fp32", size=1024, seconds=0.3):
    """GFLOP/s of size x size matmuls in fp32, bf16 or fp16 on the CPU, best of repeated timings."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    return 2 * size**3 / best / 1e9


def describe_cpu(precision="fp32"):
    """One line: model, ISA capability, threads and a matmul probe in the precision a run uses."""
    return (f"{cpu_model()}, ATen capability {cpu_capability()}, {torch.get_num_threads()} threads, "
            f"{precision} matmul probe {matmul_gflops(precision):.0f} GFLOP/s")


def keep_freed_memory():
    """Make glibc malloc keep freed memory for reuse (no mmap per large buffer, no trimming).

    Each training step allocates and frees hundreds of MB of activations and gradients. glibc serves
    buffers above 32 MB with fresh mmap()s and returns them on free, so every step page-faults them
    in again: 40-65 thousand faults per step of the demo, about 20% of its fp32 step time on 2 cores
    (GLIBC_TUNABLES=glibc.malloc.mmap_max=0 measured 1.78 -> 1.42 s per step). The resident size
    then stays at the step's peak instead of falling between steps. Returns True if applied (Linux
    with glibc); elsewhere, or when GLIBC_TUNABLES already sets malloc options, it does nothing.
    """
    if _MALLOC["done"]:
        return True
    if platform.system() != "Linux" or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _MALLOC["done"] = applied
    return applied
