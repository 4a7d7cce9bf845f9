"""scripts/compare_torchvision.py --init-from-torchvision: our RetinaNet starts from the very weights torchvision's
RetinaNet gets at the same seed (a paired comparison), and the flag is refused for models it cannot map."""
import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
spec = importlib.util.spec_from_file_location("compare_torchvision",
                                              os.path.join(ROOT, "scripts", "compare_torchvision.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

ARGS = ["--data", "unused", "--out", "unused", "--feat-channels", "32", "--short-side", "128", "--max-size", "128",
        "--seed", "5"]


def test_init_from_torchvision_copies_the_seeds_torchvision_weights():
    args = compare.parse_args(ARGS + ["--models", "retinanet,tv_retinanet", "--init-from-torchvision"])
    torch.manual_seed(args.seed)    # as train_and_evaluate does before building each model
    theirs = compare.build("tv_retinanet", args, 2).model.state_dict()
    torch.manual_seed(123)          # whatever the global RNG holds, ours gets the seed's torchvision weights
    ours = compare.build("retinanet", args, 2)
    assert ours.cfg.model.fpn.extra_from == "p5"
    assert ours.cfg.name == "retinanet_r18_scratch" and ours.cfg.model.head.norm is None   # no GN, as theirs
    state = ours.model.state_dict()
    pairs = {"backbone.stem.0.weight": "backbone.body.conv1.weight",
             "backbone.stages.3.1.conv2.weight": "backbone.body.layer4.1.conv2.weight",
             "fpn.lateral.2.weight": "backbone.fpn.inner_blocks.2.0.weight",
             "fpn.p6.weight": "backbone.fpn.extra_blocks.p6.weight",
             "head.cls_tower.6.weight": "head.classification_head.conv.3.0.weight",
             "head.cls_out.bias": "head.classification_head.cls_logits.bias",
             "head.reg_out.weight": "head.regression_head.bbox_reg.weight"}
    for our_key, their_key in pairs.items():
        assert torch.equal(state[our_key], theirs[their_key]), our_key
    # Without the flag the weights are our own init (xavier FPN), not torchvision's, and the head has GroupNorm.
    plain_model = compare.build("retinanet", compare.parse_args(ARGS + ["--models", "retinanet"]), 2)
    assert plain_model.cfg.name == "retinanet_r18_scratch_gn"
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in plain_model.model.head.modules()) == 8
    plain = plain_model.model.state_dict()
    assert not torch.equal(plain["fpn.lateral.2.weight"], theirs["backbone.fpn.inner_blocks.2.0.weight"])


@pytest.mark.parametrize("models", ["gfl", "retinanet,atss", "tv_fcos"])
def test_init_from_torchvision_is_refused_for_other_models(models, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(ARGS + ["--models", models, "--init-from-torchvision"])
    assert "--init-from-torchvision" in capsys.readouterr().err


def test_init_from_torchvision_refuses_a_config_with_a_head_norm():
    args = compare.parse_args(ARGS + ["--models", "retinanet", "--init-from-torchvision",
                                      "--ours-config", "retinanet=retinanet_r18_scratch_gn.yaml"])
    with pytest.raises(SystemExit, match="head.norm=gn"):
        compare.build("retinanet", args, 2)
