"""Index image datasets from the layouts people already have, and decode them with the one decoder.

Layouts, detected in this order:

- ``manifest``: a CSV file ``path,label[,split]`` with a header row; paths are relative to the CSV's folder.
  Every path must resolve inside that folder (no absolute path, ``..`` or symlink leading out) unless the caller
  passes ``allow_outside_root=True``: a manifest is plain text that may come from elsewhere, and its folder is
  the dataset it claims to describe.
- ``forensynths`` (CNNDetection): ``[split/][generator/]<category>/{0_real,1_fake}/``. With a generator level,
  fakes are labelled by generator; without, ``fake``.
- ``genimage``: ``<generator>/[...]/{train,val}/{ai,nature}/``; ``nature`` is ``real``, ``ai`` the generator.
- ``splits``: ``{train,val,test}/<label>/`` (``real`` plus one folder per generator, or a single ``fake``).
- ``folders``: ``<label>/`` with no splits.

Where the data has no test split, one is made: with train and val only (GenImage, say), val becomes the test split
and a new val is carved out of train; with no split at all, a stratified split by class. Zero-byte files, files
without an image extension and images outside any class folder are skipped with a warning and counted, never
raised; files at the root that are not images (a README, ``synth.json``) are metadata and ignored.

Folders are walked following symlinks, because datasets are often assembled from links (``train/real ->
/mnt/coco/train2017``, or a folder of per-image links into a shared pool), and symlinked files are read wherever
they point, inside the root or not: whoever can create a link inside the dataset folder has chosen that layout. The
walk is cycle-safe and indexes each file once: every folder is walked once by its real path, the dataset's own
folders under their own names first, so a link back into the dataset (``real/up -> ..``) or a link loop is skipped
rather than indexing the same images again under another label; an image reached under several names keeps the
name that involves no symlink, else the first met. What was skipped is logged once with a count.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigi.errors import DatasetError, InvalidImageError
from aigi.labels import FAKE, REAL
from aigi.preprocessing import decode_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_ALIASES |= {"test": "test", "testing": "test"}
REAL_ALIASES = frozenset({"real", "0_real", "nature"})
FAKE_ALIASES = frozenset({"fake", "1_fake"})

MAX_LOGGED_SKIPS = 10
SKIP_EMPTY = "empty file (0 bytes)"
SKIP_EXTENSION = "not an image extension"
SKIP_NO_CLASS = "not inside a class folder"
SKIP_MISSING = "listed in the manifest but missing"


@dataclass
class Sample:
    """One image: where it is, its class name (``real`` or a generator / ``fake``) and its split."""

    path: Path
    label: str
    split: str | None = None


@dataclass
class DatasetIndex:
    """The images of one dataset, their labels and splits, and what was skipped while indexing.

    Attributes:
        samples: every usable image, each with a split.
        layout: the detected layout (``manifest``, ``forensynths``, ``genimage``, ``splits`` or ``folders``).
        root: the folder (or CSV file) indexed.
        skipped: ``(path, reason)`` for each file left out.
    """

    samples: list[Sample]
    layout: str
    root: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """``real`` first, then the other classes sorted (the order of :func:`aigi.labels.labels_for_task`)."""
        names = {sample.label for sample in self.samples}
        return [REAL, *sorted(names - {REAL})] if REAL in names else sorted(names)

    def split(self, name: str) -> list[Sample]:
        """The samples of one split (``train``, ``val`` or ``test``)."""
        return [sample for sample in self.samples if sample.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: ``{split: {class: n}}``, splits in train/val/test order."""
        counts: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            per_class = Counter(sample.label for sample in self.samples if sample.split == name)
            if per_class:
                counts[name] = {label: per_class[label] for label in self.class_names if per_class[label]}
        return counts

    def summary(self) -> dict:
        """JSON-ready description: layout, root, classes, counts per split and class, and skipped files by reason."""
        return {
            "layout": self.layout,
            "root": str(self.root),
            "num_samples": len(self.samples),
            "class_names": self.class_names,
            "counts": self.counts(),
            "skipped": {"count": len(self.skipped), "reasons": dict(Counter(reason for _, reason in self.skipped))},
        }


