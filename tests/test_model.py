"""Model: output shapes per head, anchors, prior bias, frozen stages, parameter counts, box coders, weights."""
import math
import urllib.error

import pytest
import torch
import torchvision
from tiny_detector import INPUT_SHAPE, tiny_config
from torch import nn
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

from detector import build_model
from detector.anchors import AnchorGenerator
from detector.backbone import PretrainedWeightsError, ResNetBackbone
from detector.box_coder import decode_deltas, decode_distances, distribution_integral, encode_deltas, encode_distances
from detector.config import HeadConfig, load_config
from detector.families import GFLFamily

STRIDES = [8, 16, 32, 64, 128]


def expected_anchor_count(height, width, per_location):
    return sum(math.ceil(height / s) * math.ceil(width / s) * per_location for s in STRIDES)


@pytest.mark.parametrize("head_type, per_location", [("retinanet", 9), ("atss", 1), ("gfl", 1)])
def test_tiny_model_output_shapes_and_prior(head_type, per_location):
    torch.manual_seed(0)
    cfg = tiny_config(head_type, "model.head.reg_max=7")
    model = build_model(cfg.model, num_classes=5)
    batch, _, height, width = INPUT_SHAPE
    with torch.no_grad():
        outputs = model(torch.randn(INPUT_SHAPE))
    # prior bias b = -log((1 - 0.01) / 0.01) = -4.595, so every anchor starts near p = 0.01
    bias = model.head.cls_out.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99))) and abs(bias[0].item() + 4.595) < 1e-3
    assert abs(outputs.cls_logits.sigmoid().mean().item() - 0.01) < 2e-3
    anchors = expected_anchor_count(height, width, per_location)
    assert outputs.cls_logits.shape == (batch, anchors, 5)
    box_channels = 4 * (7 + 1) if head_type == "gfl" else 4
    assert outputs.box_regression.shape == (batch, anchors, box_channels)
    if head_type == "atss":
        assert outputs.centerness.shape == (batch, anchors)
    else:
        assert outputs.centerness is None
    assert outputs.anchors.shape == (anchors, 4) and outputs.strides.shape == (anchors,)
    assert outputs.num_per_level == [math.ceil(height / s) * math.ceil(width / s) * per_location for s in STRIDES]
    # strides follow the level order (P3 first), and each level's anchors are centred on its own grid
    levels = torch.repeat_interleave(torch.tensor(STRIDES, dtype=torch.float32), torch.tensor(outputs.num_per_level))
    assert torch.equal(outputs.strides, levels)


def test_flattening_keeps_location_then_anchor_order():
    """Anchor a of the flat output is the (y, x, k) the head computed it at, P3 first (anchors.py order)."""
    torch.manual_seed(0)
    model = build_model(tiny_config("retinanet").model, num_classes=3).eval()
    captured = []
    model.head.cls_out.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    p4 = captured[1]                                                 # [1, K * C, 4, 4]
    y, x, k, c = 2, 3, 5, 1
    index = outputs.num_per_level[0] + (y * 4 + x) * 9 + k
    assert outputs.cls_logits[0, index, c] == p4[0, k * 3 + c, y, x]
    anchor = outputs.anchors[index]
    assert torch.allclose((anchor[:2] + anchor[2:]) / 2, torch.tensor([x * 16.0, y * 16.0]))


def test_retinanet_anchor_sizes_and_centres_at_stride_8():
    generator = AnchorGenerator(STRIDES, octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0])
    anchors, strides, counts = generator([(3, 4), (2, 2), (1, 1), (1, 1), (1, 1)], torch.device("cpu"))
    assert counts == [3 * 4 * 9, 4 * 9, 9, 9, 9] and anchors.shape == (sum(counts), 4)
    level = anchors[:counts[0]].reshape(3, 4, 9, 4)                 # [H, W, K, 4]
    widths, heights = level[..., 2] - level[..., 0], level[..., 3] - level[..., 1]
    for r, ratio in enumerate([0.5, 1.0, 2.0]):
        for k in range(3):
            side = 8 * 4 * 2 ** (k / 3)                              # 32, 40.3, 50.8 px
            assert torch.allclose(widths[..., r * 3 + k], torch.tensor(side / math.sqrt(ratio)), atol=1e-4)
            assert torch.allclose(heights[..., r * 3 + k], torch.tensor(side * math.sqrt(ratio)), atol=1e-4)
    centres = (level[..., :2] + level[..., 2:]) / 2                  # offset 0: centre of (y, x) is (8x, 8y)
    grid_y, grid_x = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    expected = torch.stack([grid_x, grid_y], dim=-1)[:, :, None, :].expand(-1, -1, 9, -1) * 8
    assert torch.allclose(centres, expected)
    # the largest RetinaNet anchor: 4 * 2^(2/3) * 128 = 813 px at ratio 1
    last = anchors[-4]                                               # P7, ratio 1 (r = 1), k = 2
    assert torch.allclose(last[2] - last[0], torch.tensor(4 * 2 ** (2 / 3) * 128), atol=1e-3)


