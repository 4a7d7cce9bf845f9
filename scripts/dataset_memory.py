"""Memory of DataLoader workers over a large training set: an annotation file repeated to N images, read by
CocoDetection, iterated by forked workers; prints the main process's and each worker's RSS, PSS and USS.

    python scripts/dataset_memory.py --ann-file ../shared/datasets/coco128/annotations/instances_train.json \\
        --image-dir ../shared/datasets/coco128/images --images 100000 --workers 2 --items 3000
    python scripts/dataset_memory.py ... --code-root /tmp/old_checkout   # another checkout's data/coco.py
    python scripts/dataset_memory.py ... --skip-decode --items 100000     # a whole epoch, records only

--skip-decode gives every item a 32 x 32 image instead of decoding its file (and only normalises it), so a whole
epoch takes minutes: what remains of an item is the dataset's own bookkeeping (its record, its tensors).

RSS counts every resident page a process maps, shared ones included: a forked worker starts with its parent's.
USS (private pages) is what a worker adds of its own: the copy-on-read growth (reference counts and the garbage
collector writing into every Python object the worker reaches copy the pages they live on) shows there. PSS
shares each shared page among the processes mapping it. From /proc/<pid>/smaps_rollup (Linux).
"""
import argparse
import copy
import gc
import json
import multiprocessing
import os
import sys
import tempfile
import time


def repeated_annotations(ann_file, num_images, out_file):
    """Write `ann_file`'s images and annotations repeated (new ids, same files) to num_images images."""
    with open(ann_file) as handle:
        content = json.load(handle)
    images, annotations = [], []
    copies = -(-num_images // len(content["images"]))
    image_id = annotation_id = 0
    for _ in range(copies):
        new_ids = {}
        for image in content["images"]:
            image_id += 1
            new_ids[image["id"]] = image_id
            images.append(dict(image, id=image_id))
        for annotation in content["annotations"]:
            annotation_id += 1
            annotations.append(dict(copy.deepcopy(annotation), id=annotation_id,
                                    image_id=new_ids[annotation["image_id"]]))
    keep = {image["id"] for image in images[:num_images]}
    with open(out_file, "w") as handle:
        json.dump({"images": images[:num_images], "categories": content["categories"],
                   "annotations": [a for a in annotations if a["image_id"] in keep]}, handle)
    return len(keep), sum(a["image_id"] in keep for a in annotations)


def memory(pid):
    """(RSS, PSS, USS) of process `pid` in MiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values["Rss"], values["Pss"], values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)


def collect(worker_id):
    gc.collect()
    time.sleep(1)   # measured before the first item


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann-file", required=True)
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--images", type=int, default=100000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=3000, help="images the workers read in all")
    parser.add_argument("--skip-decode", action="store_true", help="a 32 x 32 image per item, normalised only")
    parser.add_argument("--collect", action="store_true", help="each worker starts with a full garbage collection, "
                        "which CPython runs now and then in a long-lived process: it writes into every object")
    parser.add_argument("--code-root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="the checkout whose data/ package is measured")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.code_root))
    folder = tempfile.mkdtemp(prefix="dataset_memory_")
    ann_file = os.path.join(folder, "repeated.json")
    with multiprocessing.get_context("fork").Pool(1) as pool:  # the big dicts never live in this process
        num_images, num_boxes = pool.apply(repeated_annotations, (args.ann_file, args.images, ann_file))
    print(f"{num_images} images, {num_boxes} boxes ({os.path.getsize(ann_file) / 2**20:.0f} MiB of JSON); "
          f"code from {args.code_root}" + (", images not decoded" if args.skip_decode else ""))
    import torch
    from PIL import Image

    from data.coco import CocoDetection
    from data.collate import collate
    from data.transforms import build_transforms
    if args.skip_decode:
        CocoDetection.load_image = lambda dataset, index: Image.new("RGB", (32, 32))
    rss, pss, uss = memory(os.getpid())
    print(f"main before loading: RSS {rss:.0f} MiB")
    started = time.time()
    dataset = CocoDetection(args.image_dir, ann_file, None if args.skip_decode else build_transforms(True, [320], 512),
                            remove_images_without_annotations=True)
    gc.collect()
    rss, pss, uss = memory(os.getpid())
    print(f"main after loading ({time.time() - started:.1f} s): RSS {rss:.0f} MiB, USS {uss:.0f} MiB")
    generator = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=args.items, generator=generator)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate, worker_init_fn=collect if args.collect else None)
    iterator = iter(loader)
    workers = [worker.pid for worker in iterator._workers]
    start = {pid: memory(pid) for pid in workers}
    peak = dict(start)
    for batch_index, _ in enumerate(iterator):
        if batch_index % 25 == 0:
            for pid in workers:
                current = memory(pid)
                peak[pid] = tuple(max(a, b) for a, b in zip(peak[pid], current))
    for pid in workers:
        print(f"worker {pid}: at start RSS {start[pid][0]:.0f} / PSS {start[pid][1]:.0f} / USS {start[pid][2]:.0f} "
              f"MiB; peak over {args.items // args.workers} images RSS {peak[pid][0]:.0f} / PSS {peak[pid][1]:.0f} "
              f"/ USS {peak[pid][2]:.0f} MiB")
    print(f"{time.time() - started:.0f} s in all")
    os.remove(ann_file)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
