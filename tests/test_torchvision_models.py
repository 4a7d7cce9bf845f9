"""scripts/torchvision_models.py builds torchvision's FCOS and RetinaNet as their *_resnet50_fpn builders do with
weights=None: same parameters (names and shapes), every one trainable, trainable BatchNorm."""
import importlib.util
import os

import pytest
import torch
from torchvision.models import detection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "scripts", "torchvision_models.py")
spec = importlib.util.spec_from_file_location("torchvision_models", PATH)
torchvision_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torchvision_models)


@pytest.mark.parametrize("kind, builder", [("fcos", detection.fcos_resnet50_fpn),
                                           ("retinanet", detection.retinanet_resnet50_fpn)])
def test_same_model_as_torchvisions_builder(kind, builder):
    ours = torchvision_models.build_torchvision_detector(kind, 50, 256, num_classes=91, min_size=800, max_size=1333)
    reference = builder(weights=None, weights_backbone=None, num_classes=91)
    shapes = {name: tuple(p.shape) for name, p in ours.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in reference.named_parameters()}
    assert all(p.requires_grad for p in ours.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.backbone.body.modules())
    assert ours.backbone.fpn.extra_blocks.use_P5                      # P6 from P5, as both builders do


def test_retinanet_v2_as_torchvisions_v2_builder():
    ours = torchvision_models.build_torchvision_detector("retinanet_v2", 50, 256, num_classes=91, min_size=800,
                                                         max_size=1333)
    reference = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    shapes = {name: tuple(p.shape) for name, p in ours.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in reference.named_parameters()}
    assert all(p.requires_grad for p in ours.parameters())
    assert not ours.backbone.fpn.extra_blocks.use_P5                  # P6 from C5 (2048 channels)
    assert ours.head.regression_head._loss_type == reference.head.regression_head._loss_type == "giou"
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in ours.head.modules()) == 8
    with pytest.raises(ValueError, match="width"):
        torchvision_models.build_torchvision_detector("retinanet_v2", 18, 512, 1, 320, 427)


def test_inputs_drop_padding_and_crowd_rows():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    targets = {"image_sizes": torch.tensor([[4, 6], [2, 3]]), "boxes": torch.arange(16.0).view(2, 2, 4),
               "labels": torch.tensor([[0, 1], [2, -1]]), "valid": torch.tensor([[True, True], [True, False]]),
               "crowd": torch.tensor([[False, True], [False, False]])}
    image_list, target_list = torchvision_models.to_torchvision_inputs(images, targets)
    assert [tuple(image.shape) for image in image_list] == [(3, 4, 6), (3, 2, 3)]
    assert torch.equal(image_list[1], images[1, :, :2, :3])
    assert target_list[0]["labels"].tolist() == [0] and target_list[1]["labels"].tolist() == [2]
    assert target_list[0]["boxes"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
