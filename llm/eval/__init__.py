"""Evaluation (``python -m llm.eval``) and scaling laws (``python -m llm.eval.scaling``)."""
