"""train.amp = auto | bf16 | fp16 | off: the choice follows the hardware query (mocked both ways), never
bf16 on a CPU without it, and the config accepts YAML's booleans."""
import logging

import pytest
import torch

from detector import precision as precision_module
from detector.config import ConfigError, load_config
from detector.precision import choose_precision

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what the CPU query answers: cpu_bf16(True) for an AMX / AVX512-BF16 CPU, (False) for AVX2."""
    def set_native(native):
        monkeypatch.setattr(precision_module, "cpu_native_bf16", lambda: native)
        monkeypatch.setattr(precision_module, "cpu_native_fp16", lambda: False)
    return set_native


@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is present (8.0 A100, 7.0 V100, 7.5 T4)."""
    def set_gpu(major, minor, name):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return set_gpu


def test_auto_on_a_cpu_without_native_bf16_is_fp32(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="focaldet"):
        chosen = choose_precision("auto", CPU)
    assert chosen.name == "fp32"
    assert "without native bfloat16" in chosen.reason
    assert caplog.records == []          # auto never warns: it chose the fast precision


def test_auto_on_a_cpu_with_native_bf16_is_bf16(cpu_bf16):
    cpu_bf16(True)
    chosen = choose_precision("auto", CPU)
    assert (chosen.name, chosen.reason) == ("bf16", "train.amp=auto on a CPU with native bfloat16 (AVX512-BF16 or AMX)")


def test_explicit_bf16_on_a_cpu_without_it_runs_with_one_warning(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="focaldet"):
        chosen = choose_precision("bf16", CPU)
    assert chosen.name == "bf16"
    assert len(caplog.records) == 1 and "hundreds of times slower" in caplog.records[0].getMessage()
    cpu_bf16(True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="focaldet"):
        assert choose_precision("bf16", CPU).name == "bf16"
    assert caplog.records == []


def test_off_is_fp32_whatever_the_hardware(cpu_bf16, gpu):
    cpu_bf16(True)
    gpu(9, 0, "NVIDIA H100")
    assert choose_precision("off", CPU).name == "fp32"
    assert choose_precision("off", CUDA).name == "fp32"


@pytest.mark.parametrize("capability, name, expected", [((8, 0), "NVIDIA A100", "bf16"),
                                                        ((7, 0), "Tesla V100", "fp16"),
                                                        ((7, 5), "Tesla T4", "fp16")])
def test_auto_on_cuda_is_bf16_from_ampere_else_fp16(gpu, capability, name, expected):
    gpu(*capability, name)
    chosen = choose_precision("auto", CUDA)
    assert chosen.name == expected and name in chosen.reason


def test_fp16_scales_gradients_and_bf16_does_not():
    assert precision_module.Precision("fp16", "").grad_scaler(CPU).is_enabled()
    assert not precision_module.Precision("bf16", "").grad_scaler(CPU).is_enabled()
    assert not precision_module.Precision("fp32", "").grad_scaler(CPU).is_enabled()


def test_autocast_dtype_of_each_precision():
    weight = torch.randn(4, 4)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with precision_module.Precision(name, "").autocast(CPU):
            assert torch.mm(weight, weight).dtype == dtype


def test_the_real_cpu_query_agrees_with_the_isa_emulation():
    """Under ONEDNN_MAX_CPU_ISA=AVX2 (the AVX2-only emulation) oneDNN reports no native bf16."""
    import os
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
        assert precision_module.cpu_native_bf16() is False
        assert choose_precision("auto", CPU).name == "fp32"


def test_config_values_of_train_amp():
    assert load_config("shapes_gfl_r18.yaml").train.amp == "auto"            # the demo follows the hardware
    assert load_config("shapes_gfl_r18.yaml", ["train.amp=off"]).train.amp == "off"    # YAML reads off as false
    assert load_config("shapes_gfl_r18.yaml", ["train.amp=true"]).train.amp == "auto"  # earlier configs' true
    assert load_config("shapes_gfl_r18.yaml", ["train.amp=fp16"]).train.amp == "fp16"
    with pytest.raises(ConfigError, match=r"train.amp' expects one of \['auto', 'bf16', 'fp16', 'off'\]"):
        load_config("shapes_gfl_r18.yaml", ["train.amp=fp8"])
