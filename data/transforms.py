"""Image + target transforms for detection.

Each transform is a callable (image, target) -> (image, target). The image is a PIL RGB image until
`Normalize`, which turns it into a float tensor [3, H, W]. The target dict follows
data.coco.CocoDetection: 'boxes' float tensor [N, 4] xyxy in pixels of the current image, 'size'
(h, w) of the current image, 'scale_factor' (w, h): current size / original size per axis; other keys pass
through.
Randomness uses torch's generator, which DataLoader seeds per worker.
"""
import numpy as np
import torch
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, on 0..255 pixels (ImageNet statistics)
PIXEL_STD = (58.395, 57.12, 57.375)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self):
        return "Compose(" + ", ".join(repr(transform) for transform in self.transforms) + ")"


class Resize:
    """Resize keeping the aspect ratio: scale = min(short / short_side, max_size / long_side).

    Args:
        short_sides: target lengths of the short side. mode 'choice' picks one of them per image;
            mode 'range' draws an integer uniformly in [min(short_sides), max(short_sides)].
        max_size: cap on the long side after resizing.
    The image is resized to (int(w * scale + 0.5), int(h * scale + 0.5)) with bilinear filtering (mmcv's
    rounding). After rounding the two axes are scaled by slightly different factors, new_w / w and new_h / h:
    boxes are multiplied by each (as mmdetection), clipped to the new size, and the factors kept in
    'scale_factor' (w, h), which post-processing undoes.
    """

    def __init__(self, short_sides, max_size, mode="choice"):
        if mode not in ("choice", "range"):
            raise ValueError(f"Resize mode must be 'choice' or 'range', got {mode!r}")
        self.short_sides = [int(side) for side in short_sides]
        if not self.short_sides:
            raise ValueError("Resize needs at least one short side")
        self.max_size = int(max_size)
        self.mode = mode

    def _short_side(self):
        if self.mode == "range":
            low, high = min(self.short_sides), max(self.short_sides)
            return int(torch.randint(low, high + 1, ()).item())
        return self.short_sides[int(torch.randint(len(self.short_sides), ()).item())]

    def __call__(self, image, target):
        width, height = image.size
        scale = min(self._short_side() / min(width, height), self.max_size / max(width, height))
        new_width, new_height = max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
        if (new_width, new_height) != (width, height):  # an image already at the size is used as it is
            image = image.resize((new_width, new_height), Image.BILINEAR)
        target = dict(target)
        scale_x, scale_y = new_width / width, new_height / height
        boxes = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=target["boxes"].dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_height)
        target["boxes"] = boxes
        target["size"] = (new_height, new_width)
        previous_x, previous_y = target.get("scale_factor", (1.0, 1.0))
        target["scale_factor"] = (previous_x * scale_x, previous_y * scale_y)
        return image, target

    def __repr__(self):
        return f"Resize(short_sides={self.short_sides}, max_size={self.max_size}, mode={self.mode!r})"


class RandomHorizontalFlip:
    """Mirror the image and its boxes left-right with probability p."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, image, target):
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return image, target
        width = image.size[0]
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        target = dict(target)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        target["boxes"] = boxes
        return image, target

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Cut a random window of at most (height, width) pixels out of the (resized) image.

    Objects keep their scale, so a detector can be trained on less image area per step without
    shrinking small objects (the embedded demo's CPU budget; SSD and YOLO crop likewise). The window's
    corner is uniform over the positions where it fits; a side shorter than the window is kept whole.
    Boxes are shifted and clipped to the window; a box left under 1 px wide or high (outside the
    window, or a sliver on its border) is dropped with its label, the data rule of loading. Up to
    `attempts` windows are drawn to find one that keeps a non-crowd box (the first is kept if none
    does, and trains as an image without objects).
    """

    def __init__(self, height, width, attempts=10):
        self.height, self.width, self.attempts = int(height), int(width), int(attempts)

    def _window(self, width, height):
        crop_w, crop_h = min(self.width, width), min(self.height, height)
        left = int(torch.randint(width - crop_w + 1, ()).item())
        top = int(torch.randint(height - crop_h + 1, ()).item())
        return left, top, crop_w, crop_h

    def _keep(self, boxes, window):
        left, top, crop_w, crop_h = window
        shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        shifted[:, 0::2] = shifted[:, 0::2].clamp(0, crop_w)
        shifted[:, 1::2] = shifted[:, 1::2].clamp(0, crop_h)
        keep = ((shifted[:, 2] - shifted[:, 0]) >= 1) & ((shifted[:, 3] - shifted[:, 1]) >= 1)
        return shifted, keep

    def __call__(self, image, target):
        width, height = image.size
        if width <= self.width and height <= self.height:
            return image, target
        boxes, crowd = target["boxes"], target.get("crowd")
        for attempt in range(self.attempts):
            window = self._window(width, height)
            shifted, keep = self._keep(boxes, window)
            if attempt == 0:
                first = (window, shifted, keep)
            if (keep & ~crowd).any() if crowd is not None else keep.any():
                break
        else:
            window, shifted, keep = first
        left, top, crop_w, crop_h = window
        image = image.crop((left, top, left + crop_w, top + crop_h))
        target = dict(target)
        for key in ("labels", "crowd"):
            if key in target:
                target[key] = target[key][keep]
        target["boxes"] = shifted[keep]
        target["size"] = (crop_h, crop_w)
        return image, target

    def __repr__(self):
        return f"RandomCrop(height={self.height}, width={self.width})"


class Normalize:
    """PIL RGB image (0..255) -> float tensor [3, H, W] = (pixel - mean) / std; target unchanged."""

    def __init__(self, mean=PIXEL_MEAN, std=PIXEL_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, target):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # [H, W, 3]
        tensor = pixels.permute(2, 0, 1).float()  # [3, H, W]
        return (tensor - self.mean) / self.std, target

    def __repr__(self):
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def build_transforms(train, short_sides, max_size, mode="choice", flip_prob=0.5, crop=None):
    """Training: Resize(short_sides, mode) [+ RandomCrop(*crop)] + RandomHorizontalFlip(flip_prob) + Normalize.
    Testing: Resize to the largest of short_sides (single scale) + Normalize.
    """
    if isinstance(short_sides, int):
        short_sides = [short_sides]
    if train:
        crops = [RandomCrop(*crop)] if crop else []
        return Compose([Resize(short_sides, max_size, mode), *crops, RandomHorizontalFlip(flip_prob),
                        Normalize()])
    return Compose([Resize([max(short_sides)], max_size), Normalize()])
