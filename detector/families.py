"""Head families: what a family of dense heads decides, in one object that the criterion (training) and the
post-processor (inference) are both given, so neither tests the head type by name.

    family.box_channels                   regression outputs per anchor (4, or 4 x R for GFL)
    family.codes(box_regression)          raw regression [..., box_channels] -> codes [..., 4]
    family.encode(anchors, strides, gt)   GT boxes [..., 4] -> target codes [..., 4] (L1-type losses, DFL)
    family.decode(anchors, strides, codes)  codes -> boxes [..., 4] xyxy pixels
    family.score_factor(outputs)          [B, A] factor applied to the class scores after selection, or None
    family.soft_targets                   False: one-hot classification targets; True: IoU-valued (QFL)

Codes are what the head predicts in box space: (dx, dy, dw, dh) deltas divided by the coder's stds
(RetinaNet, ATSS), or (left, top, right, bottom) distances in stride units (GFL's integral). Every method
keeps its inputs' floating dtype (float64 in, float64 out) and computes half precision in float32.
"""
from .anchors import anchor_centers
from .box_coder import decode_deltas, decode_distances, distribution_integral, encode_deltas, encode_distances


def at_least_float32(tensor):
    """`tensor` in float32, or in its own dtype if that is wider (float64 stays float64)."""
    return tensor.float() if tensor.dtype.itemsize < 4 else tensor


class DeltaFamily:
    """Anchor boxes regressed by (dx, dy, dw, dh) deltas scaled by `stds` (mmdetection's DeltaXYWHBBoxCoder
    with target means 0); classification targets are one-hot."""

    box_channels = 4
    soft_targets = False
    stds = (1.0, 1.0, 1.0, 1.0)

    def __init__(self, head_cfg):
        del head_cfg  # nothing configurable: the stds are the family's

    def codes(self, box_regression):
        return at_least_float32(box_regression)

    def encode(self, anchors, strides, boxes):
        return encode_deltas(anchors, boxes) / boxes.new_tensor(self.stds)

    def decode(self, anchors, strides, codes):
        return decode_deltas(anchors, codes * codes.new_tensor(self.stds))

    def score_factor(self, outputs):
        return None


class RetinaNetFamily(DeltaFamily):
    """RetinaNet: deltas with stds (1, 1, 1, 1); score = sigmoid of the class logit."""


class ATSSFamily(DeltaFamily):
    """ATSS: deltas with stds (0.1, 0.1, 0.2, 0.2) (mmdetection's ATSS config); detection score = class score x
    sigmoid(centerness), the centerness applied after the per-level score threshold and top-k, as mmdetection."""

    stds = (0.1, 0.1, 0.2, 0.2)

    def score_factor(self, outputs):
        return at_least_float32(outputs.centerness).sigmoid()


class GFLFamily:
    """GFL: a discrete distribution over 0..reg_max stride units per side (4 x R logits); the distance is its
    expectation. The class logit is the joint class-quality score, trained on soft IoU targets (QFL)."""

    soft_targets = True
    DFL_EPS = 0.1  # targets are clamped to [0, reg_max - 0.1] (mmdetection's DistancePointBBoxCoder eps)

    def __init__(self, head_cfg):
        self.reg_max = head_cfg.reg_max
        self.box_channels = 4 * (self.reg_max + 1)

    def codes(self, box_regression):
        return distribution_integral(at_least_float32(box_regression))

    def encode(self, anchors, strides, boxes, clamp=True):
        """Distances from anchor centres to the box sides in stride units, clamped to [0, reg_max - 0.1]."""
        distances = encode_distances(anchor_centers(anchors), boxes, strides)
        return distances.clamp(min=0, max=self.reg_max - self.DFL_EPS) if clamp else distances

    def decode(self, anchors, strides, codes):
        return decode_distances(anchor_centers(anchors), codes, strides)

    def score_factor(self, outputs):
        return None
