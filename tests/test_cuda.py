"""The CUDA path (run by scripts/gpu_check.sh where a GPU exists; skipped elsewhere): the same detector on the
GPU gives the CPU's losses and detections, mixed precision stays finite, and precision auto picks what the
GPU supports."""
import pytest
import torch

from detector import build_criterion, build_model, build_postprocessor
from detector.precision import choose_precision
from tests.tiny_detector import padded_targets, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
BOXES = [[[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 90.0, 60.0]], [[5.0, 50.0, 60.0, 120.0]]]


def run(head_type, device, precision=None):
    torch.manual_seed(0)
    cfg = tiny_config(head_type)
    model = build_model(cfg.model, 3).to(device).train()
    criterion = build_criterion(cfg.model, 3).to(device)
    images = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(1)).to(device)
    targets = {key: value.to(device) for key, value in padded_targets(BOXES, [[0, 2], [1]]).items()}
    with precision.autocast(device) if precision is not None else torch.autocast(device.type, enabled=False):
        outputs = model(images)
    losses = {key: value.float() for key, value in criterion(outputs, targets).items()}
    sum(value for key, value in losses.items() if key.startswith("loss_")).backward()
    model.eval()
    with torch.no_grad():
        detections = build_postprocessor(cfg.model)(model(images), torch.tensor([[128, 96]] * 2, device=device),
                                                    torch.ones(2, 2, dtype=torch.float64, device=device))
    return losses, detections


@pytest.mark.parametrize("head_type", ["retinanet", "atss", "gfl"])
def test_gpu_fp32_equals_cpu(head_type):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    cpu_losses, cpu_detections = run(head_type, torch.device("cpu"))
    gpu_losses, gpu_detections = run(head_type, torch.device("cuda"))
    for key, value in cpu_losses.items():
        torch.testing.assert_close(gpu_losses[key].cpu(), value, rtol=1e-3, atol=1e-4, msg=key)
    for cpu, gpu in zip(cpu_detections, gpu_detections):
        count = min(10, len(cpu["scores"]))
        torch.testing.assert_close(gpu["scores"][:count].cpu(), cpu["scores"][:count], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("head_type", ["retinanet", "atss", "gfl"])
def test_mixed_precision_losses_are_finite_and_close(head_type):
    device = torch.device("cuda")
    precision = choose_precision("auto", device)
    assert precision.name == ("bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16")
    fp32_losses, _ = run(head_type, device)
    amp_losses, _ = run(head_type, device, precision)
    for key, value in fp32_losses.items():
        assert torch.isfinite(amp_losses[key]), key
        torch.testing.assert_close(amp_losses[key], value, rtol=0.05, atol=0.02, msg=key)
