"""scikit-learn's own tests of GridSearchCV and RandomizedSearchCV (its installed
``model_selection/tests/test_search.py``), run with skhpo's drop-ins bound to those names."""

import pathlib
import subprocess
import sys

import pytest
import sklearn

SUITE = pathlib.Path(sklearn.__file__).parent / "model_selection" / "tests"

#: compares every public attribute of GridSearchCV with a custom BaseSearchCV subclass's, so
#: any attribute of the drop-ins' own (engine_, n_resumed_, ...) fails it by construction
OWN_ATTRIBUTES = "test_custom_run_search"


def _passes_with_drop_ins(tmp_path, name, bound, anchor, deselect=None):
    """scikit-learn's test module ``name``, with ``bound`` (imports of the drop-ins under
    scikit-learn's names) after its line ``anchor``, run by pytest: its last line."""
    source = (SUITE / name).read_text()
    assert anchor in source
    (tmp_path / name).write_text(source.replace(anchor, anchor + bound))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
         *(["-k", f"not {deselect}"] if deselect else []), str(tmp_path / name)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in summary and "failed" not in summary
    return summary


@pytest.mark.slow
@pytest.mark.skipif(not (SUITE / "test_search.py").exists(),
                    reason="this scikit-learn ships without its tests")
def test_scikit_learns_search_tests_pass_with_the_drop_ins(tmp_path):
    _passes_with_drop_ins(
        tmp_path, "test_search.py",
        "from skhpo import FusedGridSearchCV as GridSearchCV\n"
        "from skhpo import FusedRandomizedSearchCV as RandomizedSearchCV\n",
        "from sklearn.model_selection.tests.common import OneTimeSplitter\n",
        deselect=OWN_ATTRIBUTES)


@pytest.mark.slow
@pytest.mark.skipif(not (SUITE / "test_successive_halving.py").exists(),
                    reason="this scikit-learn ships without its tests")
def test_scikit_learns_halving_tests_pass_with_the_drop_ins(tmp_path):
    """All of ``test_successive_halving.py`` (102 tests with scikit-learn 1.9.1, as many as
    with its own classes) with the halving drop-ins bound to scikit-learn's names."""
    _passes_with_drop_ins(
        tmp_path, "test_successive_halving.py",
        "from skhpo import FusedHalvingGridSearchCV as HalvingGridSearchCV\n"
        "from skhpo import FusedHalvingRandomSearchCV as HalvingRandomSearchCV\n",
        "from sklearn.svm import SVC, LinearSVC\n")
