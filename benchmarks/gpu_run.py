"""The first GPU run, in one short script (under 10 minutes on one GPU):

    python benchmarks/gpu_run.py --device cuda --out gpu_run      # on the machine with a GPU
    python benchmarks/gpu_run.py --device cpu --tiny --out /tmp/x   # what the tests run

1. ``device_check.py``: every skhpo class with its net on the device, the fused engine on
   eight zoo nets (validation split, AdamW, BatchNorm, callbacks, CNN, binary, dict inputs,
   Pipeline), and bitwise group independence on the device;
2. ``fused.py --k 1 32 256 1024``: per-model speed-up of one fused group over sequential skorch
   fits on the same device (sequential up to K = 32), and the group's peak GPU memory;
3. ``limit.py``: the arithmetic-bound task (100,000 rows × 50, 16 candidates × 3 folds, 3
   epochs) with both searches' nets on the device (the drop-in with ``engine="fused"``).

Each part writes its JSON into ``--out`` (a folder); the exit code is 1 if the device check
failed. ``--tiny``: the same code on sizes that take seconds (the test suite runs it on the
CPU, so that the script cannot rot before a GPU runs it).
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def _script(name):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="sizes that take seconds")
    p.add_argument("--out", default="gpu_run", help="folder for the JSON files")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = ["--device", args.device]
    if args.tiny:
        parts = [("device_check", ["--epochs", "1", "--samples", "300", "--only",
                                   "FusedRandomizedSearchCV", "zoo batchnorm (engine=fused)",
                                   "fused group independence (bitwise)"]),
                 ("fused", ["--k", "1", "4", "--epochs", "1", "--sequential-max", "1"]),
                 ("limit", ["--rows", "600", "--n-iter", "2", "--epochs", "1",
                            "--variants", "no-dropout"])]
    else:
        parts = [("device_check", []),
                 ("fused", ["--k", "1", "32", "256", "1024", "--sequential-max", "32"]),
                 ("limit", ["--variants", "no-dropout"])]
    code, timings = 0, {}
    for name, extra in parts:
        start = time.perf_counter()
        result = _script(name).main([*dev, *extra, "--out", str(out / f"{name}.json")])
        timings[name] = round(time.perf_counter() - start, 1)
        if name == "device_check":
            code = result
        print(f"== {name}: {timings[name]} s", flush=True)
    (out / "timings.json").write_text(json.dumps(timings))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
