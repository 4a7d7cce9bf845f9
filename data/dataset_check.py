"""A COCO-format dataset checked all at once: every problem counted with examples, and what the set holds.

    report = check_annotations(content, ann_file)   # the parsed JSON only: cheap (every training run does it)
    check_images(report, content, image_dir)         # every image file opened: missing, unreadable, other size
    print(report.summary())                          # scripts/check_dataset.py

Errors (loading refuses the file, or training would read garbage): a duplicate category, image or annotation
id; an image without width, height or file name; an annotation of an unknown image or category; a bbox that is
not 4 finite numbers or has a negative width or height; a missing or unreadable image, or one whose size is not
the JSON's. Warnings (loading handles them, by rules the user may not want): boxes under 1 px (dropped), boxes
partly outside their image (clipped) or entirely outside it (dropped), images without a box (dropped from
training), two image entries naming one file. Statistics: per category the boxes and images, crowd boxes, and a
histogram of the images' longer sides.
"""
import math
import os

from PIL import Image, UnidentifiedImageError

ERRORS = ("duplicate category id", "duplicate image id", "duplicate annotation id", "incomplete entry",
          "unknown image id", "unknown category id", "malformed bbox", "non-finite bbox", "negative box size",
          "missing image file", "unreadable image", "image size differs from the JSON")
WARNINGS = ("box under 1 px", "box partly outside its image", "box entirely outside its image",
            "image without boxes", "file named by several images")
SIZE_BINS = (128, 256, 512, 1024, 2048, 4096)   # longer side in pixels: < 128, 128-255, ..., >= 4096
EXAMPLES = 3


def _required(entry, keys):
    return [key for key in keys if key not in entry]


def file_name_of(image):
    """`file_name`, or (LVIS) the path of `coco_url` after the host."""
    from urllib.parse import urlparse
    return image["file_name"] if "file_name" in image else urlparse(image["coco_url"]).path.lstrip("/")


class DatasetReport:
    """Problems by kind (in the order found; the first error is what loading reports) and statistics."""

    def __init__(self, ann_file):
        self.ann_file = ann_file
        self.problems = {}        # kind -> [message, ...]
        self.categories = {}      # category id -> name
        self.boxes_per_category, self.images_per_category = {}, {}
        self.size_histogram = [0] * (len(SIZE_BINS) + 1)
        self.num_images = self.num_boxes = self.num_crowd = 0

    def add(self, kind, message):
        self.problems.setdefault(kind, []).append(message)

    @property
    def errors(self):
        return [message for kind in self.problems if kind in ERRORS for message in self.problems[kind]]

    def first_error(self):
        """The first error found, as one line naming the file, and how many others there are."""
        first = next(messages[0] for kind, messages in self.problems.items() if kind in ERRORS)
        others = len(self.errors) - 1
        return f"{self.ann_file}: {first}" + (f" (and {others} more problems: scripts/check_dataset.py lists them)"
                                               if others else "")

    def warnings_line(self):
        """One line of the warning counts, or '' when there is none."""
        counts = [f"{len(self.problems[kind])} {kind}" for kind in WARNINGS if kind in self.problems]
        return f"{self.ann_file}: " + ", ".join(counts) + " (scripts/check_dataset.py names them)" if counts else ""

    def summary(self):
        """The full text report: counts, problems with examples, per-category counts, size histogram."""
        lines = [f"{self.ann_file}: {self.num_images} images, {self.num_boxes} boxes ({self.num_crowd} crowd), "
                 f"{len(self.categories)} categories"]
        for title, kinds in (("errors", ERRORS), ("warnings", WARNINGS)):
            found = [kind for kind in kinds if kind in self.problems]
            lines.append(f"{title}: " + ("none" if not found else f"{sum(len(self.problems[k]) for k in found)}"))
            for kind in found:
                messages = self.problems[kind]
                lines.append(f"  {kind}: {len(messages)}, e.g. " + "; ".join(messages[:EXAMPLES]))
        lines.append("per category (id name: boxes, images):")
        for category_id in sorted(self.categories):
            lines.append(f"  {category_id} {self.categories[category_id]}: "
                         f"{self.boxes_per_category.get(category_id, 0)} boxes, "
                         f"{len(self.images_per_category.get(category_id, ()))} images")
        lines.append("images by longer side (px):")
        for label, count in zip(size_bin_labels(), self.size_histogram):
            lines.append(f"  {label:>10}: {count}")
        return "\n".join(lines)


def size_bin_labels():
    """'< 128', '128-255', ..., '>= 4096': the bins of DatasetReport.size_histogram."""
    return ([f"< {SIZE_BINS[0]}"] + [f"{low}-{high - 1}" for low, high in zip(SIZE_BINS[:-1], SIZE_BINS[1:])]
            + [f">= {SIZE_BINS[-1]}"])


