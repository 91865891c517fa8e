"""Typed configuration of the stage-1 data pipeline (Hydra structured configs).

``conf/pipeline/base.yaml`` lists ``pipeline_schema`` (:class:`PipelineConfig`) first in its
defaults, and ``conf/pipeline/executor/{local,slurm}.yaml`` list ``local_schema`` /
``slurm_schema``: every pipeline config and every command-line override is validated against
these dataclasses. A misspelt key, a value of the wrong type or a value outside a closed choice
fails when the config is composed, with a message naming the key; the cross-field checks in the
``__post_init__`` methods run once on the composed config (:func:`to_plain`, called by
``llm.data.__main__.load_config``). The defaults here are the pipeline's defaults: a config
file states only what differs from them.

The pipeline itself (``llm/pipeline/run.py`` and the blocks) reads the config as the plain dict
that :func:`to_plain` returns: resolved, closed choices as strings, reader options that are not
set left out (so each reader receives only what the config says).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from llm.config import _choice

Number = Union[int, float]  # a number kept as written (4 stays 4: the config fingerprint sees the type)

InputKind = _choice("InputKind", "html", "warc", "jsonl", "txt", "parquet", "hf_dataset", "wikipedia")
ExtractEngine = _choice("ExtractEngine", "resiliparse", "trafilatura")
KeepRule = _choice("KeepRule", "threshold", "pareto")
ExecutorKind = _choice("ExecutorKind", "local", "slurm")
StartMethod = _choice("StartMethod", "fork", "spawn", "forkserver")


class PipelineConfigError(ValueError):
    """A pipeline config that does not fit the schema; the message names the key."""


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise PipelineConfigError(message)


def _fraction(value: float, key: str, closed: bool = False) -> None:
    ok = 0 <= value <= 1 if closed else 0 <= value < 1
    _check(ok, f"{key}={value}: a fraction in [0, {'1]' if closed else '1)'}")


def _positive(key: str, value: Any) -> None:
    _check(value > 0, f"{key}={value}: must be positive")


def _entries(entries: dict[str, Any], schema: type, key: str) -> dict[str, Any]:
    """Each value of a per-source map checked against ``schema`` (keys, types, required values),
    as objects; the map itself stays as written.

    Such maps are typed ``dict[str, Any]`` rather than ``dict[str, schema]``: with a dataclass as
    the value type, Hydra cannot add an entry from the command line (``+mixture.sources.x={weight:
    2}`` fails in OmegaConf 2.3 with "dict is not a subclass of MixtureSource"), and a
    ``Union[int, float]`` field of such a value makes Hydra's composition fail with an
    AssertionError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    out = {}
    for name, value in entries.items():
        _check(
            value is None or isinstance(value, dict), f"{key}.{name}={value!r}: a mapping of {', '.join(f.name for f in fields(schema))}"
        )
        try:
            out[name] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), value or {}))
        except OmegaConfBaseException as e:
            msg = re.sub(r"full_key: (\S+)", lambda m, name=name: f"full_key: {key}.{name}.{m.group(1)}", describe(e))
            raise PipelineConfigError(f"{key}.{name}: {msg}") from None
    return out


# ----------------------------------------------------------------------------- inputs

# options a reader of one kind only takes (llm/pipeline/readers.py)
_KIND_OPTIONS = {
    "separator": ("txt",),
    "min_chars": ("txt",),
    "text_key": ("jsonl", "parquet", "hf_dataset"),
    "id_key": ("jsonl", "parquet", "hf_dataset"),
    "namespaces": ("wikipedia",),
}


