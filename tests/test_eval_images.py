"""eval.py --images (no annotations) and --pr-curves; data/image_folder.py; data/pr_curves.py."""
import contextlib
import io
import os
import shutil

import numpy as np
import pytest
from cli_tools import assert_one_error_line, check_ok, read_json, run_tool
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.coco import DatasetError, coco_from_dict
from data.image_folder import ImageFolder, assign_image_ids, list_images
from data.pr_curves import precision_recall, write_pr_curves


def coco_ap(ann_file, detections):
    """COCO bbox AP of `detections` against `ann_file`, straight from pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ann_file)
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0]


def test_images_folder_gives_the_annotated_detections_and_ap(trained, shapes_small, tmp_path):
    work_dir, _, _ = trained
    checkpoint = os.path.join(work_dir, "checkpoints", "last.pth")
    annotated, unannotated = str(tmp_path / "annotated"), str(tmp_path / "images")
    check_ok(run_tool(["eval.py", "--checkpoint", checkpoint, "--out-dir", annotated]))
    result = check_ok(run_tool(["eval.py", "--checkpoint", checkpoint, "--images", shapes_small["val_images"],
                                "--image-info", shapes_small["val_ann"], "--out-dir", unannotated]))
    assert "12 images without annotations" in result.stdout
    assert not os.path.exists(os.path.join(unannotated, "metrics.json"))  # nothing to score
    detections = read_json(os.path.join(unannotated, "detections.json"))
    assert detections == read_json(os.path.join(annotated, "detections.json"))
    # the checkpoint's dataset category ids (3, 7, 11, 42), not contiguous labels
    assert {d["category_id"] for d in detections} <= {3, 7, 11, 42} and {d["category_id"] for d in detections}
    expected_ap = read_json(os.path.join(annotated, "metrics.json"))["AP"]
    assert expected_ap > 0
    assert coco_ap(shapes_small["val_ann"], detections) == pytest.approx(expected_ap, abs=1e-12)


def test_images_errors_are_one_line(trained, tmp_path):
    work_dir, _, _ = trained
    checkpoint = os.path.join(work_dir, "checkpoints", "last.pth")
    (tmp_path / "empty").mkdir()
    result = run_tool(["eval.py", "--checkpoint", checkpoint, "--images", str(tmp_path / "empty")])
    assert_one_error_line(result.returncode, result.stderr, "folder holds no image file")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    result = run_tool(["eval.py", "--checkpoint", checkpoint, "--images", str(tmp_path / "bad"),
                       "--out-dir", str(tmp_path / "out")])
    assert_one_error_line(result.returncode, result.stderr, "broken.png: unreadable image")


def test_pr_curves_are_written_for_the_annotated_split(trained, tmp_path):
    work_dir, _, _ = trained
    out_dir = tmp_path / "eval"
    check_ok(run_tool(["eval.py", "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth"),
                       "--out-dir", str(out_dir), "--pr-curves"]))
    names = sorted(os.listdir(out_dir / "pr_curves"))
    assert names == ["pr_11_triangle.png", "pr_3_circle.png", "pr_42_star.png", "pr_7_square.png"]
    with Image.open(out_dir / "pr_curves" / names[0]) as image:
        assert image.format == "PNG" and image.size == (450, 400)


def one_class_split():
    """Two ground-truth boxes of category 5 on one image; a second category (9) without ground truth."""
    return coco_from_dict({
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 20, 20], "area": 400,
                         "iscrowd": 0}],
        "categories": [{"id": 5, "name": "thing"}, {"id": 9, "name": "other thing"}]})


def test_precision_recall_of_a_hand_ranked_list(tmp_path):
    # scores rank: hit (box 1), miss, hit (box 2) -> precision 1 up to recall 1/2, then 2/3 up to recall 1
    detections = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.9},
                  {"image_id": 1, "category_id": 5, "bbox": [80, 0, 10, 10], "score": 0.8},
                  {"image_id": 1, "category_id": 5, "bbox": [50, 50, 20, 20], "score": 0.7}]
    precision, recall_points, iou_thresholds, cat_ids = precision_recall(one_class_split(), detections)
    assert precision.shape == (10, 101, 2) and cat_ids == [5, 9]
    assert np.allclose(recall_points, np.linspace(0, 1, 101)) and np.allclose(iou_thresholds[[0, -1]], [0.5, 0.95])
    expected = np.where(np.linspace(0, 1, 101) <= 0.5 + 1e-9, 1.0, 2 / 3)
    assert np.allclose(precision[:, :, 0], expected[None, :])  # exact boxes: the same at every IoU threshold
    assert (precision[:, :, 1] == -1).all()  # category 9 has no ground truth
    paths = write_pr_curves(one_class_split(), detections, str(tmp_path))
    assert [os.path.basename(path) for path in paths] == ["pr_5_thing.png"]


def test_precision_beyond_the_recall_reached_is_zero():
    detections = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "score": 0.9}]  # finds 1 of 2
    precision, _, _, _ = precision_recall(one_class_split(), detections)
    # COCOeval divides by tp + fp + eps: "1" is 1 - 2e-16
    assert np.allclose(precision[0, :51, 0], 1) and (precision[0, 51:, 0] == 0).all()


def test_list_images_and_ids(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000000000139.jpg", "12.PNG"):
        Image.new("RGB", (8, 6)).save(folder / name, format="PNG")
    (folder / "notes.txt").write_text("not an image")
    paths = list_images([str(folder)])
    assert [os.path.basename(path) for path in paths] == ["000000000139.jpg", "12.PNG"]
    assert assign_image_ids(paths) == [139, 12]  # COCO's numeric file names
    assert list_images([str(folder / "*.jpg"), str(folder)]) == [paths[0], paths[1]]  # glob, then no repeat
    shutil.copy(folder / "12.PNG", folder / "cat.png")
    assert assign_image_ids(list_images([str(folder)])) == [1, 2, 3]  # not all numeric: 1..N in order
    assert assign_image_ids(paths, {"12.PNG": 7, "000000000139.jpg": 8}) == [8, 7]
    with pytest.raises(DatasetError, match="12.PNG: not listed in info.json"):
        assign_image_ids(paths, {"000000000139.jpg": 8}, "info.json")
    with pytest.raises(DatasetError, match="missing: no such file or folder"):
        list_images([str(tmp_path / "missing")])
    with pytest.raises(DatasetError, match="pattern matches no image file"):
        list_images([str(folder / "*.gif")])


def test_image_folder_item(tmp_path):
    Image.new("L", (30, 20), color=128).save(tmp_path / "gray.png")
    image, target = ImageFolder([str(tmp_path / "gray.png")], image_ids=[42])[0]
    assert image.shape == (3, 20, 30)  # grayscale converted to RGB
    assert target["image_id"] == 42 and target["orig_size"] == (20, 30) and target["boxes"].shape == (0, 4)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match="broken.jpg: unreadable image"):
        ImageFolder([str(tmp_path / "broken.jpg")])[0]


def test_pr_curves_refuse_lvis_federated_annotations(run_main_in_process, trained, tmp_path):
    from data.synthetic_lvis import ensure_shapes_lvis_dataset
    work_dir, _, _ = trained
    root = str(tmp_path / "shapes_lvis")
    ensure_shapes_lvis_dataset(root, num_train=40, num_val=12)
    code, stderr = run_main_in_process("eval.py", [
        "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth"), "--pr-curves", "--out-dir",
        str(tmp_path / "out"), "data.dataset=shapes_lvis", f"data.shapes_lvis_root={root}", "data.shapes_num_train=40",
        "data.shapes_num_val=12"])
    assert_one_error_line(code, stderr, "--pr-curves draws COCOeval's curves, which LVIS's federated")
    assert not (tmp_path / "out").exists()
