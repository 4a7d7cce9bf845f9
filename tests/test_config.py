"""Config: REFERENCE defaults, every shipped file, base inheritance, dotted overrides and their errors."""
import glob
import os

import pytest
import yaml

from data.build import check_data_config
from detector.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    resolve_config_path,
)
from detector.run_dir import check_config

CONFIG_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def test_config_dir_holds_the_shipped_files():
    assert {"retinanet_r50.yaml", "atss_r50.yaml", "gfl_r50.yaml", "gfl_r101.yaml", "gfl_r50_2x_ms.yaml",
            "shapes_gfl_r18.yaml"} <= set(CONFIG_FILES)


def test_defaults_are_the_reference_values():
    cfg = Config()
    optim, test = cfg.optim, cfg.model.test
    assert (optim.type, optim.lr, optim.base_batch_size, optim.momentum) == ("sgd", 0.01, 16, 0.9)
    assert optim.weight_decay == 1e-4
    assert (optim.warmup_iters, optim.warmup_ratio, optim.gamma) == (500, 0.001, 0.1)
    assert optim.milestones == [8, 11] and cfg.train.epochs == 12
    assert (test.score_thr, test.nms_pre, test.max_per_img, test.nms_iou) == (0.05, 1000, 100, 0.5)
    # RetinaNet reference model: frozen stem + stage 1, BN with frozen statistics and trained affine terms
    # (mmdetection's norm_eval), 9 anchors of 4 * 2^(k/3) * stride.
    model = cfg.model
    assert (model.backbone.depth, model.backbone.frozen_stages, model.backbone.norm) == (50, 1, "bn")
    assert model.backbone.norm_eval is True and model.assigner.crowd_iof_thr < 0
    assert (model.head.type, model.head.prior_prob, model.head.reg_max) == ("retinanet", 0.01, 16)
    assert (model.anchors.octave_base_scale, model.anchors.scales_per_octave) == (4.0, 3)
    assert model.anchors.ratios == [0.5, 1.0, 2.0] and model.anchors.strides == [8, 16, 32, 64, 128]
    assert model.anchors.offset == 0.0 and model.fpn.extra_from == "c5"
    assert (model.assigner.pos_iou_thr, model.assigner.neg_iou_thr) == (0.5, 0.4)
    assert model.loss_cls.type == "focal" and model.loss_cls.params == {"alpha": 0.25, "gamma": 2.0}
    # Default instances must not share mutable lists (a dataclass default_factory per field).
    other = Config()
    other.optim.milestones.append(99)
    assert cfg.optim.milestones == [8, 11]


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    assert cfg.name == name[:-len(".yaml")]
    assert config_from_dict(config_to_dict(cfg)) == cfg
    # The run directory's config.yaml reads back to the same config (eval.py, resume).
    dump_config(cfg, str(tmp_path / "config.yaml"))
    with open(tmp_path / "config.yaml") as f:
        assert config_from_dict(yaml.safe_load(f)) == cfg


def test_gfl_r50_resolves_to_the_gfl_reference():
    model = load_config("gfl_r50.yaml").model
    assert model.head.type == "gfl" and model.head.norm == "gn" and model.head.reg_max == 16
    assert model.assigner.type == "atss" and model.assigner.topk == 9
    assert model.test.nms_iou == 0.6 and model.test.score_thr == 0.05
    assert model.loss_cls.type == "quality_focal" and model.loss_cls.params == {"beta": 2.0}
    assert (model.loss_box.type, model.loss_box.weight) == ("giou", 2.0)
    assert (model.loss_dfl.type, model.loss_dfl.weight) == ("distribution_focal", 0.25)
    assert model.fpn.extra_from == "p5"
    anchors = model.anchors
    assert (anchors.octave_base_scale, anchors.scales_per_octave, anchors.ratios) == (8.0, 1, [1.0])
    assert model.backbone.pretrained == "torchvision"  # loading the config downloads nothing