def index_dataset(
    path: str | Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    allow_outside_root: bool = False,
) -> DatasetIndex:
    """Find the images of a dataset, their labels and splits.

    Args:
        path: a dataset folder in one of the supported layouts, or a CSV manifest.
        val_fraction: share of each class moved to val when the data has no val split (of train, or of everything).
        test_fraction: share of each class moved to test when the data has no split at all. Use
            ``val_fraction=0, test_fraction=1`` to evaluate on a whole unsplit folder.
        seed: seed of the stratified split; the same seed gives the same split.
        allow_outside_root: let a CSV manifest name files that resolve outside its folder (absolute paths,
            ``..``, symlinks leading out); refused by default. Folder datasets follow symlinks wherever they point
            (each image indexed once, see the module docstring), so this only concerns manifests.

    Raises:
        DatasetError: missing path, malformed manifest, a manifest row outside the manifest's folder (unless
            ``allow_outside_root``), no images, no ``real`` class, or a single class.
    """
    if not 0 <= val_fraction <= 1 or not 0 <= test_fraction <= 1 or val_fraction + test_fraction > 1:
        raise DatasetError(
            f"split fractions must be in [0, 1] and sum to at most 1, got {val_fraction}, {test_fraction}"
        )
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a .csv manifest")
        samples, skipped, layout = *_index_manifest(root, allow_outside_root), "manifest"
    else:
        samples, skipped, layout = _index_folder(root)
    for path_, reason in skipped[:MAX_LOGGED_SKIPS]:
        logger.warning("skipped %s: %s", path_, reason)
    if len(skipped) > MAX_LOGGED_SKIPS:
        logger.warning("skipped %d more files: %s", len(skipped) - MAX_LOGGED_SKIPS, _reasons(skipped))
    if not samples:
        detail = f" ({len(skipped)} files skipped: {_reasons(skipped)})" if skipped else ""
        raise DatasetError(f"{root}: no images found{detail}")
    _check_classes({sample.label for sample in samples}, root)
    samples = _assign_splits(samples, val_fraction, test_fraction, seed, root)
    index = DatasetIndex(sorted(samples, key=_sort_key), layout, root, skipped)
    logger.info("indexed %s (%s): %s", root, layout, index.counts())
    return index


def _reasons(skipped: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in Counter(reason for _, reason in skipped).items())


def _sort_key(sample: Sample) -> tuple[int, str, str]:
    return (SPLITS.index(sample.split) if sample.split in SPLITS else len(SPLITS), sample.label, str(sample.path))


def _check_classes(labels: set[str], root: Path) -> None:
    if REAL not in labels:
        raise DatasetError(f"{root}: no '{REAL}' class among {sorted(labels)}; the detector needs real images")
    if len(labels) < 2:
        raise DatasetError(f"{root}: only the '{REAL}' class; need generated images too")


def _normalize_label(name: str) -> str:
    lowered = name.lower()
    return REAL if lowered in REAL_ALIASES else FAKE if lowered in FAKE_ALIASES else name


# ----------------------------------------------------------------------------- folders


