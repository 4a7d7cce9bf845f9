"""Plot the focal-loss family as the papers draw it, every curve computed by the functions in losses/.

    .venv/bin/python scripts/plot_losses.py --out docs/losses

Writes six PNGs to --out:
    focal_vs_cross_entropy.png  focal loss over p_t for gamma in {0, 0.5, 1, 2, 5} (gamma 0: cross-entropy), as Fig. 1
                                of Lin et al. 2017 (alpha off)
    quality_focal.png           QFL over the predicted score sigma for a soft target y = 0.5, beta in {0, 1, 2, 4}
    distribution_focal.png      DFL: the distribution that minimises it for y = 3.4 (mass on the two bins around y)
                                and its integral; the integral and two-bin mass of that minimiser over every y
    focal_l1.png                Focal L1 loss and its gradient over the residual x for several beta (alpha = e beta)
    iou_losses.png              iou, giou, diou, ciou, eiou, focal_eiou as a predicted box slides away from a ground
                                truth box, grows around it, and stretches around it (same area, other aspect)
    equalized_focal.png         EFL's focusing factor gamma_j and weight gamma_j / gamma over g_j, and the loss over
                                p_t for several g_j
"""
import argparse
import math
import os
import sys

import torch
from matplotlib.figure import Figure

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.box_coder import distribution_integral  # noqa: E402
from losses import (  # noqa: E402
    BOX_LOSSES,
    distribution_focal_loss,
    equalized_focal_loss,
    focal_l1_loss,
    l1_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from losses.equalized import equalized_focus  # noqa: E402  (the factors equalized_focal_loss itself uses)

DPI = 80


def new_figure(columns=1):
    figure = Figure(figsize=(5 * columns, 3.8), dpi=DPI)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def save(figure, out_dir, name):
    path = os.path.join(out_dir, name)
    figure.tight_layout()
    figure.savefig(path)
    print(path)


def logit(probability):
    """[N] probabilities -> logits [N, 1]: one class, so that the losses' [N, C] inputs have C = 1."""
    return (torch.log(probability) - torch.log1p(-probability))[:, None]


def positives(count):
    """Labels [N] of rows whose target is class 0 (targets are given by index, losses/focal.py)."""
    return torch.zeros(count, dtype=torch.long)


def plot_focal(out_dir):
    prob_true = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    figure, (axes,) = new_figure()
    for gamma in (0, 0.5, 1, 2, 5):
        # a positive (target 1) with score p_t; alpha < 0 turns the balance off, gamma 0 is cross-entropy
        loss = sigmoid_focal_loss(logit(prob_true), positives(500), alpha=-1, gamma=gamma)[:, 0]
        axes.plot(prob_true, loss, label=f"gamma = {gamma}" + (" (cross-entropy)" if gamma == 0 else ""))
    axes.set(xlabel="probability of the ground-truth class p_t", ylabel="loss", ylim=(0, 5),
             title="focal loss: -(1 - p_t)^gamma log p_t")
    axes.axvspan(0.6, 1, color="0.9", zorder=0)
    axes.text(0.8, 4.5, "well classified", ha="center")
    axes.legend()
    save(figure, out_dir, "focal_vs_cross_entropy.png")


def plot_quality_focal(out_dir):
    score = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    target = torch.full((500,), 0.5, dtype=torch.float64)
    figure, (axes,) = new_figure()
    for beta in (0, 1, 2, 4):
        loss = quality_focal_loss(logit(score), positives(500), target, beta=beta)[:, 0]
        axes.plot(score, loss, label=f"beta = {beta}")
    axes.axvline(0.5, color="0.5", linestyle=":")
    axes.set(xlabel="predicted score sigma", ylabel="loss", ylim=(0, 3),
             title="QFL = BCE(sigma, y) |y - sigma|^beta, y = 0.5")
    axes.legend()
    save(figure, out_dir, "quality_focal.png")


def minimise_distribution_focal(targets, num_bins, steps=1500):
    """Logits [N, R] minimising distribution_focal_loss for each target in `targets` [N] (Adam from zeros)."""
    logits = torch.zeros(len(targets), num_bins, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        distribution_focal_loss(logits, targets).sum().backward()
        optimizer.step()
    return logits.detach()


def integral(logits):
    """GFL's integral of each row of logits [N, R] -> [N], via the box coder's four-side version."""
    return distribution_integral(logits.repeat(1, 4))[:, 0]


def plot_distribution_focal(out_dir, num_bins=8, example=3.4):
    targets = torch.linspace(0, num_bins - 1, 141, dtype=torch.float64)
    logits = minimise_distribution_focal(torch.cat([torch.tensor([example], dtype=torch.float64), targets]),
                                         num_bins)
    figure, (left, right) = new_figure(2)
    probabilities = logits[0].softmax(-1)
    left.bar(range(num_bins), probabilities, color="tab:blue", label="softmax minimising DFL")
    left.axvline(example, color="tab:red", label=f"target y = {example}")
    left.axvline(integral(logits[:1])[0], color="k", linestyle="--",
                 label=f"integral sum_i i P(i) = {integral(logits[:1])[0]:.3f}")
    for index in (math.floor(example), math.floor(example) + 1):
        left.text(index, probabilities[index] + 0.02, f"{probabilities[index]:.2f}", ha="center")
    left.set(xlabel="bin i", ylabel="probability", ylim=(0, 1), title="DFL's two-bin target")
    left.legend(fontsize=8, loc="upper left")
    rest = logits[1:]
    lower = targets.floor().long().clamp(max=num_bins - 2)
    two_bins = rest.softmax(-1).gather(1, torch.stack([lower, lower + 1], 1)).sum(1)
    right.plot(targets, integral(rest), label="integral of the minimiser")
    right.plot(targets, targets, color="0.5", linestyle=":", label="y")
    right.set(xlabel="target y (bins)", ylabel="integral", title="the integral recovers y")
    twin = right.twinx()
    twin.plot(targets, two_bins, color="tab:green", label="mass on the two bins around y")
    twin.set(ylabel="mass on the two bins", ylim=(0, 1.3))
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    save(figure, out_dir, "distribution_focal.png")


def plot_focal_l1(out_dir):
    residual = torch.linspace(0, 2, 401, dtype=torch.float64, requires_grad=True)
    figure, (left, right) = new_figure(2)
    for beta in (1 / math.e, 0.5, 0.75, 1.0):
        loss = focal_l1_loss(residual, torch.zeros_like(residual), beta=beta)
        (gradient,) = torch.autograd.grad(loss.sum(), residual)
        label = f"beta = {beta:.3g}" + (" (1/e)" if beta == 1 / math.e else "")
        left.plot(residual.detach(), loss.detach(), label=label)
        right.plot(residual.detach(), gradient, label=label)
    l1 = l1_loss(residual, torch.zeros_like(residual))
    (l1_gradient,) = torch.autograd.grad(l1.sum(), residual)
    left.plot(residual.detach(), l1.detach(), color="0.5", linestyle=":", label="L1")
    right.plot(residual.detach()[1:], l1_gradient[1:], color="0.5", linestyle=":", label="L1")
    left.set(xlabel="residual x = |pred - target|", ylabel="loss", title="Focal L1 loss (alpha = e beta)")
    right.set(xlabel="residual x", ylabel="dL/dx", title="gradient: peak 1 at x = 1/(e beta)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    save(figure, out_dir, "focal_l1.png")


def plot_iou_losses(out_dir, size=10.0):
    """Three moves of a predicted box against a size x size ground truth at the origin; curves that coincide
    (e.g. diou = ciou = eiou for equal shapes) are told apart by their line styles."""
    ground_truth = torch.tensor([[0.0, 0.0, size, size]], dtype=torch.float64)
    shifts = torch.linspace(0, 2.5 * size, 251, dtype=torch.float64)
    slid = ground_truth + torch.stack([shifts, torch.zeros_like(shifts), shifts, torch.zeros_like(shifts)], 1)
    scales = torch.linspace(1, 4, 251, dtype=torch.float64)
    centre = size / 2
    grown = torch.stack([centre - size / 2 * scales, centre - size / 2 * scales,
                         centre + size / 2 * scales, centre + size / 2 * scales], 1)
    # same centre and area, width / height from 1 to 4
    half_width, half_height = size / 2 * scales.sqrt(), size / 2 / scales.sqrt()
    stretched = torch.stack([centre - half_width, centre - half_height, centre + half_width, centre + half_height], 1)
    moves = [(shifts / size, slid, "shift / side (same size, moved right)", "slides away from the ground truth"),
             (scales, grown, "side / ground-truth side (same centre)", "grows around the ground truth"),
             (scales, stretched, "width / height (same centre and area)", "stretches around the ground truth")]
    figure, all_axes = new_figure(3)
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 2))]
    for axes, (abscissa, boxes, xlabel, title) in zip(all_axes, moves):
        for (name, function), style in zip(BOX_LOSSES.items(), styles):
            axes.plot(abscissa, function(boxes, ground_truth.expand_as(boxes)), linestyle=style, linewidth=1.8,
                      label=name)
        axes.set(xlabel=xlabel, ylabel="loss", title=f"a box {title}")
        axes.legend(fontsize=8)
    all_axes[0].axvline(1, color="0.5", linewidth=0.8)
    all_axes[0].text(1.03, 0.05, "no overlap", fontsize=8)
    save(figure, out_dir, "iou_losses.png")


