"""train.compile: the model torch.compile'd for training gives the eager model's losses and gradients.

aot_eager traces forward and backward through dynamo and AOTAutograd (what inductor compiles) without generating
code, so the test checks that the model compiles, and that the compiled step is the same step, in seconds.
"""
import torch
from tiny_detector import INPUT_SHAPE, padded_targets, tiny_config

from detector import build_criterion, build_model
from detector.engine import compiled, compiled_for_inference


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


def _inference_outputs(module, images):
    with torch.no_grad():
        outputs = module(images)
    return outputs.cls_logits, outputs.box_regression


def test_compiled_for_inference_gives_the_eager_outputs():
    """eval.compile through dynamo and AOTAutograd (aot_eager): the module eval.py calls, in eval mode, same outputs."""
    cfg = tiny_config("gfl", "eval.compile=true", "train.compile_backend=aot_eager")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    images = torch.rand(INPUT_SHAPE) * 255
    module = compiled_for_inference(model.train(), cfg)
    assert module is not model and module._orig_mod is model and not model.training
    assert compiled_for_inference(model, tiny_config("gfl", "eval.compile=true")).model is model  # inductor: frozen
    eager = _inference_outputs(model, images)
    assert eager[0].shape[0] == INPUT_SHAPE[0] and eager[0].std() > 0
    for got, expected in zip(_inference_outputs(module, images), eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_inductor_freezes_the_weights_for_inference():
    """With inductor, eval.compile freezes the weights into the graph (its generated code reads _frozen_param
    constants and runs oneDNN's fused convolutions) and gives the eager outputs; one compilation serves every call
    at that input shape (the anchor cache does not trigger a recompilation)."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code
    cfg = tiny_config("retinanet", "eval.compile=true")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    images = torch.rand(INPUT_SHAPE) * 255
    module = compiled_for_inference(model, cfg)
    eager = _inference_outputs(model, images)
    counters.clear()
    compiled_outputs, code = run_and_get_code(_inference_outputs, module, images)
    source = "\n".join(code)
    assert "_frozen_param" in source and "mkldnn._convolution_pointwise" in source
    for got, expected in zip(compiled_outputs, eager):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    _inference_outputs(module, images)
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_off_returns_the_model_in_eval_mode():
    cfg = tiny_config("gfl")
    model = build_model(cfg.model, 3).train()
    assert cfg.eval.compile is False and compiled_for_inference(model, cfg) is model and not model.training
