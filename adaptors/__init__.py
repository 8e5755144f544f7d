"""Knowledge adaptors: project encoded LLM knowledge into compact vectors a ranker consumes (KAR's HEA)."""

from adaptors.artifact import load_adaptor, save_adaptor
from adaptors.hea import ADAPTORS, AdaptorConfig, Expert, HybridExpertAdaptor

__all__ = ["ADAPTORS", "AdaptorConfig", "Expert", "HybridExpertAdaptor", "load_adaptor", "save_adaptor"]
