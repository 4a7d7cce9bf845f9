"""COCO evaluation speed: pycocotools against faster-coco-eval (eval.backend) on one results file.

    python scripts/benchmark_eval.py                          # coco128 val x 100 = 5,100 images' worth
    python scripts/benchmark_eval.py --repeat 10 --ann ANN.json

The ground truth of --ann is repeated --repeat times (new image and annotation ids) and given detections
made from it: every box jittered by up to 10% of its size with a random score, plus 30 random boxes per image
of random classes (100 detections per image at most, as a detector's output). Both backends evaluate the same
results through data.evaluation.coco_evaluate; the script prints each one's seconds and checks that the 12
numbers agree to 1e-6.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.coco import coco_from_dict, load_and_validate  # noqa: E402
from data.evaluation import METRIC_NAMES, coco_evaluate  # noqa: E402
from detector.cpu import cpu_model  # noqa: E402

COCO128_VAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets",
                           "coco128", "annotations", "instances_val.json")


def repeated_dataset(content, repeat):
    """The annotation dict with its images and annotations repeated `repeat` times under new ids."""
    images, annotations = [], []
    image_step = max(image["id"] for image in content["images"]) + 1
    annotation_step = max([a["id"] for a in content["annotations"]] or [0]) + 1
    for copy in range(repeat):
        images += [{**image, "id": image["id"] + copy * image_step} for image in content["images"]]
        annotations += [{**a, "id": a["id"] + copy * annotation_step, "image_id": a["image_id"] + copy * image_step}
                        for a in content["annotations"]]
    return {**content, "images": images, "annotations": annotations}


def detections_for(content, seed=0, extra_per_image=30):
    """COCO-format results: each GT box jittered with a random score, plus random boxes of random classes."""
    rng = np.random.default_rng(seed)
    category_ids = [category["id"] for category in content["categories"]]
    results = []
    for annotation in content["annotations"]:
        x, y, w, h = annotation["bbox"]
        jitter = rng.uniform(-0.1, 0.1, 4) * [w, h, w, h]
        results.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                        "bbox": [float(v) for v in np.maximum([x, y, w, h] + jitter, [0, 0, 1, 1])],
                        "score": float(rng.uniform(0.05, 1))})
    for image in content["images"]:
        for _ in range(extra_per_image):
            w, h = rng.uniform(4, image["width"] / 2), rng.uniform(4, image["height"] / 2)
            x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
            results.append({"image_id": image["id"], "category_id": int(rng.choice(category_ids)),
                            "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.uniform(0.05, 0.5))})
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann", default=COCO128_VAL, help="a COCO instances JSON")
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    content = repeated_dataset(load_and_validate(args.ann), args.repeat)
    detections = detections_for(content)
    print(f"{len(content['images'])} images, {len(content['annotations'])} ground-truth boxes, {len(detections)} "
          f"detections ({args.ann} x {args.repeat}); {cpu_model()}, one process")
    metrics = {}
    for backend in ("pycocotools", "faster"):
        coco_gt = coco_from_dict(content)            # a fresh index each time: nothing cached between backends
        started = time.perf_counter()
        metrics[backend] = coco_evaluate(coco_gt, detections, log=lambda text: None, backend=backend)
        print(f"{backend:<12} {time.perf_counter() - started:7.1f} s   AP {metrics[backend]['AP']:.4f}")
    worst = max(abs(metrics["pycocotools"][name] - metrics["faster"][name]) for name in METRIC_NAMES)
    print(f"largest difference over the 12 numbers: {worst:.2e}" + (" (agree to 1e-6)" if worst <= 1e-6 else ""))


if __name__ == "__main__":
    main()
