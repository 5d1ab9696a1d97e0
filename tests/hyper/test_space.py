"""One search-space vocabulary (skhpo.hyper.space): names, ranges, domains, penalties."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import loguniform, norm, randint, uniform

from skhpo.hyper import Box, check_space, parse_name, read_dimension
from skhpo.hyper.space import penalty_gradient, penalty_term

# -- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, prefix, kind, index, path", [
    ("lr", "", "lr", None, None),
    ("net__optimizer__lr", "net__", "lr", None, None),
    ("optimizer__weight_decay", "", "weight_decay", None, None),
    ("l2", "", "l2", None, None),
    ("net__l1[2]", "net__", "l1", 2, None),
    ("dropout", "", "dropout", None, None),
    ("module__dropout", "", "dropout", None, None),
    ("dropout[layers.2]", "", "dropout", None, "layers.2"),
    ("input_noise", "", "input_noise", None, None),
    ("module__width", "", "other", None, None),
])
def test_parse_name_reads_every_form(name, prefix, kind, index, path):
    p = parse_name(name, prefix)
    assert (p.name, p.bare, p.kind, p.index, p.path) == (name, name[len(prefix):], kind, index,
                                                         path)
    assert p.per_layer == (index is not None or path is not None)


@pytest.mark.parametrize("name, prefix, message", [
    ("lr", "net__", "Pipeline prefix 'net__'"),
    ("l2[a]", "", "integer index"),
    ("dropout[]", "", "names no layer"),
    (3, "", "must be strings"),
])
def test_parse_name_rejects(name, prefix, message):
    with pytest.raises(ValueError, match=message):
        parse_name(name, prefix, where="space")


# -- continuous dimensions -----------------------------------------------------------------

@pytest.mark.parametrize("spec, box, init", [
    (loguniform(1e-4, 1e-1), Box(1e-4, 1e-1, True), None),
    (uniform(0.0, 0.5), Box(0.0, 0.5, False), None),
    ((0.0, 0.5), Box(0.0, 0.5, False), None),
    ((0.0, 0.5, 0.2), Box(0.0, 0.5, False), 0.2),
    ((1e-3, math.inf), Box(1e-3, math.inf, True), None),
    ([0.3], None, 0.3),
    (0.3, None, 0.3),
])
def test_read_dimension_box_scale_and_start(spec, box, init):
    dim = read_dimension("space", parse_name("l2"), spec)
    if box is None:
        assert dim.box is None
    else:
        assert dim.box.log == box.log
        assert (dim.box.lo, dim.box.hi) == pytest.approx((box.lo, box.hi))
    assert dim.init == init


@pytest.mark.parametrize("box", [Box(1e-4, 1e-1, True), Box(0.0, 0.5)])
def test_box_round_trips_through_the_unconstrained_coordinate(box):
    values = np.array([box.lo + 0.1 * (box.hi - box.lo), 0.5 * (box.lo + box.hi),
                       box.hi - 0.1 * (box.hi - box.lo)])
    back = box.forward(box.inverse(values)).numpy()
    np.testing.assert_allclose(back, values, rtol=1e-10)


@pytest.mark.parametrize("name, spec, message", [
    ("dropout", randint(0, 3), "only uniform and loguniform"),
    ("lr", norm(0, 1), "only uniform and loguniform"),
    ("dropout", [], "empty"),
    ("dropout", [0.1, 0.2], "list of 2 values is a grid"),
    ("dropout", (0.5, 0.1), "empty or inverted"),
    ("dropout", (0.3, 0.3), "empty or inverted"),
    ("lr", loguniform(1e-1, 1e-4), "empty or inverted"),
    ("dropout", uniform(0.2, 0.0), "empty or inverted"),
    ("dropout", (0.0, 1.0), r"in \[0, 1\)"),
    ("dropout", uniform(0.5, 0.7), r"in \[0, 1\)"),
    ("lr", (-1e-3, 1e-1), "must be > 0"),
    ("lr", [-0.1], "must be > 0"),
    ("optimizer__weight_decay", (-1e-3, 1e-2), "must be >= 0"),
    ("dropout", (0.0, 0.5, 0.7), "outside the box"),
    ("dropout", "0.1", "expected"),
])
def test_read_dimension_rejects(name, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        read_dimension("space", parse_name(name), spec)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("space, message", [
    ({"lr": []}, "empty"),
    ({}, "non-empty"),
    ({"lr": loguniform(1e-1, 1e-3)}, "empty or inverted"),
    ({"dropout": [0.1, 1.2]}, r"in \[0, 1\)"),
    ({"net__lr": [0.1, -1.0]}, "must be > 0"),
    ({"l2": [[1e-3, -1e-3]]}, "must be >= 0"),
])
def test_check_space_rejects(space, message):
    with pytest.raises(ValueError, match=message):
        check_space(space, prefix="net__")


def test_penalty_formula_and_its_gradient():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for kind, value in (("l2", (w ** 2).sum()), ("l1", w.abs().sum()),
                        ("weight_decay", 0.5 * (w ** 2).sum())):
        term = penalty_term(kind, [w])
        assert float(term) == pytest.approx(float(value), rel=1e-12)
        (grad,) = torch.autograd.grad(term, [w])
        torch.testing.assert_close(grad, penalty_gradient(kind, w.detach()))


