"""model.backbone.fold_norm: conv + running-statistics norm run as one convolution give torchvision's ResNet numbers.

The reference is torchvision's own modules (the stem Sequential and each stage's blocks called as they are), on a
backbone whose norms carry random, non-trivial statistics and affine terms, so a wrong fold (a missing eps, the
mean not scaled, a transposed scale) changes the outputs and gradients by far more than the tolerance.
"""
import pytest
import torch
from torch import nn

from detector.backbone import ResNetBackbone


def randomise_norms(backbone, generator):
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__name__ == "FrozenBatchNorm2d":
            channels = module.weight.shape[0]
            with torch.no_grad():
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.05)


def reference_forward(backbone, images):
    """C3..C5 through torchvision's modules, unfolded."""
    x = backbone.stem(images)
    features = []
    for stage in backbone.stages:
        x = stage(x)
        features.append(x)
    return features[1:]


def gradients(backbone):
    return {name: p.grad.clone() for name, p in backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("depth,norm", [(18, "bn"), (50, "bn"), (18, "frozen_bn")])
def test_folded_backbone_matches_torchvision_blocks_forward_and_backward(depth, norm):
    generator = torch.Generator().manual_seed(depth)
    torch.manual_seed(depth)
    backbone = ResNetBackbone(depth, frozen_stages=1, norm=norm, norm_eval=True, pretrained=None).double()
    randomise_norms(backbone, generator)
    backbone.train()  # norm_eval: every BatchNorm stays in eval mode, so every norm is foldable
    images = torch.randn(2, 3, 64, 96, generator=generator, dtype=torch.float64)
    weights = [torch.randn(f.shape, generator=generator, dtype=torch.float64)
               for f in reference_forward(backbone, images)]

    expected = reference_forward(backbone, images)
    sum((f * w).sum() for f, w in zip(expected, weights)).backward()
    expected_grads = gradients(backbone)
    backbone.zero_grad(set_to_none=True)

    assert backbone.fold_norm
    folded = backbone(images)
    sum((f * w).sum() for f, w in zip(folded, weights)).backward()
    folded_grads = gradients(backbone)

    for got, want in zip(folded, expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9 * want.abs().max().item())
    trained = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert set(folded_grads) == set(expected_grads) == trained  # frozen stem and stage 1 get none
    if norm == "bn":  # the affine terms of trained stages learn through the folded weight and bias
        assert {"stages.1.0.bn1.weight", "stages.1.0.bn1.bias"} <= trained
    for name in expected_grads:
        want = expected_grads[name]
        torch.testing.assert_close(folded_grads[name], want, rtol=1e-7, atol=1e-9 * want.abs().max().item(), msg=name)


def test_batchnorm_in_training_mode_is_not_folded():
    """norm_eval false (from scratch): the trained stages normalise with the batch's statistics and update the
    running ones, exactly as torchvision's blocks; only the frozen stem folds."""
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    folded = ResNetBackbone(18, frozen_stages=0, norm="bn", norm_eval=False, pretrained=None).double()
    randomise_norms(folded, generator)
    plain = ResNetBackbone(18, frozen_stages=0, norm="bn", norm_eval=False, pretrained=None, fold_norm=False).double()
    plain.load_state_dict(folded.state_dict())
    folded.train(), plain.train()
    assert not folded.stem[1].training and folded.stages[0][0].bn1.training
    images = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    for got, want in zip(folded(images), plain(images)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for key, value in plain.state_dict().items():  # the same running statistics after the step
        torch.testing.assert_close(folded.state_dict()[key], value, rtol=1e-12, atol=1e-12, msg=key)
    batch_mean = plain.stages[0][0].bn1.running_mean
    assert not torch.allclose(batch_mean, torch.zeros_like(batch_mean))  # statistics did move


def test_folded_eval_mode_matches_torchvision_in_channels_last():
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    backbone = ResNetBackbone(50, frozen_stages=1, norm="bn", norm_eval=False, pretrained=None).eval()
    randomise_norms(backbone, generator)
    backbone = backbone.to(memory_format=torch.channels_last)
    images = torch.randn(1, 3, 96, 64, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for got, want in zip(backbone(images), reference_forward(backbone, images)):
            # fp32, different summation order: compare against the feature map's scale (a wrong fold is O(1) off)
            assert (got - want).abs().max() <= 5e-5 * want.abs().max(), (got - want).abs().max() / want.abs().max()
