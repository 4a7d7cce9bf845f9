"""Batch images of different sizes and pad ground truths to a common count M."""
import torch


def collate(batch, size_divisor=32):
    """Stack (image, target) items from data.coco.CocoDetection into padded tensors.

    Args:
        batch: list of B (image float [3, H_i, W_i], target dict) pairs.
        size_divisor: padded height and width are multiples of it (the largest FPN stride's
            divisor; use functools.partial(collate, size_divisor=...) in a DataLoader).
    Returns:
        images: float [B, 3, Hp, Wp], each image at the top-left, zeros (the mean colour after
            normalisation) on the bottom/right.
        targets: dict with
            'boxes' float [B, M, 4] xyxy pixels (padding rows are zeros),
            'labels' long [B, M] contiguous labels (padding rows -1),
            'valid' bool [B, M] True for real rows (crowd rows included),
            'crowd' bool [B, M] True for crowd rows (ignore regions; never positives),
            'image_ids' long [B], 'orig_sizes' long [B, 2] (h, w) of the files,
            'image_sizes' long [B, 2] (h, w) after resizing, before padding,
            'pad_sizes' long [B, 2] (h, w) of each image rounded up to size_divisor: its own padded area
                (anchors beyond it lie in another image's padding and take no loss),
            'scale_factors' float64 [B, 2] (w, h) resized / original per axis.
        M = max(1, largest box count in the batch): a batch without any box still has one padding
        row, so no tensor has a zero-sized dimension; positives are valid & ~crowd.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    batch_size = len(batch)
    max_height = max(image.shape[1] for image in images)
    max_width = max(image.shape[2] for image in images)
    padded_height = -(-max_height // size_divisor) * size_divisor
    padded_width = -(-max_width // size_divisor) * size_divisor
    padded = images[0].new_zeros((batch_size, 3, padded_height, padded_width))
    for index, image in enumerate(images):
        padded[index, :, :image.shape[1], :image.shape[2]] = image

    max_boxes = max(1, max(len(target["boxes"]) for target in targets))
    boxes = torch.zeros((batch_size, max_boxes, 4), dtype=torch.float32)
    labels = torch.full((batch_size, max_boxes), -1, dtype=torch.long)
    valid = torch.zeros((batch_size, max_boxes), dtype=torch.bool)
    crowd = torch.zeros((batch_size, max_boxes), dtype=torch.bool)
    for index, target in enumerate(targets):
        count = len(target["boxes"])
        boxes[index, :count] = target["boxes"]
        labels[index, :count] = target["labels"]
        valid[index, :count] = True
        crowd[index, :count] = target["crowd"]
    return padded, {
        "boxes": boxes,
        "labels": labels,
        "valid": valid,
        "crowd": crowd,
        "image_ids": torch.tensor([target["image_id"] for target in targets], dtype=torch.long),
        "orig_sizes": torch.tensor([list(target["orig_size"]) for target in targets], dtype=torch.long),
        "image_sizes": torch.tensor([list(target["size"]) for target in targets], dtype=torch.long),
        "pad_sizes": torch.tensor([[-(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor]
                                   for h, w in (target["size"] for target in targets)], dtype=torch.long),
        "scale_factors": torch.tensor([list(target["scale_factor"]) for target in targets], dtype=torch.float64),
    }