@dataclass
class InputSpec:
    """One input (an entry of ``inputs``): a directory of files read by the reader of ``kind``
    (``llm/pipeline/readers.py``). Options left unset (``None``) are not passed to the reader,
    which then uses its own default."""

    name: str = MISSING
    """The source's name: documents carry it as ``metadata["source"]``; ``langid.sources``,
    ``heuristics.sources``, ``harmful.skip_sources``, ``quality.sources``,
    ``quality.train.negative_sources`` and ``mixture.sources`` refer to it."""
    kind: InputKind = MISSING
    """``html`` (one document per .html/.htm file, charset from its <meta>, else detected),
    ``warc`` (HTML responses of .warc files), ``jsonl`` (one document per line), ``txt`` (one
    document per file, or per ``separator`` record), ``parquet`` (a text column of .parquet
    files), ``hf_dataset`` (a text column of a Hugging Face dataset saved with
    ``save_to_disk``: its .arrow files) or ``wikipedia`` (the articles of a MediaWiki XML dump,
    as plain text). A .gz, .bz2, .xz (or, with ``zstandard`` installed, .zst) file is
    decompressed while read, whatever the kind (Parquet and Arrow compress inside)."""
    path: str = MISSING
    """The directory the files are in."""
    glob: Optional[str] = None
    """Files to read, relative to ``path``; ``None``: the reader's own (html ``**/*.htm*``, warc
    ``**/*.warc*``, jsonl ``**/*.jsonl*``, txt ``**/*``, parquet ``**/*.parquet``, hf_dataset
    ``**/*.arrow``, wikipedia ``**/*.xml*``)."""
    include: Optional[str] = None
    """A regular expression a file's path relative to ``path`` must match (whole), to pick files
    a glob cannot."""
    exclude: Optional[str] = None
    """A regular expression (whole match) on the relative path: matching files are skipped."""
    separator: Optional[str] = None
    """``txt``: a line equal to this ends a record (``%`` in fortune files); ``None``: one
    document per file."""
    min_chars: Optional[int] = None
    """``txt`` with ``separator``: shorter records are skipped (``None``: 1)."""
    text_key: Optional[str] = None
    """``jsonl``, ``parquet``, ``hf_dataset``: the field (column) holding the text (``None``: ``text``)."""
    id_key: Optional[str] = None
    """``jsonl``, ``parquet``, ``hf_dataset``: the field holding the document id (``None``: ``id``;
    where there is none, file:line or file:row)."""
    namespaces: Optional[list[int]] = None
    """``wikipedia``: the namespaces whose pages are read (``None``: ``[0]``, the articles)."""
    limit: Optional[int] = None
    """Read at most this many documents per task (datatrove's reader ``limit``; ``None``: all)."""
    skip: Optional[int] = None
    """Skip this many documents per task first (datatrove's reader ``skip``; ``None``: 0)."""

    def check(self, key: str) -> None:
        """Cross-field checks; ``key`` is where the spec sits, e.g. ``inputs[1]``."""
        for opt, kinds in _KIND_OPTIONS.items():
            _check(
                getattr(self, opt) is None or self.kind in kinds,
                f"{key}.{opt}: only a {' or '.join(kinds)} reader takes it ({key}.kind={self.kind}, name={self.name})",
            )
        for opt in ("min_chars", "limit", "skip"):
            _check(getattr(self, opt) is None or getattr(self, opt) >= 0, f"{key}.{opt}={getattr(self, opt)}: must be >= 0")


@dataclass
class ReferenceSpec(InputSpec):
    """A reader spec of reference text for the quality classifier (``quality.train.positive``)."""

    rst: Optional[bool] = None
    """Strip reStructuredText markup (Sphinx ``_sources/*.rst.txt``) so the classifier cannot
    learn "markup = good"; ``None``: keep the text as read."""


# ----------------------------------------------------------------------------- blocks


@dataclass
class ExtractConfig:
    """HTML to text (``llm/pipeline/extract.py``); each engine runs in a killable child process."""

    engine: ExtractEngine = ExtractEngine.resiliparse
    """``resiliparse`` (default) or ``trafilatura`` (~30x slower here)."""
    timeout: float = 5.0
    """Seconds per page; a page over it is killed and counted as ``timeout``."""

    def __post_init__(self) -> None:
        _positive("extract.timeout", self.timeout)


@dataclass
class LangidSource:
    """Per-source language-id settings (``langid.sources.<name>``)."""

    min_score: float = MISSING
    """This source's ``min_score`` (short quotes score lower for their right language)."""


