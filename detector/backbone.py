"""ResNet (torchvision) + FPN producing P3..P7.

ResNet stages C3, C4, C5 have strides 8, 16, 32. The FPN maps them to `out_channels`, adds the
top-down path with nearest upsampling, then P6 by a stride-2 3x3 conv on C5 (RetinaNet) or on P5
(ATSS, GFL), and P7 = conv(P6), no ReLU between (mmdetection's configs for all three, REFERENCE.md;
model.fpn.relu_before_extra_convs adds torchvision's ReLU).

BatchNorm as mmdetection's reference (norm bn, norm_eval true): running statistics frozen (the layers stay in
eval mode), affine weight and bias trained outside the frozen stages. norm_eval false trains the statistics too
(from scratch); norm frozen_bn keeps the affine terms fixed as well (torchvision, detectron2).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

from .errors import UserError

RESNETS = {
    18: (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1, [128, 256, 512]),
    34: (resnet.resnet34, resnet.ResNet34_Weights.IMAGENET1K_V1, [128, 256, 512]),
    50: (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, [512, 1024, 2048]),
    101: (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1, [512, 1024, 2048]),
}
NORMS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}
EXTRA_FROM = ("c5", "p5")  # what P6 is computed from: C5 (RetinaNet) or P5 (ATSS, GFL)


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be had; the message says what to do."""


def load_pretrained(model, depth, pretrained):
    """Load ImageNet weights into `model`: 'torchvision' downloads (cached), anything else is a local file."""
    if pretrained == "torchvision":
        weights = RESNETS[depth][1]
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # URLError, socket errors, hash errors: all mean 'no usable download'
            raise PretrainedWeightsError(
                f"could not download torchvision ResNet-{depth} weights ({type(error).__name__}); offline, "
                f"fetch {weights.url} elsewhere and pass "
                f"model.backbone.pretrained=/path/to/{weights.url.split('/')[-1]}"
            ) from None
    else:
        try:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise PretrainedWeightsError(f"pretrained weights file not found: {pretrained}") from None
        except Exception as error:  # not a torch file, a directory, a pickle weights_only refuses: one line
            raise PretrainedWeightsError(f"{pretrained}: cannot be loaded as a state dict ({type(error).__name__}: "
                                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
        if not isinstance(state, dict):
            raise PretrainedWeightsError(f"{pretrained}: holds a {type(state).__name__}, expected a state dict")
        state = state.get("state_dict", state.get("model", state))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # strict=False still refuses shape mismatches (e.g. ResNet-50 weights for depth 18)
        raise PretrainedWeightsError(f"{pretrained}: not a ResNet-{depth} state dict "
                                     f"({str(error).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{pretrained}: not a ResNet-{depth} state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")


class ResNetBackbone(nn.Module):
    """Returns C3, C4, C5 of a torchvision ResNet; stages up to `frozen_stages` have no gradient.

    depth: a key of RESNETS; norm: a key of NORMS (both checked by build_model).
    frozen_stages: -1 none, 0 the stem, 1 the stem and stage 1 (reference), ... 4 all; frozen BatchNorm layers
        stay in eval mode.
    norm_eval: every BatchNorm layer stays in eval mode (running statistics frozen, mmdetection's reference).
    zero_init_residual: start every residual block as the identity (training from scratch).
    fold_norm: run each conv + running-statistics norm as one convolution (conv_norm); the same numbers, faster.
    """

    def __init__(self, depth=50, frozen_stages=1, norm="bn", norm_eval=True, pretrained="torchvision",
                 zero_init_residual=False, fold_norm=True):
        super().__init__()
        build, _, self.out_channels = RESNETS[depth]
        self.norm_eval = norm_eval
        self.fold_norm = fold_norm
        # zero_init_residual: each block's last BN starts at gamma 0, so every block starts as the identity
        # (Goyal et al. 2017); only a random start sees it, pretrained weights overwrite it.
        body = build(weights=None, norm_layer=NORMS[norm], zero_init_residual=zero_init_residual)
        if pretrained:
            load_pretrained(body, depth, pretrained)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.stages = nn.ModuleList([body.layer1, body.layer2, body.layer3, body.layer4])
        self.frozen = ([self.stem] if frozen_stages >= 0 else []) + list(self.stages[:max(frozen_stages, 0)])
        for module in self.frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode=True):
        """Training mode, but for the BatchNorm layers of frozen stages (and all of them with norm_eval)."""
        super().train(mode)
        for module in self.modules() if self.norm_eval else [m for stage in self.frozen for m in stage.modules()]:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BatchNorm2d, and SyncBatchNorm (train.sync_bn)
                module.eval()
        return self

    def forward(self, images):
        if not self.fold_norm:
            x = self.stem(images)
        else:
            conv, norm, relu, maxpool = self.stem
            x = maxpool(relu(conv_norm(images, conv, norm)))
        features = []
        for stage in self.stages:
            for block in stage:
                x = block_forward(block, x) if self.fold_norm else block(x)
            features.append(x)
        return features[1:]  # C3 [B, c3, H/8, W/8], C4 [.., H/16, ..], C5 [.., H/32, ..]


def conv_norm(x, conv, norm):
    """norm(conv(x)), as one convolution where `norm` uses running statistics (eval-mode BatchNorm, FrozenBatchNorm2d).

    Such a norm is the affine map y = s * z + (beta - s * mean), s = gamma / sqrt(var + eps), per output channel, so
    conv followed by it is conv with weight s * W and bias beta - s * mean: one pass over the activation instead of
    three (forward) and no norm backward; gamma, beta and W get the same gradients through the folded weight.
    A BatchNorm in training mode (statistics of the batch) runs as it is.
    """
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and (norm.training or norm.running_var is None):
        return norm(conv(x))
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return F.conv2d(x, conv.weight * scale.reshape(-1, 1, 1, 1), bias, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def block_forward(block, x):
    """torchvision's BasicBlock / Bottleneck forward, each conv + norm through conv_norm."""
    identity = x if block.downsample is None else conv_norm(x, block.downsample[0], block.downsample[1])
    out = block.relu(conv_norm(x, block.conv1, block.bn1))
    if isinstance(block, resnet.Bottleneck):
        out = block.relu(conv_norm(out, block.conv2, block.bn2))
        out = conv_norm(out, block.conv3, block.bn3)
    else:
        out = conv_norm(out, block.conv2, block.bn2)
    return block.relu(out + identity)


class FPN(nn.Module):
    """C3..C5 -> P3..P7, each [B, out_channels, H / stride, W / stride].

    P6 = conv(C5 or P5, stride 2) by extra_from; P7 = conv(P6, stride 2), or conv(relu(P6)) with
    relu_before_extra_convs (mmdetection's flag of that name; torchvision's LastLevelP6P7).
    """

    def __init__(self, in_channels, out_channels=256, extra_from="c5", relu_before_extra_convs=False):
        super().__init__()
        self.extra_from = extra_from
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        p6_in = in_channels[-1] if extra_from == "c5" else out_channels
        self.p6 = nn.Conv2d(p6_in, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features):
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: P5 -> P4 -> P3
            upsampled = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + upsampled
        outputs = [conv(x) for conv, x in zip(self.output, laterals)]
        p6 = self.p6(features[-1] if self.extra_from == "c5" else outputs[-1])
        p7 = self.p7(F.relu(p6) if self.relu_before_extra_convs else p6)
        return outputs + [p6, p7]
