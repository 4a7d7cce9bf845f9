"""Our RetinaNet against torchvision's, as an independent implementation: with torchvision's weights copied in
(scripts/torchvision_models.retinanet_state_to_ours), configs/retinanet_r18_scratch.yaml's choices (torchvision's:
P6 from P5, ReLU before P7, the per-image loss normaliser, torchvision's low-quality rule) and torchvision given
our anchors (its own truncate and round the base sizes), the two give the same losses, gradients and detections.

Equal-sized images whose size divides by 128, so that no anchor lies on padding (mmdetection ignores those,
torchvision counts them as negatives) and torchvision's per-level stride (image size // feature size) is the
true one.
"""
import importlib.util
import os

import pytest
import torch
from tiny_detector import padded_targets

from detector import build_criterion, build_model, build_postprocessor
from detector.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("torchvision_models",
                                              os.path.join(ROOT, "scripts", "torchvision_models.py"))
torchvision_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(torchvision_models)

WIDTH, SIZE, CLASSES = 32, 128, 3


def build_pair(score_thr=0.05, overrides=()):
    torch.manual_seed(0)
    theirs = torchvision_models.build_torchvision_detector("retinanet", 18, WIDTH, CLASSES, SIZE, SIZE, score_thr)
    cfg = load_config("retinanet_r18_scratch.yaml", [f"model.fpn.out_channels={WIDTH}",
                                                     f"model.head.feat_channels={WIDTH}",
                                                     f"model.test.score_thr={score_thr}", *overrides])
    ours = build_model(cfg.model, CLASSES)
    ours.load_state_dict(torchvision_models.retinanet_state_to_ours(theirs.state_dict(), ours.state_dict()))
    return theirs, ours, cfg


def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    # Image 0 has three objects of two classes, image 1 one: the per-image normaliser differs from the batch one.
    targets = padded_targets([[[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 120.0, 100.0], [0.0, 0.0, 30.0, 24.0]],
                              [[20.0, 30.0, 110.0, 90.0]]], [[0, 2, 1], [1]])
    targets["image_sizes"] = torch.tensor([[SIZE, SIZE]] * 2)
    targets["pad_sizes"] = targets["image_sizes"].clone()
    targets["scale_factors"] = torch.ones(2, 2)
    return images, targets


def give_our_anchors(theirs, anchors):
    theirs.anchor_generator.forward = lambda image_list, features: [anchors] * len(image_list.image_sizes)


def test_losses_and_gradients_equal_torchvisions():
    theirs, ours, cfg = build_pair()
    criterion = build_criterion(cfg.model, CLASSES)
    images, targets = batch()
    theirs.train(), ours.train(), criterion.train()
    outputs = ours(images)
    give_our_anchors(theirs, outputs.anchors.detach())
    our_losses = criterion(outputs, targets)
    their_losses = theirs(*torchvision_models.to_torchvision_inputs(images, targets))
    assert our_losses["loss_cls"].item() == pytest.approx(their_losses["classification"].item(), rel=1e-5)
    assert our_losses["loss_box"].item() == pytest.approx(their_losses["bbox_regression"].item(), rel=1e-5)
    (our_losses["loss_cls"] + our_losses["loss_box"]).backward()
    (their_losses["classification"] + their_losses["bbox_regression"]).backward()
    pairs = {"head.cls_out.weight": "head.classification_head.cls_logits.weight",
             "head.reg_out.weight": "head.regression_head.bbox_reg.weight",
             "fpn.p7.weight": "backbone.fpn.extra_blocks.p7.weight",
             "backbone.stem.0.weight": "backbone.body.conv1.weight"}
    our_params, their_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for our_name, their_name in pairs.items():   # tolerance relative to each tensor's scale (P7's is ~1e-14)
        reference = their_params[their_name].grad
        scale = reference.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(our_params[our_name].grad, reference, rtol=1e-4, atol=1e-5 * scale)


def test_mmdetections_batch_normaliser_differs_from_torchvisions():
    # The same weights with mmdetection's normaliser: (3 + 1 positives' losses) / 4 positives, not the mean of
    # each image's own mean; the test above would catch a criterion that ignored model.normaliser.
    theirs, ours, cfg = build_pair(overrides=["model.normaliser=batch"])
    criterion = build_criterion(cfg.model, CLASSES)
    images, targets = batch()
    theirs.train(), ours.train()
    outputs = ours(images)
    give_our_anchors(theirs, outputs.anchors.detach())
    ours_box = criterion(outputs, targets)["loss_box"].item()
    their_box = theirs(*torchvision_models.to_torchvision_inputs(images, targets))["bbox_regression"].item()
    assert abs(ours_box - their_box) > 1e-3 * their_box


def test_detections_equal_torchvisions():
    theirs, ours, cfg = build_pair(score_thr=0.0101)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():   # scores spread around the threshold (some kept, many not) and without ties
        ours.head.cls_out.weight.normal_(0.0, 0.2, generator=generator)
        ours.head.cls_out.bias.normal_(-4.6, 0.3, generator=generator)
        theirs.head.classification_head.cls_logits.weight.copy_(ours.head.cls_out.weight)
        theirs.head.classification_head.cls_logits.bias.copy_(ours.head.cls_out.bias)
    postprocessor = build_postprocessor(cfg.model)
    images, targets = batch()
    theirs.eval(), ours.eval()
    with torch.no_grad():
        outputs = ours(images)
        give_our_anchors(theirs, outputs.anchors)
        our_detections = postprocessor(outputs, targets["image_sizes"], targets["scale_factors"])
        their_detections = theirs(torchvision_models.to_torchvision_inputs(images, targets)[0])
    for mine, reference in zip(our_detections, their_detections):
        assert len(reference["scores"]) == len(mine["scores"]) == cfg.model.test.max_per_img   # both filled
        # Every detection of ours is one of torchvision's (label, score to 1e-6, box to 1e-3 px); near-equal scores
        # may come out in either order.
        same = ((mine["labels"][:, None] == reference["labels"][None])
                & ((mine["scores"][:, None] - reference["scores"][None]).abs() <= 1e-6 * reference["scores"][None])
                & ((mine["boxes"][:, None] - reference["boxes"][None]).abs() <= 1e-3).all(dim=2))
        assert same.any(dim=1).all() and same.any(dim=0).all()
