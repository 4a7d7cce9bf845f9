"""Post-processing: scores -> per-level threshold and top-k -> decode -> class-wise NMS -> rescale.

Batched over the images: candidates of all images go through one torchvision `batched_nms` call with
the group index image * C + class, so boxes of different images or classes never suppress each other.
"""
import torch
from torchvision.ops import batched_nms

from .anchors import anchor_centers
from .box_coder import decode_deltas, decode_distances, distribution_integral
from .criterion import ATSS_DELTA_STDS


class PostProcessor:
    """Turns HeadOutputs into detections in original-image pixels.

    Scores: sigmoid of the class logits (GFL: the joint class-quality score; ATSS: class score x
    sigmoid(centerness), as mmdetection). Per level, candidates with score > score_thr, at most
    nms_pre of them; NMS IoU nms_iou per class; max_per_img detections per image.
    """

    def __init__(self, head_type, test_cfg):
        self.head_type = head_type
        self.cfg = test_cfg

    def decode(self, outputs, batch_index, anchor_index):
        """Boxes [K, 4] (network-input pixels) of the selected (image, anchor) pairs."""
        regression = outputs.box_regression[batch_index, anchor_index].float()
        anchors = outputs.anchors[anchor_index]
        if self.head_type == "gfl":
            distances = distribution_integral(regression)
            return decode_distances(anchor_centers(anchors), distances, outputs.strides[anchor_index])
        if self.head_type == "atss":
            regression = regression * regression.new_tensor(ATSS_DELTA_STDS)
        return decode_deltas(anchors, regression)

    @torch.no_grad()
    def __call__(self, outputs, image_sizes, scales, orig_sizes):
        """image_sizes [B, 2] (h, w) after resize, scales [B], orig_sizes [B, 2] ->
        list of B dicts: boxes [K, 4] xyxy in original pixels, scores [K], labels [K] (contiguous)."""
        cfg = self.cfg
        scores = outputs.cls_logits.float().sigmoid()                            # [B, A, C]
        batch, _, num_classes = scores.shape
        selected, start = [], 0
        for count in outputs.num_per_level:
            level = scores[:, start:start + count].reshape(batch, -1)               # [B, A_l * C]
            top_scores, top_index = level.topk(min(cfg.nms_pre, level.shape[1]), dim=1)  # [B, k]
            batch_index, rank = torch.nonzero(top_scores > cfg.score_thr, as_tuple=True)
            flat = top_index[batch_index, rank]
            selected.append((batch_index, flat // num_classes + start, flat % num_classes,
                             top_scores[batch_index, rank]))
            start += count
        batch_index, anchor_index, labels, kept_scores = (torch.cat(parts) for parts in zip(*selected))
        if self.head_type == "atss":
            kept_scores = kept_scores * outputs.centerness[batch_index, anchor_index].float().sigmoid()
        boxes = self.decode(outputs, batch_index, anchor_index)
        heights, widths = image_sizes[batch_index, 0].to(boxes), image_sizes[batch_index, 1].to(boxes)
        limits = torch.stack([widths, heights, widths, heights], dim=1)                # [K, 4]
        boxes = boxes.clamp(min=0).minimum(limits)
        keep = batched_nms(boxes, kept_scores, batch_index * num_classes + labels, cfg.nms_iou)  # sorted by score
        results = []
        for image in range(batch):
            mine = keep[batch_index[keep] == image][:cfg.max_per_img]
            image_boxes = boxes[mine] / scales[image].to(boxes)
            height, width = orig_sizes[image].tolist()
            image_boxes[:, 0::2] = image_boxes[:, 0::2].clamp(0, width)
            image_boxes[:, 1::2] = image_boxes[:, 1::2].clamp(0, height)
            results.append({"boxes": image_boxes, "scores": kept_scores[mine], "labels": labels[mine]})
        return results
