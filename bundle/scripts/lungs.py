"""The lung geometry of a 2D mask, with NumPy and SciPy: connected components, the lungs' bounding box, erosion, the
lungs kept from a thresholded prediction, hole filling, the patient's right and left lung, and the areas and quality
flags of the run report.

Arrays given as ``(x, y)`` are MONAI's layout (x along an image row); masks for :func:`measure_lungs` are
``(rows, columns)``, as DICOM and PIL store them. The MONAI transforms built on these are in
:mod:`scripts.transforms.postprocess`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "lung_components",
    "lung_box",
    "erode",
    "fill_enclosed_holes",
    "keep_lung_components",
    "patient_right_on_image_left",
    "split_lung_sides",
    "measure_lungs",
]


# up to this many components, per-component passes over the labels beat one pass that indexes by label (bincount,
# find_objects): the masks of lungs have one to a few components, noisy ones (an untrained model's) thousands
_FEW_COMPONENTS = 4


def lung_components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a boolean mask: ``(labels, sizes)`` with ``sizes[0]`` (background) set to 0.

    Components are numbered in raster order (as scikit-image's ``label``), ``connectivity`` as scikit-image's: 1 for
    edge neighbours, ``None`` or ``mask.ndim`` for every neighbour."""
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    if count <= _FEW_COMPONENTS:  # the usual lungs: a count per component is 4-8 times faster than a bincount
        sizes = np.array([0] + [np.count_nonzero(labels == component) for component in range(1, count + 1)])
    else:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
    return labels, sizes


def lung_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of a mask's non-zero pixels, widened by ``margin`` within the array; ``None`` for an
    empty mask. Component work on a full-size radiograph only needs this box: a third to a half of the pixels."""
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if occupied.size == 0:
            return None
        box.append(slice(max(0, occupied[0] - margin), min(mask.shape[axis], occupied[-1] + 1 + margin)))
    return tuple(box)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """A boolean 2D mask eroded by a square of side ``2 * radius + 1``, the array's edge counting as outside.

    The same pixels as ``scipy.ndimage.minimum_filter(mask, size=2 * radius + 1, mode="constant", cval=0)``, from
    ``4 * radius`` shifted logical ANDs of whole rows and columns: 2-3 times faster on a full-size radiograph.
    """
    eroded = np.array(mask, bool)
    if radius < 1:
        return eroded
    for axis in range(2):
        source = eroded.copy()
        view = np.moveaxis(eroded, axis, 0)  # shifts along ``axis`` as shifts of whole leading-axis slices
        src = np.moveaxis(source, axis, 0)
        for shift in range(1, radius + 1):
            view[shift:] &= src[:-shift]
            view[:-shift] &= src[shift:]
        view[:radius] = False
        view[-radius:] = False
    return eroded


def fill_enclosed_holes(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Fill the background regions of a boolean mask that do not reach the array's edge.

    The result equals MONAI's ``fill_holes`` (background connectivity ``connectivity``, full by default; the edge
    counts as open). Only the mask's bounding box, padded by one background pixel, is labelled: background outside
    the box is connected to the edge, so any region that reaches the padding is open too.
    """
    box = lung_box(mask, margin=1)
    if box is None:
        return mask.copy()
    crop = np.pad(mask[box], 1, constant_values=False)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    regions, count = ndimage.label(~crop, structure=structure)
    not_hole = np.zeros(count + 1, bool)  # a lookup table over region numbers: foreground (0) and open regions
    not_hole[0] = True
    for axis in range(mask.ndim):  # the regions on the padding's faces reach the edge
        not_hole[np.take(regions, [0, -1], axis=axis)] = True
    if not_hole.all():  # the usual case: nothing to fill, and no full-size lookup to make
        return mask.copy()
    holes = ~not_hole[regions]
    filled = mask.copy()
    filled[box] |= holes[(slice(1, -1),) * mask.ndim]
    return filled


