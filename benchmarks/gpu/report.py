"""Collect the outputs of ``benchmarks/gpu/run.sh`` into ``$OUT/gpu_report.json``.

Reads ``steps.tsv`` (step, exit status, seconds), the JUnit XML files of the test steps, the
standalone ``bench_ops.json``, ``bench_epoch.json`` and ``bench_reference.json`` and the pytest-benchmark
``bench_models.json`` / ``bench_train.json``, and adds the device name and library versions. Missing
pieces are recorded as missing, never invented.
"""

from __future__ import annotations

import argparse
import json
import platform
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name()
            props = torch.cuda.get_device_properties(0)
            info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except Exception as err:  # noqa: BLE001 - the report must still be written
        info["torch_error"] = repr(err)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - missing or broken install
        info["triton"] = "missing"
    return info


def steps(out: Path) -> list[dict[str, Any]]:
    path = out / "steps.tsv"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append(
                {
                    "step": parts[0],
                    "status": parts[1],
                    "seconds": int(parts[2]) if parts[2].isdigit() else None,
                }
            )
    return rows


def junit(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"error": f"unreadable junit xml: {err}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    total["failed_tests"] = failed[:50]
    return total


def bench_models(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    rows = []
    for bench in data.get("benchmarks", []):
        stats = bench.get("stats", {})
        rows.append(
            {
                "name": bench.get("name"),
                "group": bench.get("group"),
                "median_ms": 1000.0 * stats["median"] if "median" in stats else None,
                "extra_info": bench.get("extra_info", {}),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--install-mode", default="unknown")
    args = parser.parse_args()
    out = Path(args.out)
    report: dict[str, Any] = {
        "machine": machine(),
        "install_mode": args.install_mode,
        "steps": steps(out),
        "gpu_tests": junit(out / "junit_gpu_tests.xml"),
        "interpreter_tests": junit(out / "junit_interpreter_tests.xml"),
        "bench_ops": json.loads((out / "bench_ops.json").read_text())
        if (out / "bench_ops.json").exists()
        else None,
        "bench_epoch": json.loads((out / "bench_epoch.json").read_text())
        if (out / "bench_epoch.json").exists()
        else None,
        "bench_reference": json.loads((out / "bench_reference.json").read_text())
        if (out / "bench_reference.json").exists()
        else None,
        "bench_models": bench_models(out / "bench_models.json"),
        "bench_train": bench_models(out / "bench_train.json"),
    }
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
