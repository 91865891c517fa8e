"""``python -m llm.bench ...``: the training benchmark (``llm.bench.train``)."""

from llm.bench.train import main

main()
