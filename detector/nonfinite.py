"""A non-finite loss or gradient, caught at the step it happens, with the images that caused it.

    guard = NonFiniteGuard(policy="stop", max_skips=3, image_files=dataset.files_of)
    ... loss.backward() ...
    skip = guard.check(iteration, losses, targets, named_parameters)   # collective; raises NonFiniteError on 'stop'
    ... optimizer.step() unless skip ...
    guard.end_step(iteration, skipped=skip)                            # raises after max_skips skips in a row

`check` looks at the batch's ground-truth boxes, every 'loss_*' term and the gradients (one sum of their norms),
combines the answer over ranks (every rank takes the same decision; a NaN on one rank reaches all of them through
DDP's gradient all-reduce anyway) and, when something is not finite, gathers each rank's account: which loss
terms, which parameter's gradient, which images (ids and files) had non-finite boxes, and every image of the
batch. Policy 'stop' raises NonFiniteError before the optimizer step, so no weight, optimizer state, EMA or
checkpoint takes the NaN: the newest checkpoint is the last good one. Policy 'skip' drops the step (the caller
zeroes the gradients), logs the account, and stops after more than max_skips skipped steps in a row. (BatchNorm
running statistics that trained on a non-finite image are not rolled back.)
"""
import logging
import math

import torch

from . import dist
from .errors import UserError

logger = logging.getLogger("focaldet")


class NonFiniteError(UserError, FloatingPointError):
    """Training met a non-finite loss or gradient; the message names the iteration, terms and images."""


class NonFiniteGuard:
    ADVICE = ("nothing is saved from this step on, so the newest checkpoint is good; check these images "
              "(scripts/check_dataset.py), lower optim.lr or set optim.grad_clip")

    def __init__(self, policy="stop", max_skips=3, image_files=None):
        """policy: 'stop' | 'skip' (train.on_nonfinite); image_files: callable image ids -> file paths."""
        self.policy, self.max_skips = policy, int(max_skips)
        self.image_files = image_files or (lambda image_ids: ["?"] * len(image_ids))
        self.skipped_in_a_row = 0
        self.account = ""

    def check(self, iteration, losses, targets, named_parameters):
        """True when this step must be skipped; raises NonFiniteError under 'stop'. Collective over ranks.

        iteration: steps done before this one; losses: the criterion's dict ('loss_*' terms are checked); targets:
        the collated batch ('boxes' [B, M, 4], 'valid' [B, M], 'image_ids' [B]); named_parameters: (name,
        parameter) pairs whose .grad is checked (empty: none, e.g. under fp16's GradScaler, which skips
        overflowing steps itself, or before gradients are synchronised).
        """
        terms = {key: value.detach() for key, value in losses.items() if key.startswith("loss_")}
        bad_boxes = ~torch.isfinite(targets["boxes"]).all(dim=-1) & targets["valid"]          # [B, M]
        device = targets["boxes"].device
        values = torch.stack([v.float() for v in terms.values()]) if terms else torch.zeros(0, device=device)
        gradients = [p.grad for _, p in named_parameters if p.grad is not None]
        gradient_norms = torch.stack(torch._foreach_norm(gradients)).sum() if gradients else values.new_zeros(())
        finite = torch.isfinite(values).all() & torch.isfinite(gradient_norms).to(device) & ~bad_boxes.any()
        flag = (~finite).float().reshape(1)   # one synchronisation (.item() below) per check
        if dist.is_dist():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() == 0:
            return False
        accounts = dist.all_gather_objects(self._account(terms, bad_boxes, targets, named_parameters))
        self.account = "; ".join(f"rank {rank}: {text}" if len(accounts) > 1 else text
                                 for rank, text in enumerate(accounts))
        if self.policy == "stop":
            raise NonFiniteError(f"non-finite loss or gradient at iteration {iteration + 1}: {self.account}; "
                                 + self.ADVICE)
        return True

    def end_step(self, iteration, skipped):
        """Count skipped steps in a row; more than max_skips is a NonFiniteError."""
        if not skipped:
            self.skipped_in_a_row = 0
            return
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row > self.max_skips:
            raise NonFiniteError(f"non-finite loss or gradient at iteration {iteration + 1}, after {self.max_skips} "
                                 f"steps skipped in a row (train.max_nonfinite_skips): {self.account}; " + self.ADVICE)
        if dist.is_main_process():
            logger.warning(f"iteration {iteration + 1} skipped (train.on_nonfinite=skip, {self.skipped_in_a_row} in "
                           f"a row): {self.account}")

    def _account(self, terms, bad_boxes, targets, named_parameters):
        """This rank's part of the message: which terms, which gradient, which images."""
        image_ids = [int(i) for i in targets["image_ids"].tolist()]
        files = self.image_files(image_ids)
        parts = []
        bad_terms = {k: v.item() for k, v in terms.items() if not math.isfinite(v.item())}
        if bad_terms:
            parts.append("non-finite " + ", ".join(f"{k}={v}" for k, v in bad_terms.items()))
        bad_gradients = [name for name, p in named_parameters
                         if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad_gradients:
            parts.append(f"non-finite gradient of {bad_gradients[0]}" + (
                f" and {len(bad_gradients) - 1} more parameters" if len(bad_gradients) > 1 else ""))
        for index in bad_boxes.any(dim=1).nonzero().flatten().tolist():
            parts.append(f"non-finite ground-truth box in image {image_ids[index]} ({files[index]})")
        batch = ", ".join(f"{image_id} ({file})" for image_id, file in zip(image_ids, files))
        return (", ".join(parts) or "finite here") + f"; batch images {batch}"
