"""focaldet data layer: COCO/LVIS-format datasets, transforms, batching, sampling, evaluation.

Entry points (what train.py and eval.py call; import them from their modules):
    data.synthetic.ensure_shapes_dataset(root, num_train, num_val, seed) -> paths dict
    data.coco.CocoDetection(image_dir, ann_file, transforms, remove_images_without_annotations)
    data.transforms.build_transforms(train, short_sides, max_size, mode, flip_prob)
    data.collate.collate(batch, size_divisor) -> images [B, 3, Hp, Wp], targets dict (padded to M)
    data.samplers.build_train_batch_sampler(dataset, batch_size, shuffle, seed, distributed)
    data.samplers.build_test_sampler(dataset, distributed)
    data.evaluation.coco_evaluate(coco_gt, detections, class_names, log) -> metrics dict
Boxes are xyxy pixels of the network input inside the package; COCO xywh only in files/results.
Nothing is imported here, so that `python -m data.synthetic` runs without a double import.
"""
