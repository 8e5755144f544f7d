"""Knowledge generation: prompts from prepared tables → an OpenAI-compatible LLM → knowledge tables."""
