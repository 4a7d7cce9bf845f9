"""Exponential moving average of a model's weights (train.ema), evaluated and saved instead of the raw weights.

    ema = ModelEMA(model, decay=0.9998, warmup=2000)
    ... optimizer.step(); ema.update(model) ...
    evaluate(ema.model, ...)

After the t-th update (t = 1, 2, ...) every floating-point parameter and buffer e of the copy becomes
    e <- d_t e + (1 - d_t) w,   d_t = decay x (1 - exp(-t / warmup)),
so the average starts as the weights themselves (d_1 ~ 0) and its horizon grows to 1 / (1 - decay) steps over the
first few `warmup` updates: YOLOX's ModelEMA, and mmdetection's ExpMomentumEMA (momentum 1 - decay, gamma warmup).
warmup 0 uses the constant decay from the first update. Integer buffers (BatchNorm's num_batches_tracked) are
copied. The average is kept in float32 on the model's device, whatever the training precision.
"""
import copy
import math

import torch


class ModelEMA:
    def __init__(self, model, decay=0.9998, warmup=2000):
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay, self.warmup = float(decay), int(warmup)
        self.updates = 0

    def current_decay(self):
        """d_t of the next update (t = self.updates + 1)."""
        if self.warmup == 0:
            return self.decay
        return self.decay * (1 - math.exp(-(self.updates + 1) / self.warmup))

    @torch.no_grad()
    def update(self, model):
        """Fold the weights of `model` (the bare module, not a DDP wrapper) into the average."""
        decay = self.current_decay()
        averaged = [t for t in self.model.state_dict().values() if t.dtype.is_floating_point]
        current = [t.detach() for t in model.state_dict().values() if t.dtype.is_floating_point]
        torch._foreach_lerp_(averaged, current, 1 - decay)   # e + (1 - d) (w - e) = d e + (1 - d) w
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values()):
            if not mine.dtype.is_floating_point:
                mine.copy_(theirs)
        self.updates += 1
