"""Build the stage-1 pipeline from a config and run it with datatrove's local or Slurm executor.

Stages (each a datatrove executor with its own logging dir ``<out>/work/logs/<stage>``, whose
``completions/`` markers make a rerun skip finished tasks):

  extract    N tasks   read -> HTML to text -> language id -> write ``work/extracted``;
                       line counts and exact-dedup signatures of what was written
  prepare    1 task    exact duplicates found; boilerplate lines chosen; classifiers trained
  filter     N tasks   exact dups dropped -> boilerplate lines removed -> heuristics -> harmful
                       -> write ``work/filtered``; MinHash signatures
  buckets    B tasks   MinHash LSH buckets (one task per band)
  cluster    1 task    union-find over the candidate pairs; with ``quality.keep.keep_fraction``,
                       the quality threshold keeping that share of the filtered documents
  final      N tasks   near dups dropped -> quality score and keep rule -> write ``work/final``
  mixture    1 task    weights and repeats -> tokenizer -> token shards in ``<out>/shards``
  report     1 task    ``<out>/report/`` (JSON, Markdown, PNG plots; W&B when configured)

Every stage reads files named by its task rank, so the document order that the dedup indices
refer to is the same on every executor. ``executor.kind`` = ``local`` (N worker processes) or
``slurm`` (one array job per stage, chained with ``afterok`` dependencies): the stages and
their outputs are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.hashing import HashConfig

from llm.data.shards import atomic_write_json
from llm.pipeline.dedup import BoilerplateFinder, BoilerplateRemover, LineCounter, MinhashSignature, normalized_content
from llm.pipeline.extract import HtmlExtractor
from llm.pipeline.harmful import HarmfulFilter
from llm.pipeline.heuristics import HeuristicFilter
from llm.pipeline.langid import LanguageRouter
from llm.pipeline.layout import STAGES
from llm.pipeline.layout import paths as _paths
from llm.pipeline.mixture import MixtureWriter
from llm.pipeline.quality import QualityFilter, QualityThreshold
from llm.pipeline.readers import make_reader
from llm.pipeline.report import ReportWriter
from llm.pipeline.writers import AtomicJsonlWriter


class RankFileReader(JsonlReader):
    """Reads exactly ``<rank:05d>.jsonl.gz`` of the previous stage (none: no documents), so the
    document indices of the dedup signatures line up whatever the number of tasks."""

    name = "reader"

    def __init__(self, data_folder):
        super().__init__(data_folder, glob_pattern="*.jsonl.gz", compression="gzip")

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(name):
            for doc in self.read_files_shard([name]):
                self.update_doc_stats(doc)
                yield doc


class _NamedDrops:
    """A datatrove dedup filter that counts its drops under a reason too (``dropped_<reason>``,
    as our filters do), so the report's ``removed_by_reason`` has them."""

    reason = "dropped"

    def stat_update(self, *labels, value: int = 1, unit: str | None = None):
        super().stat_update(*labels, value=value, unit=unit)
        if "dropped" in labels:
            super().stat_update(f"dropped_{self.reason}", value=value, unit=unit)


class ExactDedupDrop(_NamedDrops, ExactDedupFilter):
    name = "exact_dedup"
    reason = "duplicate"


class NearDedupDrop(_NamedDrops, MinhashDedupFilter):
    name = "near_dedup"
    reason = "near_duplicate"


class Drain:
    """Consume an upstream generator (so chained one-task steps all run), yield nothing."""

    def __init__(self, step):
        self.step = step

    @property
    def stats(self):
        """The wrapped step's stats: datatrove's PipelineStats collects them, so the report has a row
        for every one-task step too."""
        return self.step.stats

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        if data is not None:
            for _ in data:
                pass
        timer = self.step.track_time("task") if hasattr(self.step, "track_time") else contextlib.nullcontext()
        with timer:
            out = self.step.run(None, rank, world_size)
            if out is not None:
                for _ in out:
                    pass
        return iter(())


def _minhash_config(cfg: dict) -> MinhashConfig:
    m = cfg["dedup"]["near"]
    return MinhashConfig(
        n_grams=m["n_grams"],
        num_buckets=m["num_buckets"],
        hashes_per_bucket=m["hashes_per_bucket"],
        seed=m.get("seed", 1),
        hash_config=HashConfig(precision=64),
    )


def _exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=normalized_content, hash_config=HashConfig(precision=64))


def _excluded(p, block: str):
    return AtomicJsonlWriter(str(p["removed"] / block))


