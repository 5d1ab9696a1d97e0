"""No host-only call on a tensor that may live on a GPU: CI has no GPU, so this reads the code
for the calls that would raise there (``Tensor.numpy()`` on a CUDA tensor), before a GPU does.

Every ``.numpy()`` in the package follows a ``.cpu()`` on its line (``t.cpu().numpy()``,
``t.detach().cpu().double().numpy()``) or carries a ``# host:`` comment saying why its
tensor is on the CPU.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1] / "skhpo"


def host_only_calls(root):
    """``path:line: code`` of each bare ``.numpy()`` under ``root``."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for match in re.finditer(r"\.numpy\(\)", code):
                if not (".cpu()" in code[:match.start()] or "# host:" in line):
                    bad.append(f"{path.name}:{number}: {line.strip()}")
    return bad


def test_every_numpy_call_is_on_a_host_tensor():
    assert host_only_calls(ROOT) == []


def test_the_check_finds_a_host_only_call(tmp_path):
    (tmp_path / "m.py").write_text("def f(t, u):\n    return t.numpy(), u.cpu().numpy()\n"
                                   "x = v.numpy()  # host: made on the CPU\n")
    assert host_only_calls(tmp_path) == ["m.py:2: return t.numpy(), u.cpu().numpy()"]
