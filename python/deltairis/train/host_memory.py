"""What memory a run can use: free GPU memory, or the host's available RAM within its cgroup limit.

Used by the memory plan (:mod:`deltairis.train.memory`) and ``deltairis-doctor``.
"""

from __future__ import annotations

from pathlib import Path

import torch

_UNLIMITED = 1 << 60  # cgroup v1 writes ~2**63 for "no limit"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_meminfo(text: str, key: str = "MemAvailable") -> int | None:
    """The value of ``key`` in /proc/meminfo text, in bytes (None when absent)."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == key:
            fields = rest.split()
            if not fields:
                return None
            scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
            return int(fields[0]) * scale
    return None


def _stat_value(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key:
            return int(fields[1])
    return 0


def _cgroup_dirs(proc_root: Path, cgroup_root: Path) -> tuple[list[Path], list[Path]]:
    """The cgroup v2 folders of this process and their ancestors, and its cgroup v1 memory folders."""
    v2: list[Path] = []
    v1: list[Path] = []
    # a hybrid layout mounts the v2 hierarchy at <root>/unified beside the v1 controllers
    unified = cgroup_root / "unified"
    v2_root = (
        unified if unified.is_dir() and not (cgroup_root / "cgroup.controllers").exists() else cgroup_root
    )
    text = _read_text(proc_root / "self" / "cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if hierarchy == "0" and controllers == "":
            d = v2_root / rel if rel else v2_root
            if not d.is_dir():  # a cgroup namespace: the process's cgroup is the mounted root
                d = v2_root
            while True:
                v2.append(d)
                if d == v2_root or v2_root not in d.parents:
                    break
                d = d.parent
        elif "memory" in controllers.split(","):
            base = cgroup_root / "memory"
            d = base / rel if rel else base
            v1.append(d if d.is_dir() else base)
    if not v2 and not v1:  # no /proc/self/cgroup: the mounted root's own files, if any
        v2.append(cgroup_root)
        v1.append(cgroup_root / "memory")
    return v2, v1


def cgroup_available_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """What this process's memory cgroup still allows (None without a limit).

    cgroup v2: ``memory.max`` less ``memory.current`` of the process's cgroup and every ancestor with a
    limit (the tightest wins); v1: ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``. Page cache
    the kernel can drop (``inactive_file`` of ``memory.stat``) counts as available.
    """
    v2, v1 = _cgroup_dirs(proc_root, cgroup_root)
    found: list[int] = []
    for d in v2:
        limit = _read_int(d / "memory.max")
        if limit is None or limit >= _UNLIMITED:
            continue
        used = _read_int(d / "memory.current") or 0
        used -= _stat_value(_read_text(d / "memory.stat"), "inactive_file")
        found.append(limit - max(used, 0))
    for d in v1:
        limit = _read_int(d / "memory.limit_in_bytes")
        if limit is None or limit >= _UNLIMITED:
            continue
        used = _read_int(d / "memory.usage_in_bytes") or 0
        used -= _stat_value(_read_text(d / "memory.stat"), "total_inactive_file")
        found.append(limit - max(used, 0))
    return max(min(found), 0) if found else None


def host_available_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The host's available RAM (``MemAvailable``) capped by the cgroup's limit; psutil when /proc is
    absent; None when neither tells."""
    text = _read_text(proc_root / "meminfo")
    host = parse_meminfo(text) if text is not None else None
    if host is None:
        try:
            import psutil  # optional
        except ImportError:
            host = None
        else:
            host = int(psutil.virtual_memory().available)
    limit = cgroup_available_bytes(proc_root, cgroup_root)
    if host is None:
        return limit
    return host if limit is None else min(host, limit)


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a training step on ``device`` can still use: on CUDA the GPU's free memory plus what
    PyTorch's caching allocator holds unused; on CPU :func:`host_available_bytes`. None: unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        return host_available_bytes()
    return None


__all__ = ["available_bytes", "cgroup_available_bytes", "host_available_bytes", "parse_meminfo"]