def build_stages(cfg: dict) -> dict[str, tuple[list, int]]:
    """stage name -> (pipeline, number of tasks)."""
    p = _paths(cfg)
    n = int(cfg["executor"]["tasks"])
    readers = [make_reader(inp) for inp in cfg["inputs"]]
    ex, lid = cfg["extract"], cfg["langid"]
    extract = readers + [
        HtmlExtractor(engine=ex["engine"], timeout=ex["timeout"]),
        LanguageRouter(
            languages=lid["languages"],
            min_score=lid["min_score"],
            keep_other=lid["keep_other"],
            aliases=lid.get("aliases"),
            sources=lid.get("sources"),
            exclusion_writer=_excluded(p, "langid"),
        ),
        AtomicJsonlWriter(str(p["extracted"])),
        LineCounter(str(p["line_counts"]), min_chars=cfg["dedup"]["boilerplate"]["min_chars"]),
        ExactDedupSignature(str(p["exact_sigs"]), config=_exact_config()),
    ]
    from llm.pipeline.train_classifiers import ClassifierTrainer

    bp = cfg["dedup"]["boilerplate"]
    prepare = [
        Drain(ExactFindDedups(str(p["exact_sigs"]), str(p["exact_dups"]), config=_exact_config(), save_cluster_size=True)),
        Drain(BoilerplateFinder(str(p["line_counts"]), str(p["boilerplate"]), min_docs=bp["min_docs"], min_fraction=bp["min_fraction"])),
        Drain(ClassifierTrainer(cfg, str(p["extracted"]), str(p["models"]))),
    ]
    h, hf = cfg["heuristics"], cfg["harmful"]
    harmful_models = {lang: str(p["models"] / f"harmful_{lang}.bin") for lang in hf.get("classifier_languages", [])}
    filt = [
        RankFileReader(str(p["extracted"])),
        ExactDedupDrop(str(p["exact_dups"]), config=_exact_config(), exclusion_writer=_excluded(p, "exact_dedup")),
        BoilerplateRemover(str(p["boilerplate"]), min_chars=bp["min_chars"]),
        HeuristicFilter(
            default=h.get("default"), languages=h.get("languages"), sources=h.get("sources"), exclusion_writer=_excluded(p, "heuristics")
        ),
        HarmfulFilter(
            blocklists=hf.get("blocklists"),
            min_hits=hf["min_hits"],
            min_hit_ratio=hf["min_hit_ratio"],
            url_domains=hf.get("url_domains"),
            classifier=harmful_models,
            threshold=hf["threshold"],
            skip_sources=hf.get("skip_sources") or (),
            exclusion_writer=_excluded(p, "harmful"),
        ),
        AtomicJsonlWriter(str(p["filtered"])),
        MinhashSignature(str(p["minhash"] / "sigs"), config=_minhash_config(cfg), cjk_n_grams=cfg["dedup"]["near"]["cjk_n_grams"]),
    ]
    mh = _minhash_config(cfg)
    buckets = [MinhashDedupBuckets(str(p["minhash"] / "sigs"), str(p["minhash"] / "buckets"), config=mh)]
    cluster = [
        MinhashDedupCluster(
            str(p["minhash"] / "buckets"), str(p["minhash"] / "clusters"), config=mh, save_cluster_id=True, save_cluster_size=True
        )
    ]
    q = cfg["quality"]
    keep_fraction = q["keep"].get("keep_fraction") if q.get("enabled", True) else None
    if keep_fraction is not None:
        cluster.append(
            Drain(
                QualityThreshold(
                    str(p["filtered"]),
                    str(p["models"] / "quality.bin"),
                    str(p["models"] / "quality_threshold.json"),
                    keep_fraction,
                    q.get("sources"),
                )
            )
        )
    final = [
        RankFileReader(str(p["filtered"])),
        NearDedupDrop(
            str(p["minhash"] / "clusters"), exclusion_writer=_excluded(p, "near_dedup"), load_cluster_ids=True, load_cluster_sizes=True
        ),
    ]
    if q.get("enabled", True):
        final.append(
            QualityFilter(
                str(p["models"] / "quality.bin"),
                rule=q["keep"]["rule"],
                threshold=q["keep"]["threshold"],
                alpha=q["keep"]["alpha"],
                sources=q.get("sources"),
                seed=cfg.get("seed", 0),
                threshold_file=str(p["models"] / "quality_threshold.json") if keep_fraction is not None else None,
                exclusion_writer=_excluded(p, "quality"),
            )
        )
    final.append(AtomicJsonlWriter(str(p["final"])))
    mx = cfg["mixture"]
    mixture = [
        Drain(
            MixtureWriter(
                str(p["final"]),
                str(p["out"]),
                sources=mx.get("sources"),
                total_chars=mx.get("total_chars"),
                tokenizer=mx.get("tokenizer"),
                vocab_size=mx["vocab_size"],
                shard_max_tokens=mx["shard_max_tokens"],
                val_fraction=mx["val_fraction"],
                seed=cfg.get("seed", 0),
                shuffle_buffer_mb=mx["shuffle_buffer_mb"],
                tokenizer_sample_chars=mx["tokenizer_sample_chars"],
                work_dir=str(p["work"] / "mixture"),
            )
        )
    ]
    report = [Drain(ReportWriter(cfg, str(p["out"])))]
    return {
        "extract": (extract, n),
        "prepare": (prepare, 1),
        "filter": (filt, n),
        "buckets": (buckets, mh.num_buckets),
        "cluster": (cluster, 1),
        "final": (final, n),
        "mixture": (mixture, 1),
        "report": (report, 1),
    }


