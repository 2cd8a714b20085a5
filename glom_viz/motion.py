"""Common fate: which patches move together between two frames, found from the pixels alone.

GLOM's paper leans on the Gestalt idea that what moves together belongs together. Two frames of a
scene are compared here by classical means, with no mask and no generator's motion read:

1. the first frame is cut into regions of similar colour (Felzenszwalb's graph segmentation, from
   scikit-image): parts of objects and patches of background;
2. every region gets the integer shift that best maps its pixels onto the second frame, summed over
   the whole region, so a uniformly coloured part moves as its outline says (no aperture problem);
3. the background is taken to be still: a region that the zero shift already explains (error at the
   noise level) is still. Fine regions decide stillness (a small background region beside an object
   is not dragged along with it), coarse regions decide motion (a whole part at once);
4. a region's shift counts only when it is clear: good, and well below every shift 2 px away from it.

A patch gets the shift that covers at least PATCH_AGREEMENT of its pixels, else no group (-1). On the
project's moving scenes (``scenes.make_moving_scene``, shifts up to 3 px) about 67 % of object patches
and 53 % of background patches get a group, and over 99 % of those groups are right
(``tests/test_motion.py`` checks this against the truth, which the training never sees). Training
can lower that share (``TrainConfig.group_agreement``) so that patches on an outline join a group too.

Real motion is not always an integer shift of regions: ``flow_motion`` groups pixels by their optical
flow (scikit-image's TV-L1) instead, and ``common_fate`` picks, per pair of frames, the region shifts
where they explain most of the picture and the flow where they do not. On flat sprites that move by
non-integer steps and turn a little (experiments/sprites.py), a flat region's still test also asks
that no moved shift explain it much better (``strict_still``), since a flat sprite that moved is
explained by the still shift everywhere but along its outline.

Similarity, the other Gestalt cue used here, needs one still image only: ``similarity_groups`` puts
patches of one Felzenszwalb region of similar colour together. On these scenes such regions are parts.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from skimage.registration import optical_flow_tvl1
from skimage.segmentation import felzenszwalb

from glom_viz.errors import ConfigError

# Felzenszwalb scales (larger = coarser regions) and the smallest region, in pixels
STILL_SCALE = 50
STILL_MIN_SIZE = 10
MOVING_SCALE = 800
MOVING_MIN_SIZE = 20
# similarity: regions of one colour in a still image, for the part-level grouping
SIMILARITY_SCALE = 200
SIMILARITY_MIN_SIZE = 10
# a region's match is good when its mean squared RGB error per pixel is under this (pixel noise
# alone gives about 2 * 3 * 0.025^2 = 0.004 with scenes.PIXEL_NOISE) ...
GOOD_ERROR = 0.012
# ... and clear when every shift at least 2 px away from it along some axis is this many times worse
CLEAR_RATIO = 2.0
# a patch joins a group when this share of its pixels has that group's shift
PATCH_AGREEMENT = 0.75
UNCLEAR = -1
# optical flow (flow_motion): a pixel moving less than FLOW_STILL px is still; regions whose median
# flows lie within FLOW_GAP px of each other move together, and a pixel whose own flow is further than
# that from its region's is unclear. TV-L1's data attachment at 50 (scikit-image's default 15) keeps
# the flow of a flat region from being smoothed into its still surroundings.
FLOW_STILL = 0.5
FLOW_GAP = 1.0
FLOW_ATTACHMENT = 50.0
FLOW_STILL_LABEL = 0
# common_fate's "auto": the region shifts are used where at least this share of the pixels gets a clear one
SHIFT_COVERAGE = 0.5
MOTION_METHODS = ("shift", "flow", "auto")
LUMINANCE = np.array([0.299, 0.587, 0.114])


def shift_grid(max_shift: int) -> np.ndarray:
    """((2m + 1)^2, 2) integer shifts (down, across), row-major; the still shift is entry (2m + 1)^2 // 2."""
    span = np.arange(-max_shift, max_shift + 1)
    return np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)