def test_gfl_r101_is_gfl_r50_with_depth_101():
    r50, r101 = config_to_dict(load_config("gfl_r50.yaml")), config_to_dict(load_config("gfl_r101.yaml"))
    assert r101["model"]["backbone"]["depth"] == 101 and r101["name"] == "gfl_r101"
    r101["model"]["backbone"]["depth"], r101["name"] = 50, "gfl_r50"
    assert r101 == r50


def test_gfl_2x_multiscale_schedule():
    cfg = load_config("gfl_r50_2x_ms.yaml")
    assert cfg.train.epochs == 24 and cfg.optim.milestones == [16, 22]
    assert cfg.data.train_short_sides == [480, 800] and cfg.data.short_side_mode == "range"
    assert cfg.model == load_config("gfl_r50.yaml").model


def test_config_name_resolves_inside_configs_and_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("gfl_r50.yaml") == os.path.join(CONFIG_DIR, "gfl_r50.yaml")
    assert load_config("gfl_r50.yaml").model.head.type == "gfl"
    (tmp_path / "gfl_r50.yaml").write_text("model: {head: {type: atss}}\n")
    assert load_config("gfl_r50.yaml").model.head.type == "atss"   # a path as given comes first


def test_missing_config_file_is_a_config_error():
    with pytest.raises(ConfigError, match="config file not found: nope_r50.yaml"):
        load_config("nope_r50.yaml")


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config("gfl_r50.yaml", ["optim.lr=0.02", "data.train_short_sides=[640,800]", "optim.momentum=1",
                                       "model.backbone.pretrained=null", "train.amp=false", "optim.grad_clip=35",
                                       "model.loss_box.type=focal_eiou", "model.head.reg_max=8"])
    assert cfg.optim.lr == 0.02 and type(cfg.optim.lr) is float
    assert cfg.data.train_short_sides == [640, 800]
    assert cfg.optim.momentum == 1.0 and type(cfg.optim.momentum) is float   # int accepted for a float field
    assert cfg.model.backbone.pretrained is None and cfg.train.amp == "off"
    assert cfg.optim.grad_clip == 35.0 and cfg.model.loss_box.type == "focal_eiou" and cfg.model.head.reg_max == 8
    # Overrides apply after the file: the untouched keys keep the file's values.
    assert cfg.model.loss_box.weight == 2.0 and cfg.model.head.type == "gfl"