@dataclass
class LangidConfig:
    """Language identification and routing (``llm/pipeline/langid.py``, fastText ``lid.176.ftz``)."""

    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Languages kept; a document of another language is dropped (``language_<lang>``)."""
    min_score: float = 0.5
    """A document whose top language scores below this is dropped (``language_low_score``)."""
    keep_other: bool = False
    """Route documents of other languages (or scored too low) to ``other`` instead of dropping them."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Extra model label -> language routing (yue/wuu/gan/lzh/hak/nan/cdo -> zh built in)."""
    sources: dict[str, Any] = field(default_factory=dict)
    """Per input source, a :class:`LangidSource`, e.g. ``{fortunes: {min_score: 0.3}}``."""

    def __post_init__(self) -> None:
        _fraction(self.min_score, "langid.min_score", closed=True)
        for name, src in _entries(self.sources, LangidSource, "langid.sources").items():
            _fraction(src.min_score, f"langid.sources.{name}.min_score", closed=True)


def _language_defaults() -> dict[str, dict[str, Any]]:
    from llm.pipeline.heuristics import LANGUAGE_DEFAULTS

    return {lang: dict(v) for lang, v in LANGUAGE_DEFAULTS.items()}


@dataclass
class HeuristicsConfig:
    """Gopher / C4 rules (``llm/pipeline/heuristics.py``): thresholds are ``DEFAULTS`` there,
    overridden by ``default``, then per language, then per source. The keys of every override
    are checked against ``DEFAULTS`` when the config is loaded."""

    default: dict[str, Any] = field(default_factory=dict)
    """Overrides of ``llm/pipeline/heuristics.py`` ``DEFAULTS`` for every document."""
    languages: dict[str, dict[str, Any]] = field(default_factory=lambda: _language_defaults())
    """Per language, e.g. ``{zh: {min_words: 10}}``; merged into the defaults, which are
    ``llm/pipeline/heuristics.py`` ``LANGUAGE_DEFAULTS``: Chinese repetition counted in jieba
    words (``zh: {repetition_words: jieba}``), Japanese in characters with every n doubled
    (``ja: {cjk_chars_per_word: 2}``); calibrated with ``python -m llm.bench.data_lang``."""
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per input source name, e.g. ``{fortunes: {min_words: 5}}``."""

    def __post_init__(self) -> None:
        from llm.pipeline.heuristics import DEFAULTS, check_value

        overrides = {
            "heuristics.default": self.default,
            **{f"heuristics.languages.{k}": v for k, v in self.languages.items()},
            **{f"heuristics.sources.{k}": v for k, v in self.sources.items()},
        }
        for key, over in overrides.items():
            unknown = sorted(set(over) - set(DEFAULTS))
            _check(not unknown, f"{key}: unknown thresholds {unknown}; known: {sorted(DEFAULTS)}")
            for name, value in over.items():
                bad = check_value(name, value)
                _check(not bad, f"{key}.{name}={value!r}: must be {bad}")


@dataclass
class HarmfulConfig:
    """Harmful-content filter (``llm/pipeline/harmful.py``): word and URL blocklists per language
    plus a fastText classifier per language, trained in the ``prepare`` stage."""

    blocklists: dict[str, list[str]] = field(default_factory=dict)
    """Extra word-list files per language: ``{en: [path], zh: [path]}``."""
    min_hits: int = 2
    """A document is dropped by the word lists when it has at least this many hits ..."""
    min_hit_ratio: float = 0.01
    """... and they are at least this fraction of its words."""
    url_domains: Optional[str] = None
    """A file with one blocked domain per line (``None``: only the URL word lists)."""
    classifier_languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Languages to train and apply a harmful classifier for."""
    threshold: float = 0.5
    """A document whose classifier score is above this is dropped."""
    train: list[str] = field(default_factory=list)
    """Extra labelled jsonl files ``{"text", "label": harmful|benign, "lang"}`` added to
    ``llm/pipeline/assets/harmful_seed.jsonl``."""
    benign_paragraphs: int = 3000
    """At most this many paragraphs of the extracted documents serve as benign examples."""
    skip_sources: list[str] = field(default_factory=list)
    """Input sources trusted: never filtered here."""
    buckets: int = 50000
    """Hash buckets of the classifiers' word bigrams (fastText ``bucket``, its default 2M made
    each model 128 MB): 50,000 give 3.6 MB with the same scores (BENCHMARKS.md)."""
    quantize: bool = False
    """Also quantise each classifier (fastText ``quantize``, ``qnorm``, ``retrain``): 0.5 MB, but
    single scores move (by 0.1 on a planted page) and the English held-out AUC fell from 0.93 to
    0.91 (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        _check(self.min_hits >= 1, f"harmful.min_hits={self.min_hits}: must be at least 1")
        _fraction(self.min_hit_ratio, "harmful.min_hit_ratio", closed=True)
        _fraction(self.threshold, "harmful.threshold", closed=True)
        _check(self.benign_paragraphs >= 0, f"harmful.benign_paragraphs={self.benign_paragraphs}: must be >= 0")
        _positive("harmful.buckets", self.buckets)


@dataclass
class NearDedupConfig:
    """MinHash LSH (``llm/pipeline/dedup.py``): P(candidate) = 1 - (1 - s^rows)^bands."""

    n_grams: int = 5
    """Word n-grams as shingles."""
    cjk_n_grams: int = 5
    """Character n-grams for Chinese/Japanese/Korean text."""
    num_buckets: int = 14
    """Bands (one ``buckets`` task each)."""
    hashes_per_bucket: int = 8
    """Rows per band: 14 x 8 = 112 permutations."""
    seed: int = 1
    """Seed of the MinHash permutations."""

    def __post_init__(self) -> None:
        for k in ("n_grams", "cjk_n_grams", "num_buckets", "hashes_per_bucket"):
            _positive(f"dedup.near.{k}", getattr(self, k))


@dataclass
class BoilerplateConfig:
    """Lines repeated across a source's documents, removed from them."""

    min_docs: int = 5
    """A line is boilerplate when it occurs in at least this many documents ..."""
    min_fraction: float = 0.3
    """... and in this fraction of its source's documents."""
    min_chars: int = 10
    """Only lines of at least this many characters count (short code lines and headings stay)."""

    def __post_init__(self) -> None:
        _positive("dedup.boilerplate.min_docs", self.min_docs)
        _fraction(self.min_fraction, "dedup.boilerplate.min_fraction", closed=True)
        _check(self.min_chars >= 0, f"dedup.boilerplate.min_chars={self.min_chars}: must be >= 0")