def test_atss_gfl_anchors_are_one_square_of_8_strides():
    anchors = load_config("gfl_r50.yaml").model.anchors
    generator = AnchorGenerator(anchors.strides, anchors.octave_base_scale, anchors.scales_per_octave, anchors.ratios)
    boxes, strides, counts = generator([(2, 2)] * 5, torch.device("cpu"))
    assert generator.num_per_location == 1 and counts == [4] * 5
    assert torch.allclose(boxes[:, 2] - boxes[:, 0], strides * 8)
    assert torch.allclose(boxes[:, 3] - boxes[:, 1], strides * 8)


@pytest.mark.parametrize("frozen_stages, frozen_count", [(-1, 0), (0, 1), (1, 2), (2, 3)])
def test_frozen_stages(frozen_stages, frozen_count):
    backbone = ResNetBackbone(18, frozen_stages=frozen_stages, norm="bn", pretrained=None)
    parts = [backbone.stem] + list(backbone.stages)                  # stem, layer1..layer4
    for index, part in enumerate(parts):
        flags = {p.requires_grad for p in part.parameters()}
        assert flags == ({False} if index < frozen_count else {True}), (index, flags)


def test_frozen_bn_replaces_batchnorm_and_has_no_trainable_affine():
    frozen = ResNetBackbone(18, frozen_stages=-1, norm="frozen_bn", pretrained=None)
    assert isinstance(frozen.stem[1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 20   # every norm of a ResNet-18
    trainable = ResNetBackbone(18, frozen_stages=-1, norm="bn", pretrained=None)
    assert isinstance(trainable.stem[1], nn.BatchNorm2d)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trainable.modules())


@pytest.mark.parametrize("name, millions", [("gfl_r50.yaml", 32.39), ("atss_r50.yaml", 32.24),
                                            ("retinanet_r50.yaml", 37.92)])
def test_parameter_counts_of_the_r50_configs(name, millions):
    """mmdetection's model zoo: GFL R50 32.3M, ATSS R50 32.2M, RetinaNet R50 37.9M (80 classes)."""
    cfg = load_config(name, ["model.backbone.pretrained=null"])
    count = sum(p.numel() for p in build_model(cfg.model, num_classes=80).parameters()) / 1e6
    assert abs(count - millions) / millions < 0.005, count
    if name == "gfl_r50.yaml":
        assert abs(count - 32.3) / 32.3 < 0.01


def test_delta_coder_round_trip():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.rand(2, 50, 2, generator=generator) * 300
    anchors = torch.cat([anchors, anchors + 10 + torch.rand(2, 50, 2, generator=generator) * 200], dim=-1)
    boxes = torch.rand(2, 50, 2, generator=generator) * 300
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(2, 50, 2, generator=generator) * 200], dim=-1)
    deltas = encode_deltas(anchors, boxes)
    assert torch.allclose(decode_deltas(anchors, deltas), boxes, atol=1e-3)
    assert torch.allclose(encode_deltas(anchors, anchors), torch.zeros_like(deltas), atol=1e-6)
    # dx is the centre shift in anchor widths; dw the log width ratio
    anchor, box = torch.tensor([0.0, 0, 10, 20]), torch.tensor([5.0, 0, 25, 20])
    assert torch.allclose(encode_deltas(anchor, box), torch.tensor([1.0, 0, math.log(2), 0]))
    # decoded log-ratios are clamped at log(1000 / 16): no overflow to inf
    huge = decode_deltas(anchor, torch.tensor([0.0, 0, 100, 0]))
    assert torch.allclose(huge[2] - huge[0], torch.tensor(10 * 1000 / 16))