def _walk(root: Path) -> tuple[list[tuple[tuple[str, ...], Path]], list[tuple[str, str]]]:
    """Image files under ``root`` as (folder parts relative to root, path), and the files skipped.

    Symlinks are followed, to folders and to files, inside the root or out of it: ``train/real -> /mnt/coco/...``
    and folders of per-image links are ordinary ways to lay out a dataset without copying it, and a link inside the
    dataset folder is the choice of whoever laid it out (unlike a manifest row, which is text; see
    :func:`_index_manifest`). Following links must neither loop nor index an image twice, so:

    - every folder is walked at most once, by its real path; the dataset's own folders (reached without a link)
      are walked first under their own names, and a symlinked folder is walked afterwards only if its real path
      was not walked yet. ``real/up -> ..`` or ``a/loop -> ../b`` lead back to folders already walked and are
      skipped, so their images keep the labels of their own folders, and a link loop ends;
    - an image reached under several names (a file link, a link to a folder walked elsewhere) is indexed once, by
      its real path: under the name that involves no symlink if there is one, else the first name met.

    Paths keep the names met in the walk (``train/real/x.png``, not the link's target): labels and splits come
    from the folders the user laid out. What was skipped is logged once, with counts.
    """
    root_real = os.path.realpath(root)
    walk = _Walk(walked={root_real})
    walk.walk([(root, (), root_real)], canonical=True)
    walk.follow_links()
    files = _one_name_per_file(walk.candidates)
    duplicates = len(walk.candidates) - len(files)
    if walk.folders_skipped or duplicates:
        logger.warning(
            "%s: skipped %d symlinked folders already walked under another name (a link loop, a link back into the "
            "dataset or a second link to one folder) and %d images reached under a second name; each image is "
            "indexed once",
            root,
            walk.folders_skipped,
            duplicates,
        )
    return files, walk.skipped


_Folder = tuple[Path, tuple[str, ...], str]  # (folder, parts relative to the root, real path)


