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


@pytest.mark.slow
@pytest.mark.skipif(not (SUITE / "test_search.py").exists(),
                    reason="this scikit-learn ships without its tests")
def test_scikit_learns_search_tests_pass_with_the_drop_ins(tmp_path):
    source = (SUITE / "test_search.py").read_text()
    bound = "from skhpo import FusedGridSearchCV as GridSearchCV\n" \
            "from skhpo import FusedRandomizedSearchCV as RandomizedSearchCV\n"
    imports = "from sklearn.model_selection.tests.common import OneTimeSplitter\n"
    assert imports in source
    (tmp_path / "test_search.py").write_text(source.replace(imports, imports + bound))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
         "-k", f"not {OWN_ATTRIBUTES}", str(tmp_path / "test_search.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in summary and "failed" not in summary
