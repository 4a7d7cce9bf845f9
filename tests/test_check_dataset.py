"""scripts/check_dataset.py on a deliberately broken copy of the shapes annotations finds every kind of defect, by
id; on the intact set it counts boxes and images per class and image sizes as the JSON says; training refuses
the broken file with its first error and the count of the others."""
import copy
import json
import os
import sys

import pytest
from cli_tools import REPOSITORY, read_json

from data.coco import CocoDetection, DatasetError

sys.path.insert(0, os.path.join(REPOSITORY, "scripts"))
import check_dataset  # noqa: E402


def break_annotations(content, image_dir):
    """One defect of every kind the check knows; returns {kind: text its message must contain}."""
    images, annotations = content["images"], content["annotations"]
    first_box = {}  # image id -> its first annotation
    for annotation in annotations:
        first_box.setdefault(annotation["image_id"], annotation)
    with_boxes = [image for image in images if image["id"] in first_box]
    image = {i: with_boxes[i] for i in range(14)}
    expect = {}
    image[0]["file_name"] = "missing.png"
    expect["missing image file"] = f"image {image[0]['id']} ("
    with open(os.path.join(image_dir, "garbage.png"), "wb") as handle:
        handle.write(b"not a png at all")
    image[1]["file_name"] = "garbage.png"
    expect["unreadable image"] = f"image {image[1]['id']} ("
    image[2]["width"] += 10
    expect["image size differs from the JSON"] = f"the JSON says {image[2]['width']}x"

    def box_of(i):
        return first_box[image[i]["id"]]
    box_of(3)["bbox"] = [5.0, 5.0, 0.4, 20.0]
    expect["box under 1 px"] = f"annotation {box_of(3)['id']} (image {image[3]['id']})"
    box_of(4)["bbox"] = [image[4]["width"] - 5.0, 10.0, 20.0, 20.0]
    expect["box partly outside its image"] = f"annotation {box_of(4)['id']} "
    box_of(5)["bbox"] = [image[5]["width"] + 10.0, 10.0, 20.0, 20.0]
    expect["box entirely outside its image"] = f"annotation {box_of(5)['id']} "
    box_of(6)["category_id"] = 999
    expect["unknown category id"] = "category id 999 not in categories"
    box_of(7)["image_id"] = 99999
    expect["unknown image id"] = "(image 99999): image id not in images"
    images.append(dict(image[8], file_name="another.png"))
    expect["duplicate image id"] = f"duplicate image id {image[8]['id']}"
    box_of(9)["id"] = box_of(10)["id"]
    expect["duplicate annotation id"] = f"annotation {box_of(10)['id']} (image "
    box_of(11)["bbox"] = [float("nan"), 1.0, 5.0, 5.0]
    expect["non-finite bbox"] = f"annotation {box_of(11)['id']} (image {image[11]['id']}): bbox [nan"
    box_of(12)["bbox"] = [1.0, 2.0, -3.0, 4.0]
    expect["negative box size"] = f"annotation {box_of(12)['id']} (image {image[12]['id']})"
    box_of(13)["bbox"] = [1.0, 2.0, 3.0]
    expect["malformed bbox"] = f"annotation {box_of(13)['id']} (image {image[13]['id']}): bbox [1.0, 2.0, 3.0]"
    del annotations[-1]["bbox"]
    expect["incomplete entry"] = f"annotation {annotations[-1]['id']} lacks required key(s) ['bbox']"
    content["categories"].append({"id": content["categories"][0]["id"], "name": "again"})
    expect["duplicate category id"] = f"duplicate category id {content['categories'][0]['id']}"
    bare = [i for i in images if i["id"] not in first_box][0]   # the set's own image without objects
    expect["image without boxes"] = f"image {bare['id']} ({bare['file_name']})"
    images[-2].update({key: images[-3][key] for key in ("file_name", "width", "height")})
    expect["file named by several images"] = f"{images[-3]['file_name']} (images [{images[-3]['id']}, "
    return expect


@pytest.fixture(scope="module")
def broken(shapes_small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    image_dir = folder / "images"
    image_dir.mkdir()
    for name in os.listdir(shapes_small["train_images"]):
        os.symlink(os.path.join(shapes_small["train_images"], name), image_dir / name)
    content = copy.deepcopy(read_json(shapes_small["train_ann"]))
    expect = break_annotations(content, str(image_dir))
    ann_file = str(folder / "broken.json")
    with open(ann_file, "w") as handle:
        json.dump(content, handle)
    return str(image_dir), ann_file, expect


def run_check(capsys, image_dir, ann_file, *extra):
    status = check_dataset.main(["--config", "shapes_gfl_r18.yaml", "--split", "train", "data.dataset=coco",
                                 f"data.train_images={image_dir}", f"data.train_ann={ann_file}",
                                 f"data.val_images={image_dir}", f"data.val_ann={ann_file}", *extra])
    return status, capsys.readouterr().out


def test_every_kind_of_defect_is_found_by_id(broken, capsys):
    image_dir, ann_file, expect = broken
    status, output = run_check(capsys, image_dir, ann_file)
    assert status == 1
    lines = {line.strip().split(":")[0]: line for line in output.splitlines() if line.startswith("  ")}
    assert len(expect) == 17
    for kind, text in expect.items():
        assert kind in lines, f"{kind} not reported:\n{output}"
        assert text in lines[kind], f"{kind}: {text!r} not in {lines[kind]!r}"
    assert "errors: 12" in output      # the 12 defects of error kinds, one each


def test_training_refuses_the_broken_file_with_the_first_error(broken):
    image_dir, ann_file, expect = broken
    with pytest.raises(DatasetError) as error:
        CocoDetection(image_dir, ann_file)
    # the cheap part: the 9 errors of the JSON (the 3 image-file errors need the files opened)
    assert str(error.value).startswith(f"{ann_file}: {expect['duplicate category id']}")
    assert str(error.value).endswith("(and 8 more problems: scripts/check_dataset.py lists them)")


def test_counts_per_class_and_image_sizes_match_the_json(shapes_small, capsys):
    status, output = run_check(capsys, shapes_small["train_images"], shapes_small["train_ann"], "--decode")
    assert status == 0 and "errors: none" in output
    content = read_json(shapes_small["train_ann"])
    for category in content["categories"]:
        boxes = [a for a in content["annotations"] if a["category_id"] == category["id"]]
        images = {a["image_id"] for a in boxes}
        assert f"  {category['id']} {category['name']}: {len(boxes)} boxes, {len(images)} images" in output
    longer = [max(image["width"], image["height"]) for image in content["images"]]
    assert all(256 <= side < 512 for side in longer)       # the shapes set: 256 px short side, up to 352 long
    assert f"256-511: {len(longer)}" in output.replace("   ", "").replace("  ", "")