@dataclass
class _Walk:
    """The state of one :func:`_walk`: folders walked, symlinked folders queued, files met and skipped."""

    walked: set[str]  # real paths of the folders walked, or queued to be
    linked: deque[tuple[Path, tuple[str, ...]]] = field(default_factory=deque)  # walked after the dataset's own
    # (parts, file, real path, reached without links) of every image met
    candidates: list[tuple[tuple[str, ...], Path, str, bool]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    folders_skipped: int = 0

    def walk(self, queue: list[_Folder], canonical: bool) -> None:
        """Walk the queued folders depth first, in name order, like ``os.walk``."""
        while queue:
            folder, parts, folder_real = queue.pop()
            queue.extend(reversed(self.scan(folder, parts, folder_real, canonical)))

    def follow_links(self) -> None:
        """Walk the symlinked folders met so far (and those met below them), each real folder once."""
        while self.linked:
            path, parts = self.linked.popleft()
            real = os.path.realpath(path)
            if real in self.walked:
                self.folders_skipped += 1  # a link loop, a link back into the dataset, or a second link to one folder
                continue
            self.walked.add(real)
            self.walk([(path, parts, real)], canonical=False)

    def scan(self, folder: Path, parts: tuple[str, ...], folder_real: str, canonical: bool) -> list[_Folder]:
        """Record the files of one folder; returns its subfolders still to walk (symlinked ones are queued apart)."""
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            return []
        subfolders = []
        for entry in entries:
            name, path = entry.name, folder / entry.name
            if not entry.is_dir():  # is_dir follows a link, like os.walk
                self._add_file(entry, path, parts, folder_real, canonical)
            elif name.startswith("."):
                continue
            elif entry.is_symlink():
                self.linked.append((path, (*parts, name)))
            elif (real := os.path.join(folder_real, name)) in self.walked:
                self.folders_skipped += 1  # a second way into a folder already walked (below a followed link)
            else:
                self.walked.add(real)
                subfolders.append((path, (*parts, name), real))
        return subfolders

    def _add_file(
        self, entry: os.DirEntry, path: Path, parts: tuple[str, ...], folder_real: str, canonical: bool
    ) -> None:
        name = entry.name
        is_image = path.suffix.lower() in IMAGE_EXTENSIONS
        if name.startswith(".") or (not parts and not is_image):
            return  # .DS_Store, and a root's README or synth.json, are not data
        if not is_image:
            self.skipped.append((str(path), SKIP_EXTENSION))
        elif _size(path) == 0:
            self.skipped.append((str(path), SKIP_EMPTY))
        else:
            link = entry.is_symlink()
            real = os.path.realpath(path) if link else os.path.join(folder_real, name)
            self.candidates.append((parts, path, real, canonical and not link))


def _one_name_per_file(
    candidates: list[tuple[tuple[str, ...], Path, str, bool]],
) -> list[tuple[tuple[str, ...], Path]]:
    """One entry per real file: the name reached without a symlink if there is one, else the first met."""
    chosen: dict[str, int] = {}
    for i, (_, _, real, canonical) in enumerate(candidates):
        if real not in chosen or (canonical and not candidates[chosen[real]][3]):
            chosen[real] = i
    return [(parts, file) for i, (parts, file, real, _) in enumerate(candidates) if chosen[real] == i]


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def _index_folder(root: Path) -> tuple[list[Sample], list[tuple[str, str]], str]:
    files, skipped = _walk(root)
    folder_names = {part.lower() for parts, _ in files for part in parts}
    if folder_names & {"0_real", "1_fake"}:
        layout, samples = "forensynths", _forensynths_samples(files)
    else:
        if folder_names & {"ai", "nature"} and any(_genimage_anchor(parts) is not None for parts, _ in files):
            layout, classify = "genimage", _genimage_sample
        elif any(parts and parts[0].lower() in SPLIT_ALIASES for parts, _ in files):
            layout, classify = "splits", _splits_sample
        else:
            layout, classify = "folders", _folders_sample
        samples = [classify(parts, file, root) for parts, file in files]
    skipped += [(str(file), SKIP_NO_CLASS) for (_, file), sample in zip(files, samples, strict=True) if sample is None]
    return [sample for sample in samples if sample is not None], skipped, layout


def _folders_sample(parts: tuple[str, ...], file: Path, root: Path) -> Sample | None:
    return Sample(file, _normalize_label(parts[0]), None) if parts else None


def _splits_sample(parts: tuple[str, ...], file: Path, root: Path) -> Sample | None:
    if len(parts) < 2 or parts[0].lower() not in SPLIT_ALIASES:
        return None
    return Sample(file, _normalize_label(parts[1]), SPLIT_ALIASES[parts[0].lower()])


def _genimage_anchor(parts: tuple[str, ...]) -> int | None:
    """Index of the ``{train,val}`` folder directly above ``{ai,nature}``, if the path has one."""
    for i in range(len(parts) - 1):
        if parts[i].lower() in ("train", "val") and parts[i + 1].lower() in ("ai", "nature"):
            return i
    return None


def _genimage_sample(parts: tuple[str, ...], file: Path, root: Path) -> Sample | None:
    anchor = _genimage_anchor(parts)
    if anchor is None:
        return None
    generator = parts[0] if anchor > 0 else root.name  # the root may itself be one generator's folder
    label = REAL if parts[anchor + 1].lower() == "nature" else generator
    return Sample(file, label, parts[anchor].lower())


def _forensynths_samples(files: list[tuple[tuple[str, ...], Path]]) -> list[Sample | None]:
    """``[split/][generator/]category/{0_real,1_fake}``: fakes take the generator's name where there is one.

    A split with generator/category folders (CNNDetection's test set) also has generators without categories
    (``deepfake/1_fake``), so there a single folder level names the generator; elsewhere it is a category.
    """
    placed: list[tuple[Path, str, str | None, tuple[str, ...]] | None] = []
    for parts, file in files:
        lowered = [part.lower() for part in parts]
        anchors = [i for i, part in enumerate(lowered) if part in ("0_real", "1_fake")]
        if not anchors:
            placed.append(None)
            continue
        levels = parts[: anchors[-1]]
        split = SPLIT_ALIASES.get(levels[0].lower()) if levels else None
        levels = levels[1:] if split else levels
        placed.append((file, lowered[anchors[-1]], split, levels))
    two_level_splits = {entry[2] for entry in placed if entry and len(entry[3]) >= 2}
    samples: list[Sample | None] = []
    for entry in placed:
        if entry is None:
            samples.append(None)
            continue
        file, kind, split, levels = entry
        label = REAL if kind == "0_real" else FAKE
        if label == FAKE and levels and (len(levels) >= 2 or split in two_level_splits):
            label = levels[0]
        samples.append(Sample(file, label, split))
    return samples


# ----------------------------------------------------------------------------- manifest


def _index_manifest(csv_path: Path, allow_outside_root: bool = False) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Samples of a CSV manifest; its rows must resolve inside the CSV's folder unless ``allow_outside_root``.

    The folder check resolves symlinks: ``../x.png``, ``/abs/x.png`` and ``link/x.png`` with ``link -> /elsewhere``
    are all refused by default. A manifest is text that may come from another machine or another person and can
    name any file the process can read; its folder is the dataset it describes, so leaving it takes an explicit
    ``allow_outside_root=True`` (``--allow-outside-root``). Folder datasets differ: a link there was placed by
    whoever laid out the folder (see :func:`_walk`).
    """
    base = csv_path.parent
    base_real = os.path.realpath(base)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the manifest ({exc})") from exc
    if not rows:
        raise DatasetError(f"{csv_path}: empty manifest; expected a header 'path,label[,split]'")
    header = [cell.strip().lower() for cell in rows[0]]
    if header[:2] != ["path", "label"] or header[2:] not in ([], ["split"]):
        raise DatasetError(f"{csv_path}: header must be 'path,label' or 'path,label,split', got {','.join(rows[0])!r}")
    samples, skipped = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetError(f"{csv_path}:{line}: expected {len(header)} fields, got {len(row)}")
        name, label = row[0].strip(), row[1].strip()
        if not name or not label:
            raise DatasetError(f"{csv_path}:{line}: empty path or label")
        split = None
        if len(header) == 3:
            split = SPLIT_ALIASES.get(row[2].strip().lower())
            if split is None:
                raise DatasetError(f"{csv_path}:{line}: split must be train, val or test, got {row[2]!r}")
        file = Path(name) if Path(name).is_absolute() else base / name
        if not allow_outside_root and not _is_within(os.path.realpath(file), base_real):
            raise DatasetError(
                f"{csv_path}:{line}: {name!r} resolves outside the manifest's folder {base} "
                "(pass allow_outside_root=True, or --allow-outside-root, to allow it)"
            )
        if not file.is_file():
            skipped.append((str(file), SKIP_MISSING))
        elif file.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((str(file), SKIP_EXTENSION))
        elif _size(file) == 0:
            skipped.append((str(file), SKIP_EMPTY))
        else:
            samples.append(Sample(file, _normalize_label(label), split))
    return samples, skipped


def _is_within(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False


# ----------------------------------------------------------------------------- splits


def _assign_splits(
    samples: list[Sample], val_fraction: float, test_fraction: float, seed: int, root: Path
) -> list[Sample]:
    """Keep the splits the data has; make the missing ones (see the module docstring)."""
    present = {sample.split for sample in samples}
    if present == {None}:
        return _stratified(samples, {"val": val_fraction, "test": test_fraction}, seed)
    if None in present:
        raise DatasetError(f"{root}: some images have a split and others do not; give every image a split or none")
    if "train" not in present:  # evaluation-only data; GenImage's val doubles as its test split
        return [
            Sample(s.path, s.label, "test" if s.split == "val" and "test" not in present else s.split) for s in samples
        ]
    if "test" not in present:
        samples = [Sample(s.path, s.label, "test" if s.split == "val" else s.split) for s in samples]
        logger.info("no test split: the val split becomes test, and val is carved out of train")
        present = {sample.split for sample in samples}
    if "val" not in present and val_fraction > 0:
        train = [sample for sample in samples if sample.split == "train"]
        rest = [sample for sample in samples if sample.split != "train"]
        return rest + _stratified(train, {"val": val_fraction}, seed, default="train")
    return samples


def _stratified(samples: list[Sample], fractions: dict[str, float], seed: int, default: str = "train") -> list[Sample]:
    """Split each class by ``fractions`` (the rest to ``default``), deterministic for a seed.

    Every class with enough images gets at least one image in each requested split and keeps one in ``default``.
    """
    by_class: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_class.setdefault(sample.label, []).append(sample)
    out = []
    wanted = [(name, fraction) for name, fraction in fractions.items() if fraction > 0]
    keep_default = sum(fractions.values()) < 1
    for label in sorted(by_class):
        # one generator per class, so adding a class leaves the others' splits as they were
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        group = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        sizes = _split_sizes(len(group), wanted, keep_default)
        if len(group) < len(wanted) + keep_default:
            logger.warning("class %r has %d images, too few to appear in every split", label, len(group))
        start = 0
        for name, size in sizes:
            out += [Sample(s.path, s.label, name) for s in group[start : start + size]]
            start += size
        out += [Sample(s.path, s.label, default) for s in group[start:]]
    return out


def _split_sizes(n: int, wanted: list[tuple[str, float]], keep_default: bool) -> list[tuple[str, int]]:
    budget = n - (1 if keep_default and n > len(wanted) else 0)
    sizes = []
    for name, fraction in wanted:
        size = min(max(1, round(n * fraction)), budget)
        if not keep_default and name == wanted[-1][0]:
            size = budget  # fractions summing to one: the last split takes the remainder
        sizes.append((name, size))
        budget -= size
    return sizes


# ----------------------------------------------------------------------------- decoding


def decode_samples(
    samples: Iterable[Sample],
    max_side: int | None = None,
    progress: bool = True,
) -> tuple[list[np.ndarray], list[Sample], list[tuple[str, str]]]:
    """Decode images with :func:`aigi.preprocessing.decode_image`, never resizing (resizing erases the traces).

    Args:
        samples: the images to decode.
        max_side: bound memory on huge images by center-cropping (not resizing) each side to at most this many
            pixels, at a crop origin on the preprocessing's 8-pixel grid so upsampling traces keep their phase.
            ``None`` keeps every image whole.
        progress: show a tqdm bar on stderr.

    Returns:
        ``(images, decoded, failed)``: RGB uint8 arrays and their samples in input order, and ``(path, reason)``
        for each image that could not be decoded (corrupt, truncated, not an image), each logged as a warning.
    """
    from tqdm import tqdm

    samples = list(samples)

    def load(sample: Sample) -> np.ndarray | str:
        try:
            image = decode_image(sample.path)
        except (InvalidImageError, OSError, ValueError) as exc:
            return str(exc) or exc.__class__.__name__
        return _center_crop(image, max_side) if max_side else image

    images, decoded, failed = [], [], []
    # Pillow releases the GIL while decoding, so threads overlap reads and decodes on a couple of cores
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(load, samples)
        for sample, result in tqdm(
            zip(samples, results, strict=True), total=len(samples), desc="decode", unit="img", disable=not progress
        ):
            if isinstance(result, str):
                logger.warning("skipped %s: %s", sample.path, result)
                failed.append((str(sample.path), result))
            else:
                images.append(result)
                decoded.append(sample)
    return images, decoded, failed


def _center_crop(image: np.ndarray, max_side: int, grid: int = 8) -> np.ndarray:
    height, width = image.shape[:2]
    new_h, new_w = min(height, max_side), min(width, max_side)
    if (new_h, new_w) == (height, width):
        return image
    top = (height - new_h) // 2 // grid * grid
    left = (width - new_w) // 2 // grid * grid
    return np.ascontiguousarray(image[top : top + new_h, left : left + new_w])
