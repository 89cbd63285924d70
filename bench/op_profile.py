"""Where one call's wall time goes: torch's operators by kind, and the time outside them.

``time_split(fn)`` runs ``fn()`` once under ``torch.profiler`` (CPU) and splits the wall time into
the self time of the operators it launched, grouped by kind (convolution, matmul, attention,
normalisation, every other operator), and what is left: Python, the modules' and schedulers' own
code, and dispatch between operators. It also counts the operators called from Python (the top
level of the profiler's tree), the figure that sets the per-call overhead of small networks.
The profiler adds its own cost to every operator, so read the shares, not the seconds.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

KINDS = {  # operator-name fragments per kind; the first match wins, unmatched operators are "other ops"
    "convolution": ("conv", "mkldnn_convolution"),
    "matmul": ("addmm", "::mm", "bmm", "linear", "matmul", "baddbmm"),
    "attention": ("scaled_dot_product", "_flash_attention", "softmax"),
    "normalisation": ("group_norm", "layer_norm", "batch_norm"),
}


def kind_of(name: str) -> str:
    for kind, fragments in KINDS.items():
        if any(fragment in name for fragment in fragments):
            return kind
    return "other ops"


def time_split(fn: Callable[[], object], calls: int = 3) -> dict[str, float]:
    """Seconds per kind (``KINDS`` and "other ops"), "outside ops", "wall" and "top-level ops", of the
    fastest of ``calls`` profiled calls (the first call under a profiler pays for its start)."""
    runs = [profiled_call(fn) for _ in range(calls)]
    return min(runs, key=lambda run: run["wall"])


def profiled_call(fn: Callable[[], object]) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    split = dict.fromkeys([*KINDS, "other ops"], 0.0)
    top_level = 0
    for event in prof.events():
        split[kind_of(event.name)] += event.self_cpu_time_total / 1e6
        top_level += event.cpu_parent is None
    split["outside ops"] = max(wall - sum(split.values()), 0.0)
    split["wall"] = wall
    split["top-level ops"] = float(top_level)
    return split


def format_split(label: str, split: dict[str, float]) -> str:
    """One table row: wall seconds, each kind's share of the wall time, the operator count."""
    shares = "".join(f"{100 * split[k] / split['wall']:>14.0f}%" for k in [*KINDS, "other ops", "outside ops"])
    return f"{label:38}{split['wall']:>8.3f} s{shares}{int(split['top-level ops']):>12}"


def profile_cases(title: str, cases: Iterable[tuple[str, Callable[[], object], dict]]) -> list[dict]:
    """``time_split`` of each ``(label, fn, fields)`` in ``cases``, printed as a table under ``title``;
    one dict per case: ``fields`` and the split."""
    print(f"\n{title}")
    print(header())
    splits = []
    for label, fn, fields in cases:
        split = time_split(fn)
        print(format_split(label, split), flush=True)
        splits.append({**fields, **split})
    return splits


def header() -> str:
    return f"{'':38}{'wall':>10}" + "".join(f"{k:>15}" for k in [*KINDS, "other ops", "outside ops"]) + \
        f"{'ops called':>12}"
