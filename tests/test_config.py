"""Every option in conf/ composes and builds on the meta device; mistakes fail loudly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException

from llm.model.build import build_model, count_params

from conftest import CONF, ROOT, compose

# conf/pipeline/ is the data pipeline's own config tree (python -m llm.data), not a training group
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir() and g.name != "pipeline"}

# published sizes (parameters), within 3%
NOMINAL = {
    "tiny": None,
    "gpt1_117m": 117e6,
    "gpt2_xl_1_5b": 1.56e9,
    "llama_1b": 1.24e9,
    "llama_7b": 6.74e9,
    "llama_13b": 13.0e9,
    "llama_70b": 69.0e9,
}

REQUIRED = {  # options with ??? fields need a value to compose
    ("model", "hf"): ["model.pretrained=/nonexistent"],
    ("data", "text"): ["data.sources=[/tmp]"],
    ("data", "shards"): ["data.shards=/tmp"],
}


def test_groups_are_known():
    assert {"model", "data", "stage", "strategy", "trainer", "logger", "debug"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    from llm.config import check_config

    cfg = compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert cfg[group] is not None if group != "debug" else True
    check_config(cfg)  # the cross-field checks pass on every shipped option


@pytest.mark.parametrize("preset", GROUPS["model"])
def test_model_presets_build_on_meta(preset):
    if preset == "hf":
        pytest.skip("a directory, not a preset: covered by the export round trip")
    cfg = compose([f"model={preset}"])
    with torch.device("meta"):
        model = build_model(cfg.model, vocab_size=1024)
    n = count_params(model)
    if NOMINAL[preset]:
        assert abs(n - NOMINAL[preset]) / NOMINAL[preset] < 0.03, (preset, n)
    if cfg.model.arch == "llama":
        c = model.config
        assert c.num_key_value_heads == (cfg.model.n_kv_head or cfg.model.n_head)
        assert c.hidden_act == "silu"  # SwiGLU


def test_llama_1b_rope_theta():
    cfg = compose(["model=llama_1b"])
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert model.config.rope_parameters["rope_theta"] == 500000.0


def test_misspelt_key_names_it():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["model.n_layers=3"])
    assert "n_layers" in str(e.value.__cause__ or e.value)


def test_wrong_type_names_it():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["trainer.max_steps=many"])
    msg = str(e.value.__cause__ or e.value)
    assert "max_steps" in msg and "many" in msg


@pytest.mark.parametrize(
    "override,allowed",
    [
        ("trainer.on_nonfinite=ignore", "stop, skip"),
        ("strategy.name=zero3", "deepspeed_zero3"),
        ("data.on_bad_row=drop", "error, skip"),
        ("stage.ppo.kl_estimator=k4", "k1, k2, k3, abs"),
        ("model.arch=mamba", "llama, gpt2"),
        ("logger.mode=online-ish", "auto, online, offline, disabled"),
        ("stage.dpo.loss=orpo", "dpo, ipo, simpo, kto"),
    ],
)
def test_closed_choice_rejected_at_compose(override, allowed):
    """A closed choice is an enum: a wrong value fails when the config is composed, before any
    work, naming the key and the values it takes."""
    key, _, value = override.partition("=")
    with pytest.raises(ConfigCompositionException) as e:
        compose([override])
    msg = str(e.value.__cause__ or e.value)
    assert key in msg and repr(value) in msg and allowed in msg


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy=deepspeed_zero2", "strategy.offload_params=true"], "strategy.offload_params needs ZeRO-3"),
        (["data.seq_len=512", "model.max_seq_len=256"], "data.seq_len=512 exceeds model.max_seq_len=256"),
        (["stage=ppo", "stage.ppo.top_p=0"], "stage.ppo.top_p=0.0: must be in (0, 1]"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
        (["data.chat_template=chatml"], "data.chat_template='chatml': no such file (expected auto, default, the path of a Jinja file"),
        (["trainer.max_skipped_steps=-1"], "trainer.max_skipped_steps=-1"),
        (["stage=dpo", "stage.dpo.loss=ipo", "stage.dpo.label_smoothing=0.1"], "label smoothing (cDPO) applies to dpo and simpo only"),
        (["stage=dpo", "stage.dpo.loss=kto", "stage.dpo.label_smoothing=0.1"], "stage.dpo.loss=kto: label smoothing"),
        (["stage=dpo", "stage.dpo.label_smoothing=0.5"], "stage.dpo.label_smoothing=0.5: must be in [0, 0.5)"),
        (["stage=dpo", "stage.dpo.gamma=1.0"], "stage.dpo.gamma=1.0 with stage.dpo.loss=dpo: gamma is SimPO's margin"),
        (["stage=dpo", "stage.dpo.loss=simpo", "stage.dpo.precompute_ref=true"], "SimPO has no reference model"),
        (["stage=dpo", "stage.dpo.loss=ipo", "stage.dpo.undesirable_weight=2"], "the weights are KTO's"),
        (["stage=dpo", "stage.dpo.loss=kto", "stage.dpo.desirable_weight=0"], "both must be positive"),
        (["stage=dpo", "stage.dpo.beta=0"], "stage.dpo.beta=0.0: must be positive"),
    ],
)
def test_cross_field_checks_name_the_fields(overrides, message):
    """``__post_init__`` checks, run on the composed config before any work (``check_config``)."""
    from llm.config import check_config

    with pytest.raises(ValueError) as e:
        check_config(compose(overrides))
    assert message in str(e.value)


def test_choices_read_as_strings(tmp_path):
    """Code compares and prints choices as plain strings; what is saved is the plain string."""
    from omegaconf import OmegaConf

    cfg = compose(["trainer.on_nonfinite=skip", "strategy=ddp"])
    assert cfg.trainer.on_nonfinite == "skip" and f"{cfg.trainer.on_nonfinite}" == "skip" and str(cfg.strategy.name) == "ddp"
    assert {"ddp": 1}[cfg.strategy.name] == 1
    OmegaConf.save(cfg, tmp_path / "c.yaml")
    assert "on_nonfinite: skip" in (tmp_path / "c.yaml").read_text()
    plain = OmegaConf.to_container(cfg.trainer, enum_to_str=True)
    assert type(plain["on_nonfinite"]) is str


def _leaves(d: dict, path: tuple = ()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        elif k != "defaults":
            yield (*path, k), v


@pytest.mark.parametrize("group", ["model", "data", "stage", "strategy", "trainer", "logger", "eval"])
def test_group_files_state_only_what_differs(group):
    """A conf file holds what differs from its dataclass's defaults (or from the option it
    extends): defaults live in llm/config.py alone, so they cannot drift apart."""
    import yaml
    from omegaconf import OmegaConf

    from llm import config as C

    node = {
        "model": C.ModelConfig,
        "data": C.DataConfig,
        "stage": C.StageConfig,
        "strategy": C.StrategyConfig,
        "trainer": C.TrainerConfig,
        "logger": C.LoggerConfig,
        "eval": C.EvalConfig,
    }[group]
    restated = []
    for f in sorted((CONF / group).glob("*.yaml")):
        data = yaml.safe_load(f.read_text()) or {}
        base = OmegaConf.structured(node)
        for parent in data.get("defaults") or []:
            if parent != "_self_":
                base = OmegaConf.merge(
                    base, {k: v for k, v in yaml.safe_load((f.parent / f"{parent}.yaml").read_text()).items() if k != "defaults"}
                )
        base = OmegaConf.to_container(base, enum_to_str=True)
        for path, value in _leaves(data):
            d = base
            for k in path:
                d = d.get(k, "<absent>") if isinstance(d, dict) else "<absent>"
            if (
                path != ("name",)
                and d not in ("<absent>", "???")
                and d == value
                and type(d) is type(value)
                or (isinstance(d, float) and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == d)
            ):
                restated.append(f"{f.relative_to(CONF)}: {'.'.join(path)}: {value!r} is the default")
    assert not restated, "\n".join(restated)


@pytest.mark.tier("integration")
def test_cli_typo_fails_at_start():
    r = subprocess.run([sys.executable, "-m", "llm.train", "model.n_layers=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "n_layers" in r.stderr + r.stdout


def test_unknown_option_lists_choices():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["model=llama_8b"])
    assert "llama_7b" in str(e.value)  # Hydra lists the available options


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "pipeline").glob("*.yaml") if p.stem != "base"))
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_pipeline_configs_compose_and_build(name, executor, tmp_path):
    from llm.data.__main__ import load_config
    from llm.pipeline.run import STAGES, build_stages

    cfg = load_config(name, [f"executor={executor}", f"out={tmp_path}"])
    assert cfg["executor"]["kind"] == executor
    stages = build_stages(cfg)
    assert list(stages) == list(STAGES)


# ---- the pipeline config (conf/pipeline/, llm/pipeline/config.py)

PIPELINE_MISTAKES = {  # overrides -> what the message must name
    "typo": (["dedup.boilerplat.min_chars=3"], ["dedup.boilerplat"]),
    "typo_added": (["+dedup.boilerplat.min_chars=3"], ["dedup.boilerplat"]),
    "typo_in_a_source": (["+mixture.sources.kjv.wieght=2"], ["mixture.sources.kjv", "wieght"]),
    "slurm_key_under_local": (["executor.partition=x"], ["executor.partition"]),
    "wrong_type": (["extract.timeout=fast"], ["extract.timeout"]),
    "wrong_type_slurm": (["executor=slurm", "executor.mem_per_cpu_gb=many"], ["executor.mem_per_cpu_gb"]),
    "bad_choice": (["extract.engine=lxml"], ["extract.engine", "resiliparse", "trafilatura"]),
    "bad_choice_rule": (["quality.keep.rule=top"], ["quality.keep.rule", "pareto"]),
    "bad_choice_input": (["inputs.0.kind=pdf"], ["inputs[0].kind", "warc"]),
    "cross_fraction": (["dedup.boilerplate.min_fraction=1.5"], ["dedup.boilerplate.min_fraction"]),
    "cross_weight": (["mixture.sources.kjv.weight=-1"], ["mixture.sources.kjv.weight"]),
    "cross_reader_option": (["inputs.0.separator=x"], ["inputs[0].separator", "txt"]),
    "cross_heuristics": (["+heuristics.sources.fortunes.min_wrds=3"], ["heuristics.sources.fortunes", "min_wrds"]),
    "cross_executor": (["executor=slurm", "executor.tasks=0"], ["executor.tasks"]),
}


@pytest.mark.parametrize("mistake", sorted(PIPELINE_MISTAKES))
def test_pipeline_config_mistake_names_the_key(mistake):
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    overrides, named = PIPELINE_MISTAKES[mistake]
    with pytest.raises(PipelineConfigError) as e:
        load_config("python_docs", overrides)
    for word in named:
        assert word in str(e.value), (word, str(e.value))


@pytest.mark.parametrize(
    "body,named",
    [
        ("dedup:\n  boilerplat: {min_chars: 3}\n", ["boilerplat", "dedup"]),
        ("extract: {timeout: fast}\n", ["extract.timeout"]),
        ("quality:\n  keep: {rule: top}\n", ["quality.keep.rule", "threshold, pareto"]),
        ("mixture: {val_fraction: 1.0}\n", ["mixture.val_fraction"]),
        ("inputs: [{name: a, kind: txt, path: /tmp}, {name: a, kind: html, path: /tmp}]\n", ["inputs", "'a'"]),
        ("extract: {timeout: 1\n", ["mine.yaml", "line 2"]),  # not YAML
    ],
)
def test_pipeline_config_file_mistake_names_the_key(body, named, tmp_path):
    """The same checks for a config file of one's own (next to nothing but ``base``)."""
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    f = tmp_path / "mine.yaml"
    f.write_text("defaults: [base, _self_]\n" + body + ("" if "quality" in body else "quality: {enabled: false}\n"))
    with pytest.raises(PipelineConfigError) as e:
        load_config(str(f), [])
    for word in named:
        assert word in str(e.value), (word, str(e.value))


