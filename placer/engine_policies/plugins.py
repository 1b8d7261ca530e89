"""Entry points the engines call in every process they start.

vLLM runs each ``vllm.general_plugins`` entry point in every process
(``vllm/plugins/__init__.py: load_general_plugins``; ``VLLM_PLUGINS`` filters
by name) and SGLang each ``sglang.srt.plugins`` entry point
(``python/sglang/srt/plugins/__init__.py: load_plugins``, 0298b5b4;
``SGLANG_PLUGINS`` filters). Both engines may start workers with spawn (fresh interpreters), so
an installer called only in the launcher would not reach the process that
rebalances; these do. Environment:

- ``PLACER_VLLM_POLICY`` (default ``placer``): the ``--eplb-config`` policy
  name to register (``default`` replaces vLLM's default, keeping async EPLB);
- ``PLACER_SGLANG_ALGORITHM`` (default ``placer``): the ``--eplb-algorithm``
  name;
- ``PLACER_ENGINE_SETUP`` (optional, ``package.module:function``): called with
  the engine name after installing, in every process, to attach a proposer
  (:func:`placer.engine_policies.attach`) or install a routing hook.
"""

from __future__ import annotations

import importlib
import os

from placer.engine_policies.inputs import EngineInputError
from placer.engine_policies.sglang import install_sglang
from placer.engine_policies.vllm import install_vllm

__all__ = ["run_setup", "sglang_plugin", "vllm_plugin"]


def run_setup(engine: str) -> None:
    """Call ``PLACER_ENGINE_SETUP``'s function with ``engine`` when the variable is set."""
    spec = os.environ.get("PLACER_ENGINE_SETUP", "").strip()
    if not spec:
        return
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise EngineInputError("PLACER_ENGINE_SETUP", f"expected package.module:function, got {spec!r}")
    getattr(importlib.import_module(module_name), function_name)(engine)


def vllm_plugin() -> None:
    """``vllm.general_plugins`` entry point: register placer's policy, then the user's setup."""
    install_vllm(os.environ.get("PLACER_VLLM_POLICY", "placer"))
    run_setup("vllm")


def sglang_plugin() -> None:
    """``sglang.srt.plugins`` entry point: register placer's algorithm, then the user's setup."""
    install_sglang(os.environ.get("PLACER_SGLANG_ALGORITHM", "placer"))
    run_setup("sglang")
