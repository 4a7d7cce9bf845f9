"""Unit tests of losses/ and detector/box_ops.py: values, gradients, names (CPU, seconds)."""
import math

import pytest
import torch
import torch.nn.functional as F

import losses
from detector import box_ops


def _random_boxes(count, generator, scale=100.0, dtype=torch.float64):
    corner = torch.rand(count, 2, generator=generator, dtype=dtype) * scale
    size = torch.rand(count, 2, generator=generator, dtype=dtype) * scale + 1
    return torch.cat([corner, corner + size], dim=1)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def classification_inputs(generator):
    """logits [40, 6], labels [40] in -1..5 (-1: background row) and the same targets as a dense one-hot [40, 6]."""
    logits = torch.randn(40, 6, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(-1, 6, (40,), generator=generator)
    labels[:3] = torch.tensor([-1, 0, 5])
    dense = F.one_hot(labels.clamp(min=0), 6).double() * (labels >= 0).double()[:, None]
    return logits, labels, dense


def test_focal_matches_torchvision(classification_inputs):
    torchvision_ops = pytest.importorskip('torchvision.ops')
    logits, labels, dense = classification_inputs
    for alpha, gamma in [(0.25, 2.0), (-1, 2.0), (0.5, 0.0), (0.25, 1.5)]:
        expected = torchvision_ops.sigmoid_focal_loss(logits, dense, alpha, gamma, reduction='none')
        ours = losses.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)
        assert ours.shape == (40, 6)
        torch.testing.assert_close(ours, expected)


def test_focal_gradient_matches_torchvision(classification_inputs):
    """The in-place writes at the target entries keep autograd exact (same gradient as the dense form)."""
    torchvision_ops = pytest.importorskip('torchvision.ops')
    logits, labels, dense = classification_inputs
    ours, reference = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    losses.sigmoid_focal_loss(ours, labels).sum().backward()
    torchvision_ops.sigmoid_focal_loss(reference, dense, reduction='sum').backward()
    torch.testing.assert_close(ours.grad, reference.grad)


def test_focal_gamma_zero_without_alpha_is_bce(classification_inputs):
    logits, labels, dense = classification_inputs
    bce = F.binary_cross_entropy_with_logits(logits, dense, reduction='none')
    torch.testing.assert_close(losses.sigmoid_focal_loss(logits, labels, alpha=-1, gamma=0.0), bce)
    torch.testing.assert_close(losses.binary_cross_entropy(logits, labels), bce)


def test_one_hot_losses_refuse_soft_scores(classification_inputs):
    logits, labels, _ = classification_inputs
    scores = torch.full((40,), 0.5, dtype=torch.float64)
    for name in losses.ONE_HOT_ONLY:
        with pytest.raises(ValueError, match='one-hot'):
            losses.get_loss(name)(logits, labels, scores, **({'pos_neg': torch.ones(6)} if name in losses.GRADIENTS
                                                             else {}))


def test_focal_is_finite_for_huge_logits():
    logits = torch.tensor([[200.0, -200.0]])
    loss = losses.sigmoid_focal_loss(logits, torch.tensor([1]))
    assert torch.isfinite(loss).all() and loss.min() > 1.0


def test_quality_focal_minimum_at_target():
    scores = torch.tensor([0.0, 0.1, 0.37, 0.5, 0.83, 1.0], dtype=torch.float64)
    logits = torch.logit(scores.clamp(1e-9, 1 - 1e-9))[:, None].requires_grad_()        # [6, 1]
    labels = torch.zeros(6, dtype=torch.long)
    loss = losses.quality_focal_loss(logits, labels, scores)
    loss.sum().backward()
    assert logits.grad.abs().max() < 1e-6
    interior = slice(1, -1)  # at y = 0 or 1 the clamped logit is not exactly at the minimum
    for shift in (-0.3, 0.3):
        shifted = losses.quality_focal_loss(logits.detach() + shift, labels, scores)
        assert (shifted[interior] > loss.detach()[interior] + 1e-5).all()