def test_unknown_key_names_it_and_suggests_the_nearest():
    with pytest.raises(ConfigError) as error:
        load_config("gfl_r50.yaml", ["optim.lrr=1"])
    message = str(error.value)
    assert "'optim.lrr'" in message and "did you mean optim.lr" in message and "\n" not in message
    with pytest.raises(ConfigError, match="'optimizer'.*did you mean optim"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(ConfigError, match=r"'model\.head\.feat_chanels'.*model\.head\.feat_channels"):
        load_config(None, ["model.head.feat_chanels=3"])


def test_unknown_key_in_a_file_names_the_dotted_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  anchors: {octave_scale: 8}\n")
    with pytest.raises(ConfigError, match=r"'model\.anchors\.octave_scale'.*model\.anchors\.octave_base_scale"):
        load_config(str(path))


@pytest.mark.parametrize("override, key", [("optim.lr=abc", "optim.lr"), ("train.epochs=1.5", "train.epochs"),
                                           ("train.epochs=true", "train.epochs"),
                                           ("data.train_short_sides=[640,big]", "data.train_short_sides"),
                                           ("model.backbone=5", "model.backbone"),
                                           ("model.head.norm=[gn]", "model.head.norm")])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config("gfl_r50.yaml", [override])


@pytest.mark.parametrize("override, message", [
    ("model.backbone.depth=152", r"'model.backbone.depth' must be one of \[18, 34, 50, 101\], got 152"),
    ("model.head.norm=bn", r"'model.head.norm' must be one of \[None, 'gn'\], got 'bn'"),
    ("model.assigner.type=atts", r"'model.assigner.type' must be one of \['max_iou', 'atss'\], got 'atts'"),
    ("optim.type=adam", r"'optim.type' must be one of \['sgd', 'adamw'\], got 'adam'"),
    ("model.anchors.strides=[8,16,32,64]", r"'model.anchors.strides' needs 5 strides"),
    ("data.workers=-1", r"'data.workers' must be >= 0, got -1"),
    ("optim.lr=0", r"'optim.lr' must be > 0"),
])
def test_invalid_choices_and_bounds_name_the_key(override, message):
    """Bounds are checked on loading; names of implementations by their registries before a run starts."""
    with pytest.raises(ConfigError, match=message):
        check_config(load_config("gfl_r50.yaml", [override]))


@pytest.mark.parametrize("override, message", [
    ("train.device=gpu", r"'train.device' expects one of \['auto', 'cpu', 'cuda'\], got 'gpu'"),
    ("data.short_side_mode=ranges", r"expects one of \['choice', 'range'\], got 'ranges'; did you mean 'range'"),
    ("model.assigner.low_quality=mmdetection", r"'model.assigner.low_quality' expects one of"),
    ("model.head.type=gfll", r"'model.head.type' must be one of \['retinanet', 'atss', 'gfl'\], got 'gfll'; "
                             r"did you mean 'gfl'"),
    ("data.dataset=cocoo", r"'data.dataset' must be one of \['coco', 'lvis', 'shapes', 'shapes_lvis'\], got 'cocoo'; "
                           r"did you mean 'coco'"),
])
def test_choices_are_stated_once_and_suggest_the_nearest(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg = load_config("gfl_r50.yaml", [override])
        check_config(cfg)
        check_data_config(cfg.data)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """PyYAML alone reads '1e-4' as a string (YAML 1.1); configs and overrides read it as 0.0001."""
    path = tmp_path / "exp.yaml"
    path.write_text("base: " + os.path.join(CONFIG_DIR, "gfl_r50.yaml") + "\noptim:\n  weight_decay: 5e-5\n")
    cfg = load_config(str(path), ["optim.lr=1e-3", "model.loss_cls.params.gamma=2E0", "name=1e5x"])
    assert cfg.optim.weight_decay == 5e-5 and cfg.optim.lr == 1e-3 and cfg.name == "1e5x"
    assert cfg.model.loss_cls.params["gamma"] == 2.0 and isinstance(cfg.model.loss_cls.params["gamma"], float)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["optim.lr"])


def test_base_is_relative_to_the_file_and_only_one_level(tmp_path):
    (tmp_path / "grand.yaml").write_text("optim: {lr: 0.5}\n")
    (tmp_path / "parent.yaml").write_text("optim: {lr: 0.3, momentum: 0.8}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim: {lr: 0.1}\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.name) == (0.1, 0.8, "child")
    (tmp_path / "parent.yaml").write_text("base: grand.yaml\noptim: {lr: 0.3}\n")
    with pytest.raises(ConfigError, match="may not name another base"):
        load_config(str(tmp_path / "child.yaml"))


def test_invalid_yaml_and_non_mapping_files_are_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {head: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_retinanet_scratch_gn_is_the_scratch_config_with_a_gn_head():
    # A base may not name another base, so retinanet_r18_scratch_gn.yaml repeats retinanet_r18_scratch.yaml's keys:
    # nothing but the head's norm (and the name) may differ.
    names = ("retinanet_r18_scratch_gn.yaml", "retinanet_r18_scratch.yaml")
    gn, plain = (config_to_dict(load_config(n)) for n in names)
    assert (gn["model"]["head"]["norm"], plain["model"]["head"]["norm"]) == ("gn", None)
    for cfg in (gn, plain):
        cfg["model"]["head"]["norm"] = cfg["name"] = None
    assert gn == plain
