"""Evaluation: perplexity, few-shot / multiple-choice log-likelihood scoring and exact match.

The hand-worked checks use a bigram model built in the test: a one-layer Llama whose attention
and MLP write nothing, whose embeddings are one-hot and whose output layer is a table ``B`` of
logits, so that ``p(next | ..., cur) = softmax(B[cur])[next]`` and every log-likelihood below is
worked out by hand from that table. The real-model checks compare with an independent
computation and with lm-evaluation-harness itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from llm.config import EvalConfig, EvalTaskConfig
from llm.eval.core import (
    TASKS_DIR,
    EvalDataError,
    build_prompts,
    loglikelihoods,
    perplexity,
    perplexity_windows,
    run_suite,
    run_task,
    score_sequences,
    zen_of_python,
)

WORDS = ["<s>", "</s>", "<unk>", "good", "bad", "day", "luck", "pos", "neg", "|", "france", "germany", "paris", "berlin", "rome", "is"]
V = len(WORDS)
ID = {w: i for i, w in enumerate(WORDS)}


def bigram_tokenizer(words: list[str] = WORDS):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def bigram_model(table: dict[tuple[str, str], float], words: list[str] = WORDS):
    """logits(next | cur) = B[cur, next]: B is 0 except the entries in ``table`` (pairs of ``words``,
    whose ids are their places; ``words`` starts with ``<s>``, ``</s>``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    V, ID = len(words), {w: i for i, w in enumerate(words)}
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=V,
        intermediate_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=V,
        max_position_embeddings=64,
        rms_norm_eps=1e-12,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    m = LlamaForCausalLM(cfg).eval()
    B = torch.zeros(V, V)
    for (a, b), v in table.items():
        B[ID[a], ID[b]] = v
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(torch.eye(V))
        m.model.layers[0].self_attn.o_proj.weight.zero_()
        m.model.layers[0].mlp.down_proj.weight.zero_()
        m.model.norm.weight.fill_(1 / math.sqrt(V))  # RMSNorm(one-hot) * this = the one-hot again
        m.lm_head.weight.copy_(B.T)  # logits = B^T-row lookup: lm_head(e_cur) = B[cur]
    return m


TABLE = {
    ("day", "pos"): 2.0,
    ("luck", "neg"): 2.0,
    ("pos", "pos"): 1.0,
    ("france", "paris"): 5.0,
    ("germany", "rome"): 5.0,
    ("paris", "</s>"): 9.0,
    ("rome", "</s>"): 9.0,
}


def lp_row(row_logits: dict[str, float], nxt: str) -> float:
    """log softmax of a table row (V entries, zero except ``row_logits``) at ``nxt``, by hand."""
    z = sum(math.exp(v) for v in row_logits.values()) + (V - len(row_logits))
    return row_logits.get(nxt, 0.0) - math.log(z)


def task(**kw) -> EvalTaskConfig:
    return OmegaConf.merge(OmegaConf.structured(EvalTaskConfig), kw)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


SENT = [
    {"query": "good day", "answer": "pos"},
    {"query": "bad luck", "answer": "neg"},
    {"query": "bad day", "answer": "neg"},
    {"query": "good luck", "answer": "pos"},
    {"query": "luck day", "answer": "pos"},
]


# ------------------------------------------------------------------------------- bigram: by hand
def test_loglikelihood_by_hand():
    tok, m = bigram_tokenizer(), bigram_model(TABLE)
    got = loglikelihoods(m, tok, [("good day", " pos"), ("good day", " neg"), ("bad luck", " pos pos"), ("", "day")])
    day, luck, pos = {"pos": 2.0}, {"neg": 2.0}, {"pos": 1.0}
    want = [lp_row(day, "pos"), lp_row(day, "neg"), lp_row(luck, "pos") + lp_row(pos, "pos"), lp_row({}, "day")]
    for (ll, _), w in zip(got, want):
        assert ll == pytest.approx(w, abs=1e-4)
    # is-greedy: "pos" is the argmax after "day"; after "luck" the argmax is "neg"
    assert [g for _, g in got] == [True, False, False, False]


def test_few_shot_prompt_and_accuracy_by_hand(tmp_path):
    tok, m = bigram_tokenizer(), bigram_model(TABLE)
    path = write_jsonl(tmp_path / "sent.jsonl", SENT)
    t = task(name="sent", type="choice", path=path, choices=["pos", "neg"], shots=2, fewshot_delimiter=" | ")
    prompts = build_prompts(t)
    # first_n: the first two records other than the query itself
    assert prompts[0][1] == "bad luck neg | bad day neg | good day"
    assert prompts[2][1] == "good day pos | bad luck neg | bad day"
    res = run_task(m, tok, t)
    # the bigram model sees only the query's last word: "day" -> pos (2 vs 0), "luck" -> neg;
    # gold: day/pos right, luck/neg right, day/neg wrong, luck/pos wrong, day/pos right
    assert [p["pred"] for p in res["predictions"]] == [0, 1, 0, 1, 0]
    assert res["acc"] == pytest.approx(3 / 5)
    assert res["n"] == 5 and res["shots"] == 2


def test_multiple_choice_acc_norm_by_hand(tmp_path):
    """acc picks the highest log-likelihood; acc_norm the highest per character of the option."""
    tok, m = bigram_tokenizer(), bigram_model(TABLE)
    rows = [{"query": "bad luck", "choices": ["neg pos pos pos", "pos"], "answer": 0}]
    t = task(name="mc", type="choice", path=write_jsonl(tmp_path / "mc.jsonl", rows))
    res = run_task(m, tok, t)
    luck, pos = {"neg": 2.0}, {"pos": 1.0}
    # V = 16: log p(neg|luck) = 2 - ln(e^2 + 15) = -1.109; p(pos|neg) is uniform: -ln 16 = -2.773;
    # log p(pos|pos) = 1 - ln(e + 15) = -1.875; log p(pos|luck) = -ln(e^2 + 15) = -3.109
    ll_a = lp_row(luck, "neg") + lp_row({}, "pos") + 2 * lp_row(pos, "pos")  # -7.630
    ll_b = lp_row(luck, "pos")  # -3.109
    assert ll_a == pytest.approx(-7.630, abs=1e-3) and ll_b == pytest.approx(-3.109, abs=1e-3)
    assert res["predictions"][0]["loglik"] == pytest.approx([ll_a, ll_b], abs=1e-4)
    # per character: -7.630 / 15 = -0.509 beats -3.109 / 3 = -1.036, so acc_norm picks the gold
    assert res["acc"] == 0.0 and res["acc_norm"] == 1.0


def test_exact_match_by_hand(tmp_path):
    tok, m = bigram_tokenizer(), bigram_model(TABLE)
    rows = [{"country": "france", "answer": "Paris"}, {"country": "germany", "answer": ["Berlin", "berlin"]}]
    t = task(name="cap", type="generate", path=write_jsonl(tmp_path / "cap.jsonl", rows), template="{country}", max_new_tokens=4, stop=[])
    res = run_task(m, tok, t)
    # greedy: france -> paris -> </s> (stop); germany -> rome -> </s>
    assert [p["output"] for p in res["predictions"]] == ["paris", "rome"]
    assert res["exact_match"] == 0.5  # case-insensitive: paris == Paris
    t2 = task(name="cap", type="generate", path=t.path, template="{country}", max_new_tokens=4, stop=[], ignore_case=False)
    assert run_task(m, tok, t2)["exact_match"] == 0.0
    rows = [{"country": "france", "answer": "par"}, {"country": "germany", "answer": "ger"}]
    t3 = task(
        name="cap",
        type="generate",
        path=write_jsonl(tmp_path / "cap3.jsonl", rows),
        template="{country}",
        max_new_tokens=4,
        stop=[],
        extract=r"^(\w{3})",
    )
    assert [p["output"] for p in run_task(m, tok, t3)["predictions"]] == ["par", "rom"]


def test_perplexity_of_uniform_model_is_vocab_size():
    tok, m = bigram_tokenizer(), bigram_model({})
    res = perplexity(m, tok, ["good day pos", "bad luck neg neg neg"], max_length=4)
    assert res["ppl"] == pytest.approx(V, rel=1e-5)
    assert res["tokens"] == 3 + 5  # every token predicted once, the first from the BOS prefix


# ------------------------------------------------------------------------------- real model
def test_perplexity_windows_cover_every_token_once():
    # 10 tokens (the prefix token and 9 to predict), windows of 4 input tokens; (c, a, b): read
    # toks[c:b-1] (after the prefix token when bos_per_window and c > 0), predict toks[a:b]
    assert perplexity_windows(10, 4, bos_per_window=False) == [(0, 1, 5), (4, 5, 9), (5, 9, 10)]
    assert perplexity_windows(10, 4, bos_per_window=True) == [(0, 1, 5), (4, 5, 8), (6, 8, 10)]
    assert perplexity_windows(10, 4, stride=2, bos_per_window=False) == [(0, 1, 5), (2, 5, 7), (4, 7, 9), (5, 9, 10)]
    for n in (2, 3, 17, 100):
        for window in (2, 3, 8):
            for stride in (None, 1, 2, window):
                for bos in (False, True):
                    ws = perplexity_windows(n, window, stride, bos)
                    assert [a for _, a, _ in ws] == [1] + [b for _, _, b in ws[:-1]] and ws[-1][2] == n  # each token once
                    for c, a, b in ws:
                        assert c <= a - 1 and (b - 1 - c) + (bos and c > 0) <= window  # context reaches the target, fits
    with pytest.raises(ValueError, match="stride 5 must be in"):
        perplexity_windows(10, 4, stride=5)


def test_perplexity_equals_independent_nll(tiny_base):
    """exp(mean token NLL) computed here with a plain forward pass and F.cross_entropy, in the
    same windows: each later window reads the ``L`` tokens before its last target (with BOS in
    front, ``L - 1`` of them, when bos_per_window)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    docs = [zen_of_python(), "A list is a mutable sequence; a tuple is not."]
    L = 64  # the Zen (~270 tokens) spans several windows
    for bos in (False, True):
        res = perplexity(m, tok, docs, max_length=L, batch_size=3, bos_per_window=bos)
        nll, n = 0.0, 0
        with torch.no_grad():
            for d in docs:
                ids = [tok.bos_token_id] + tok(d).input_ids
                a = 1
                while a < len(ids):
                    b = min(len(ids), a + L - (bos and a > 1))
                    ctx = ids[max(0, b - 1 - L + (bos and a > 1)) : b - 1]
                    if bos and a > 1:
                        ctx = [tok.bos_token_id] + ctx
                    logits = m(torch.tensor([ctx])).logits[0, -(b - a) :]
                    nll += F.cross_entropy(logits, torch.tensor(ids[a:b]), reduction="sum").item()
                    n, a = n + b - a, b
        assert res["tokens"] == n and res["windows"] > len(docs)
        assert res["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-4)
        assert res["bits_per_byte"] == pytest.approx(nll / math.log(2) / sum(len(d.encode()) for d in docs), rel=1e-4)


def test_short_text_perplexity_equals_the_full_log_softmax(tiny_base):
    """Where no windowing happens, the sliced cross-entropy gives the numbers of a log-softmax
    over the whole [tokens, vocab] (the computation it replaced)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    docs = ["A list is a mutable sequence; a tuple is not.", "Errors should never pass silently."]
    res = perplexity(m, tok, docs)
    seqs = [[tok.bos_token_id] + tok(d).input_ids for d in docs]
    old = score_sequences(m, seqs, [len(s) - 1 for s in seqs])
    n = sum(len(s) - 1 for s in seqs)
    assert res["windows"] == 2 and res["tokens"] == n
    assert res["nll"] == pytest.approx(-sum(ll for ll, _ in old) / n, rel=1e-6)


def test_perplexity_of_a_model_that_soft_caps_its_logits():
    """Gemma 2 soft-caps the output layer's logits: the hidden-state path would miss the cap, so
    the check on the last position sends it to full logits, with the same numbers."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=0.5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    m = Gemma2ForCausalLM(cfg).eval()
    tok = bigram_tokenizer()
    docs = ["good day pos pos", "bad luck neg"]
    from llm.eval.core import _head_inputs

    ids = torch.tensor([[0, 3, 5, 7]])
    assert _head_inputs(m, ids, torch.ones_like(ids)) is None  # the cap is seen; not trusted
    res = perplexity(m, tok, docs)
    seqs = [[0] + tok(d).input_ids for d in docs]
    old = score_sequences(m, seqs, [len(s) - 1 for s in seqs])
    assert res["nll"] == pytest.approx(-sum(ll for ll, _ in old) / res["tokens"], rel=1e-6)
    assert res["ppl"] < V * 1.01  # a cap of 0.5 keeps every logit within 0.5 of the rest: about uniform


def test_perplexity_of_a_long_document_never_holds_tokens_by_vocab_logits():
    """A 3,000-token document, a 32k-context model with an 8,192-token vocabulary: the default
    window is 2048, and no tensor of the evaluation is as large as [tokens, vocab] (the old
    code's float32 logits and log-softmax were 24.6 M elements each)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32768,
    )
    m = LlamaForCausalLM(cfg).eval()
    tok = bigram_tokenizer()
    doc = "good day pos " * 1000

    class Largest(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.most = max(Largest.most, t.numel())
            return out

    with Largest():
        res = perplexity(m, tok, [doc])
    assert res["tokens"] == 3000 and res["window"] == 2048 and res["windows"] == 2
    assert Largest.most < 3000 * 8192 / 2, Largest.most
    assert res["ppl"] == pytest.approx(8192, rel=0.05)  # a random model is about uniform


def test_batched_scores_equal_one_at_a_time(tiny_base):
    """Padding and length-sorted batches change nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    reqs = [
        ("Question: Which keyword defines a function?\nAnswer:", " def"),
        ("A list is", " a mutable sequence"),
        ("x", " y"),
        ("The ", "end of the story, which is long enough to pad the others"),
    ]
    one = [loglikelihoods(m, tok, [r])[0][0] for r in reqs]
    many = [ll for ll, _ in loglikelihoods(m, tok, reqs, batch_size=4)]
    assert many == pytest.approx(one, abs=1e-4)


def test_training_writes_eval_results_beside_export(tiny_base):
    """eval=auto runs the stage's suite (conf/eval/pretrain.yaml) after training."""
    export = Path(tiny_base)
    res = json.loads((export / "eval_results.json").read_text())
    assert res["suite"] == "pretrain" and res["stage"] == "pretrain" and res["global_step"] == 150
    assert set(res["tasks"]) == {"zen_ppl", "zh_sentiment_4shot", "en_sentiment_4shot", "python_mc", "capitals_2shot"}
    assert res["tasks"]["zh_sentiment_4shot"]["example_prompt"].count(" | ") == 8  # 4 examples of "text | label"
    assert 1 < res["tasks"]["zen_ppl"]["ppl"] < 1024  # better than uniform over the 1024-token vocabulary
    header = (export.parent / "metrics.csv").read_text().splitlines()[0]
    assert "eval/zen_ppl/ppl" in header and "eval/python_mc/acc" in header


def test_cli_and_suite_errors(tiny_base, tmp_path):
    from llm.eval.__main__ import main
    from llm.eval.suites import load_suite

    out = tmp_path / "r.json"
    res = main([tiny_base, "--limit", "4", "--out", str(out), "--set", "tasks.1.shots=2"])
    saved = json.loads(out.read_text())
    assert saved["tasks"]["python_mc"]["n"] == 4 and saved["tasks"]["zh_sentiment_4shot"]["shots"] == 2
    assert res["tasks"]["zen_ppl"]["ppl"] == saved["tasks"]["zen_ppl"]["ppl"]
    with pytest.raises(FileNotFoundError, match="suites in conf/eval"):
        load_suite("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks:\n  - name: a\n    typo: 1\n")
    with pytest.raises(ValueError, match="bad.yaml.*typo"):
        load_suite(str(bad))


def test_cli_writes_results_beside_the_run_never_into_the_model(tmp_path, monkeypatch):
    """``llm.eval <run>/export`` writes ``<run>/eval/<suite>.json``; another directory or a .gguf
    file ``NAME`` gives ``./eval-results/NAME/<suite>.json``; the model directory is untouched."""
    from llm.eval.__main__ import main, results_path

    run = tmp_path / "run"
    export = run / "export"
    bigram_model({}).save_pretrained(export)
    bigram_tokenizer().save_pretrained(export)
    (run / "config.yaml").write_text("seed: 1\n")
    suite = tmp_path / "ppl.yaml"
    suite.write_text("name: ppl\ntasks:\n  - name: zen\n    type: perplexity\n    sources: ['builtin:zen-of-python']\n")
    before = sorted(q.name for q in export.iterdir())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = main([str(export), "--suite", str(suite), "--device", "cpu"])
    assert json.loads((run / "eval" / "ppl.json").read_text())["tasks"]["zen"]["ppl"] == res["tasks"]["zen"]["ppl"]
    assert sorted(q.name for q in export.iterdir()) == before  # nothing written into the model
    # not a run's export (no config.yaml beside it): under the working directory, by the model's name
    other = tmp_path / "SmolLM2-135M"
    export.rename(other)
    assert results_path(str(other), "sft") == work / "eval-results" / "SmolLM2-135M" / "sft.json"
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"")
    assert results_path(str(gguf), "pretrain") == work / "eval-results" / "m.Q4_1" / "pretrain.json"
    with pytest.raises(SystemExit, match="inside the model directory"):  # run from inside the model: refused, not written there
        results_path(str(other), "sft", cwd=other)


def test_bad_task_data_names_file_line_and_field(tmp_path):
    tok, m = bigram_tokenizer(), bigram_model(TABLE)
    p = tmp_path / "t.jsonl"
    p.write_text('{"query": "good day", "answer": "pos"}\n{"query": "bad day", "answer": "meh"}\n')
    with pytest.raises(EvalDataError, match=r"t.jsonl:2: 'answer' 'meh' is not one of the options"):
        run_task(m, tok, task(name="a", type="choice", path=str(p), choices=["pos", "neg"]))
    p.write_text('{"query": "good day", "answer": "pos"}\n{"query": "bad day"\n')
    with pytest.raises(EvalDataError, match=r"t.jsonl:2: not valid JSON"):
        run_task(m, tok, task(name="a", type="choice", path=str(p), choices=["pos", "neg"]))
    p.write_text('{"text": "good day", "answer": "pos"}\n')
    with pytest.raises(EvalDataError, match=r"t.jsonl:1: template '\{query\}' needs field 'query'"):
        run_task(m, tok, task(name="a", type="choice", path=str(p), choices=["pos", "neg"]))
    with pytest.raises(EvalDataError, match="unknown builtin task data 'builtin:nope'; shipped: .*builtin:python_mc"):
        run_task(m, tok, task(name="a", type="choice", path="builtin:nope"))
    with pytest.raises(EvalDataError, match="3 shots asked, only 0"):
        p.write_text('{"query": "good day", "answer": "pos"}\n')
        run_task(m, tok, task(name="a", type="choice", path=str(p), choices=["pos", "neg"], shots=3))
    with pytest.raises(EvalDataError, match="chat: true needs a model with a chat template"):
        run_task(m, tok, task(name="a", type="generate", path=str(p), chat=True))
    suite = OmegaConf.merge(
        OmegaConf.structured(EvalConfig), {"name": "s", "tasks": [{"name": "a", "path": str(p)}, {"name": "a", "path": str(p)}]}
    )
    with pytest.raises(EvalDataError, match="repeated: a"):
        run_suite(m, tok, suite)


# ------------------------------------------------------------------------------- lm-eval-harness
def test_lm_eval_harness_hf_matches(tiny_base, tmp_path):
    """The export runs under lm-evaluation-harness's ``hf`` model on local tasks (no download),
    and the harness's per-option log-likelihoods and accuracies equal ours."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.eval.harness import write_tasks

    zh = [json.loads(x) for x in (TASKS_DIR / "zh_sentiment.jsonl").read_text(encoding="utf-8").splitlines()]
    suite = OmegaConf.merge(
        OmegaConf.structured(EvalConfig),
        {
            "name": "h",
            "tasks": [
                {"name": "python_mc", "type": "choice", "path": "builtin:python_mc", "template": "Question: {query}\nAnswer:"},
                {
                    "name": "zh_3shot",
                    "type": "choice",
                    "path": write_jsonl(tmp_path / "zh_test.jsonl", zh[4:]),
                    "fewshot_path": write_jsonl(tmp_path / "zh_shots.jsonl", zh[:4]),
                    "shots": 3,
                    "choices": ["正面", "負面"],
                    "template": "{query} |",
                    "fewshot_delimiter": " | ",
                },
            ],
        },
    )
    names = write_tasks(suite, tmp_path / "harness")
    assert names == ["xiulian_python_mc", "xiulian_zh_3shot"]
    m = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tok = AutoTokenizer.from_pretrained(tiny_base)
    ours = run_suite(m, tok, suite)["tasks"]
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_base},dtype=float32",
        tasks=names,
        task_manager=TaskManager(include_path=str(tmp_path / "harness")),
        device="cpu",
        batch_size=8,
        log_samples=True,
    )
    for ours_name, name in zip(["python_mc", "zh_3shot"], names):
        r = out["results"][name]
        assert r["acc,none"] == pytest.approx(ours[ours_name]["acc"])
        assert r["acc_norm,none"] == pytest.approx(ours[ours_name]["acc_norm"])
        theirs = {s["doc_id"]: [x[0] for x in s["filtered_resps"]] for s in out["samples"][name]}
        for i, p in enumerate(ours[ours_name]["predictions"]):
            assert [float(x) for x in theirs[i]] == pytest.approx(p["loglik"], abs=1e-3)


@pytest.mark.slow
def test_smollm2_scores_well_above_chance():
    """A real pretrained model on the shipped suites: few-shot sentiment, capitals (2-shot
    completion, and asked in its chat template), held-out perplexity of PEP 20."""
    from llm.eval.__main__ import load_model
    from llm.eval.suites import load_suite

    from fixtures import require_smollm2

    model, tok = load_model(str(require_smollm2()))
    pre = run_suite(model, tok, load_suite("pretrain"))["tasks"]
    assert pre["en_sentiment_4shot"]["acc"] >= 0.75  # measured 0.875 (chance 0.5)
    assert pre["capitals_2shot"]["exact_match"] >= 0.75  # measured 0.875
    assert pre["zen_ppl"]["ppl"] < 60  # measured 29.3
    sft = run_suite(model, tok, load_suite("sft"))["tasks"]
    assert sft["capitals_chat"]["exact_match"] >= 0.75  # measured 0.94


def test_suite_during_training_logs_eval_metrics(tmp_path, demo_data):
    """eval.every_n_steps: the suite runs during training too; rows land in metrics.csv."""
    import csv

    from llm.train import train

    from conftest import compose

    cfg = compose(
        [
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=1000",
            "trainer.ckpt_every_n_steps=0",
            "eval=pretrain",
            "eval.every_n_steps=3",
            "export=false",
        ],
        run_dir=tmp_path,
    )
    res = train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    steps = sorted({int(r["step"]) for r in rows if r.get("eval/python_mc/acc")})
    assert steps == [3, 6]  # during training at 3 and 6 (the final suite logs at 6 too)
    assert res["eval"]["suite"] == "pretrain" and (tmp_path / "eval_results.json").is_file()  # no export: beside the run