def test_quality_focal_with_zero_target_is_bce_times_sigmoid_power():
    logits = torch.tensor([[-2.0, 0.0, 3.0]], dtype=torch.float64)
    expected = F.softplus(logits) * torch.sigmoid(logits) ** 2
    torch.testing.assert_close(losses.quality_focal_loss(logits, torch.tensor([-1])), expected)


def _quality_focal_dense(logits, dense, beta=2.0):
    """QFL from its formula on a dense target (the golden README's): BCE(x, y) |y - sigmoid(x)|^beta."""
    bce = F.binary_cross_entropy_with_logits(logits, dense, reduction='none')
    return bce * (dense - logits.sigmoid()).abs() ** beta


def test_quality_focal_with_soft_scores_matches_the_dense_formula(classification_inputs, generator):
    logits, labels, dense = classification_inputs
    scores = torch.rand(40, generator=generator, dtype=torch.float64)
    expected = _quality_focal_dense(logits, dense * scores[:, None])
    torch.testing.assert_close(losses.quality_focal_loss(logits, labels, scores), expected)
    torch.testing.assert_close(losses.quality_focal_loss(logits, labels), _quality_focal_dense(logits, dense))


def test_distribution_focal_at_integer_is_cross_entropy(generator):
    logits = torch.randn(10, 17, generator=generator, dtype=torch.float64)
    target = torch.arange(10, dtype=torch.float64) + 3
    expected = F.cross_entropy(logits, target.long(), reduction='none')
    torch.testing.assert_close(losses.distribution_focal_loss(logits, target), expected)


def test_distribution_focal_interpolates_and_accepts_last_bin(generator):
    logits = torch.randn(3, 17, generator=generator, dtype=torch.float64)
    log_prob = F.log_softmax(logits, dim=1)
    target = torch.tensor([2.25, 15.99, 16.0], dtype=torch.float64)
    expected = torch.stack([-(0.75 * log_prob[0, 2] + 0.25 * log_prob[0, 3]),
                            -(0.01 * log_prob[1, 15] + 0.99 * log_prob[1, 16]),
                            -log_prob[2, 16]])
    torch.testing.assert_close(losses.distribution_focal_loss(logits, target), expected)


def test_equalized_focal_with_unit_buffer_is_focal(classification_inputs):
    logits, labels, _ = classification_inputs
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(losses.equalized_focal_loss(logits, labels, pos_neg=ones),
                               losses.sigmoid_focal_loss(logits, labels))


def test_equalized_focal_weights_rare_classes():
    logits, labels = torch.tensor([[1.0, 1.0]]), torch.tensor([-1])
    pos_neg = torch.tensor([1.0, 0.0])
    loss = losses.equalized_focal_loss(logits, labels, pos_neg=pos_neg, alpha=-1)
    prob = torch.sigmoid(torch.tensor(1.0))
    expected = torch.stack([prob ** 2, 5 * prob ** 10]) * F.softplus(torch.tensor(1.0))
    torch.testing.assert_close(loss[0], expected)


def _equalized_focal_dense(logits, dense, pos_neg, alpha, gamma=2.0, scale=8.0):
    """EFL from its formula (REFERENCE.md) on a dense one-hot target, for autograd: alpha_t (gamma_j / gamma)
    (1 - p_t)^gamma_j (-log p_t), gamma_j = gamma + scale (1 - g_j)."""
    focus = gamma + scale * (1 - pos_neg)
    prob = logits.sigmoid()
    prob_true = torch.where(dense > 0, prob, 1 - prob)
    alpha_t = torch.where(dense > 0, alpha, 1 - alpha) if alpha >= 0 else torch.ones_like(dense)
    return alpha_t * (focus / gamma) * (1 - prob_true) ** focus * -torch.log(prob_true)


