import numpy as np
import pytest

from skhpo.bench.data import load_csv
from skhpo.cli import main


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_numeric_and_categorical_features_string_target(tmp_path):
    path = write(tmp_path, "age,colour,size,label\n"
                           "1.5,red,3,yes\n2.0,blue,4,no\n3.5,red,5,yes\n0.5,green,1,no\n")
    X, y, kind, names = load_csv(path, "label")
    assert kind == "classification"
    assert names == ["age", "colour=blue", "colour=green", "colour=red", "size"]
    assert X.dtype == np.float32 and X.shape == (4, 5)
    np.testing.assert_array_equal(X[:, 1:4], [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert list(y) == ["yes", "no", "yes", "no"]


def test_regression_target(tmp_path):
    rows = "\n".join(f"{i},{i * 0.37:.3f}" for i in range(30))
    X, y, kind, _ = load_csv(write(tmp_path, "x,y\n" + rows + "\n"), "y")
    assert kind == "regression" and y.dtype == np.float32 and len(y) == 30


def test_integer_target_with_few_values_is_classification(tmp_path):
    X, y, kind, _ = load_csv(write(tmp_path, "x,c\n1,0\n2,1\n3,2\n4,1\n"), "c")
    assert kind == "classification" and y.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize("text, target, match", [
    ("a,b\n1,2\n3,4\n", "c", "'c' is not a column"),
    ("a,b\n1,\n3,4\n", "b", "column 'b' has a missing value on line 2"),
    ("a,b\n1,NA\n3,4\n", "b", "missing value"),
    ("a,b\n1,2\n3,4,5\n", "b", "line 3 .* has 3 fields"),
    ("a,b\n1,2\n", "b", "at least two data rows"),
    ("a,b\n1,x\n3,x\n", "b", "single value"),
    ("b\n1\n2\n", "b", "no feature column"),
])
def test_bad_csv_is_a_clear_error(tmp_path, text, target, match):
    with pytest.raises(ValueError, match=match):
        load_csv(write(tmp_path, text), target)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_csv(str(tmp_path / "nope.csv"), "y")


def test_cli_runs_a_csv_task(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    lines = ["f1,f2,kind,target"] + [
        f"{a:.3f},{b:.3f},{'u' if c > 0 else 'v'},{'pos' if a + b > 0 else 'neg'}"
        for a, b, c in X]
    path = write(tmp_path, "\n".join(lines) + "\n", name="toy.csv")
    code = main(["bench", "--csv", path, "--target", "target", "--tasks", "iris", "--seeds", "1",
                 "--n-trials", "2", "--n-finalists", "1", "--max-epochs", "2", "--cv", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "toy" in out and "iris" in out
    assert main(["bench", "--csv", path]) == 2
    assert "--csv and --target go together" in capsys.readouterr().err
    assert main(["bench", "--csv", path, "--target", "nope"]) == 2
    assert "'nope' is not a column" in capsys.readouterr().err
