"""kar-feast: LLM knowledge for CTR rankers on Feast."""
