"""Stage-1 data pipeline: raw web pages -> clean, deduplicated, quality-weighted token shards.

Built on datatrove (local and Slurm executors, resumable tasks, MinHash/exact dedup machinery);
the blocks datatrove lacks or that must behave differently here (HTML directories and WARC via
fastwarc with bad-record counting, resiliparse extraction keeping bullets/emoji/headings,
CJK-aware heuristics without spaCy, per-language harmful filter, line boilerplate removal,
fastText quality classifier, mixture into the foundation's shard writer) live in this package.
Run it with ``python -m llm.data <config>`` (see ``llm/pipeline/run.py``).
"""
