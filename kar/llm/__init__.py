"""The LLM stage's server: vLLM's CPU build in its own venv (``env``), the embedded model (``embedded``), and the
server process (``server``). Any OpenAI-compatible endpoint works too; these make one on a machine without GPU.
"""

from kar.llm.embedded import EMBEDDED_SERVED_NAME, ensure_embedded_model
from kar.llm.env import default_cache_dir, ensure_vllm_env
from kar.llm.server import LLMServer, serve_embedded, serve_forever, serve_model

__all__ = [
    "EMBEDDED_SERVED_NAME",
    "LLMServer",
    "default_cache_dir",
    "ensure_embedded_model",
    "ensure_vllm_env",
    "serve_embedded",
    "serve_forever",
    "serve_model",
]