@dataclass
class DedupConfig:
    """Deduplication (``llm/pipeline/dedup.py``): exact, near (MinHash LSH) and line boilerplate."""

    exact: bool = True
    """Exact deduplication (normalised-text hash, the first copy kept). Note: the pipeline does
    not read this switch yet; exact dedup always runs."""
    near: NearDedupConfig = field(default_factory=NearDedupConfig)
    boilerplate: BoilerplateConfig = field(default_factory=BoilerplateConfig)


@dataclass
class QualityTrainConfig:
    """Training of the quality classifier (``llm/pipeline/train_classifiers.py``)."""

    positive: list[ReferenceSpec] = field(default_factory=list)
    """Reader specs of reference text (the positives)."""
    negative_sources: list[str] = field(default_factory=list)
    """Input sources whose pages, rendered whole (raw crawl text), are the negatives."""
    eval_negative_match: Optional[str] = None
    """Negatives whose id contains this (e.g. ``genindex``: link-list pages) are kept out of
    training and scored against held-out positives: the AUC in the report."""
    holdout: float = 0.2
    """Fraction of the positives held out for evaluation."""
    epoch: int = 25
    """fastText training epochs."""
    word_ngrams: int = 2
    """fastText word n-gram features (2: unigrams and bigrams)."""
    dim: int = 32
    """fastText embedding dimension."""
    link_list_negatives: int = 200
    """Link-list pages (index, table-of-contents and "List of Tables" style: short entries made
    of the positives' own words) generated and added to the negatives, so that the model learns
    the layout (it also sees one shape token per line) rather than the vocabulary; 0: none."""

    def __post_init__(self) -> None:
        _fraction(self.holdout, "quality.train.holdout")
        _check(self.link_list_negatives >= 0, f"quality.train.link_list_negatives={self.link_list_negatives}: must be >= 0")
        for k in ("epoch", "word_ngrams", "dim"):
            _positive(f"quality.train.{k}", getattr(self, k))
        for i, spec in enumerate(self.positive):
            spec.check(f"quality.train.positive[{i}]")


