"""``python -m llm.data.self_instruct``: the command line of :mod:`llm.data.self_instruct.cli`."""

import sys

from llm.data.self_instruct.cli import main

if __name__ == "__main__":
    sys.exit(main())
