"""Every public class carries an Examples section, and its examples run as written."""

import doctest
import warnings

import pytest

import skhpo

PUBLIC_CLASSES = [getattr(skhpo, name) for name in skhpo.__all__
                  if isinstance(getattr(skhpo, name), type)
                  and not issubclass(getattr(skhpo, name), Exception)]


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_examples_run(cls):
    assert "Examples\n" in cls.__doc__, f"{cls.__name__} has no Examples section"
    (test,) = doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs={})
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.run(test)
    assert runner.failures == 0
