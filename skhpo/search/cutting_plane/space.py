"""The space of :class:`~.estimator.CuttingPlaneTuner`, read by the shared vocabulary
(:mod:`skhpo.hyper.space`) and checked against the net's module: which dropout layers and
data augmentations the self-tuning network tunes, their boxes and start values.
"""

from typing import NamedTuple

import numpy as np

from ...hyper.layers import dropout_layers
from ...hyper.space import AUGMENTATIONS, parse_name, read_dimension
from ...hyper.transforms import Box

__all__ = ["DEFAULT_BOX", "DEFAULT_INIT", "Space", "read_space"]

DEFAULT_BOX, DEFAULT_INIT = (0.0, 0.95), 0.05


class Space(NamedTuple):
    """The hyper-parameters the self-tuning network tunes, dropout rates first.

    Attributes
    ----------
    names : list of str
    boxes : list of Box
    inits : list of float
        Their start values, inside their boxes.
    paths : list of str
        The dropout layers (entry i is hyper-parameter i).
    augment : dict
        ``{"input_noise" | "cutout_holes" | "cutout_length": index}``.
    image_shape : tuple or None
        The examples' shape, for cutout.
    """

    names: list
    boxes: list
    inits: list
    paths: list
    augment: dict
    image_shape: tuple | None


def read_space(param_bounds, plain, prefix, X, image_shape=None):
    """:class:`Space` of ``param_bounds`` for the initialised net ``plain`` (its prefix in
    the estimator, the training inputs ``X`` and the tuner's ``image_shape``, for cutout)."""
    layers = dropout_layers(plain.module_)
    spec = param_bounds
    if spec is None:
        if not layers:
            raise ValueError("param_bounds=None tunes every dropout layer, but the module "
                             "has none; add nn.Dropout layers or name input_noise / "
                             "cutout_holes and cutout_length")
        spec = {f"{prefix}dropout[{p}]": (*DEFAULT_BOX, DEFAULT_INIT) for p in layers}
    if not spec:
        raise ValueError("param_bounds is empty: name at least one dropout layer, "
                         "input_noise or cutout_holes and cutout_length")
    rates, augment = [], {}
    for name, value in spec.items():
        dim = read_dimension("param_bounds", parse_name(name, prefix, "param_bounds"), value)
        if dim.name.kind in AUGMENTATIONS:
            augment[dim.name.kind] = _augmentation(dim)
        elif dim.name.kind == "dropout":
            rates += _rates(dim, layers, prefix)
        else:
            raise ValueError(f"param_bounds: {name!r} is not tunable here; accepted: "
                             f"{prefix}dropout[<path of a dropout layer>] (the module's "
                             f"are {sorted(layers)}), {prefix}dropout (every dropout "
                             "layer), " + ", ".join(prefix + a for a in AUGMENTATIONS))
    if ("cutout_holes" in augment) != ("cutout_length" in augment):
        raise ValueError("param_bounds: cutout needs both cutout_holes and cutout_length")
    shape = _image_shape(image_shape, plain, X) if "cutout_holes" in augment else None
    entries = rates + [augment[a] for a in AUGMENTATIONS if a in augment]
    names = [n for n, _, _, _ in entries]
    return Space(names, [b for _, b, _, _ in entries], [b.clip(i) for _, b, i, _ in entries],
                  [p for _, _, _, p in rates],
                  {a: names.index(augment[a][0]) for a in augment}, shape)


def _augmentation(dim):
    if dim.box is None:
        raise ValueError(f"param_bounds[{dim.name.name!r}]: {dim.name.kind} needs a range "
                         "(low, high[, init]) or a uniform / loguniform distribution")
    init = dim.init if dim.init is not None else 0.5 * (dim.box.lo + dim.box.hi)
    return dim.name.name, dim.box, init, None


def _rates(dim, layers, prefix):
    """One entry per dropout layer that ``dim`` names (``dropout``: every one)."""
    if dim.name.path is None:
        if not layers:
            raise ValueError(f"param_bounds[{dim.name.name!r}]: the module has no dropout "
                             "layer")
        names = {path: f"{prefix}dropout[{path}]" for path in layers}
    elif dim.name.path not in layers:
        raise ValueError(f"param_bounds[{dim.name.name!r}]: the module has no dropout layer "
                         f"{dim.name.path!r}; its dropout layers are {sorted(layers)}")
    else:
        names = {dim.name.path: dim.name.name}
    box = dim.box if dim.box is not None else Box(*DEFAULT_BOX)
    if dim.init is not None and not box.lo <= dim.init <= box.hi:
        raise ValueError(f"param_bounds[{dim.name.name!r}]: the start value {dim.init} is "
                         f"outside the box ({box.lo}, {box.hi})")
    return [(name, box, dim.init if dim.init is not None else min(max(
        float(getattr(layers[path], "p", DEFAULT_INIT)), box.lo), box.hi), path)
        for path, name in names.items()]


def _image_shape(image_shape, plain, X):
    """(C, H, W) of one example, for cutout: ``image_shape``, else the net's
    ``image_shape_`` (SmallCNNClassifier), else the shape of ``X``'s examples if 3-D/4-D."""
    shape = image_shape or getattr(plain, "image_shape_", None)
    if shape is None and np.ndim(X) in (3, 4):
        shape = np.shape(X)[1:]
    if shape is None:
        raise ValueError("cutout needs the images' shape: pass image_shape=(C, H, W) (the "
                         "inputs are flat rows)")
    shape = tuple(int(v) for v in shape)
    shape = (1, *shape) if len(shape) == 2 else shape
    if len(shape) != 3 or int(np.prod(shape)) != int(np.prod(np.shape(X)[1:])):
        raise ValueError(f"image_shape {shape} does not match the {np.shape(X)[1:]} "
                         "features of each example")
    return shape