@pytest.mark.parametrize('alpha', [0.25, -1])
def test_equalized_focal_gradient_matches_autograd_of_the_formula(classification_inputs, generator, alpha):
    """Our backward is the closed form (losses/focal.py, ClosedFormLoss); autograd of the formula written out above
    is the independent check, of the values and of the gradient (equalized_focal_grad and the loss's backward)."""
    logits, labels, dense = classification_inputs
    pos_neg = torch.rand(6, generator=generator, dtype=torch.float64)
    pos_neg[0] = 1.0
    reference_logits = logits.clone().requires_grad_()
    reference = _equalized_focal_dense(reference_logits, dense, pos_neg, alpha, scale=4.0)
    reference.sum().backward()
    ours = logits.clone().requires_grad_()
    values = losses.equalized_focal_loss(ours, labels, pos_neg=pos_neg, alpha=alpha, scale=4.0)
    values.sum().backward()
    torch.testing.assert_close(values, reference)
    torch.testing.assert_close(ours.grad, reference_logits.grad)
    closed_form = losses.equalized_focal_grad(logits, labels, pos_neg=pos_neg, alpha=alpha, scale=4.0)
    assert not closed_form.requires_grad
    torch.testing.assert_close(closed_form, reference_logits.grad)


def test_loss_backward_scales_by_the_incoming_gradient(classification_inputs, generator):
    """The closed-form backward multiplies by grad_output: a weighted row sum (the criterion's ignore mask) and
    a scale reach the logits as autograd of the formula says."""
    logits, labels, dense = classification_inputs
    row_weights = (torch.rand(40, generator=generator) > 0.3).double() * 0.7
    ours, reference_logits = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    (losses.sigmoid_focal_loss(ours, labels).sum(-1) * row_weights).sum().backward()
    (_equalized_focal_dense(reference_logits, dense, torch.ones(6, dtype=torch.float64), 0.25).sum(-1)
     * row_weights).sum().backward()
    torch.testing.assert_close(ours.grad, reference_logits.grad)
    assert (ours.grad[row_weights == 0] == 0).all()


def test_equalized_quality_focal_with_unit_buffer_is_quality_focal(classification_inputs, generator):
    logits, labels, _ = classification_inputs
    scores = torch.rand(40, generator=generator, dtype=torch.float64)
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(losses.equalized_quality_focal_loss(logits, labels, scores, pos_neg=ones),
                               losses.quality_focal_loss(logits, labels, scores))


def test_equalized_quality_focal_by_hand():
    """w_j BCE(x, y) |y - p|^gamma_j, gamma_j = 2 + 8 (1 - g_j), w_j = gamma_j / 2: one soft positive, one negative."""
    logits = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    pos_neg = torch.tensor([0.75, 0.5], dtype=torch.float64)                   # gamma = (4, 6), w = (2, 3)
    loss = losses.equalized_quality_focal_loss(logits, torch.tensor([0]), torch.tensor([0.6], dtype=torch.float64),
                                               pos_neg=pos_neg)
    p0, p1 = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))
    positive = 2 * -(0.6 * math.log(p0) + 0.4 * math.log(1 - p0)) * abs(0.6 - p0) ** 4
    negative = 3 * -math.log(1 - p1) * p1 ** 6
    torch.testing.assert_close(loss[0], torch.tensor([positive, negative], dtype=torch.float64))


@pytest.mark.parametrize('scale', [8.0, 4.0, 0.0])
def test_equalized_quality_focal_gradient_matches_autograd_of_the_formula(classification_inputs, generator, scale):
    """Autograd of w_j BCE(x, y) |y - p|^gamma_j written out on a dense target is the independent check of our
    closed-form backward and of equalized_quality_focal_grad; scale 0 is QFL itself (mmdetection's formula)."""
    logits, labels, dense = classification_inputs
    scores = torch.rand(40, generator=generator, dtype=torch.float64)
    scores[1] = 0.0                                                  # a positive whose IoU is 0
    logits = logits.clone()
    logits[2, 5] = torch.logit(scores[2])                            # p = y exactly: the minimum, gradient 0
    pos_neg = torch.rand(6, generator=generator, dtype=torch.float64)
    focus = 2.0 + scale * (1 - pos_neg)
    reference_logits = logits.clone().requires_grad_()
    soft = dense * scores[:, None]
    bce = F.binary_cross_entropy_with_logits(reference_logits, soft, reduction='none')
    reference = focus / 2.0 * bce * (soft - reference_logits.sigmoid()).abs() ** focus
    reference.sum().backward()
    ours = logits.clone().requires_grad_()
    values = losses.equalized_quality_focal_loss(ours, labels, scores, pos_neg=pos_neg, scale=scale)
    values.sum().backward()
    torch.testing.assert_close(values, reference)
    torch.testing.assert_close(ours.grad, reference_logits.grad)
    closed_form = losses.equalized_quality_focal_grad(logits, labels, scores, pos_neg=pos_neg, scale=scale)
    assert not closed_form.requires_grad
    torch.testing.assert_close(closed_form, reference_logits.grad)
    assert abs(closed_form[2, 5]) < 1e-12
    if scale == 0.0:
        qfl_logits = logits.clone().requires_grad_()
        losses.quality_focal_loss(qfl_logits, labels, scores).sum().backward()
        torch.testing.assert_close(qfl_logits.grad, reference_logits.grad)


