"""Self-Instruct: grow an instruction-tuning (SFT) set from a few seed tasks with a teacher model.

After Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions" (arXiv:2212.10560). Each round makes three kinds of request to a *teacher*:

1. **propose** - show ``--num-examples`` instructions sampled from the seed tasks (and, as in
   the paper, up to 2 already generated ones) and ask for ``--per-prompt`` new task
   instructions as a numbered list, which is parsed (``parse_numbered_list``);
2. **input** - for each new instruction, ask for an input to apply it to, or ``<noinput>``
   when the instruction is self-contained; two seed tasks (one with an input, one without)
   go first as earlier chat turns, the paper's in-context instances (``parse_input`` reads
   the reply: "None", "N/A", "does not require an input" also mean no input, and an
   ``Output:``/``Answer:`` section after the input is cut off);
3. **answer** - ask the teacher the user turn itself (instruction + input) and keep its reply.

Rounds go on until ``--num-tasks`` items are kept, or ``--patience`` rounds in a row keep
nothing new, or ``--max-rounds`` is reached. Each round sends ``--batch`` proposal prompts;
a local teacher generates ``--batch`` replies at a time, an HTTP teacher sends up to
``--batch`` requests at once.

The teacher is a local chat model (a Hugging Face model directory, or a ``.gguf`` file that
``llm.model.build.resolve_pretrained`` converts once into ``$XIULIAN_CACHE/models``) run with
batched sampling, or any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server,
TGI, Ollama, OpenAI ...) given by URL. Both sit behind the ``Teacher`` protocol:
``complete(list of message lists) -> list of replies``.

Usage::

    # a local teacher (the tokenizer must carry a chat template)
    python -m llm.data.self_instruct --teacher path/to/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --seed-tasks seeds.jsonl --out data/self_instruct.jsonl --num-tasks 200 --batch 8

    # an OpenAI-compatible server; the key is read from the variable named by --api-key-env
    python -m llm.data.self_instruct --teacher http://localhost:8000/v1 --model-name Qwen/Qwen2.5-7B-Instruct \\
        --api-key-env OPENAI_API_KEY --seed-tasks seeds.txt --out data/si.jsonl --num-tasks 5000

``--trace FILE`` writes every request and reply (jsonl), for tuning prompts and filters;
``--threads N`` sets torch's CPU threads (on a small shared CPU machine, 1 can be several
times faster than the default).

Seed tasks: JSON lines with ``instruction`` (and optional ``input``, ``output``; the original
``seed_tasks.jsonl`` with ``instances`` also works), or a plain text file with one
instruction per line (blank lines and lines starting with ``#`` are skipped). Seed
instructions are the in-context examples of the proposals, and seed inputs those of the input
requests; the seed outputs are not used, and the seeds are not written to the output.

Output: ``OUT`` gets one SFT record per line::

    {"messages": [{"role": "user", "content": "<instruction>\\n\\n<input>"},
                  {"role": "assistant", "content": "<answer>"}], "source": "self-instruct"}

(no blank line and no input part when the input is empty), and ``OUT.report.json`` (``OUT``
with its suffix replaced by ``.report.json``) gets the counts per stage and per drop reason.
Both are written atomically (temp file + ``os.replace``); Ctrl-C writes what was kept so far
and marks the report ``"interrupted": true``.

Filters (every drop is counted under its reason in the report's ``dropped``):

* ``instruction/truncated`` - the last list item of a reply cut off by ``--max-new-tokens``;
* ``instruction/empty``, ``instruction/not_text`` (under 95 % printable characters, or under
  30 % letters), ``instruction/too_short`` (< 3 words), ``instruction/too_long`` (> 150 words),
  ``instruction/starts_with_punctuation``;
* ``instruction/unsupported`` - mentions what a text model cannot see or produce, with the
  paper's keyword list (image, graph, picture, file, map, draw, plot, go to, video, audio,
  music, flowchart, diagram and their plurals; whole words, so it also drops "the plot of
  a novel", as the paper's did);
* ``instruction/write_a_program`` - starts with "Write a program" (ambiguous: the program or
  its output?), as in the paper;
* ``instruction/duplicate_of_seed``, ``instruction/duplicate`` - ROUGE-L F1 >= 0.7
  (``--similarity``) with a seed instruction, or with an instruction already accepted
  (earlier rounds, or earlier in this round). ROUGE-L is computed here on lower-cased words;
  CJK (Han, kana, Hangul) text is compared character by character;
* ``input/truncated`` (kept with ``--keep-truncated``), ``input/not_text``,
  ``input/repeats_instruction`` (ROUGE-L >= 0.8 with the instruction);
* ``answer/empty``, ``answer/truncated`` (kept with ``--keep-truncated``), ``answer/not_text``,
  ``answer/repeats_instruction`` (ROUGE-L >= 0.8 with the instruction),
  ``answer/repeats_input`` (the same words as the input, as the paper filtered),
  ``answer/refusal`` ("As an AI ...", "I'm sorry, but I can't ...").

Accepted instructions beyond what is still needed this round are not answered; they are
counted as ``surplus`` (not a drop, and they do not block later proposals). Everything that
is random (example sampling, local sampling) is seeded by ``--seed``; an HTTP teacher's own
sampling is up to the server.

Modules: ``teachers`` (the ``Teacher`` protocol, ``HTTPTeacher``, ``LocalTeacher``,
``make_teacher``), ``prompts`` (seed tasks, the three requests, reading the replies, SFT
records), ``filters`` (ROUGE-L, ``DedupIndex``, the drop reasons above), ``loop``
(``run_self_instruct``, ``write_outputs``) and ``cli`` (``main``; ``__main__`` runs it).
"""

from __future__ import annotations

from llm.data.self_instruct.cli import main
from llm.data.self_instruct.filters import (
    DedupIndex,
    FilterConfig,
    answer_drop_reason,
    input_drop_reason,
    instruction_drop_reason,
    lcs_length,
    rouge_l,
    tokenize,
)
from llm.data.self_instruct.loop import Item, SelfInstructResult, report_path, run_self_instruct, write_outputs
from llm.data.self_instruct.prompts import (
    SeedTask,
    clean_answer,
    input_demos,
    input_messages,
    load_seed_tasks,
    parse_input,
    parse_numbered_list,
    propose_messages,
    sft_record,
    user_content,
)
from llm.data.self_instruct.teachers import (
    Completion,
    HTTPTeacher,
    LocalTeacher,
    Message,
    Teacher,
    TeacherError,
    chat_completions_url,
    make_teacher,
)

__all__ = [
    "Completion",
    "DedupIndex",
    "FilterConfig",
    "HTTPTeacher",
    "Item",
    "LocalTeacher",
    "Message",
    "SeedTask",
    "SelfInstructResult",
    "Teacher",
    "TeacherError",
    "answer_drop_reason",
    "chat_completions_url",
    "clean_answer",
    "input_demos",
    "input_drop_reason",
    "input_messages",
    "instruction_drop_reason",
    "lcs_length",
    "load_seed_tasks",
    "main",
    "make_teacher",
    "parse_input",
    "parse_numbered_list",
    "propose_messages",
    "report_path",
    "rouge_l",
    "run_self_instruct",
    "sft_record",
    "tokenize",
    "user_content",
    "write_outputs",
]
