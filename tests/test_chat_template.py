"""The chat template around the tokenizer: BOS first exactly once for a tokenizer that uses one
(training and generation), the tokenizer's own turn markers reused instead of added, and a
user's template (file or string) through ``data.chat_template``. The tokenizers are built here,
offline: a byte-level BPE whose post-processor prepends ``<s>`` (like Llama's) and variants."""

from __future__ import annotations

import pytest
import torch
from test_sft_data import MULTI

from llm.data import chat
from llm.data.chat import encode_conversation, render_text

from conftest import compose

CHATML = ("<|im_start|>", "<|im_end|>")
LLAMA3 = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
GEMMA = ("<start_of_turn>", "<end_of_turn>")

USER_TEMPLATE = (
    "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '</s>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
)


def make_tokenizer(bos: bool = True, markers: tuple[str, ...] = ()):
    """A byte-level BPE with ``<s>``/``</s>``; ``bos``: a post-processor puts ``<s>`` before every
    text (a BOS-dependent tokenizer); ``markers``: turn markers already in it as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["Hello there, how are you? Be brief. Again, sure."] * 4,
        trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    if bos:
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    if markers:
        tok.add_special_tokens({"additional_special_tokens": list(markers)})
    assert not tok.chat_template
    return tok


def _loss_text(tok, ex) -> str:
    """The text of the tokens that carry loss (labels[t] is the token at t + 1)."""
    full = ex.input_ids + [ex.labels[-1]]
    for t, lab in enumerate(ex.labels):
        assert lab == -100 or lab == full[t + 1]
    return tok.decode([lab for lab in ex.labels if lab != -100])


def _leading_bos(tok, ids) -> int:
    n = 0
    while n < len(ids) and ids[n] == tok.bos_token_id:
        n += 1
    return n


def test_uses_bos_is_read_from_the_tokenizer(demo_data):
    assert chat.uses_bos(make_tokenizer(bos=True))
    assert not chat.uses_bos(make_tokenizer(bos=False))  # GPT-2 style: has a bos_token, never adds it
    from llm.data.tokenizer import load_tokenizer

    own = load_tokenizer(demo_data[0].name_or_path)  # the framework's BPE: bos = <|endoftext|>, not added
    assert own.bos_token_id is not None and not chat.uses_bos(own)


def test_default_template_starts_with_one_bos_when_the_tokenizer_uses_it():
    tok = make_tokenizer(bos=True)
    assert chat.ensure_chat_template(tok) == list(chat.DEFAULT_CHAT_TOKENS)  # no markers: the framework's added
    text = render_text(tok, MULTI)
    assert text.startswith("<s><|system|>Be brief.<|end|>") and text.count("<s>") == 1
    ex = encode_conversation(tok, MULTI)
    assert ex.input_ids == tok(text, add_special_tokens=False).input_ids[:-1]
    assert ex.input_ids[0] == tok.bos_token_id and _leading_bos(tok, ex.input_ids) == 1
    assert ex.labels[0] == -100  # the token after BOS (<|system|>) carries no loss
    assert _loss_text(tok, ex) == "Hello! 你好<|end|>Sure.<|end|>"
    # the saved template itself writes BOS (vLLM, transformers' apply_chat_template)
    assert tok.chat_template.startswith("{{ bos_token }}")
    assert tok.apply_chat_template(MULTI, tokenize=False) == text


def test_no_bos_for_tokenizers_that_do_not_use_one(demo_data):
    from llm.data.tokenizer import load_tokenizer

    own = load_tokenizer(demo_data[0].name_or_path)
    assert chat.ensure_chat_template(own) == [] and own.chat_template == chat.DEFAULT_CHAT_TEMPLATE  # unchanged
    gpt2_like = make_tokenizer(bos=False)
    chat.ensure_chat_template(gpt2_like)
    for tok in (own, gpt2_like):
        text = render_text(tok, MULTI)
        assert text.startswith("<|system|>")
        ex = encode_conversation(tok, MULTI)
        assert tok.bos_token_id not in ex.input_ids
        assert ex.input_ids == tok(text, add_special_tokens=False).input_ids[:-1]


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize(
    "markers, end, expected",
    [
        (
            CHATML,
            "<|im_end|>",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there 😀<|im_end|>\n"
            "<|im_start|>assistant\nHello! 你好<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\nSure.<|im_end|>\n",
        ),
        (
            LLAMA3,
            "<|eot_id|>",
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hi there 😀<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello! 你好<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nSure.<|eot_id|>",
        ),
        (
            GEMMA,
            "<end_of_turn>",
            "<start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi there 😀<end_of_turn>\n"
            "<start_of_turn>model\nHello! 你好<end_of_turn>\n<start_of_turn>user\nAgain<end_of_turn>\n<start_of_turn>model\nSure.<end_of_turn>\n",
        ),
    ],
    ids=["chatml", "llama3", "gemma"],
)
def test_existing_turn_markers_are_reused(markers, end, expected, bos):
    tok = make_tokenizer(bos=bos, markers=markers)
    n = len(tok)
    assert chat.ensure_chat_template(tok) == [] and len(tok) == n  # nothing added, no embedding resize
    assert "<|user|>" not in tok.get_vocab()
    text = render_text(tok, MULTI)
    assert text == ("<s>" if bos else "") + expected
    ex = encode_conversation(tok, MULTI)
    assert _leading_bos(tok, ex.input_ids) == (1 if bos else 0)
    # loss on the answers and their end-of-turn marker only: no role header, no newline after it
    assert _loss_text(tok, ex) == f"Hello! 你好{end}Sure.{end}"
    assert tok.convert_ids_to_tokens(chat.end_of_turn_token(tok)) == end
    assert chat.stop_token_ids(tok)[0] == tok.convert_tokens_to_ids(end)


def _sft_cfg(tmp_path, template: str):
    tok_dir = tmp_path / "tok"
    make_tokenizer(bos=True, markers=CHATML).save_pretrained(str(tok_dir))
    cfg = compose(["stage=sft", "data=sft_demo", f"data.tokenizer={tok_dir}"])
    cfg.data.chat_template = template  # set as a YAML file or the command line would
    return cfg


@pytest.mark.parametrize("kind", ["file", "string"])
def test_user_template_from_a_file_or_a_string(tmp_path, kind):
    from llm.config import check_config
    from llm.data.builders import load_chat_tokenizer

    path = tmp_path / "my_template.jinja"
    path.write_text(USER_TEMPLATE)
    cfg = _sft_cfg(tmp_path, str(path) if kind == "file" else USER_TEMPLATE)
    check_config(cfg)
    tok, added = load_chat_tokenizer(cfg)
    assert added == [] and tok.chat_template == USER_TEMPLATE  # the user's, not the tokenizer's markers
    text = render_text(tok, MULTI)
    assert text.startswith("<s>### system:\nBe brief.</s>\n### user:\n")  # BOS put first: the template has none
    ex = encode_conversation(tok, MULTI)
    assert _leading_bos(tok, ex.input_ids) == 1
    assert _loss_text(tok, ex) == "Hello! 你好</s>Sure.</s>"


def test_user_template_on_the_command_line(tmp_path):
    """A template file by path, and an inline one quoted on the command line."""
    path = tmp_path / "t.jinja"
    path.write_text(USER_TEMPLATE)
    assert compose([f"data.chat_template={path}"]).data.chat_template == str(path)
    inline = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '</s>' }}{% endfor %}"
    assert compose([f'data.chat_template="{inline}"']).data.chat_template == inline


def test_missing_template_file_named(tmp_path):
    from llm.config import check_config

    missing = tmp_path / "nope.jinja"
    with pytest.raises(ValueError, match=rf"data.chat_template='{missing}': no such file"):
        check_config(compose([f"data.chat_template={missing}"]))


@pytest.mark.parametrize(
    "template, message",
    [
        ("{% for m in messages %}{{ m['content'] }}{% endfor", "does not render"),
        ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "drops the system message"),
        ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}", "drops the assistant"),
        # the generation prompt is not a prefix of the answer's rendering: the answers cannot be found
        (
            "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT>' }}{% endif %}",
            "prefix",
        ),
    ],
)
def test_bad_user_template_refused_at_start(tmp_path, template, message):
    from llm.data.builders import load_chat_tokenizer

    cfg = _sft_cfg(tmp_path, template)
    with pytest.raises(ValueError, match=r"data.chat_template \(inline template\): .*" + message):
        load_chat_tokenizer(cfg)


def _engine(tok, chat_mode=True):
    from llm.model.engine import Engine

    return Engine(torch.nn.Linear(1, 1), tok, chat=chat_mode)  # the model only gives the device here


def test_generation_prompts_start_with_bos_once(demo_data):
    from llm.data.tokenizer import load_tokenizer

    # framework default (writes BOS), a template that writes BOS itself, and one that does not
    default = make_tokenizer(bos=True, markers=CHATML)
    chat.ensure_chat_template(default)
    own_bos = make_tokenizer(bos=True)
    own_bos.chat_template = "{{ bos_token }}" + USER_TEMPLATE
    no_bos_in_template = make_tokenizer(bos=True)
    no_bos_in_template.chat_template = USER_TEMPLATE
    for tok in (default, own_bos, no_bos_in_template):
        ids = _engine(tok).encode_prompt("Hi there")[0].tolist()
        assert _leading_bos(tok, ids) == 1 and ids.count(tok.bos_token_id) == 1, tok.decode(ids)
        assert tok.decode(ids[1:]).startswith(("<|im_start|>user\nHi there", "### user:\nHi there"))
        plain = _engine(tok, chat_mode=False).encode_prompt("Hello there")[0].tolist()
        assert plain == tok("Hello there").input_ids and _leading_bos(tok, plain) == 1
    # tokenizers without BOS: the prompt is the rendering's tokens, nothing more
    own = load_tokenizer(demo_data[0].name_or_path)
    chat.ensure_chat_template(own)
    gpt2_like = make_tokenizer(bos=False, markers=CHATML)
    chat.ensure_chat_template(gpt2_like)
    for tok in (own, gpt2_like):
        ids = _engine(tok).encode_prompt("Hi there")[0].tolist()
        text = render_text(tok, [{"role": "user", "content": "Hi there"}], add_generation_prompt=True)
        assert ids == tok(text, add_special_tokens=False).input_ids and tok.bos_token_id not in ids
