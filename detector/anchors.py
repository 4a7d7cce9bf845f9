"""Anchors for all FPN levels at once, shared by every image of a batch.

Order: level-major (P3 first); inside a level, locations row-major (y, then x); inside a location,
the K = len(ratios) x scales_per_octave anchors (ratio-major). This matches the head's flattening
[B, K * C, H, W] -> [B, H, W, K, C] -> [B, H * W * K, C].
"""
import torch


class AnchorGenerator:
    """Anchor boxes [A, 4] (xyxy pixels), their strides [A] and the count per level.

    Grid centres sit at (i + offset) * stride (offset 0 as mmdetection). Anchor sides are
    stride * octave_base_scale * 2^(k / scales_per_octave) for k < scales_per_octave, reshaped by
    each ratio r = h / w keeping the area. RetinaNet: 4 * 2^(k/3), 3 ratios -> 9 anchors per location
    (32..813 px over strides 8..128); ATSS / GFL: octave_base_scale 8, one scale, ratio 1.
    """

    CACHE_SIZE = 64

    def __init__(self, strides, octave_base_scale, scales_per_octave, ratios, offset=0.0):
        self.strides = list(strides)
        self.offset = offset
        scales = octave_base_scale * 2.0 ** (torch.arange(scales_per_octave, dtype=torch.float64) / scales_per_octave)
        ratios = torch.as_tensor(ratios, dtype=torch.float64)
        h_ratios = ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        widths = (w_ratios[:, None] * scales[None, :]).reshape(-1)   # [K] in stride units
        heights = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # [K]
        self.base = torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # [K, 4]
        self.num_per_location = self.base.shape[0]
        self._cache = {}  # (feature sizes, device) -> result; bounded, since multi-scale training varies sizes

    # Eager under torch.compile: traced, the cache lookup would become a guard on the dict's contents, and the
    # compiled model would recompile once after its first call filled the cache (a graph break here costs nothing:
    # the anchors are the forward's last step).
    @torch.compiler.disable
    def __call__(self, feature_sizes, device, dtype=torch.float32):
        """feature_sizes: [(H_l, W_l)] per level -> (anchors [A, 4], strides [A], num_per_level [L]) in `dtype`
        (computed in float64, so float64 anchors are exact)."""
        key = (tuple(tuple(s) for s in feature_sizes), str(device), dtype)
        if key not in self._cache:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            anchors, strides, counts = [], [], []
            for (height, width), stride in zip(feature_sizes, self.strides):
                ys = (torch.arange(height, dtype=torch.float64) + self.offset) * stride
                xs = (torch.arange(width, dtype=torch.float64) + self.offset) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")
                centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)   # [H*W, 1, 4]
                level = (centres + self.base[None] * stride).reshape(-1, 4)           # [H*W*K, 4]
                anchors.append(level)
                strides.append(torch.full((level.shape[0],), float(stride), dtype=torch.float64))
                counts.append(level.shape[0])
            self._cache[key] = (torch.cat(anchors).to(device, dtype), torch.cat(strides).to(device, dtype), counts)
        return self._cache[key]


def anchor_centers(anchors):
    """[..., 4] -> [..., 2] centre (x, y)."""
    return (anchors[..., :2] + anchors[..., 2:]) / 2


def inside_padded_images(anchors, strides, offset, pad_sizes):
    """[B, A] bool: the anchor's grid cell starts inside the image's own padded area (mmdetection's valid_flags).

    An image smaller than its batch tensor has its own padded size (its resized size rounded up to the size
    divisor, pad_sizes [B, 2] (h, w)); the cells beyond it lie in another image's padding. Cell (i, j) of a
    level with stride s is valid when i * s < h and j * s < w; its anchor centre is ((j + offset) s, (i + offset) s).
    """
    origins = anchor_centers(anchors) - offset * strides[:, None]          # [A, 2] (x, y) of each cell's corner
    pad_sizes = pad_sizes.to(origins.dtype)
    return (origins[None, :, 0] < pad_sizes[:, None, 1]) & (origins[None, :, 1] < pad_sizes[:, None, 0])
