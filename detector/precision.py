"""Numeric precision of training and evaluation (`train.amp`): auto | bf16 | fp16 | off.

    precision = choose_precision(cfg.train.amp, device)    # Precision('fp32', 'CPU without native bfloat16 ...')
    with precision.autocast(device):
        outputs = model(images)
    scaler = precision.grad_scaler(device)                  # active only for fp16

auto picks, on CUDA, bfloat16 where the GPU computes it natively (Ampere and later), else float16 with a
GradScaler (V100, T4); on a CPU, bfloat16 only where the CPU has it natively (AVX512-BF16 or AMX, as
oneDNN reports), else float32: bf16 autocast on a CPU without it runs hundreds of times slower than fp32
(a 2048^2 matmul: 0.3 GFLOP/s against 111 on a 2-core AVX2 EPYC). An explicit bf16 or fp16 is obeyed
with a one-line warning when the hardware lacks it. The choice is the run's, not the checkpoint's:
weights are float32 in every mode, so a checkpoint trained in bf16 evaluates in fp32 and back.
"""
import dataclasses
import logging

import torch

logger = logging.getLogger("focaldet")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str        # 'bf16' | 'fp16' | 'fp32'
    reason: str      # why it was chosen, for the log and <work_dir>/run_info.json

    def autocast(self, device):
        """Context manager: autocast to bf16 / fp16, or a no-op for fp32."""
        dtype = DTYPES[self.name]
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def grad_scaler(self, device):
        """torch.amp.GradScaler that scales only in fp16 (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(device.type, enabled=self.name == "fp16")


def cpu_native_bf16():
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX) and oneDNN may use it.

    oneDNN's own answer is not enough: it says yes on every AVX-512 CPU (Skylake to Ice Lake Xeons emulate
    bf16 and run it slower than fp32), so the instruction sets are asked as well; oneDNN's answer adds
    ONEDNN_MAX_CPU_ISA (=AVX2 turns it off, which is how an AVX2-only CPU is emulated).
    """
    has_instructions = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(has_instructions and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_native_fp16():
    """True where oneDNN runs fp16 natively on this CPU (AVX512-FP16 or AMX-FP16)."""
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def cuda_native_bf16(device):
    """True on GPUs with bf16 tensor cores (compute capability >= 8.0); False where it would be emulated."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def choose_precision(amp, device):
    """The Precision for config value `amp` (auto | bf16 | fp16 | off, train.amp) on `device`, warning when it
    will be slow."""
    if amp == "off":
        return Precision("fp32", "train.amp=off")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        native = cuda_native_bf16(device)
        if amp == "auto":
            if native:
                return Precision("bf16", f"train.amp=auto on {name}, which has native bfloat16")
            return Precision("fp16", f"train.amp=auto on {name}, which lacks native bfloat16: "
                                     "float16 with a GradScaler")
        if amp == "bf16" and not native:
            logger.warning(f"warning: train.amp=bf16 on {name}, which has no native bfloat16: it is emulated "
                           "and slow; train.amp=auto chooses fp16 with a GradScaler")
        return Precision(amp, f"train.amp={amp} on {name}")
    if device.type != "cpu":
        return Precision("fp32", f"train.amp={amp}: autocast is not set up for device {device.type}")
    if amp == "auto":
        if cpu_native_bf16():
            return Precision("bf16", "train.amp=auto on a CPU with native bfloat16 (AVX512-BF16 or AMX)")
        return Precision("fp32", "train.amp=auto on a CPU without native bfloat16 (no AVX512-BF16 or AMX): "
                                 "bf16 would be hundreds of times slower than fp32")
    native = cpu_native_bf16() if amp == "bf16" else cpu_native_fp16()
    if not native:
        kind = "bfloat16 (AVX512-BF16 or AMX)" if amp == "bf16" else "float16 (AVX512-FP16 or AMX-FP16)"
        logger.warning(f"warning: train.amp={amp} on a CPU without native {kind} is emulated and will be "
                       f"hundreds of times slower than fp32; use train.amp=auto or off")
    return Precision(amp, f"train.amp={amp} on the CPU" + ("" if native else " (emulated: slow)"))
