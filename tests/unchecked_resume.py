"""``python -m llm.train`` with the pre-resume file check switched off, as if a checkpoint file
were replaced after it was checked: what is left between a planted payload and the process is
the strategy's own loader (tests/test_strategies.py::test_planted_payload_is_refused)."""

import runpy

import llm.rundir

llm.rundir.readable = lambda path, weights_only=True: None
runpy.run_module("llm.train", run_name="__main__")