@dataclass
class QualityKeepConfig:
    """Which scored documents are kept (``quality.keep``)."""

    rule: KeepRule = KeepRule.threshold
    """``threshold`` (keep a score >= ``threshold``) or ``pareto`` (GPT-3: keep when
    pareto(``alpha``) > 1 - score, seeded by the document id)."""
    threshold: float = 0.5
    """``threshold`` rule: the lowest score kept."""
    alpha: float = 9.0
    """``pareto`` rule: the Pareto shape (GPT-3: 9)."""
    keep_fraction: Optional[float] = None
    """``threshold`` rule: instead of ``threshold``, the threshold that keeps this fraction of the
    judged documents (the matching quantile of their scores, computed once after the filter
    stage, logged and shown in the report); ``None``: use ``threshold``."""

    def __post_init__(self) -> None:
        _fraction(self.threshold, "quality.keep.threshold", closed=True)
        _positive("quality.keep.alpha", self.alpha)
        if self.keep_fraction is not None:
            _check(0 < self.keep_fraction <= 1, f"quality.keep.keep_fraction={self.keep_fraction}: a fraction in (0, 1]")
            _check(
                self.rule == "threshold", f"quality.keep.keep_fraction: only the threshold rule takes it (quality.keep.rule={self.rule})"
            )


@dataclass
class QualityConfig:
    """fastText quality classifier: reference text vs raw crawl text (``llm/pipeline/quality.py``)."""

    enabled: bool = True
    """Score documents and apply the keep rule in the ``final`` stage (and train the classifier)."""
    model: Optional[str] = None
    """A trained fastText model; ``None``: train one in the ``prepare`` stage."""
    sources: Optional[list[str]] = None
    """Judge only these input sources (``None``: all)."""
    min_auc: float = 0.75
    """The report warns when the classifier's held-out AUC (held-out reference text against
    held-out negatives, and against the ``eval_negative_match`` pages) is below this."""
    train: QualityTrainConfig = field(default_factory=QualityTrainConfig)
    keep: QualityKeepConfig = field(default_factory=QualityKeepConfig)

    def __post_init__(self) -> None:
        _fraction(self.min_auc, "quality.min_auc", closed=True)


@dataclass
class MixtureSource:
    """A source's share of the mixture (``mixture.sources.<name>``, ``llm/pipeline/mixture.py``)."""

    weight: float = 1.0
    """Relative weight; the source is read min(max_repeats, weight / sum(weights) * total / size) times."""
    max_repeats: Number = 1
    """At most this many epochs of the source (a fraction below 1 subsamples)."""


@dataclass
class MixtureConfig:
    """Weights and repeats -> tokenizer -> token shards in ``<out>/shards``."""

    sources: dict[str, Any] = field(default_factory=dict)
    """Per input source, a :class:`MixtureSource` ``{weight, max_repeats}``; a source not listed
    (or a key not given) has weight 1, max_repeats 1."""
    total_chars: Optional[int] = None
    """The character budget; ``None``: every source once."""
    tokenizer: Optional[str] = None
    """The path of a tokenizer; ``None``: train one on the documents."""
    vocab_size: int = 8192
    """Vocabulary of the tokenizer trained here."""
    shard_max_tokens: int = 1048576
    """Tokens per shard at most (``llm.data.shards.write_shards``)."""
    val_fraction: float = 0.01
    """Fraction of the documents written to the validation split."""
    shuffle_buffer_mb: float = 256.0
    """Memory for the shuffle (MiB): the drawn documents are scattered to bucket files of about this
    size in memory, and one bucket at a time is loaded and shuffled; peak memory of the mixture
    step is about this plus the tokenizer trainer's (``llm/pipeline/mixture.py``)."""
    tokenizer_sample_chars: Optional[int] = 200000000
    """Characters of one copy of the documents the tokenizer is trained on (a seeded sample by
    document id beyond that); ``None``: all of them."""

    def __post_init__(self) -> None:
        for name, src in _entries(self.sources, MixtureSource, "mixture.sources").items():
            _check(src.weight >= 0, f"mixture.sources.{name}.weight={src.weight}: must be >= 0")
            _positive(f"mixture.sources.{name}.max_repeats", src.max_repeats)
        _check(self.total_chars is None or self.total_chars > 0, f"mixture.total_chars={self.total_chars}: must be positive")
        _positive("mixture.vocab_size", self.vocab_size)
        _positive("mixture.shard_max_tokens", self.shard_max_tokens)
        _fraction(self.val_fraction, "mixture.val_fraction")
        _positive("mixture.shuffle_buffer_mb", self.shuffle_buffer_mb)
        _check(
            self.tokenizer_sample_chars is None or self.tokenizer_sample_chars > 0,
            f"mixture.tokenizer_sample_chars={self.tokenizer_sample_chars}: must be positive",
        )


