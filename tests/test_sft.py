"""Stage 2 end to end: SFT of the stage-1 tiny model (learns to end its answers with the
end-of-turn token), LoRA (base bit-identical, merged = base + adapter, two adapters side by
side), resume, and the real checkpoint: SmolLM2 through the framework equals plain
transformers, and LoRA on the Debian FAQ lowers held-out answer perplexity."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm.train import train

from conftest import FAST, ROOT, SFT, compose


def _sft(tiny_base, run_dir, extra=()):
    return train(compose([*SFT, f"model.pretrained={tiny_base}", *extra], run_dir=run_dir))


def _heldout_questions(n=12):
    from llm.data.chat import Conversation, builtin_python_qa, split_holdout

    convs = [
        Conversation([{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}])
        for r in builtin_python_qa()
    ]
    _, held = split_holdout(convs, 0.1, 1234)  # data=sft_demo's val split (val_fraction, data.seed)
    return [c.messages[0]["content"] for c in held[:n]]


def _ends_with_end_of_turn(model_dir, questions, max_new_tokens=64):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.data.chat import end_of_turn_token, ensure_chat_template
    from llm.model.engine import generate_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    ensure_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    outs = generate_text(model, tok, questions, max_new_tokens, chat=True, return_ids=True)
    end = end_of_turn_token(tok)
    return sum(1 for ids in outs if ids and ids[-1] == end) / len(outs)


def test_sft_learns_to_end_answers_with_end_of_turn(sft_run, tiny_base):
    run, res = sft_run
    before, after = res["before"]["val/loss"], res["metrics"]["val/loss"]
    assert after < before - 0.5, (before, after)  # held-out answer loss falls
    qs = _heldout_questions()
    base_rate = _ends_with_end_of_turn(tiny_base, qs)
    sft_rate = _ends_with_end_of_turn(res["export"], qs)
    assert base_rate <= 0.1 and sft_rate >= 0.75, (base_rate, sft_rate)
    # the export carries the template and stops at <|end|>
    exp = res["export"]
    gen = json.loads(open(os.path.join(exp, "generation_config.json")).read())
    assert gen["eos_token_id"] == [5, 0]
    assert "<|assistant|>" in open(os.path.join(exp, "chat_template.jinja")).read()
    report = json.loads((run / "sft_data_report.json").read_text())
    assert report["train"]["conversations"] > 800 and report["val"]["conversations"] > 50
    assert report["train"]["row_fill"] > 0.8


def test_fine_tuning_refuses_random_weights_unless_asked(tmp_path, demo_data):
    with pytest.raises(ValueError, match="starts from a pretrained model.*stage.random_init=true"):
        train(compose(["stage=sft", "data=sft_demo"], run_dir=tmp_path / "a"))
    tok_dir = demo_data[0].name_or_path
    res = train(
        compose(
            [
                *SFT[:1],
                "data=sft_demo",
                *SFT[3:],
                "stage.random_init=true",
                f"data.tokenizer={tok_dir}",
                "model.max_seq_len=128",
                "trainer.max_steps=2",
                "trainer.val_every_n_steps=100",
                "export=false",
            ],
            run_dir=tmp_path / "b",
        )
    )
    assert res["global_step"] == 2


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_base):
    """Two named adapters on one base: "qa" (python docs questions) and "echo" (another task)."""
    tmp_path = tmp_path_factory.mktemp("lora")
    echo = tmp_path / "echo.jsonl"
    words = ["apple", "river", "stone", "cloud", "music", "paper", "green", "light"]
    echo.write_text("".join(json.dumps({"instruction": f"Repeat: {a} {b}", "output": f"{a} {b}"}) + "\n" for a in words for b in words))
    runs = {}
    for name, extra in (("qa", []), ("echo", [f"data.datasets=[{{path: {echo}}}]"])):
        runs[name] = _sft(
            tiny_base,
            tmp_path / name,
            [
                "stage=sft_lora",
                f"stage.lora.name={name}",
                "stage.lora.r=8",
                "trainer.max_steps=20",
                "trainer.val_every_n_steps=20",
                "trainer.ckpt_every_n_steps=20",
                *extra,
            ],
        )
    return tmp_path, runs


def test_lora_base_frozen_merge_and_two_adapters(lora_runs, tiny_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm.model.lora import load_with_adapters
    from llm.model.lora import main as lora_main

    runs_dir, runs = lora_runs
    base_sd = load_file(os.path.join(tiny_base, "model.safetensors"))
    ckpt = torch.load(runs_dir / "qa" / "checkpoints" / "step0000020.ckpt", weights_only=True, map_location="cpu")
    sd = ckpt["state_dict"]
    lora_keys = [k for k in sd if "lora_" in k]
    assert lora_keys
    # 1. the base weights after training are bit-identical to the checkpoint they came from
    n = 0
    for k, v in sd.items():
        if "lora_" in k:
            continue
        name = k.removeprefix("model.base_model.model.").replace(".base_layer", "")
        assert torch.equal(v, base_sd[name]), name
        n += 1
    assert n == len(base_sd)
    # 2. only adapter parameters were trained: the optimizer holds state for them alone
    n_opt = len(ckpt["optimizer_states"][0]["state"])
    assert n_opt == len(lora_keys), (n_opt, len(lora_keys))
    # 3. the merged export equals base + adapter
    ids = torch.randint(6, 1000, (2, 40))
    for name, res in runs.items():
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), res["adapter"]).eval()
        merged = AutoModelForCausalLM.from_pretrained(res["export"]).eval()
        diff = (_logits(peft, ids) - _logits(merged, ids)).abs().max().item()
        assert diff < 1e-5, (name, diff)
        with peft.disable_adapter():  # and the adapter does change the model
            assert (_logits(peft, ids) - _logits(merged, ids)).abs().max().item() > 1e-3
    # 4. two adapters side by side on one base, chosen per request
    both = load_with_adapters(tiny_base, {"qa": runs["qa"]["adapter"], "echo": runs["echo"]["adapter"]})
    for name in ("qa", "echo"):
        both.set_adapter(name)
        ref = _logits(AutoModelForCausalLM.from_pretrained(runs[name]["export"]).eval(), ids)
        assert (_logits(both, ids) - ref).abs().max().item() < 1e-5, name
    # 5. the merge command writes the same plain HF model
    lora_main(["merge", "--base", tiny_base, "--adapter", runs["echo"]["adapter"], "--out", str(tmp_path / "merged")])
    a = load_file(tmp_path / "merged" / "model.safetensors")
    b = load_file(os.path.join(runs["echo"]["export"], "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_chat_streams_keeps_history_and_picks_adapters(sft_run, lora_runs, tiny_base):
    from llm.chat import ChatSession
    from llm.data.chat import render_text

    _, res = sft_run
    chat = ChatSession(res["export"], max_new_tokens=24)
    q = "What does the function `csv.reader` do?"
    pieces = list(chat.stream(q))
    assert len(pieces) > 1  # streamed, not returned at once
    first = "".join(pieces).strip()
    assert chat.history == [{"role": "user", "content": q}, {"role": "assistant", "content": first}]
    # the second turn's prompt holds the first exchange, in the saved template
    prompt = render_text(chat.tokenizer, chat.messages("And `csv.writer`?"), add_generation_prompt=True)
    assert prompt.startswith(f"<|user|>{q}<|end|><|assistant|>{first}<|end|><|user|>And")
    chat.ask("And `csv.writer`?")
    assert len(chat.history) == 4
    chat.reset()
    assert chat.ask(q) == first  # greedy, same context: same answer

    _, runs = lora_runs
    multi = ChatSession(tiny_base, adapters={n: r["adapter"] for n, r in runs.items()}, use="echo", max_new_tokens=8)
    from transformers import AutoModelForCausalLM

    from llm.model.engine import generate_text

    for name in ("echo", "qa"):
        multi.set_adapter(name)
        multi.reset()
        want = generate_text(AutoModelForCausalLM.from_pretrained(runs[name]["export"]), multi.tokenizer, [q], 8, chat=True)[0]
        assert multi.ask(q) == want.strip(), name
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        multi.set_adapter("nope")


def test_chat_cli_one_shot_and_interactive(sft_run):
    _, res = sft_run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "llm.chat", res["export"], "-p", "What is the Python module `csv` for?", "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0 and one.stdout.strip(), one.stderr[-2000:]
    inter = subprocess.run(
        [sys.executable, "-m", "llm.chat", res["export"], "--max-new-tokens", "8"],
        input="Hello\n/reset\n/adapter x\nBye\n/exit\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert inter.returncode == 0, inter.stderr[-2000:]
    assert inter.stdout.count("ai> ") == 2 and "[history cleared]" in inter.stderr and "unknown adapter 'x'" in inter.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "llm.chat", "/nonexistent/model"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert bad.returncode != 0 and "no such model directory" in bad.stderr


@pytest.mark.slow
def test_sft_sigkill_and_resume_matches_uninterrupted(tmp_path, tiny_base):
    """grad_accum=2, packing: killed at step 7 (checkpoint at 6), resumed: same weights at 12."""
    args = [
        *SFT,
        f"model.pretrained={tiny_base}",
        "stage.grad_accum=2",
        "data.micro_batch_size=4",
        "trainer.max_steps=12",
        "trainer.val_every_n_steps=100",
        "trainer.ckpt_every_n_steps=6",
        "export=false",
    ]
    train(compose(args, run_dir=tmp_path / "ref"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the same overrides as compose() gives the in-process runs: a resumed run must match the stored config
    cmd = [sys.executable, "-m", "llm.train", *FAST, *args, f"run_dir={tmp_path / 'run'}"]
    killed = subprocess.run([*cmd, "trainer.crash_at_step=7"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    train(compose([*args, "ckpt_path=last"], run_dir=tmp_path / "run"))
    sa = torch.load(tmp_path / "ref" / "checkpoints" / "step0000012.ckpt", weights_only=True)
    sb = torch.load(tmp_path / "run" / "checkpoints" / "step0000012.ckpt", weights_only=True)
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert sa["loops"]["fit_loop"]["epoch_progress"] == sb["loops"]["fit_loop"]["epoch_progress"]


# ----------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_smollm2_through_the_framework_equals_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.config import ModelConfig
    from llm.model.build import build_model

    from fixtures import require_smollm2

    gguf = require_smollm2()
    ours = build_model(ModelConfig(name="hf", pretrained=str(gguf))).eval()  # through the GGUF cache
    plain = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = tok(["The capital of France is", "床前明月光，疑是地上霜。"], return_tensors="pt", padding=True).input_ids
    assert torch.equal(_logits(ours, ids), _logits(plain, ids))


@pytest.mark.slow
def test_lora_on_smollm2_lowers_heldout_faq_perplexity(tmp_path):
    """Real checkpoint, real instruction pairs (English and Chinese Debian FAQ), held-out questions."""
    from fixtures import debian_faq_pairs, faq_split, require_faq, require_smollm2, write_sft_jsonl

    gguf = require_smollm2()
    require_faq()
    train_rows, held = [], []
    for lang in ("en", "zh"):
        tr, he = faq_split(debian_faq_pairs(lang), holdout=0.2, seed=0)
        train_rows += tr
        held += he[:8]
    write_sft_jsonl(train_rows, tmp_path / "train.jsonl")
    write_sft_jsonl(held, tmp_path / "held.jsonl")
    res = train(
        compose(
            [
                "stage=sft_lora",
                "model=hf",
                f"model.pretrained={gguf}",
                f"data.sources=[{tmp_path / 'train.jsonl'}]",
                f"data.val_datasets=[{{path: {tmp_path / 'held.jsonl'}}}]",
                "data.seq_len=256",
                "data.micro_batch_size=4",
                "data.val_batches=null",
                "data.packing=true",
                "data=sft_demo",
                "data.datasets=[]",
                "trainer.max_steps=16",
                "trainer.val_every_n_steps=16",
                "trainer.ckpt_every_n_steps=0",
                "trainer.progress_bar=false",
                "stage.optim.lr=1e-3",
                "stage.optim.warmup_steps=2",
                "stage.sample_prompts=[]",
                "stage.lora.name=faq",
            ],
            run_dir=tmp_path / "run",
        )
    )
    import math

    before, after = res["before"]["val/loss"], res["metrics"]["val/loss"]
    print(f"SmolLM2 held-out FAQ answer perplexity: {math.exp(before):.2f} -> {math.exp(after):.2f}")
    assert after < before - 0.05, (before, after)


def test_truncated_weights_are_named(tmp_path, tiny_base):
    """A model directory whose model.safetensors was cut off (a copy or a write that stopped) is
    refused naming the file, before transformers reads it (where the error names no file)."""
    import shutil

    from llm.model.build import resolve_pretrained

    bad = tmp_path / "cut"
    shutil.copytree(tiny_base, bad)
    weights = bad / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    where = re.escape(str(weights))
    with pytest.raises(ValueError, match=rf"{where}: truncated: [\d,]+ bytes, its header describes [\d,]+"):
        resolve_pretrained(bad)
    with pytest.raises(ValueError, match=rf"{where}: truncated"):  # the run refuses it at start
        train(compose([*SFT, f"model.pretrained={bad}", "trainer.max_steps=1"], run_dir=tmp_path / "run"))
    weights.write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match=rf"{where}: not a readable safetensors file"):
        resolve_pretrained(bad)
    assert resolve_pretrained(tiny_base) == Path(tiny_base)  # a whole export passes
