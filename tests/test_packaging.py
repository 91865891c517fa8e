"""The project declares what it imports: a fresh virtual environment built from pyproject.toml
(and launch/setup.sh) alone holds every module the code and the tests use.

CI runs in such an environment (``.ci/run``); these tests say *which* declaration is missing,
instead of an ImportError deep inside a pipeline run."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import os
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: imported, deliberately not declared: module -> why
NOT_DECLARED = {
    # installed at run time by llm/bench/litgpt.py into its own cache directory (pip --target),
    # so that litgpt's pins never touch the project's environment
    "litgpt": "installed into a cache by the litgpt benchmark",
    # the optional `vllm` extra: GPU machines only (its own CUDA torch), never installed by launch/setup.sh;
    # llm/rl/engines.py imports it only when stage.rollout.engine=vllm, refused at start without it
    "vllm": "the optional vllm extra, not installed here",
    # optional: the pipeline's readers decompress .zst inputs when it is installed, and say so when
    # it is not (llm/pipeline/readers.py decompressed); not installed in the project's environment
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> tuple[str, list[str]]:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
    assert m, f"pyproject.toml: cannot read requirement {req!r}"
    return _norm(m[1]), [e.strip() for e in (m[2] or "").split(",") if e.strip()]


def declared_distributions() -> set[str]:
    """Every distribution pyproject.toml declares (dependencies and all extras), plus what the
    extras it names of other packages bring (``datatrove[processing]`` declares fasttext), plus
    the packages launch/setup.sh installs by name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for rs in project["optional-dependencies"].values() for r in rs]
    out: set[str] = set()
    for r in reqs:
        name, extras = _req_name(r)
        out.add(name)
        if extras:
            for sub in md.requires(name) or []:
                marker = sub.split(";", 1)[1] if ";" in sub else ""
                if any(re.search(rf"extra\s*==\s*['\"]{re.escape(e)}['\"]", marker) for e in extras):
                    out.add(_req_name(sub)[0])
    setup = (ROOT / "launch" / "setup.sh").read_text()
    out |= {_norm(n) for n in re.findall(r'--no-deps "?([A-Za-z0-9._-]+)==', setup)}
    return out


def imported_modules(*dirs: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere under ``dirs`` -> the files importing them."""
    local = {p.stem for d in dirs for p in (ROOT / d).rglob("*.py")} | {"llm", "tests", "__future__"}
    found: dict[str, set[str]] = {}
    for d in dirs:
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    declared = declared_distributions()
    dists = md.packages_distributions()
    missing = []
    for mod, files in sorted(imported_modules("llm", "tests").items()):
        if mod in NOT_DECLARED:
            continue
        owners = {_norm(d) for d in dists.get(mod, [])}
        if not owners:
            missing.append(f"{mod} (imported by {', '.join(sorted(files))}) is not installed")
        elif not owners & declared:
            missing.append(
                f"{mod} (imported by {', '.join(sorted(files))}) comes from {'/'.join(sorted(owners))}, "
                "which pyproject.toml does not declare"
            )
    assert not missing, "undeclared imports:\n  " + "\n  ".join(missing)


def test_pipeline_blocks_runtime_dependencies_are_declared():
    """datatrove checks a block's ``_requires_dependencies`` only when the block is built, mid-run
    (orjson for the JSONL writers came only with ``datatrove[io]``, which nothing declared)."""
    pytest.importorskip("datatrove")
    from datatrove.pipeline.base import PipelineStep

    import llm.pipeline

    declared = declared_distributions()
    missing = []
    for info in pkgutil.iter_modules(llm.pipeline.__path__, "llm.pipeline."):
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            if not (isinstance(obj, type) and issubclass(obj, PipelineStep)):
                continue
            for klass in obj.mro():
                for dep in getattr(klass, "_requires_dependencies", []) or []:
                    pip_name = dep[1] if isinstance(dep, tuple) else dep
                    if _norm(pip_name) not in declared:
                        missing.append(f"{obj.__module__}.{obj.__name__} needs {pip_name}")
    assert not missing, "pipeline blocks need undeclared packages:\n  " + "\n  ".join(sorted(set(missing)))


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="checks the environment .ci/run builds (CI=true)")
def test_ci_runs_in_a_fresh_virtual_environment():
    """Packages installed by hand into the machine's Python must not be visible to CI."""
    assert sys.prefix != sys.base_prefix, f"CI runs in the machine's own Python ({sys.prefix}), not a virtual environment"
    cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert re.search(r"include-system-site-packages\s*=\s*false", cfg), f"{sys.prefix}/pyvenv.cfg sees the system site-packages"