def test_distance_coder_round_trip_and_clamp():
    generator = torch.Generator().manual_seed(1)
    centers = torch.rand(40, 2, generator=generator) * 100 + 50
    distances_px = torch.rand(40, 4, generator=generator) * 60 + 1
    boxes = torch.cat([centers - distances_px[:, :2], centers + distances_px[:, 2:]], dim=-1)
    strides = torch.tensor([8.0, 16.0]).repeat(20)
    distances = encode_distances(centers, boxes, strides)
    assert torch.allclose(distances, distances_px / strides[:, None], atol=1e-5)
    assert torch.allclose(decode_distances(centers, distances, strides), boxes, atol=1e-4)
    # GFL's targets are clamped to [0, reg_max - 0.1] (mmdetection's DistancePointBBoxCoder, eps 0.1)
    family = GFLFamily(HeadConfig(reg_max=4))
    anchors = torch.cat([centers - 16, centers + 16], dim=-1)       # any anchors with these centres
    clamped = family.encode(anchors, strides, boxes)
    assert clamped.max().item() == pytest.approx(3.9) and clamped.min().item() >= 0
    torch.testing.assert_close(clamped, distances.clamp(0, 3.9))


@pytest.mark.parametrize("k", [0, 3, 16])
def test_distribution_integral_of_one_hot_is_the_bin(k):
    logits = torch.full((2, 3, 4, 17), -1e4)
    logits[..., k] = 0.0
    distances = distribution_integral(logits.reshape(2, 3, 68))
    assert distances.shape == (2, 3, 4) and torch.allclose(distances, torch.full((2, 3, 4), float(k)))
    uniform = distribution_integral(torch.zeros(1, 4 * 17))       # mean of 0..16
    assert torch.allclose(uniform, torch.full((1, 4), 8.0))


def test_torchvision_weights_offline_is_a_one_line_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(resnet.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError) as error:
        ResNetBackbone(18, pretrained="torchvision")
    message = str(error.value)
    assert "model.backbone.pretrained" in message and "URLError" in message and "\n" not in message
    assert resnet.ResNet18_Weights.IMAGENET1K_V1.url in message


def test_pretrained_from_a_local_state_dict(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = ResNetBackbone(18, frozen_stages=1, norm="frozen_bn", pretrained=str(path))
    assert torch.equal(backbone.stem[0].weight, source.conv1.weight)
    assert torch.equal(backbone.stages[3][1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(backbone.stem[1].running_var, source.bn1.running_var)
    # a {'state_dict': ...} wrapper is accepted as well
    torch.save({"state_dict": source.state_dict()}, path)
    wrapped = ResNetBackbone(18, pretrained=str(path))
    assert torch.equal(wrapped.stages[0][0].conv1.weight, source.layer1[0].conv1.weight)


def test_bad_pretrained_paths_are_pretrained_weights_errors(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found"):
        ResNetBackbone(18, pretrained=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pth"):
        ResNetBackbone(18, pretrained=str(garbage))
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(PretrainedWeightsError, match="expected a state dict"):
        ResNetBackbone(18, pretrained=str(not_a_dict))
    state = torchvision.models.resnet18().state_dict()
    state.pop("layer4.1.conv2.weight")                             # a key missing: another depth's weights
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(PretrainedWeightsError, match=r"not a ResNet-18 state dict \(missing \['layer4.1.conv2"):
        ResNetBackbone(18, pretrained=str(wrong))
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)   # wrong shape: load_state_dict raises
    torch.save(state, wrong)
    with pytest.raises(PretrainedWeightsError, match="size mismatch for layer4.1.conv2.weight"):
        ResNetBackbone(18, pretrained=str(wrong))


def test_zero_init_residual_starts_every_block_as_the_identity():
    from detector.backbone import ResNetBackbone
    for depth, last_bn in ((18, "bn2"), (50, "bn3")):
        zeroed = ResNetBackbone(depth, frozen_stages=-1, norm="bn", pretrained=None, zero_init_residual=True)
        plain = ResNetBackbone(depth, frozen_stages=-1, norm="bn", pretrained=None)
        for stage_zeroed, stage_plain in zip(zeroed.stages, plain.stages):
            for block_zeroed, block_plain in zip(stage_zeroed, stage_plain):
                assert getattr(block_zeroed, last_bn).weight.abs().sum() == 0
                assert (getattr(block_plain, last_bn).weight == 1).all()


def test_p7_is_a_conv_of_p6_without_relu():
    """mmdetection's FPN (relu_before_extra_convs False) for RetinaNet, ATSS and GFL: P7 = conv(P6), so a
    negative P6 reaches P7 unclipped."""
    from detector.backbone import FPN
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], out_channels=8, extra_from="p5")
    features = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    outputs = fpn(features)
    p6 = fpn.p6(outputs[2])
    assert (p6 < 0).any()
    torch.testing.assert_close(outputs[3], p6)
    torch.testing.assert_close(outputs[4], fpn.p7(p6))
    assert not torch.allclose(outputs[4], fpn.p7(torch.relu(p6)))


def test_relu_before_extra_convs_clips_p6_for_p7():
    """model.fpn.relu_before_extra_convs (torchvision's LastLevelP6P7, mmdetection's FCOS): P6 = conv(C5) as before,
    P7 = conv(relu(P6)), written here with F.conv2d on the module's weights."""
    import torch.nn.functional as F

    from detector.backbone import FPN
    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], out_channels=8, extra_from="c5", relu_before_extra_convs=True)
    features = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    outputs = fpn(features)
    p6 = F.conv2d(features[2], fpn.p6.weight, fpn.p6.bias, stride=2, padding=1)
    assert (p6 < 0).any()
    torch.testing.assert_close(outputs[3], p6)
    torch.testing.assert_close(outputs[4], F.conv2d(p6.clamp(min=0), fpn.p7.weight, fpn.p7.bias, stride=2, padding=1))
    assert not torch.allclose(outputs[4], fpn.p7(p6))


