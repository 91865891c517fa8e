"""Preference and prompt data: pairs and rankings (K answers -> K*(K-1)/2 pairs, split together
by prompt), bad rows with errors naming file/line/field or counted skips, prompts longer than
the context, answer-only labels and the reward read-out position under both padding sides."""

from __future__ import annotations

import json

import pytest
import torch

from llm.data import chat
from llm.data.chat import ChatDataError
from llm.data.preference import (
    PreferenceDataModule,
    PromptDataModule,
    builtin_python_qa_pairs,
    encode_answer,
    read_preferences,
    read_prompts,
    record_to_pairs,
    split_pairs,
)


@pytest.fixture(scope="module")
def tok(demo_data):
    from llm.data.tokenizer import load_tokenizer

    t = load_tokenizer(demo_data[0].name_or_path)
    chat.ensure_chat_template(t)
    return t


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return str(path)


def test_pairs_and_rankings(tmp_path):
    f = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."},
            {
                "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
                "margin": 2,
            },
            {"prompt": "Rank us", "responses": ["best", "good", "bad", "worst"]},
        ],
    )
    pairs, rep = read_preferences(f)
    assert rep.read == 3 and rep.kept == 3 and not rep.skipped
    assert len(pairs) == 1 + 1 + 6  # 4 answers -> 4 choose 2 pairs
    ranked = [(p.chosen, p.rejected) for p in pairs if p.prompt[-1]["content"] == "Rank us"]
    assert ranked == [("best", "good"), ("best", "bad"), ("best", "worst"), ("good", "bad"), ("good", "worst"), ("bad", "worst")]
    assert pairs[1].prompt[0] == {"role": "system", "content": "Be kind."} and pairs[1].margin == 2.0
    assert len({p.group for p in pairs if p.prompt[-1]["content"] == "Rank us"}) == 1


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "chosen": "a"}, r"p\.jsonl:2: rejected: missing"),
        ({"chosen": "a", "rejected": "b"}, r"p\.jsonl:2: prompt: missing"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, r"p\.jsonl:2: chosen: identical to rejected"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, r"p\.jsonl:2: chosen: empty"),
        (
            {"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"},
            r"p\.jsonl:2: prompt\[0\]\.role: unknown role 'robot'",
        ),
        ({"prompt": "q", "responses": ["only one"]}, r"p\.jsonl:2: responses: expected a list of at least 2"),
        ({"prompt": "q", "responses": ["a", "a"]}, r"p\.jsonl:2: responses: identical answers"),
        ("{not json", r"p\.jsonl:2"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(ChatDataError, match=message):
        read_preferences(f)
    pairs, rep = read_preferences(f, on_error="skip")  # or counted skips
    assert len(pairs) == 1 and rep.read == 2 and sum(rep.skipped.values()) == 1


def test_split_keeps_the_pairs_of_a_prompt_together():
    recs = builtin_python_qa_pairs(0)
    rankings = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"], "I do not know."]} for r in recs[:200]]
    pairs = [p for i, r in enumerate(rankings) for p in record_to_pairs(r, f"r#{i}")]
    train, held = split_pairs(pairs, 0.2, 7)
    assert 0.1 < len(held) / len(pairs) < 0.3
    assert not {p.group for p in train} & {p.group for p in held}
    assert all(sum(1 for q in held if q.group == p.group) == 3 for p in held)


def test_builtin_pairs_are_real_answers_against_mismatched_ones():
    recs = builtin_python_qa_pairs(0)
    assert len(recs) > 900
    qa = {r["instruction"]: r["output"] for r in chat.builtin_python_qa()}
    for r in recs[:50]:
        assert qa[r["prompt"]] == r["chosen"] and r["rejected"] != r["chosen"]


def test_answer_labels_and_reward_position(tok):
    prompt = [{"role": "user", "content": "What is csv?"}]
    enc = encode_answer(tok, prompt, "A module for CSV files.", 128)
    end = chat.end_of_turn_token(tok)
    assert enc.ids[-1] == end  # the reward is read at the answer's end-of-turn token
    assert len(enc.labels) == len(enc.ids) - 1
    labelled = tok.decode([lab for lab in enc.labels if lab != -100], skip_special_tokens=False)
    assert labelled == "A module for CSV files.<|end|>"  # the answer's tokens only
    # a prompt that leaves no room for the answer
    assert encode_answer(tok, [{"role": "user", "content": "word " * 200}], "yes", 64) is None


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_put_the_last_real_token_where_the_mask_says(tok, side):
    f = builtin_python_qa_pairs(0)[:10]

    pairs = [p for i, r in enumerate(f) for p in record_to_pairs(r, f"#{i}")]
    dm = PreferenceDataModule(pairs, [], tok, seq_len=256, micro_batch_size=4, grad_accum=2, padding_side=side)
    batch = dm.collate_step("train", dm.plan("train", 0)[0])
    assert batch["chosen_ids"].shape[:2] == (2, 4)
    end = chat.end_of_turn_token(tok)
    for k in ("chosen", "rejected"):
        ids, mask, labels = batch[f"{k}_ids"].flatten(0, 1), batch[f"{k}_mask"].flatten(0, 1), batch[f"{k}_labels"].flatten(0, 1)
        last = (mask * torch.arange(mask.shape[1])).argmax(-1)
        assert (ids[torch.arange(len(ids)), last] == end).all()
        # labels[t] is the token at t+1 wherever it carries loss
        t = (labels != -100).nonzero()
        assert (labels[t[:, 0], t[:, 1]] == ids[t[:, 0], t[:, 1] + 1]).all()
        if side == "left":
            assert (mask[:, -1] == 1).all()
        else:
            assert (mask[:, 0] == 1).all()


def test_prompt_too_long_is_counted_or_rejected(tok):
    long = {"prompt": "word " * 300, "chosen": "a", "rejected": "b"}

    pairs = record_to_pairs(long, "x.jsonl:1") + record_to_pairs({"prompt": "q", "chosen": "a", "rejected": "b"}, "x.jsonl:2")
    dm = PreferenceDataModule(pairs, [], tok, seq_len=64, micro_batch_size=2)
    assert dm.counts["train"]["prompt_too_long"] == 1 and len(dm.pairs["train"]) == 1
    with pytest.raises(ChatDataError, match=r"x\.jsonl:1: prompt: longer than the context \(data\.seq_len=64\)"):
        PreferenceDataModule(pairs, [], tok, seq_len=64, micro_batch_size=2, on_truncated="error")


def test_many_cut_pairs_warn_with_count_share_and_file(tok, caplog):
    """569 of 588 pairs cut at seq_len once went unnoticed: over data.warn_truncated_share, a
    warning names the count, the share and the file; the report has them either way."""
    short = [record_to_pairs({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}, f"short.jsonl:{i + 1}")[0] for i in range(7)]
    cut = [record_to_pairs({"prompt": "q", "chosen": "yes " * 100, "rejected": f"no {i}"}, f"long.jsonl:{i + 1}")[0] for i in range(3)]
    with caplog.at_level("WARNING", logger="llm.data.steps"):
        dm = PreferenceDataModule(short + cut, [], tok, seq_len=32, micro_batch_size=2)
    assert "3 of 10 train pairs (30%) were cut at data.seq_len=32" in caplog.text and "long.jsonl (3)" in caplog.text
    rep = dm.report()["train"]
    assert rep["truncated"] == 3 and rep["truncated_share"] == 0.3 and rep["truncated_files"] == {"long.jsonl": 3}
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm.data.steps"):
        PreferenceDataModule(short + cut, [], tok, seq_len=32, micro_batch_size=2, warn_truncated_share=0.3)
    assert "were cut" not in caplog.text  # 30% is not more than 0.3


def test_prompts_for_ppo(tmp_path, tok):
    f = _write(tmp_path / "prompts.jsonl", [{"prompt": "Hello?"}, {"prompt": "word " * 300}, {"prompt": "Bye?"}])
    prompts, rep = read_prompts(f)
    assert [p[-1]["content"] for p in prompts][::2] == ["Hello?", "Bye?"]
    qa, _ = read_prompts(chat.DatasetSpec(path="builtin:python-qa", format="alpaca"))
    assert len(qa) > 900 and all(p[-1]["role"] == "user" for p in qa)
    dm = PromptDataModule(prompts, [], tok, max_prompt_tokens=64, batch_size=2)
    assert dm.counts["train"]["prompt_too_long"] == 1
    b = dm.collate_step("train", dm.plan("train", 0)[0])
    assert b["prompt_ids"].shape[0] == 2 and (b["prompt_mask"][:, -1] == 1).all()  # left padded
    with pytest.raises(ChatDataError, match="longer than stage.ppo.max_prompt_tokens=64"):
        PromptDataModule(prompts, [], tok, max_prompt_tokens=64, batch_size=2, on_truncated="error")


# ------------------------------------------------------------------------------------- KTO
def test_kto_unpaired_records_pairs_and_rankings(tmp_path):
    from llm.data.preference import read_kto

    f = _write(
        tmp_path / "k.jsonl",
        [
            {"prompt": "Say hi", "completion": "Hi!", "label": True},
            {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "5"}], "label": False},
            {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}], "label": True},
            {"prompt": "Be nice", "chosen": "Sure.", "rejected": "No."},  # a pair: one desirable, one undesirable
            {"prompt": "Rank us", "responses": ["best", "good", "worst"]},  # a ranking: its best and its worst
        ],
    )
    ex, rep = read_kto(f)
    assert rep.read == 5 and rep.kept == 5 and not rep.skipped
    got = [(e.prompt[-1]["content"], e.completion, e.desirable) for e in ex]
    assert got == [
        ("Say hi", "Hi!", True),
        ("2+2?", "5", False),
        ("Capital of France?", "Paris.", True),
        ("Be nice", "Sure.", True),
        ("Be nice", "No.", False),
        ("Rank us", "best", True),
        ("Rank us", "worst", False),
    ]
    assert ex[3].group == ex[4].group and ex[0].origin.endswith("k.jsonl:1")
    # outside KTO an unpaired record is refused, naming what to do
    with pytest.raises(ChatDataError, match=r"k\.jsonl:1: label: an unpaired \(KTO\) record; train it with stage\.dpo\.loss=kto"):
        read_preferences(f)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "completion": "a"}, r"k\.jsonl:2: label: missing"),
        ({"prompt": "q", "completion": "a", "label": 1}, r"k\.jsonl:2: label: expected true \(desirable\) or false \(undesirable\), got 1"),
        ({"prompt": "q", "completion": "a", "label": "yes"}, r"k\.jsonl:2: label: expected true"),
        ({"prompt": "q", "label": True}, r"k\.jsonl:2: completion: missing"),
        ({"prompt": "q", "completion": " ", "label": True}, r"k\.jsonl:2: completion: empty"),
        ({"completion": "a", "label": True}, r"k\.jsonl:2: prompt: missing"),
        ({"messages": [{"role": "user", "content": "q"}], "label": True}, r"k\.jsonl:2: messages: no assistant message"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "completion": "b", "label": True},
            r"k\.jsonl:2: messages: give either messages or prompt and completion",
        ),
        ({"prompt": "q", "chosen": "a"}, r"k\.jsonl:2: rejected: missing"),
        ("{not json", r"k\.jsonl:2"),
    ],
)
def test_kto_bad_rows_name_file_line_and_field(tmp_path, row, message):
    from llm.data.preference import read_kto

    f = _write(tmp_path / "k.jsonl", [{"prompt": "ok", "completion": "a", "label": True}, row])
    with pytest.raises(ChatDataError, match=message):
        read_kto(f)
    ex, rep = read_kto(f, on_error="skip")  # or counted skips
    assert len(ex) == 1 and rep.read == 2 and sum(rep.skipped.values()) == 1


