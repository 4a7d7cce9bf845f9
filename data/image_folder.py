"""Images without annotations (a folder, files or globs): inference for the demo and for COCO test-dev.

Items look like data.coco.CocoDetection's (a normalised image and a target with no boxes), so the same
transforms, data.collate.collate, model and post-processor run on them unchanged.

Image ids, which COCO-results files refer to:
* with an image-info file (COCO test-dev's image_info_test-dev2017.json, or any COCO-format JSON with an
  'images' list), each file takes the id listed for its file name; a file the JSON does not list is an error;
* otherwise a file named by a number takes that number (COCO's 000000397133.jpg is image 397133), when every
  file is so named and no two numbers repeat;
* otherwise files are numbered 1..N in the order listed (sorted paths).
"""
import glob
import json
import os

import torch
from PIL import Image, UnidentifiedImageError

from data.coco import DatasetError
from data.transforms import Normalize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(inputs):
    """Image paths named by `inputs`: files, folders (their image files, not recursive) or glob patterns.

    Returns sorted paths within each input, inputs in the order given, no path twice. An input that names
    nothing (a missing file, a folder without images, a pattern that matches no image) is a DatasetError.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, name)))
            what = f"{item}: folder holds no image file ({', '.join(IMAGE_EXTENSIONS)})"
        elif os.path.isfile(item):
            found = [item]
        elif glob.has_magic(item):
            found = sorted(path for path in glob.glob(item, recursive=True)
                           if path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path))
            what = f"{item}: pattern matches no image file"
        else:
            raise DatasetError(f"{item}: no such file or folder")
        if not found:
            raise DatasetError(what)
        paths.extend(path for path in found if path not in paths)
    return paths


def read_image_info(path):
    """{file name: image id} from a COCO-format JSON's 'images' list (file names without folders)."""
    try:
        with open(path) as f:
            content = json.load(f)
        images = content["images"]
        return {os.path.basename(image["file_name"]): int(image["id"]) for image in images}
    except FileNotFoundError:
        raise DatasetError(f"{path}: image-info file not found") from None
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not a COCO-format JSON with an 'images' list of file_name and id "
                           f"({type(error).__name__}: {error})") from None


def assign_image_ids(paths, image_info=None, image_info_path="the image-info file"):
    """Image id of each path, by the rules of the module docstring. image_info: {file name: id} or None."""
    names = [os.path.basename(path) for path in paths]
    if image_info is not None:
        unlisted = [path for path, name in zip(paths, names) if name not in image_info]
        if unlisted:
            raise DatasetError(f"{unlisted[0]}: not listed in {image_info_path}"
                               + (f" ({len(unlisted)} files in all)" if len(unlisted) > 1 else ""))
        return [image_info[name] for name in names]
    stems = [os.path.splitext(name)[0] for name in names]
    if all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems):
        return [int(stem) for stem in stems]
    return list(range(1, len(paths) + 1))


def read_sizes(paths):
    """(width, height) of each image from its header (no decoding); a file that is missing or not an image is a
    DatasetError naming it, before any model runs."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file not found") from None
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{path}: unreadable image ({error})") from None
    return sizes


def same_size_batches(sizes, batch_size):
    """Lists of at most batch_size indices into `sizes`, each list of one image size (sizes in order of first
    appearance, indices in order). Images of one size resize and pad alike, so a batch adds no padding that a
    single image would not have and every result is the one of batch size 1 (data.build.build_test_loader)."""
    groups = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [indices[start:start + batch_size] for indices in groups.values()
            for start in range(0, len(indices), batch_size)]


class ImageFolder(torch.utils.data.Dataset):
    """Unannotated images for inference.

    Args:
        paths: image files (see list_images).
        transforms: callable (PIL image, target) -> (tensor [3, H, W], target), e.g. the test transforms of
            data.transforms.build_transforms; None normalises only.
        image_ids: one id per path (see assign_image_ids); None numbers them 1..N.
    Item:
        image: float tensor [3, H, W], normalised.
        target: dict as CocoDetection's with no objects: 'boxes' float [0, 4], 'labels' long [0],
            'crowd' bool [0], 'image_id' int, 'orig_size' (h, w) of the file, 'size' (h, w) after resizing,
            'scale_factor' (w, h) resized / original.
    A missing or unreadable file raises DatasetError naming it when its item is read.
    """

    def __init__(self, paths, transforms=None, image_ids=None):
        self.paths = list(paths)
        self.image_ids = list(image_ids) if image_ids is not None else list(range(1, len(self.paths) + 1))
        if len(self.image_ids) != len(self.paths):
            raise ValueError(f"{len(self.image_ids)} image ids for {len(self.paths)} images")
        self.transforms = transforms if transforms is not None else Normalize()

    def __len__(self):
        return len(self.paths)

    def load_image(self, index):
        """Decode item `index` as an RGB PIL image (grayscale, palette and RGBA converted)."""
        path = self.paths[index]
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: image file not found")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")  # forces a full decode
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{path}: unreadable image ({error})") from None

    def __getitem__(self, index):
        image = self.load_image(index)
        width, height = image.size
        target = {"boxes": torch.zeros((0, 4), dtype=torch.float32),
                  "labels": torch.zeros(0, dtype=torch.long),
                  "crowd": torch.zeros(0, dtype=torch.bool),
                  "image_id": int(self.image_ids[index]),
                  "orig_size": (height, width), "size": (height, width), "scale_factor": (1.0, 1.0)}
        return self.transforms(image, target)