def test_fpn_relu_before_extra_convs_is_a_config_key():
    cfg = load_config("retinanet_r50.yaml", ["model.backbone.pretrained=null", "model.backbone.depth=18",
                                             "model.fpn.relu_before_extra_convs=true"])
    assert build_model(cfg.model, 3).fpn.relu_before_extra_convs is True
    assert load_config("retinanet_r50.yaml").model.fpn.relu_before_extra_convs is False   # mmdetection's RetinaNet


def test_norm_eval_freezes_statistics_but_trains_the_affine_terms():
    """mmdetection's reference BatchNorm (norm_eval): eval mode even in model.train(), affine terms trained
    outside the frozen stages; with norm_eval false the statistics update (training from scratch)."""
    frozen = ResNetBackbone(18, frozen_stages=1, norm="bn", norm_eval=True, pretrained=None).train()
    assert all(not m.training for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert frozen.stages[1][0].bn1.weight.requires_grad and not frozen.stages[0][0].bn1.weight.requires_grad
    before = frozen.stages[1][0].bn1.running_mean.clone()
    frozen(torch.randn(2, 3, 64, 64))
    assert torch.equal(frozen.stages[1][0].bn1.running_mean, before)
    trained = ResNetBackbone(18, frozen_stages=1, norm="bn", norm_eval=False, pretrained=None).train()
    trained(torch.randn(2, 3, 64, 64))
    assert not torch.equal(trained.stages[1][0].bn1.running_mean, before)
    assert not trained.stem[1].training                              # a frozen stage's BN stays in eval mode


def test_flatten_levels_orders_anchors_level_by_level_and_passes_gradients():
    """Per level [B, K * X, H, W] -> rows (y, x, k), levels concatenated: a reference built by hand."""
    from detector.heads import flatten_levels
    torch.manual_seed(0)
    maps = [torch.randn(2, 3 * 2, 4, 5, requires_grad=True), torch.randn(2, 3 * 2, 2, 3, requires_grad=True)]
    flat = flatten_levels(maps, 2)                                    # K = 3 anchors, X = 2 values each
    assert flat.shape == (2, 4 * 5 * 3 + 2 * 3 * 3, 2)
    rows = []
    for level in maps:
        for y in range(level.shape[2]):
            for x in range(level.shape[3]):
                for k in range(3):
                    rows.append(level[:, 2 * k:2 * k + 2, y, x])      # [B, X]
    torch.testing.assert_close(flat, torch.stack(rows, dim=1), rtol=0, atol=0)
    weights = torch.randn_like(flat)
    (flat * weights).sum().backward()
    torch.testing.assert_close(maps[1].grad[1, 2:4, 1, 2], weights[1, 4 * 5 * 3 + (1 * 3 + 2) * 3 + 1])