def test_focal_l1_continuity_and_gradient_peak():
    for beta in (0.5, 0.8):
        alpha = math.e * beta
        below = torch.tensor([1 - 1e-9], dtype=torch.float64, requires_grad=True)
        above = torch.tensor([1 + 1e-9], dtype=torch.float64, requires_grad=True)
        loss_below = losses.focal_l1_loss(below, torch.zeros(1, dtype=torch.float64), beta=beta)
        loss_above = losses.focal_l1_loss(above, torch.zeros(1, dtype=torch.float64), beta=beta)
        assert abs(loss_below.item() - loss_above.item()) < 1e-7
        loss_below.backward()
        loss_above.backward()
        assert abs(below.grad.item() - above.grad.item()) < 1e-7
        assert abs(above.grad.item() + alpha * math.log(beta)) < 1e-7
        residual = torch.linspace(1e-4, 0.999, 20001, dtype=torch.float64, requires_grad=True)
        losses.focal_l1_loss(residual, torch.zeros_like(residual), beta=beta).sum().backward()
        peak = residual.grad.argmax()
        assert abs(residual[peak].item() - 1 / (math.e * beta)) < 1e-3
        assert abs(residual.grad[peak].item() - 1.0) < 1e-6  # alpha = e * beta: peak gradient 1


def test_focal_l1_is_zero_and_smooth_at_zero_residual():
    pred = torch.tensor([0.0, -0.3, 2.0], dtype=torch.float64, requires_grad=True)
    loss = losses.focal_l1_loss(pred, torch.zeros(3, dtype=torch.float64))
    loss.sum().backward()
    assert loss[0].item() == 0 and torch.isfinite(pred.grad).all() and pred.grad[0].item() == 0
    assert pred.grad[1] < 0 < pred.grad[2]


def test_smooth_l1_and_l1():
    pred = torch.tensor([[0.05, -0.5, 2.0, 0.0]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    torch.testing.assert_close(losses.smooth_l1_loss(pred, target, beta=0.1),
                               F.smooth_l1_loss(pred, target, beta=0.1, reduction='none'))
    torch.testing.assert_close(losses.smooth_l1_loss(pred, target, beta=0.0), losses.l1_loss(pred, target))
    assert losses.smooth_l1_loss(pred, target).shape == (1, 4)


@pytest.mark.parametrize('variant', ['plain', 'mmdet'])
def test_ciou_identical_boxes_float32_no_nan(generator, variant):
    boxes = _random_boxes(16, generator, scale=1000.0, dtype=torch.float32)
    pred = boxes.clone().requires_grad_()
    loss = losses.ciou_loss(pred, boxes, variant=variant)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and loss.abs().max() < 1e-4
    assert torch.isfinite(pred.grad).all()


def test_iou_family_values_on_simple_pair():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 3.0, 4.0]], dtype=torch.float64)
    iou = 2.0 / 10.0  # overlap 1 x 2, union 4 + 8 - 2; enclosing box 3 x 4; centre offset (1, 1)
    torch.testing.assert_close(losses.iou_loss(pred, target), torch.tensor([1 - iou], dtype=torch.float64))
    torch.testing.assert_close(losses.iou_loss(pred, target, mode='log'),
                               torch.tensor([-math.log(iou)], dtype=torch.float64))
    torch.testing.assert_close(losses.giou_loss(pred, target), torch.tensor([1 - iou + 2 / 12]).double())
    torch.testing.assert_close(losses.diou_loss(pred, target), torch.tensor([1 - iou + 2 / 25]).double())
    eiou = 1 - iou + 2 / 25 + 0 / 9 + 4 / 16
    torch.testing.assert_close(losses.eiou_loss(pred, target), torch.tensor([eiou]).double())


