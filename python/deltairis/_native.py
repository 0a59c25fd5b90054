"""Access to the compiled extension, with a clear record of why it is missing when it is."""

from __future__ import annotations

from types import ModuleType

core: ModuleType | None
import_error: str | None

try:
    from deltairis import _core as core  # type: ignore[attr-defined]

    import_error = None
except ImportError as exc:  # pragma: no cover - depends on the build
    core = None
    import_error = str(exc)


def require_core() -> ModuleType:
    """Return ``deltairis._core`` or raise an error that says why it cannot be used."""
    if core is None:
        raise RuntimeError(
            "the native extension deltairis._core is not available "
            f"({import_error}); reinstall with `pip install .` or use backend='numpy'/'python'"
        )
    return core