def check_annotations(content, ann_file):
    """Check a parsed COCO/LVIS instances dict (top-level keys present) without opening an image: a DatasetReport."""
    report = DatasetReport(ann_file)
    for category in content["categories"]:
        missing = _required(category, ("id", "name"))
        if missing:
            report.add("incomplete entry", f"category {category.get('id', '?')} lacks required key(s) {missing}")
            continue
        if category["id"] in report.categories:
            report.add("duplicate category id", f"duplicate category id {category['id']}")
            continue
        report.categories[category["id"]] = category["name"]

    images, files = {}, {}
    for image in content["images"]:
        image_id = image.get("id", "?")
        missing = _required(image, ("id", "width", "height"))
        if missing:
            report.add("incomplete entry", f"image {image_id} lacks required key(s) {missing}")
            continue
        if "file_name" not in image and "coco_url" not in image:
            report.add("incomplete entry", f"image {image_id} has neither file_name nor coco_url")
            continue
        if image_id in images:
            report.add("duplicate image id", f"duplicate image id {image_id}")
            continue
        images[image_id] = image
        files.setdefault(file_name_of(image), []).append(image_id)
        longer = max(image["width"], image["height"])
        report.size_histogram[sum(longer >= edge for edge in SIZE_BINS)] += 1
    report.num_images = len(images)
    for name, image_ids in files.items():
        if len(image_ids) > 1:
            report.add("file named by several images", f"{name} (images {image_ids[:4]})")

    annotation_ids, boxed_images = set(), set()
    for annotation in content["annotations"]:
        annotation_id = annotation.get("id", "?")
        missing = _required(annotation, ("id", "image_id", "category_id", "bbox"))
        if missing:
            report.add("incomplete entry", f"annotation {annotation_id} lacks required key(s) {missing}")
            continue
        where = f"annotation {annotation_id} (image {annotation['image_id']})"
        if annotation_id in annotation_ids:
            report.add("duplicate annotation id", f"{where}: duplicate annotation id")
        annotation_ids.add(annotation_id)
        image = images.get(annotation["image_id"])
        if image is None:
            report.add("unknown image id", f"{where}: image id not in images")
            continue
        if annotation["category_id"] not in report.categories:
            report.add("unknown category id", f"{where}: category id {annotation['category_id']} not in categories")
            continue
        box = annotation["bbox"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            report.add("malformed bbox", f"{where}: bbox {box!r} is not 4 numbers")
            continue
        if not all(math.isfinite(v) for v in box):
            report.add("non-finite bbox", f"{where}: bbox {box} has a non-finite coordinate")
            continue
        x, y, w, h = box
        if w < 0 or h < 0:
            report.add("negative box size", f"{where}: bbox {box} has a negative width or height")
            continue
        report.num_boxes += 1
        crowd = bool(annotation.get("iscrowd", 0))
        report.num_crowd += crowd
        report.boxes_per_category[annotation["category_id"]] = report.boxes_per_category.get(
            annotation["category_id"], 0) + 1
        report.images_per_category.setdefault(annotation["category_id"], set()).add(annotation["image_id"])
        width, height = image["width"], image["height"]
        visible_w = min(x + w, width) - max(x, 0)
        visible_h = min(y + h, height) - max(y, 0)
        if visible_w <= 0 or visible_h <= 0:
            report.add("box entirely outside its image", f"{where}: bbox {box} outside the {width}x{height} image")
            continue
        if x < 0 or y < 0 or x + w > width or y + h > height:
            report.add("box partly outside its image", f"{where}: bbox {box} crosses the {width}x{height} image")
        if min(visible_w, visible_h) < 1:
            report.add("box under 1 px", f"{where}: bbox {box} is {visible_w:g} x {visible_h:g} px in the image")
            continue
        if not crowd:
            boxed_images.add(annotation["image_id"])
    for image_id in images:
        if image_id not in boxed_images:
            report.add("image without boxes", f"image {image_id} ({file_name_of(images[image_id])})")
    return report


def check_images(report, content, image_dir, decode=False):
    """Open every image of `content` (first entry per id): missing, unreadable, or a size other than the JSON's.
    decode: decode the pixels too (slow); otherwise the header and Pillow's verify()."""
    seen = set()
    for image in content["images"]:
        if "id" not in image or image["id"] in seen or _required(image, ("width", "height")):
            continue
        seen.add(image["id"])
        if "file_name" not in image and "coco_url" not in image:
            continue
        path = os.path.join(image_dir, file_name_of(image))
        where = f"image {image['id']} ({path})"
        if not os.path.isfile(path):
            report.add("missing image file", where)
            continue
        try:
            with Image.open(path) as handle:
                size = handle.size
                handle.load() if decode else handle.verify()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            report.add("unreadable image", f"{where}: {str(error).splitlines()[0] if str(error) else type(error)}")
            continue
        if size != (image["width"], image["height"]):
            report.add("image size differs from the JSON",
                       f"{where}: {size[0]}x{size[1]}, the JSON says {image['width']}x{image['height']}")
    return report
