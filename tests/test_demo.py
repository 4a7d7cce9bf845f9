"""scripts/demo.py: detections drawn on images, the same as eval.py's, and one-line errors for bad inputs."""
import os

import numpy as np
from cli_tools import assert_one_error_line, check_ok, read_json, run_tool
from PIL import Image, ImageColor

from data.image_folder import same_size_batches

DEMO = os.path.join("scripts", "demo.py")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]  # tab10's first four: labels 0-3 (cat ids 3, 7, 11, 42)
LABEL_OF = {3: 0, 7: 1, 11: 2, 42: 3}


def test_demo_draws_the_detections_it_records(trained, shapes_small, tmp_path):
    work_dir, _, _ = trained
    checkpoint = os.path.join(work_dir, "checkpoints", "last.pth")
    # eval.py's detections of the whole val folder, one image at a time (ids from the annotations: file 00000k.png
    # is image k + 1)
    check_ok(run_tool(["eval.py", "--checkpoint", checkpoint, "--images", shapes_small["val_images"],
                       "--image-info", shapes_small["val_ann"], "--out-dir", str(tmp_path / "eval")]))
    everything = read_json(tmp_path / "eval" / "detections.json")
    files = ["000001.png", "000002.png", "000003.png", "000007.png", "000008.png"]  # 240x320, 256x256 x 2, 240x320 x 2
    numbers = [int(name[:6]) for name in files]
    scores = sorted((d["score"] for d in everything if d["image_id"] - 1 in numbers), reverse=True)
    # a threshold in a gap between two scores, 10 or more boxes in: batching may move a score in its last digits
    gap = next(index for index in range(9, len(scores) - 1) if scores[index] - scores[index + 1] > 2e-4)
    threshold = (scores[gap] + scores[gap + 1]) / 2

    out = tmp_path / "demo"
    result = check_ok(run_tool([DEMO, "--checkpoint", checkpoint, *[os.path.join(shapes_small["val_images"], name)
                                                                    for name in files],
                                "--out", str(out), "--score-thr", str(threshold), "--batch-size", "2"]))
    assert f"on 5 images -> {out}/*.png" in result.stdout
    assert sorted(os.listdir(out)) == sorted(files + ["detections.json"])
    drawn = read_json(out / "detections.json")
    # numeric file names are the image ids; batches of equal-size images give eval.py's one-image results
    expected = [dict(d, image_id=d["image_id"] - 1) for d in everything
                if d["image_id"] - 1 in numbers and d["score"] >= threshold]
    assert len(drawn) == len(expected) == gap + 1
    key = lambda d: (d["image_id"], -round(d["score"], 4), d["category_id"], [round(v) for v in d["bbox"]])  # noqa: E731
    for mine, reference in zip(sorted(drawn, key=key), sorted(expected, key=key)):
        assert (mine["image_id"], mine["category_id"]) == (reference["image_id"], reference["category_id"])
        assert np.allclose(mine["bbox"], reference["bbox"], atol=0.01)
        assert abs(mine["score"] - reference["score"]) < 1e-4
    assert [d["image_id"] for d in drawn] == sorted(d["image_id"] for d in drawn)  # the JSON follows the inputs

    for name in files:
        original = np.asarray(Image.open(os.path.join(shapes_small["val_images"], name)).convert("RGB"))
        picture = np.asarray(Image.open(out / name).convert("RGB"))
        assert picture.shape == original.shape
        mine = [d for d in drawn if d["image_id"] == int(name[:6])]
        if not mine:
            assert (picture == original).all()
            continue
        # boxes are drawn from the lowest score up: the best one lies on top, and the middle of its bottom edge (2 px
        # wide, inside the box; the JSON's rounding may move it by one) has its class colour
        best = [d for d in mine if d["score"] == max(d["score"] for d in mine)]
        x, y, width, height = best[0]["bbox"]
        colours = {ImageColor.getrgb(PALETTE[LABEL_OF[d["category_id"]]]) for d in best if d["bbox"] == best[0]["bbox"]}
        bottom = min(int(y + height), picture.shape[0] - 1)
        assert colours & {tuple(picture[row, int(x + width / 2)]) for row in (bottom - 1, bottom)}


def test_same_size_batches():
    sizes = [(2, 3), (4, 5), (2, 3), (2, 3), (4, 5)]
    assert same_size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]
    assert same_size_batches(sizes, 8) == [[0, 2, 3], [1, 4]]


def test_demo_reads_folders_and_globs_and_names_a_bad_file(trained, shapes_small, tmp_path):
    work_dir, _, _ = trained
    checkpoint = os.path.join(work_dir, "checkpoints", "last.pth")
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.open(os.path.join(shapes_small["val_images"], "000004.png")).save(folder / "cat.png")
    pattern = os.path.join(shapes_small["val_images"], "00001*.png")  # 000010.png, 000011.png
    result = check_ok(run_tool([DEMO, "--checkpoint", checkpoint, str(folder), pattern, "--out", str(tmp_path / "o"),
                                "--score-thr", "0.99"]))
    assert "on 3 images" in result.stdout
    assert sorted(os.listdir(tmp_path / "o")) == ["000010.png", "000011.png", "cat.png", "detections.json"]
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")  # not an image: found before the model runs
    result = run_tool([DEMO, "--checkpoint", checkpoint, str(folder), "--out", str(tmp_path / "o2")])
    assert_one_error_line(result.returncode, result.stderr, f"{folder / 'broken.png'}: unreadable image")
    assert not (tmp_path / "o2").exists()
    good = (folder / "cat.png").read_bytes()
    (folder / "broken.png").write_bytes(good[:len(good) // 2])  # a valid header, cut data: found when decoded
    result = run_tool([DEMO, "--checkpoint", checkpoint, str(folder), "--out", str(tmp_path / "o3")])
    assert_one_error_line(result.returncode, result.stderr, f"{folder / 'broken.png'}: unreadable image")