def plot_equalized_focal(out_dir, gamma=2.0, scale=8.0):
    ratio = torch.linspace(0, 1, 201, dtype=torch.float64)  # g_j, the class's positive/negative gradient ratio
    focus, weight = equalized_focus(ratio, gamma, scale, ratio)
    figure, (left, right) = new_figure(2)
    left.plot(ratio, focus, label="gamma_j = gamma + s (1 - g_j)")
    left.plot(ratio, weight, label="weight gamma_j / gamma")
    left.set(xlabel="g_j (accumulated positive / negative gradient)", ylabel="value",
             title=f"EFL focusing factor (gamma = {gamma:g}, s = {scale:g})")
    left.legend(fontsize=8)
    prob_true = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    for value in (1.0, 0.75, 0.5, 0.25, 0.0):
        ratio_j = torch.tensor([value], dtype=torch.float64)
        loss = equalized_focal_loss(logit(prob_true), positives(500), pos_neg=ratio_j, alpha=-1, gamma=gamma,
                                    scale=scale)[:, 0]
        right.plot(prob_true, loss, label=f"g_j = {value:g}" + (" (focal loss)" if value == 1 else ""))
    right.set(xlabel="p_t", ylabel="loss", ylim=(0, 4), title="EFL of a positive: rare classes (small g_j)")
    right.legend(fontsize=8)
    save(figure, out_dir, "equalized_focal.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("work_dirs", "loss_plots"), help="folder for the PNGs")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for plot in (plot_focal, plot_quality_focal, plot_distribution_focal, plot_focal_l1, plot_iou_losses,
                 plot_equalized_focal):
        plot(args.out)


if __name__ == "__main__":
    main()