def keep_lung_components(
    mask: np.ndarray,
    num_components: int = 2,
    min_fraction: float = 0.0,
    fill_holes: bool = True,
    connectivity: int | None = None,
) -> np.ndarray:
    """The lungs of a boolean mask: its ``num_components`` largest components, without those smaller than
    ``min_fraction`` of the largest, with their enclosed holes filled.

    The same pixels as MONAI's ``KeepLargestConnectedComponent(num_components=...)`` (same ranking and ties), then
    removing the small components, then MONAI's ``FillHoles``; computed with one labelling of the mask and one of
    its background, both inside the mask's bounding box.

    Args:
        mask: boolean array (any number of dimensions).
        num_components: components to keep, the largest first.
        min_fraction: components with fewer pixels than this fraction of the largest one are removed.
        fill_holes: fill the background regions the kept components enclose.
        connectivity: pixel connectivity of the components and of the background (``None``: every neighbour).
    """
    mask = np.asarray(mask, bool)
    box = lung_box(mask)
    if box is None:
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    labels, count = ndimage.label(mask[box], structure=structure)
    if count <= num_components and min_fraction == 0:  # the usual case: every component stays
        kept = mask
    else:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        if count > num_components:  # as MONAI: rank by size, background counted as 0
            keep = np.zeros(count + 1, bool)
            keep[np.argsort(sizes)[::-1][:num_components]] = True
        else:
            keep = sizes > 0
        if min_fraction > 0:
            keep &= sizes >= min_fraction * sizes[keep].max()
        kept = np.zeros(mask.shape, bool)
        kept[box] = keep[labels]
    return fill_enclosed_holes(kept, connectivity) if fill_holes else kept.copy()


def patient_right_on_image_left(patient_orientation: str = "") -> bool:
    """Whether the patient's right is on the image's left, from DICOM Patient Orientation (``"L\\F"`` on a PA or AP
    radiograph displayed as usual). Unknown or missing orientation: assume the usual display (``True``)."""
    row_direction = str(patient_orientation or "").split("\\")[0].upper()
    return not ("R" in row_direction and "L" not in row_direction)


def split_lung_sides(mask: np.ndarray, right_on_image_left: bool = True, connectivity: int | None = None) -> np.ndarray:
    """Label a 2D ``(x, y)`` lung mask: 1 for the patient's right lung, 2 for the left lung, 0 background.

    Components are assigned to a side by the x of their centroid relative to the dividing line: halfway between the
    centroids of the two largest components, or, when the lungs form one component, the narrowest column (fewest lung
    pixels) in the middle third of the mask's width, i.e. the mediastinum.

    Args:
        mask: ``(x, y)`` array, non-zero is lung.
        right_on_image_left: patient's right on the image's left (PA/AP radiograph, usual display).
        connectivity: pixel connectivity for the components (``None``: 8-neighbours).
    """
    labels, sizes = lung_components(np.asarray(mask) > 0, connectivity)  # numbered in MONAI's (x, y) raster order
    labels = labels.T  # (rows, columns): x is the column
    lung = labels > 0
    out = np.zeros(lung.shape, np.uint8)
    left_components, split = _image_left(lung, labels, sizes)
    if left_components is None and split is None:
        return out.T
    image_left = left_components[labels] if left_components is not None else np.arange(lung.shape[1]) < split
    right, left = (1, 2) if right_on_image_left else (2, 1)
    out[lung & image_left] = right
    out[lung & ~image_left] = left
    return out.T