def test_focal_eiou_weight_is_detached(generator):
    target = _random_boxes(12, generator)
    pred = (target + torch.randn(12, 4, generator=generator, dtype=torch.float64) * 8).requires_grad_()
    losses.focal_eiou_loss(pred, target, gamma=0.5).sum().backward()
    focal_grad = pred.grad.clone()
    pred.grad = None
    losses.eiou_loss(pred, target).backward(gradient=torch.ones(12, dtype=torch.float64), inputs=[pred])
    iou = box_ops.box_iou_aligned(pred.detach(), target, eps=1e-7)
    torch.testing.assert_close(focal_grad, iou.pow(0.5)[:, None] * pred.grad, rtol=1e-5, atol=1e-9)


def test_every_table_name_resolves():
    for kind, table in losses.LOSS_TABLES.items():
        for name, function in table.items():
            assert losses.get_loss(name) is function and losses.loss_kind(name) == kind
    assert set(losses.BOX_LOSSES) == {'iou', 'giou', 'diou', 'ciou', 'eiou', 'focal_eiou'}
    assert losses.loss_kind('distribution_focal') == 'distribution'


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError) as error:
        losses.get_loss('gioux')
    message = str(error.value)
    assert "'gioux'" in message and "did you mean 'giou'" in message
    for name in ('focal', 'quality_focal', 'focal_eiou', 'smooth_l1', 'distribution_focal'):
        assert name in message


def test_box_iou_pairwise_matches_torchvision_and_aligned(generator):
    torchvision_ops = pytest.importorskip('torchvision.ops')
    boxes1, boxes2 = _random_boxes(7, generator), _random_boxes(5, generator)
    pairwise = box_ops.box_iou(boxes1, boxes2)
    assert pairwise.shape == (7, 5)
    torch.testing.assert_close(pairwise, torchvision_ops.box_iou(boxes1, boxes2))
    torch.testing.assert_close(box_ops.generalized_box_iou(boxes1, boxes2),
                               torchvision_ops.generalized_box_iou(boxes1, boxes2))
    torch.testing.assert_close(box_ops.box_iou_aligned(boxes1[:5], boxes2), pairwise[:5].diagonal())
    torch.testing.assert_close(box_ops.generalized_box_iou(boxes1[:5], boxes2, is_aligned=True),
                               box_ops.generalized_box_iou(boxes1[:5], boxes2).diagonal())


def test_box_iou_broadcasts_over_batch_and_handles_empty(generator):
    anchors = _random_boxes(9, generator)
    gt_boxes = _random_boxes(6, generator).reshape(2, 3, 4)  # [B, M, 4]
    batched = box_ops.box_iou(anchors, gt_boxes)  # [B, A, M]
    assert batched.shape == (2, 9, 3)
    torch.testing.assert_close(batched[1], box_ops.box_iou(anchors, gt_boxes[1]))
    assert box_ops.box_iou(anchors, torch.zeros(0, 4, dtype=torch.float64)).shape == (9, 0)


def test_box_format_round_trips(generator):
    boxes = _random_boxes(4, generator)
    torch.testing.assert_close(box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(boxes)), boxes)
    torch.testing.assert_close(box_ops.cxcywh_to_xyxy(box_ops.xyxy_to_cxcywh(boxes)), boxes)
    box = torch.tensor([10.0, 20.0, 40.0, 30.0])
    assert box_ops.xyxy_to_xywh(box).tolist() == [10.0, 20.0, 30.0, 10.0]
    assert box_ops.box_centers(box).tolist() == [25.0, 25.0]
    assert box_ops.box_area(box).item() == 300.0
