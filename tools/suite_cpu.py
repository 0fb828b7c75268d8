"""Where the test suite's CPU time goes: a pytest plugin that records it per test, and a report of what it recorded.

pytest's `--durations` gives wall time, which on a shared 2-core machine mostly says how busy the other processes
were. This records, for each test, the CPU time of the pytest process itself and of the subprocesses it waited for
(`resource.getrusage`; a test's own processes, such as `keras-dla train` runs, count in the second), with the wall time
beside them, one JSON line per test in `$SUITE_CPU_DIR` (a file per pytest process, named by its backend).

    SUITE_CPU_DIR=/tmp/suite_cpu PYTHONPATH=tools PYTEST_ADDOPTS="-p suite_cpu" bash tools/test.sh
    python tools/suite_cpu.py /tmp/suite_cpu

Not counted: each pytest process's own start-up (importing PyTorch, timm and TensorFlow), and subprocesses a test
leaves running.
"""

import collections
import glob
import json
import os
import resource
import sys
import time

import pytest

_records = None


def _cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _records
    if _records is None:
        folder = os.environ.get("SUITE_CPU_DIR", ".cache/suite_cpu")
        os.makedirs(folder, exist_ok=True)
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        _records = open(os.path.join(folder, f"{backend}.{os.getpid()}.jsonl"), "a", encoding="utf-8")
    own, children = _cpu_seconds()
    started = time.time()
    yield
    own_after, children_after = _cpu_seconds()
    record = {"test": item.nodeid, "own": own_after - own, "subprocesses": children_after - children}
    record["wall"] = time.time() - started
    _records.write(json.dumps(record) + "\n")
    _records.flush()


def report(folder, top=15):
    """Prints, for each backend's pass, its total CPU time, the files by CPU time and the `top` tests."""
    passes = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        backend = os.path.basename(path).split(".")[0]
        with open(path, encoding="utf-8") as f:
            passes[backend] += [json.loads(line) for line in f]
    if not passes:
        raise SystemExit(f"No records in {folder}: run the suite with the plugin first (see this file's docstring).")
    for backend, records in passes.items():
        own = sum(r["own"] for r in records)
        children = sum(r["subprocesses"] for r in records)
        print(f"{backend}: {len(records)} tests, CPU {own:.0f} s in pytest + {children:.0f} s in subprocesses")
        files = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
        for r in records:
            total = files[r["test"].split("::")[0]]
            total[0], total[1], total[2] = total[0] + r["own"], total[1] + r["subprocesses"], total[2] + r["wall"]
        print("  CPU s (pytest + subprocesses), wall s, file")
        for name, (o, c, w) in sorted(files.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
            print(f"  {o + c:7.1f} ({o:.1f} + {c:.1f}) {w:7.1f}  {name}")
        print(f"  the {top} tests of most CPU time")
        for r in sorted(records, key=lambda r: -(r["own"] + r["subprocesses"]))[:top]:
            print(f"  {r['own'] + r['subprocesses']:7.1f} {r['wall']:7.1f}  {r['test']}")


if __name__ == "__main__":
    report(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SUITE_CPU_DIR", ".cache/suite_cpu"))
