"""Builds the C++ unit tests and probes of csrc/ (CMake, ``-DDELTAIRIS_BUILD_TESTS=ON``) once per session.

The build needs only cmake and a C++ compiler (no Python headers, ``-DDELTAIRIS_BUILD_MODULE=OFF``) and
lives in ``build/cxx-tests`` (gitignored; ``DELTAIRIS_CXX_TEST_BUILD_DIR`` overrides), so a second session
only relinks what changed. A missing cmake is an error, not a skip: CI must run the C++ tests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_built: Path | None = None


def build_dir() -> Path:
    return Path(os.environ.get("DELTAIRIS_CXX_TEST_BUILD_DIR", REPO / "build" / "cxx-tests"))


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}")


def build() -> Path:
    """Configures and builds the C++ tests (once per process; a file lock serialises parallel sessions)."""
    global _built
    if _built is not None:
        return _built
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError(
            "cmake was not found on PATH: the C++ unit tests cannot be built. "
            "Install the test extra (pip install '.[test]', which brings cmake and ninja)."
        )
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "CTestTestfile.cmake").exists():
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run([cmake, "-S", str(REPO), "-B", str(out), *generator,
                  "-DDELTAIRIS_BUILD_TESTS=ON", "-DDELTAIRIS_BUILD_MODULE=OFF", "-DCMAKE_BUILD_TYPE=Release"])
        _run([cmake, "--build", str(out), "-j2"])
    _built = out
    return out


def ctest_names(out: Path) -> list[str]:
    """The tests CTest knows in the build folder ``out`` (``ctest -N``)."""
    listing = subprocess.run(["ctest", "-N"], cwd=out, capture_output=True, text=True, check=True).stdout
    return [line.split(":", 1)[1].strip() for line in listing.splitlines() if line.strip().startswith("Test")
            and ":" in line]


def ctest_names_without_building() -> list[str]:
    """Test names from the sources (csrc/**/<name>_test.cc), for parametrising before the build runs."""
    return sorted(p.stem for p in (REPO / "csrc").rglob("*_test.cc"))


class CrafterProbe:
    """A running ``crafter_probe`` (csrc/testing/crafter_probe.cc): the engine's numerics over a pipe."""

    def __init__(self, exe: Path) -> None:
        self._proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def _ask(self, *words: object) -> list[str]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(" ".join(str(w) for w in words) + "\n")
        self._proc.stdin.flush()
        reply = self._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"crafter_probe exited ({self._proc.poll()})")
        if reply.startswith("error "):
            raise ValueError(reply[6:].strip())
        return reply.split()

    def episode_seed(self, seed: int, episode: int) -> int:
        """crafter's per-episode world seed, hash((seed, episode)) % (2**31 - 1)."""
        return int(self._ask("episode_seed", seed, episode)[0])

    def legacy_random(self, seed: int, calls: list[tuple[str, int]]) -> list[float]:
        """The draws of numpy.random.RandomState(seed): ("uniform", _) or ("randint", n)."""
        words = [w for name, n in calls for w in (name, int(n))]
        return [float(v) for v in self._ask("legacy_random", int(seed), len(calls), *words)]

    def noise3(self, seed: int, xyz) -> "np.ndarray":  # noqa: F821
        """OpenSimplex(seed).noise3 at every row of xyz (n, 3)."""
        import numpy as np

        points = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        words = [repr(float(v)) for v in points.ravel().tolist()]
        return np.array([float(v) for v in self._ask("noise3", int(seed), len(points), *words)], dtype=np.float64)

    def pillow_nearest(self, src: int, dst: int) -> list[int]:
        """Source index of every destination pixel of Pillow's NEAREST resize from src to dst pixels."""
        return [int(v) for v in self._ask("pillow_nearest", src, dst)]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=10)


def crafter_probe() -> CrafterProbe:
    return CrafterProbe(build() / "crafter_probe")
