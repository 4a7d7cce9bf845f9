"""Post-processing: scores -> per-level threshold and top-k -> decode and clip -> rescale -> drop empty boxes
-> class-wise NMS -> the best max_per_img, in mmdetection 3.3's order (BaseDenseHead._predict_by_feat_single and
_bbox_post_process), batched over the images.

The head family (detector/families.py) decodes the boxes and gives the score factor (ATSS's centerness); the
post-processor never asks which head produced the outputs and imports nothing used only in training.
"""
import torch
from torchvision.ops import nms

from .families import at_least_float32


class PostProcessor:
    """Turns HeadOutputs into detections in original-image pixels.

    Per level, the class scores (sigmoid) above score_thr, at most nms_pre of them; decoded boxes clipped to
    the resized image; the score factor applied (ATSS: x sigmoid(centerness)); boxes rescaled by the per-axis
    scale factors; boxes whose width or height is not > 0 dropped (mmdetection's min_bbox_size 0); NMS at
    nms_iou within each class of each image; the max_per_img best per image.
    """

    def __init__(self, family, test_cfg):
        self.family = family
        self.cfg = test_cfg

    def decode(self, outputs, batch_index, anchor_index):
        """Boxes [K, 4] (network-input pixels) of the selected (image, anchor) pairs."""
        codes = self.family.codes(outputs.box_regression[batch_index, anchor_index])
        anchors, strides = outputs.anchors[anchor_index], outputs.strides[anchor_index]
        return self.family.decode(anchors.to(codes.dtype), strides.to(codes.dtype), codes)

    def select(self, scores, num_per_level):
        """Per level and image, the top nms_pre (anchor, class) scores above score_thr.

        scores [B, A, C] -> (batch_index, anchor_index, labels, scores), each [K].
        """
        batch, _, num_classes = scores.shape
        selected, start = [], 0
        for count in num_per_level:
            level = scores[:, start:start + count].reshape(batch, -1)                   # [B, A_l * C]
            top_scores, top_index = level.topk(min(self.cfg.nms_pre, level.shape[1]), dim=1)  # [B, k], sorted
            batch_index, rank = torch.nonzero(top_scores > self.cfg.score_thr, as_tuple=True)
            flat = top_index[batch_index, rank]
            selected.append((batch_index, flat // num_classes + start, flat % num_classes,
                             top_scores[batch_index, rank]))
            start += count
        return [torch.cat(parts) for parts in zip(*selected)]

    @torch.no_grad()
    def __call__(self, outputs, image_sizes, scale_factors):
        """image_sizes [B, 2] (h, w) after resize; scale_factors [B, 2] (w, h) resized / original ->
        list of B dicts: boxes [K, 4] xyxy in original pixels, scores [K], labels [K] (contiguous)."""
        scores = at_least_float32(outputs.cls_logits).sigmoid()                   # [B, A, C]
        batch, _, num_classes = scores.shape
        batch_index, anchor_index, labels, kept_scores = self.select(scores, outputs.num_per_level)
        boxes = self.decode(outputs, batch_index, anchor_index)                 # [K, 4]
        heights, widths = image_sizes[batch_index, 0].to(boxes), image_sizes[batch_index, 1].to(boxes)
        boxes = boxes.clamp(min=0).minimum(torch.stack([widths, heights, widths, heights], dim=1))
        inverse = (1.0 / scale_factors.double()).to(boxes.dtype)[batch_index]    # [K, 2], as mmdetection
        boxes = boxes * inverse.repeat(1, 2)
        factor = self.family.score_factor(outputs)
        if factor is not None:
            kept_scores = kept_scores * factor[batch_index, anchor_index]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, kept_scores = boxes[nonempty], kept_scores[nonempty]
        batch_index, labels = batch_index[nonempty], labels[nonempty]
        keep = batched_nms(boxes, kept_scores, batch_index * num_classes + labels, self.cfg.nms_iou)
        results = []
        for image in range(batch):
            mine = keep[batch_index[keep] == image][:self.cfg.max_per_img]
            results.append({"boxes": boxes[mine], "scores": kept_scores[mine], "labels": labels[mine]})
        return results


def batched_nms(boxes, scores, groups, iou_threshold):
    """NMS within each group, one torchvision `nms` call: boxes [K, 4], scores [K], groups [K] -> kept indices,
    by decreasing score. Groups are moved apart by group * (max coordinate + 1), mmcv's batched_nms trick, so
    that for one image the boxes NMS compares are bit for bit mmdetection's."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
