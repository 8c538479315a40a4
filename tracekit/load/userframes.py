"""Which Python frames are the user's own code.

The profiler names frames by the code's filename with the longest `sys.path` prefix removed:
"torch/nn/modules/module.py", "typing.py", "logging/__init__.py", "<frozen os>",
"trainer/model.py". So a library frame usually looks like a relative path whose first component
is the package (or stdlib module) name, and only the odd absolute path still shows
site-packages. Findings must point at the user's line, never at torch's.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

LIBRARY_PACKAGES = frozenset({
    "torch", "torchgen", "functorch", "triton", "torchvision", "torchaudio", "torchtext",
    "torchdata", "torchao", "torchtune", "torchrec", "fbgemm_gpu", "apex", "numpy", "scipy",
    "pandas", "typing_extensions", "transformers", "accelerate", "deepspeed", "megatron",
    "einops", "tqdm", "hydra", "omegaconf", "lightning", "pytorch_lightning", "lightning_fabric",
    "fsspec", "datasets", "wandb", "tensorboard", "safetensors", "huggingface_hub", "sympy",
    "networkx", "filelock", "jinja2", "_pytest", "pytest", "pluggy", "IPython", "ipykernel",
    "tornado", "zmq", "traitlets", "flash_attn", "xformers", "liger_kernel", "tiktoken",
    "sentencepiece", "tokenizers", "peft", "bitsandbytes", "nvtx", "cupy", "jax", "jaxlib",
    "typer", "click", "rich", "orjson", "yaml", "six", "attr", "attrs", "packaging",
})
"""Top-level packages that are never "the user's code" (besides the standard library)."""

_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
_STDLIB_DIR = Path(sysconfig.get_paths().get("stdlib", "/nonexistent"))
_LIBRARY_DIR = re.compile(
    r"(^|/)(site-packages|dist-packages)/|/lib/python\d+(\.\d+)?/|/lib64/python\d"
)


@lru_cache(maxsize=65536)
def is_user_file(file: str) -> bool:
    """True when a frame's file is the user's code (not torch, a library or the stdlib)."""
    if not file or file.startswith("<"):
        return False  # <built-in ...>, <string>, <frozen os>, <eval_with_key>.N, <module>
    path = file.replace("\\", "/")
    if _LIBRARY_DIR.search(path):
        return False
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts:
        return False
    if path.startswith("/"):
        # An absolute path (file outside sys.path): a library only if it sits in a package dir.
        return not any(p in ("torch", "triton") for p in parts[:-1])
    top = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
    if top in LIBRARY_PACKAGES:
        return False
    return not (top in _STDLIB and _is_stdlib_file("/".join(parts)))


def _is_stdlib_file(relative: str) -> bool:
    """Whether a stdlib-named relative path really is a stdlib file here (a user's own
    "test.py" or "profile.py" shares a stdlib module's name but not its file)."""
    if not _STDLIB_DIR.is_dir():
        return True
    return (_STDLIB_DIR / relative).is_file()