@dataclass
class ReportConfig:
    """``<out>/report/``: JSON, Markdown and PNG plots of every block's counts (``llm/pipeline/report.py``)."""

    wandb: bool = False
    """Also log the report to Weights & Biases."""
    wandb_project: str = "xiulian-data"
    warn_loss_share: float = 0.3
    """Warn (log, ``warnings`` in report.json and the CLI summary) when a language or an input
    source loses more than this share of its documents or of its characters between extraction
    and the final documents."""

    def __post_init__(self) -> None:
        _fraction(self.warn_loss_share, "report.warn_loss_share", closed=True)


# ----------------------------------------------------------------------------- executors


@dataclass
class ExecutorConfig:
    """What every executor takes; the ``executor`` group (``executor=local|slurm``) picks one of
    the subclasses below, whose own fields then are the only other keys allowed."""

    kind: ExecutorKind = MISSING
    """``local`` or ``slurm``: set by the ``executor`` group, not by hand."""
    tasks: int = 4
    """Shards of the input: the number of tasks of the extract, filter and final stages."""
    workers: int = -1

    def __post_init__(self) -> None:
        _positive("executor.tasks", self.tasks)


@dataclass
class LocalExecutorConfig(ExecutorConfig):
    """datatrove's ``LocalPipelineExecutor``: ``tasks`` shards of the input, ``workers``
    processes at a time."""

    kind: ExecutorKind = ExecutorKind.local
    workers: int = 2
    """Processes at a time (at most ``tasks``)."""
    start_method: StartMethod = StartMethod.fork
    """multiprocessing start method of the worker processes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.kind == "local", f"executor.kind={self.kind}: choose the executor with executor={self.kind}")
        _positive("executor.workers", self.workers)


@dataclass
class SlurmExecutorConfig(ExecutorConfig):
    """datatrove's ``SlurmPipelineExecutor``: one array job per stage (``tasks`` = array size),
    chained with afterok dependencies; ``python -m llm.data`` waits for the last one when
    ``wait`` is true."""

    kind: ExecutorKind = ExecutorKind.slurm
    workers: int = -1
    """Array tasks running at once (-1: no limit)."""
    partition: str = "debug"
    """The Slurm partition the array jobs go to."""
    time: str = "01:00:00"
    """Time limit of each array task (sbatch ``--time``)."""
    cpus_per_task: int = 1
    """CPUs of each array task."""
    mem_per_cpu_gb: Number = 2
    """Memory per CPU in GB; a fraction is passed to sbatch in MB (1.5 -> 1536M)."""
    wait: bool = True
    """Wait until the last stage's array job has finished (and return the report)."""
    wait_timeout: Number = 86400
    """Seconds to wait at most."""
    venv_path: Optional[str] = None
    """A venv's bin/activate to source in the job; ``None``: the submitting environment."""
    env_command: Optional[str] = None
    """A shell command run in the job before the task (e.g. ``module load ...``)."""
    sbatch_args: dict[str, Any] = field(default_factory=dict)
    """Extra ``#SBATCH`` options, e.g. ``{account: x, qos: y}``."""
    srun_args: dict[str, Any] = field(default_factory=dict)
    """Extra ``srun`` options."""
    max_array_size: int = 1001
    """Split an array larger than this into several jobs (the cluster's MaxArraySize)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.kind == "slurm", f"executor.kind={self.kind}: choose the executor with executor={self.kind}")
        _check(self.workers == -1 or self.workers >= 1, f"executor.workers={self.workers}: -1 or at least 1")
        _positive("executor.cpus_per_task", self.cpus_per_task)
        _positive("executor.mem_per_cpu_gb", self.mem_per_cpu_gb)
        _positive("executor.wait_timeout", self.wait_timeout)
        _positive("executor.max_array_size", self.max_array_size)


# ----------------------------------------------------------------------------- the whole config


@dataclass
class PipelineConfig:
    """A stage-1 pipeline run (``python -m llm.data <config>``, stages in ``llm/pipeline/run.py``)."""

    name: str = "pipeline"
    """The run's name (Slurm job names, the report)."""
    out: str = "outputs/data/${name}"
    """The output directory: ``work/`` (intermediate files, logs), ``shards/``, ``report/``."""
    seed: int = 0
    """Seeds the quality keep rule's draws and the mixture's shuffle."""
    docs: Optional[str] = None
    """A directory a config may refer to as ``${docs}`` in its paths; the pipeline reads nothing
    else from it. Left out of the loaded config when unset."""
    inputs: list[InputSpec] = field(default_factory=list)
    """The input sources, each read by its own reader."""
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    langid: LangidConfig = field(default_factory=LangidConfig)
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    harmful: HarmfulConfig = field(default_factory=HarmfulConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    executor: ExecutorConfig = MISSING
    """Chosen by the ``executor`` group: ``executor=local`` (the default, base.yaml) or
    ``executor=slurm``."""

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.inputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, f"inputs: names must be unique, {dup} repeated")
        for i, spec in enumerate(self.inputs):
            spec.check(f"inputs[{i}]")
        q = self.quality
        _check(
            not q.enabled or q.model or q.train.positive,
            "quality.train.positive is empty: give reference text to train the quality classifier on, "
            "a trained quality.model, or quality.enabled=false",
        )


