"""train.compile: the model torch.compile'd for training gives the eager model's losses and gradients.

aot_eager traces forward and backward through dynamo and AOTAutograd (what inductor compiles) without generating
code, so the test checks that the model compiles, and that the compiled step is the same step, in seconds.
"""
import torch
from tiny_detector import INPUT_SHAPE, padded_targets, tiny_config

from detector import build_criterion, build_model
from detector.engine import compiled


def _loss_and_grads(module, model, criterion, images, targets):
    model.zero_grad(set_to_none=True)
    losses = criterion(module(images), targets)
    loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_compiled_model_trains_the_same_step():
    cfg = tiny_config("gfl", "train.compile=true", "train.compile_backend=aot_eager")
    torch.manual_seed(0)
    model, criterion = build_model(cfg.model, 3), build_criterion(cfg.model, 3)
    model.train()
    images = torch.rand(INPUT_SHAPE) * 255
    targets = padded_targets([[[10, 12, 60, 70], [40, 8, 90, 50]], [[5, 30, 50, 120]]], [[0, 2], [1]])
    targets.update(image_sizes=torch.tensor([[128, 96], [128, 96]]), pad_sizes=torch.tensor([[128, 96], [128, 96]]))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager_loss, eager_grads = _loss_and_grads(model, model, criterion, images, targets)
    model.load_state_dict(state)  # the same BN statistics before the compiled forward
    module = compiled(model, cfg.train)
    assert module is not model and module._orig_mod is model
    compiled_loss, compiled_grads = _loss_and_grads(module, model, criterion, images, targets)
    assert eager_loss.item() > 0.1
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 50
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_off_returns_the_model():
    cfg = tiny_config("gfl")
    model = build_model(cfg.model, 3)
    assert cfg.train.compile is False and compiled(model, cfg.train) is model
