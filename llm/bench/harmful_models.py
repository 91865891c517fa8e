"""``python -m llm.bench.harmful_models``: the harmful-content classifiers' size on disk and
held-out accuracy: fastText's default 2M n-gram buckets (``dim`` 16: 128 MB), 50,000 buckets
(``harmful.buckets``, the pipeline's default) and that model quantised (``harmful.quantize``:
``quantize`` with ``qnorm`` and ``retrain``).

The training texts are the pipeline's (``llm.pipeline.train_classifiers.harmful_examples``):
the seed's labelled examples and benign paragraphs of real text, English from Python's
documentation sources (python3.11-doc, reST markup stripped), Chinese from fortunes-zh; 20% of
the distinct texts (by a hash) are held out and scored by both models. Prints one JSON line per
language and a Markdown table."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ENGLISH = "/usr/share/doc/python3.11/html/_sources"
CHINESE = "/usr/share/games/fortunes"


def _records(lang: str, root: str) -> list[dict]:
    from llm.pipeline.train_classifiers import strip_rst

    if lang == "en":
        files = sorted(Path(root).rglob("*.rst.txt"))
        return [{"text": strip_rst(f.read_text(encoding="utf-8")), "metadata": {"language": "en"}} for f in files]
    out = []
    for name in ("chinese", "tang300", "song100"):
        f = Path(root) / name
        if f.is_file():
            for rec in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
                out.append({"text": rec.strip().replace("\n", "\n\n"), "metadata": {"language": "zh"}})
    return out


def measure(lang: str, root: str, holdout: float = 0.2, seed: int = 0, buckets: int = 50000) -> dict:
    """Held-out figures of three models trained on the same texts: fastText's default 2M buckets,
    ``buckets`` buckets (the pipeline's default), and that one quantised."""
    from llm.pipeline.classify import train_fasttext
    from llm.pipeline.train_classifiers import harmful_examples

    pos, neg = harmful_examples(lang, _records(lang, root), {})
    kw = dict(holdout=holdout, seed=seed, epoch=50, word_ngrams=2, dim=16)
    with tempfile.TemporaryDirectory() as d:
        full = train_fasttext(pos, neg, Path(d) / "full.bin", **kw)
        small = train_fasttext(pos, neg, Path(d) / "small.bin", buckets=buckets, quantize=True, **kw)

    def figures(f: dict, key: str = "") -> dict:
        return {
            "bytes": f["model_bytes"],
            **{k: f[k] for k in ("heldout_auc", "heldout_accuracy", "heldout_recall", "heldout_false_positive_rate")},
        }

    return {
        "language": lang,
        "heldout_harmful": full["heldout_positive"],
        "heldout_benign": full["heldout_negative"],
        "models": {
            "2M buckets": figures(full),
            f"{buckets} buckets": small["unquantized"],
            f"{buckets} buckets, quantised": figures(small),
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.bench.harmful_models", description=__doc__)
    ap.add_argument("--en", default=ENGLISH, help="directory of *.rst.txt files (benign English)")
    ap.add_argument("--zh", default=CHINESE, help="directory holding fortunes-zh's chinese, tang300, song100")
    args = ap.parse_args(argv)
    rows = []
    for lang, root in (("en", args.en), ("zh", args.zh)):
        if not Path(root).is_dir():
            print(f"{lang}: {root} not found, skipped")
            continue
        r = measure(lang, root)
        print(json.dumps(r))
        rows.append(r)
    print(
        "\n| language | held-out harmful / benign | model | size | AUC | accuracy | harmful caught | benign flagged |\n"
        "|---|---|---|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        for kind, m in r["models"].items():
            print(
                f"| {r['language']} | {r['heldout_harmful']} / {r['heldout_benign']} | {kind} | {m['bytes'] / 1e6:.2f} MB | "
                f"{m['heldout_auc']:.4f} | {m['heldout_accuracy']:.4f} | {m['heldout_recall']:.2f} | {m['heldout_false_positive_rate']:.4f} |"
            )


if __name__ == "__main__":
    main()