@pytest.mark.tier("integration")
def test_pipeline_cli_mistake_exits_naming_the_key():
    r = subprocess.run(
        [sys.executable, "-m", "llm.data", "python_docs", "dedup.boilerplat.min_chars=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "dedup.boilerplat" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "pipeline").glob("*.yaml") if p.stem != "base"))
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_pipeline_configs_are_schema_defaults_plus_their_own_keys(name, executor):
    """A shipped config loads to the dataclasses' defaults with its own file's keys merged over them:
    base.yaml and the executor files add nothing (defaults live in llm/pipeline/config.py alone)."""
    import yaml
    from omegaconf import OmegaConf

    from llm.data.__main__ import load_config
    from llm.pipeline import config as P

    def body(path):
        return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}

    schema = {"local": P.LocalExecutorConfig, "slurm": P.SlurmExecutorConfig}[executor]
    expected = OmegaConf.merge(
        OmegaConf.structured(P.PipelineConfig),
        {"executor": OmegaConf.structured(schema)},
        {"executor": body(CONF / "pipeline" / "executor" / f"{executor}.yaml")},
        body(CONF / "pipeline" / f"{name}.yaml"),
    )
    assert body(CONF / "pipeline" / "base.yaml") == {}
    assert load_config(name, [f"executor={executor}"]) == P.to_plain(expected)


def test_pipeline_config_reader_options_unset_are_left_out():
    """Each reader receives only the options its spec states (an html reader takes no separator)."""
    from llm.data.__main__ import load_config

    cfg = load_config("python_docs", [])
    assert cfg["inputs"][0] == {"name": "pydocs", "kind": "html", "path": cfg["docs"], "glob": "**/*.html"}
    assert cfg["quality"]["train"]["positive"][0]["rst"] is True
    assert isinstance(cfg["extract"]["engine"], str) and type(cfg["extract"]["engine"]) is str
