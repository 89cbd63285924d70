"""``torch.compile`` for a pipeline's networks, opt in (``unclip serve --compile``,
``bench/sampling.py --compile``).

Each network's ``forward`` is replaced by its compiled version (static shapes; a new batch size
or side compiles again). The first call at each shape pays the compile time, minutes on a small
CPU, so it pays only in a long-lived process such as the server.
"""

from __future__ import annotations

import torch

from unclip.config import SAMPLED_STAGES, PriorKind, Stage


def compile_networks(pipe, *, backend: str = "inductor") -> list[str]:
    """Compile the forward of every sampled network the pipeline has (prior, decoder, upsamplers);
    returns their stage names. The autoregressive prior stays eager: its sequence grows by one code
    a step, a new shape each time. ``backend``: ``torch.compile``'s (``"eager"`` only traces, for tests)."""
    done = []
    for stage in SAMPLED_STAGES:
        network = pipe.component(stage)
        if network is None or getattr(network, "_unclip_compiled", False):
            continue
        if stage is Stage.prior and network.cfg.kind is PriorKind.autoregressive:
            continue
        network.forward = torch.compile(network.forward, backend=backend, dynamic=False)
        network._unclip_compiled = True
        done.append(stage.value)
    return done
