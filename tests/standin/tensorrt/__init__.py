"""API-contract stand-in for ``tensorrt`` in subprocess tests (see tests/standin/trt_contract.py): NOT TensorRT.

Put ``tests/standin`` first on PYTHONPATH; ``HSCONAS_STANDIN_TRT`` names the version (default 11.0.0) and
``HSCONAS_STANDIN_TRT_CUDA=0`` makes CUDA fail to start.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trt_contract import make_module  # noqa: E402

_m = make_module(os.environ.get("HSCONAS_STANDIN_TRT", "11.0.0"), cuda=os.environ.get("HSCONAS_STANDIN_TRT_CUDA", "1") != "0")
globals().update({k: v for k, v in vars(_m).items() if not k.startswith("__") or k in ("__version__",)})