def config_fingerprint(cfg: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k not in ("executor", "report")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_work_dir(cfg: dict, restart: bool = False) -> None:
    """A rerun resumes only a run of the same config: anything else would mix two runs' files."""
    import shutil

    p = _paths(cfg)
    stamp = p["work"] / "config.json"
    fp = config_fingerprint(cfg)
    if restart and p["work"].exists():
        shutil.rmtree(p["work"])
    if stamp.exists():
        old = json.loads(stamp.read_text()).get("fingerprint")
        if old != fp:
            raise SystemExit(
                f"{p['work']} holds a run of a different config (fingerprint {old}, now {fp}); "
                "use another `out` or pass --restart to discard it"
            )
        return
    p["work"].mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"fingerprint": fp, "config": cfg})


def make_executors(cfg: dict, stages: dict, only: list[str] | None = None) -> list:
    p = _paths(cfg)
    e = cfg["executor"]
    names = [s for s in STAGES if only is None or s in only]
    executors, prev = [], None
    for name in names:
        pipeline, tasks = stages[name]
        logs = str(p["logs"] / name)
        if e["kind"] == "local":
            from datatrove.executor import LocalPipelineExecutor

            ex = LocalPipelineExecutor(
                pipeline,
                tasks=tasks,
                workers=min(tasks, int(e["workers"])),
                logging_dir=logs,
                depends=prev,
                start_method=e.get("start_method", "fork"),
            )
        elif e["kind"] == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            gb = float(e["mem_per_cpu_gb"])  # sbatch takes whole units only: 2.0G is refused, 1.5G -> 1536M
            sbatch_args = {**({} if gb.is_integer() else {"mem-per-cpu": f"{int(gb * 1024)}M"}), **dict(e.get("sbatch_args") or {})}
            ex = SlurmPipelineExecutor(
                pipeline,
                tasks=tasks,
                workers=int(e.get("workers", -1)),
                logging_dir=logs,
                depends=prev,
                job_name=f"{cfg['name']}-{name}",
                partition=e["partition"],
                time=e["time"],
                cpus_per_task=int(e["cpus_per_task"]),
                mem_per_cpu_gb=int(gb) if gb.is_integer() else gb,
                sbatch_args=sbatch_args,
                venv_path=e.get("venv_path"),
                max_array_size=int(e.get("max_array_size", 1001)),
                env_command=e.get("env_command"),
                skip_completed=True,
                srun_args=dict(e.get("srun_args") or {}) or None,
            )
        else:
            raise ValueError(f"executor.kind must be 'local' or 'slurm', got {e['kind']!r}")
        executors.append((name, ex))
        prev = ex
    return executors


def incomplete(cfg: dict, stage: str, tasks: int) -> int:
    done = _paths(cfg)["logs"] / stage / "completions"
    return sum(1 for r in range(tasks) if not (done / f"{r:05d}").exists())


def run_pipeline(cfg: dict, *, restart: bool = False, only: list[str] | None = None) -> dict:
    """Run every stage (skipping finished tasks); returns the report dict (local) or, for Slurm
    with ``executor.wait``, after the last array job has finished."""
    check_work_dir(cfg, restart)
    stages = build_stages(cfg)
    executors = make_executors(cfg, stages, only)
    if cfg["executor"]["kind"] == "local":
        for _, ex in executors:
            ex.run()  # each runs its dependency chain first; finished ones return at once
    else:
        executors[-1][1].run()  # submits the whole chain with afterok dependencies
        if cfg["executor"].get("wait", True):
            _wait_slurm(cfg, stages, [n for n, _ in executors])
    report = _paths(cfg)["report"] / "report.json"
    return json.loads(report.read_text()) if report.exists() else {}


def _wait_slurm(cfg: dict, stages: dict, names: list[str], poll: float = 5.0) -> None:
    import subprocess

    last = names[-1]
    deadline = time.time() + float(cfg["executor"].get("wait_timeout", 24 * 3600))
    while incomplete(cfg, last, stages[last][1]):
        q = subprocess.run(
            ["squeue", "-h", "-n", ",".join(f"{cfg['name']}-{n}" for n in names), "-o", "%i %T %r"], capture_output=True, text=True
        )
        if q.returncode == 0 and not q.stdout.strip() and incomplete(cfg, last, stages[last][1]):
            time.sleep(poll)  # the last completion marker may land just after the job leaves the queue
            if incomplete(cfg, last, stages[last][1]):
                missing = {n: incomplete(cfg, n, stages[n][1]) for n in names}
                raise RuntimeError(
                    f"Slurm jobs finished but tasks are incomplete: {missing}; see "
                    f"{_paths(cfg)['logs']}/<stage>/slurm_logs and rerun to resume"
                )
        if time.time() > deadline:
            raise TimeoutError("executor.wait_timeout passed before the pipeline finished")
        time.sleep(poll)