def test_kto_mismatched_partners_never_share_a_prompt():
    from llm.data.preference import mismatched_partners

    groups = ["a", "a", "b", "b", "c", "d", "d", "d"]
    for seed in range(20):
        part = mismatched_partners(groups, seed)
        assert all(groups[j] != groups[i] for i, j in enumerate(part))
    assert mismatched_partners(groups, 3) == mismatched_partners(groups, 3)  # fixed by the seed
    with pytest.raises(ChatDataError, match="at least two different prompts"):
        mismatched_partners(["a", "a"], 0)


def test_kto_batches_from_the_builtin_pairs(tok):
    """The demo's paired data trains KTO: each pair gives a desirable and an undesirable example,
    each with a mismatched sequence (its prompt, another prompt's answer) for the reference point."""
    from llm.data.preference import KTODataModule, record_to_kto

    ex = [e for i, r in enumerate(builtin_python_qa_pairs(0)[:6]) for e in record_to_kto(r, f"#{i}")]
    dm = KTODataModule(ex, [], tok, seq_len=256, micro_batch_size=4, grad_accum=2)
    assert dm.counts["train"]["desirable"] == dm.counts["train"]["undesirable"] == 6
    batch = dm.collate_step("train", dm.plan("train", 0)[0])
    assert set(batch) == {f"{s}_{k}" for s in ("completion", "kl") for k in ("ids", "mask", "labels")} | {"desirable", "valid", "index"}
    assert batch["completion_ids"].shape[:2] == (2, 4) and batch["desirable"].sum() > 0
    for b, i in enumerate(batch["index"].flatten().tolist()):
        e = ex[i]
        kl_ids = batch["kl_ids"].flatten(0, 1)[b][batch["kl_mask"].flatten(0, 1)[b].bool()].tolist()
        other = [f for f in ex if f.group != e.group and encode_answer(tok, e.prompt, f.completion, 256).ids == kl_ids]
        assert other  # the same prompt with an answer to a different one
        assert batch["desirable"].flatten()[b].item() == int(e.desirable)
    assert dm.report()["train"]["examples"] == 12