def still_shift(max_shift: int) -> int:
    """The index of the zero shift in ``shift_grid(max_shift)``: the middle of its (2m + 1)^2 entries."""
    return (2 * max_shift + 1) ** 2 // 2


def shift_errors(first: np.ndarray, second: np.ndarray, max_shift: int) -> np.ndarray:
    """(s, s, 3) x2 -> (shifts, s, s): squared RGB error of every pixel against the second frame moved by each shift.

    Pixels moved in from beyond the border repeat the border.
    """
    side = first.shape[0]
    padded = np.pad(second, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    return np.stack([((first - padded[max_shift + down:max_shift + down + side,
                                      max_shift + across:max_shift + across + side]) ** 2).sum(-1)
                     for down, across in shift_grid(max_shift)])


def region_shifts(errors: np.ndarray, regions: np.ndarray, max_shift: int, still_prior: bool,
                  strict_still: bool = False) -> np.ndarray:
    """(shifts, s, s) errors and (s, s) region ids -> (s, s) each pixel's region's shift index, UNCLEAR where unclear.

    With still_prior, a region the still shift explains is still, and other regions are UNCLEAR; with
    strict_still too, only if no shift of 1 px or more explains it CLEAR_RATIO times better.
    """
    shifts = shift_grid(max_shift)
    still = still_shift(max_shift)
    count = regions.max() + 1
    sizes = np.bincount(regions.ravel(), minlength=count)
    # (shifts, regions): mean error of every region under every shift
    mean = np.stack([np.bincount(regions.ravel(), weights=e.ravel(), minlength=count) for e in errors])
    mean /= np.maximum(sizes, 1)
    if still_prior:
        explained = mean[still] < GOOD_ERROR
        if strict_still:
            moved = np.abs(shifts).max(1) >= 1
            # the 1e-4 floor: pixel noise alone makes "better" meaningless where both errors are tiny
            explained &= mean[still] <= CLEAR_RATIO * mean[moved].min(0) + 1e-4
        return np.where(explained, still, UNCLEAR)[regions]
    best = mean.argmin(0)
    best_error = mean.min(0)
    far = np.abs(shifts[:, None, :] - shifts[best][None]).max(-1) >= 2  # (shifts, regions)
    rival = np.where(far, mean, np.inf).min(0)
    clear = (best_error < GOOD_ERROR) & (rival > CLEAR_RATIO * best_error)
    return np.where(clear, best, UNCLEAR)[regions]


def pixel_motion(first: np.ndarray, second: np.ndarray, max_shift: int, strict_still: bool = False) -> np.ndarray:
    """(s, s, 3) float frames in [0, 1] -> (s, s) int: each pixel's shift index (``shift_grid``), UNCLEAR where unclear.

    strict_still: a fine region is still only if no moved shift explains it much better (see ``region_shifts``).
    """
    if first.shape != second.shape or first.ndim != 3 or first.shape[-1] != 3:
        raise ConfigError(f"two (s, s, 3) frames of one shape are needed, got {first.shape} and {second.shape}")
    first, second = first.astype(np.float64), second.astype(np.float64)
    errors = shift_errors(first, second, max_shift)
    fine = felzenszwalb(first, scale=STILL_SCALE, sigma=0.5, min_size=STILL_MIN_SIZE)
    coarse = felzenszwalb(first, scale=MOVING_SCALE, sigma=0.5, min_size=MOVING_MIN_SIZE)
    still = region_shifts(errors, fine, max_shift, still_prior=True, strict_still=strict_still)
    moving = region_shifts(errors, coarse, max_shift, still_prior=False)
    still_index = still_shift(max_shift)
    # still where fine regions say so; a coarse "still" that fine regions did not confirm stays unclear
    return np.where(still == still_index, still_index, np.where(moving == still_index, UNCLEAR, moving))


def flow_motion(first: np.ndarray, second: np.ndarray, still: float = FLOW_STILL, gap: float = FLOW_GAP) -> np.ndarray:
    """(s, s, 3) x2 float frames -> (s, s) int motion groups from optical flow: FLOW_STILL_LABEL (0) for
    still pixels, 1, 2, ... for the groups that move together, UNCLEAR where unclear.

    TV-L1 flow (scikit-image) of the luminance; the first frame's coarse regions of similar colour each
    take their median flow; a region most of whose pixels are still is still, and moving regions are
    joined when their median flows differ by less than `gap` px (complete linkage), so that two
    regions of one object that move alike are one group and objects moving apart are not.
    """
    if first.shape != second.shape or first.ndim != 3 or first.shape[-1] != 3:
        raise ConfigError(f"two (s, s, 3) frames of one shape are needed, got {first.shape} and {second.shape}")
    first, second = first.astype(np.float64), second.astype(np.float64)
    flow = optical_flow_tvl1(first @ LUMINANCE, second @ LUMINANCE, attachment=FLOW_ATTACHMENT)  # (2, s, s)
    regions = felzenszwalb(first, scale=MOVING_SCALE, sigma=0.5, min_size=MOVING_MIN_SIZE)
    count = regions.max() + 1
    speed = np.hypot(*flow)
    sizes = np.bincount(regions.ravel(), minlength=count)
    still_share = np.bincount(regions.ravel(), weights=(speed < still).ravel(), minlength=count) / np.maximum(sizes, 1)
    order = np.argsort(regions.ravel(), kind="stable")
    bounds = np.cumsum(sizes)[:-1]
    median = np.stack([[np.median(chunk) if chunk.size else 0.0 for chunk in np.split(component.ravel()[order], bounds)]
                       for component in flow], 1)  # (regions, 2)
    group = np.full(count, FLOW_STILL_LABEL)
    moving = np.flatnonzero(still_share < 0.5)
    if moving.size == 1:
        group[moving] = 1
    elif moving.size > 1:
        group[moving] = fcluster(linkage(median[moving], "complete"), gap, "distance")
    labels = group[regions]
    off = np.hypot(flow[0] - median[regions, 0], flow[1] - median[regions, 1])
    unclear = np.where(labels == FLOW_STILL_LABEL, speed >= still, off > gap)
    return np.where(unclear, UNCLEAR, labels)


def common_fate(first: np.ndarray, second: np.ndarray, max_shift: int, method: str = "auto",
                strict_still: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(s, s, 3) x2 -> (labels (s, s) int, still (s, s) bool, the method used): which pixels move together.

    method: "shift" (``pixel_motion``, the region shifts), "flow" (``flow_motion``), or "auto": the
    region shifts where at least SHIFT_COVERAGE of the pixels get a clear one, else the flow (a camera
    that pans by a fraction of a pixel, light that changes, textures no integer shift maps). On flat
    sprites (experiments/sprites.py) "auto" groups patches as the objects do with ARI 0.90 among the
    grouped ones, against 0.87 for the shifts alone and 0.68 for the flow alone. Labels
    of one method are its own ids (UNCLEAR where unclear); `still` marks the pixels seen not to move.
    """
    if method not in MOTION_METHODS:
        raise ConfigError(f"the motion method is one of {', '.join(MOTION_METHODS)}, not {method!r}")
    if method != "flow":
        labels = pixel_motion(first, second, max_shift, strict_still)
        if method == "shift" or (labels != UNCLEAR).mean() >= SHIFT_COVERAGE:
            return labels, labels == still_shift(max_shift), "shift"
    labels = flow_motion(first, second)
    return labels, labels == FLOW_STILL_LABEL, "flow"


def patch_groups(labels: np.ndarray, patch_size: int, agreement: float = PATCH_AGREEMENT) -> np.ndarray:
    """(s, s) int pixel labels (UNCLEAR allowed) -> (patches,) row-major: the label of at least
    `agreement` of each patch's pixels, UNCLEAR where no label has that share.

    At 0.5 a patch on an object's edge joins the group of the side it mostly shows, the label the
    evaluation's truth gives it (``islands.patch_truth`` takes the majority); at 0.75 edges stay out.
    """
    if not 0 < agreement <= 1:
        raise ConfigError(f"the patch agreement is a share of a patch's pixels in (0, 1], got {agreement}")
    side = labels.shape[0]
    if side % patch_size:
        raise ConfigError(f"image side {side} is not a multiple of the patch size {patch_size}")
    grid = side // patch_size
    per_patch = labels.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    count = max(int(labels.max()) + 1, 1)
    # votes (patches, labels + 1): column 0 counts unclear pixels
    votes = np.stack([np.bincount(row + 1, minlength=count + 1) for row in per_patch])
    group = votes[:, 1:].argmax(1)
    agreed = votes[:, 1:].max(1) >= agreement * per_patch.shape[1]
    return np.where(agreed, group, UNCLEAR)


def motion_groups(first: np.ndarray, second: np.ndarray, patch_size: int, max_shift: int,
                  agreement: float = PATCH_AGREEMENT) -> np.ndarray:
    """(s, s, 3) x2 -> (patches,) int, row-major: the shift index most of each patch moved by, UNCLEAR if none did.

    Patches with the same group moved the same way between the frames.
    """
    if first.shape[0] % patch_size:
        raise ConfigError(f"image side {first.shape[0]} is not a multiple of the patch size {patch_size}")
    return patch_groups(common_fate(first, second, max_shift, "shift")[0], patch_size, agreement)


def similarity_groups(image: np.ndarray, patch_size: int, scale: float = SIMILARITY_SCALE,
                      still: np.ndarray | None = None, agreement: float = PATCH_AGREEMENT) -> np.ndarray:
    """(s, s, 3) float image in [0, 1] -> (patches,) int: each patch's region of similar colour, UNCLEAR if it straddles two.

    Gestalt's law of similarity, from one still image: Felzenszwalb regions at `scale`. On the
    project's scenes these are parts (a roof, a wheel, a crown) and pieces of background: at the
    default scale (200; 100 gives smaller regions, 63 % coverage) about 68 % of object patches lie in
    one region, and patches sharing a region nearly always share a part (ARI 0.997 against the truth
    on 32 validation scenes).

    `still`, an optional (s, s) bool mask of the pixels seen not to move (``pixel_motion``), joins
    every region most of whose pixels are still into one group: the background, whose texture would
    otherwise break into many regions, becomes one whole at this level as it is at the object levels.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] != image.shape[1]:
        raise ConfigError(f"a square (s, s, 3) image is needed, got {image.shape}")
    if image.shape[0] % patch_size:
        raise ConfigError(f"image side {image.shape[0]} is not a multiple of the patch size {patch_size}")
    regions = colour_regions(image, scale)
    if still is not None:
        if still.shape != regions.shape:
            raise ConfigError(f"the still mask {still.shape} does not match the image {image.shape[:2]}")
        count = regions.max() + 1
        share = np.bincount(regions.ravel(), weights=still.ravel(), minlength=count) / np.bincount(regions.ravel())
        regions = np.where(share[regions] > 0.5, count, regions)
    return patch_groups(regions, patch_size, agreement)


def colour_regions(image: np.ndarray, scale: float = SIMILARITY_SCALE) -> np.ndarray:
    """(s, s, 3) float image -> (s, s) int: Felzenszwalb's regions of similar colour at `scale`."""
    return felzenszwalb(image.astype(np.float64), scale=scale, sigma=0.5, min_size=SIMILARITY_MIN_SIZE)


def still_pixels(first: np.ndarray, second: np.ndarray, max_shift: int) -> np.ndarray:
    """(s, s, 3) x2 -> (s, s) bool: the pixels whose region is clearly still between the frames."""
    return pixel_motion(first, second, max_shift) == still_shift(max_shift)