def register_pipeline_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=PipelineConfig)
    cs.store(group="executor", name="local_schema", node=LocalExecutorConfig)
    cs.store(group="executor", name="slurm_schema", node=SlurmExecutorConfig)


def to_plain(cfg: Any) -> dict:
    """The composed config as the pipeline reads it: every cross-field check run (the dataclasses'
    ``__post_init__``), interpolations resolved, closed choices as strings, unset reader options
    and an unset ``docs`` left out. Raises :class:`PipelineConfigError` naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(cfg)
    except PipelineConfigError as e:
        raise PipelineConfigError(str(e).split("\n    full_key")[0]) from None
    except OmegaConfBaseException as e:  # a missing mandatory value, a failed interpolation
        raise PipelineConfigError(describe(e)) from None
    _no_unknown_keys(obj, "")
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if plain.get("docs") is None:
        plain.pop("docs", None)
    for specs in (plain["inputs"], plain["quality"]["train"]["positive"]):
        for i, spec in enumerate(specs):
            specs[i] = {k: v for k, v in spec.items() if v is not None}
    return plain


def _no_unknown_keys(obj: Any, key: str) -> None:
    """A ``+key=value`` override adds a key the schema lacks (Hydra's force-add), and
    ``OmegaConf.to_object`` keeps it as a plain attribute: refuse it here."""
    if is_dataclass(obj):
        known = [f.name for f in fields(obj)]
        extra = sorted(set(vars(obj)) - set(known))
        _check(
            not extra,
            f"{key + '.' if key else ''}{extra[0] if extra else ''}: not a key of {type(obj).__name__} (its keys: {', '.join(known)})",
        )
        for name in known:
            _no_unknown_keys(getattr(obj, name), f"{key}.{name}" if key else name)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _no_unknown_keys(item, f"{key}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _no_unknown_keys(v, f"{key}.{k}")


_TEMPLATE = re.compile(r"\$[A-Z][A-Z_]+\b")  # OmegaConf's unformatted copy of a message: '$VALUE' of type '$VALUE_TYPE'


def describe(e: BaseException) -> str:
    """One readable paragraph for an OmegaConf/Hydra error: its message and the key it names,
    without OmegaConf's object_type/reference_type lines; the causes' messages appended."""
    parts: list[str] = []
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        lines = [
            ln
            for ln in str(e).splitlines()
            if ln.strip()
            and not _TEMPLATE.search(ln)
            and not ln.strip().startswith(("object_type=", "reference_type=", "child_node", "key:", "To append to your config use"))
        ]  # the schema refuses that too
        text = "\n".join(ln.strip() for ln in lines)
        if text and not any(text in p for p in parts):
            parts.append(text)
        e = e.__cause__ or e.__context__
    return "\n".join(parts)