def _image_left(lung: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray | None, int | None]:
    """Which lung pixels are on the image's left, for a ``(rows, columns)`` mask and its components: either a lookup
    table over component numbers (two or more components) or the dividing column (one component); ``(None, None)``
    for an empty mask."""
    if sizes.max() == 0:
        return None, None
    order = np.argsort(sizes)[::-1]
    if sizes[order[1]] > 0:  # two or more components: by their centroids' column
        centroid = np.zeros(len(sizes))
        if len(sizes) - 1 <= _FEW_COMPONENTS:
            for component in range(1, len(sizes)):
                columns = np.add.reduce((labels == component).view(np.uint8), axis=0, dtype=np.int64)
                centroid[component] = np.arange(labels.shape[1]) @ columns / sizes[component]
        else:
            for component, box in enumerate(ndimage.find_objects(labels), start=1):
                if box is not None:  # only the component's bounding box is read
                    columns = (labels[box] == component).sum(axis=0)
                    centroid[component] = np.arange(box[1].start, box[1].stop) @ columns / sizes[component]
        return centroid < (centroid[order[0]] + centroid[order[1]]) / 2, None
    columns = lung.sum(axis=0)
    x0, x1 = np.flatnonzero(columns)[[0, -1]]
    lo, hi = x0 + (x1 - x0) // 3, x1 - (x1 - x0) // 3
    return None, (lo + int(np.argmin(columns[lo : hi + 1])) if hi > lo else (x0 + x1) // 2)


def measure_lungs(
    mask: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    right_on_image_left: bool = True,
    lung_fraction_range: tuple[float, float] = (0.05, 0.6),
    max_side_ratio: float = 2.5,
) -> dict:
    """Areas and quality flags of a 2D lung mask.

    Args:
        mask: ``(rows, columns)`` labels; non-zero is lung. Values 1/2 are taken as right/left lung when both occur,
            else the sides are found with :func:`scripts.lungs.split_lung_sides`.
        pixel_spacing: ``(row, column)`` mm; areas in cm^2 are ``None`` when unknown.
        right_on_image_left: patient's right on the image's left (only used when the sides must be found).
        lung_fraction_range: lung pixels / image pixels outside this range are flagged.
        max_side_ratio: a larger ratio between the two lungs' areas is flagged.

    Returns:
        ``lung_area_px``, ``right_lung_area_px``, ``left_lung_area_px``, their ``_cm2`` versions, ``lung_fraction``,
        ``components`` and ``quality_flags`` (list of: ``empty_mask``, ``not_two_components``, ``lung_fraction_low``,
        ``lung_fraction_high``, ``right_left_imbalance``).
    """
    mask = np.asarray(mask)
    image_pixels = mask.size
    box = lung_box(mask)  # the components, the sides and the areas are those of the lungs' bounding box
    if box is not None:
        mask = mask[box]
    lung = mask > 0
    labels, sizes = lung_components(lung)
    components = int(np.count_nonzero(sizes))
    area = int(sizes.sum())
    if mask.max() == 2 and np.any(mask == 1):  # sides labelled already
        right = int(np.count_nonzero(mask == 1))
        left = int(np.count_nonzero(mask == 2))
    else:
        left_components, split = _image_left(lung, labels, sizes)
        if left_components is not None:
            on_image_left = int(sizes[left_components].sum())
        else:
            on_image_left = int(lung[:, :split].sum()) if split is not None else 0
        other_side = area - on_image_left
        right, left = (on_image_left, other_side) if right_on_image_left else (other_side, on_image_left)
    fraction = area / image_pixels if image_pixels else 0.0
    flags = []
    if area == 0:
        flags.append("empty_mask")
    if components != 2:
        flags.append("not_two_components")
    if area and fraction < lung_fraction_range[0]:
        flags.append("lung_fraction_low")
    if fraction > lung_fraction_range[1]:
        flags.append("lung_fraction_high")
    if right and left and max(right, left) / min(right, left) > max_side_ratio:
        flags.append("right_left_imbalance")
    cm2 = pixel_spacing[0] * pixel_spacing[1] / 100.0 if pixel_spacing else None
    return {
        "lung_area_px": area,
        "lung_area_cm2": round(area * cm2, 2) if cm2 else None,
        "right_lung_area_px": right,
        "left_lung_area_px": left,
        "right_lung_area_cm2": round(right * cm2, 2) if cm2 else None,
        "left_lung_area_cm2": round(left * cm2, 2) if cm2 else None,
        "lung_fraction": round(fraction, 4),
        "components": components,
        "quality_flags": flags,
    }
