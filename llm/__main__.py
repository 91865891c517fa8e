"""``python -m llm <command> ...``: the same as the ``xiulian`` console command (``llm.cli``)."""

from llm.cli import main

main()
