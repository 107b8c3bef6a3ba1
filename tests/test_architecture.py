"""The seams hold: front ends reach the engine only through the service; the engine never imports
Textual; the dashboard uses no private Textual attribute; help comes from the bindings; nothing
names a path outside the repository; the install declares every package folder; no module imports
itself through others (no import cycle, function-level imports included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FRONT_END_MAY_IMPORT = {"kbingest.pipeline.service", "kbingest.pipeline.models", "kbingest.pipeline.status"}


def _imports(py: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(py.read_text(), filename=str(py))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


def _py_files(*folders: str) -> list[Path]:
    files = [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]
    assert files, "no source found: the scan is broken"
    return files


def test_front_ends_import_only_the_service_models_and_status():
    bad = []
    for py in _py_files("app", "widgets"):
        for line, mod in _imports(py):
            if mod.startswith(("kbingest.pipeline", "pipeline")) and mod not in FRONT_END_MAY_IMPORT:
                bad.append(f"{py.relative_to(REPO)}:{line}: {mod}")
    assert not bad, "front ends must call pipeline/service.py:\n" + "\n".join(bad)


def _module_graph() -> dict[str, set[str]]:
    """Every module of app/, pipeline/, widgets/ and bench/, and the project modules each imports (at
    module level or inside a function; `from P import x` counts as P.x where that is a module)."""
    tops = {"app": "kbingest.app", "pipeline": "kbingest.pipeline", "widgets": "kbingest.widgets", "bench": "bench"}
    files = {}
    for top, pkg in tops.items():
        for py in _py_files(top):
            parts = list(py.relative_to(REPO / top).with_suffix("").parts)
            files[".".join([pkg, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = py

    def project_module(name: str) -> str | None:
        name = "kbingest." + name if name.startswith(("pipeline.", "app.")) else name
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, py in files.items():
        package = mod if py.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(py.read_text(), filename=str(py))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {t for t in map(project_module, names) if t and t != mod}
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = _module_graph()
    assert "kbingest.pipeline.models" in graph and "bench.suite" in graph, "the scan is broken"
    assert "kbingest.pipeline.service" in graph["kbingest.app.cli"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n  " + "\n  ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) for c in cycles
    )


def test_every_setting_a_user_may_set_has_its_cli_option():
    from kbingest.app.cli import OPTION_OF_FIELD
    from kbingest.pipeline.models import JobConfig

    assert set(OPTION_OF_FIELD) == set(JobConfig.USER_SETTABLE)
    assert set(JobConfig.USER_SETTABLE) <= set(JobConfig.model_fields)


def test_engine_sources_never_import_textual():
    bad = [
        f"{py.relative_to(REPO)}:{line}"
        for py in _py_files("pipeline")
        for line, mod in _imports(py)
        if mod.split(".")[0] in ("textual", "rich")
    ]
    assert not bad, bad


def test_importing_the_engine_and_service_loads_no_textual():
    code = (
        "import sys; import kbingest.pipeline.service, kbingest.pipeline.job.engine, kbingest.pipeline.executors.threads;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO / "tests"), timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_dashboard_reaches_into_no_private_textual_attribute():
    private = {"_closing", "_closed", "_cells", "_nodes", "_running", "_exit"}
    bad = []
    for py in _py_files("app", "widgets"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                bad.append(f"{py.relative_to(REPO)}:{node.lineno}: .{node.attr}")
    assert not bad, bad


def test_help_screen_is_built_from_the_bindings():
    from kbingest.app.dashboard import HELP_KEYS, KbIngestApp
    from kbingest.app.screens import KEY_NAMES, help_from_bindings

    assert HELP_KEYS == help_from_bindings(KbIngestApp.BINDINGS)
    keys_in_help = {k.strip() for keys, _ in HELP_KEYS for k in keys.split(",")}
    for b in KbIngestApp.BINDINGS:
        assert KEY_NAMES.get(b.key, b.key) in keys_in_help, f"{b.key} is missing from the help"
    texts = dict(HELP_KEYS)
    assert texts["p"].startswith("pause the selected job") and texts["q, ctrl+c"].startswith("quit")


def _outside_needles() -> list[str]:
    """What a file that depends on this machine's layout would contain, taken from where this
    checkout lies (so this test names no such path itself): the checkout's own absolute path; and,
    unless the checkout lies directly in the temp folder or the file system's root (where the
    neighbours are anybody's), the folder holding it and relative paths to its neighbours
    (`../<sibling>`, such as a read-only reference folder beside the repository)."""
    import tempfile

    needles = [str(REPO) + os.sep]
    parent = REPO.parent
    if parent not in (Path(tempfile.gettempdir()).resolve(), Path(parent.anchor)):
        needles.append(str(parent) + os.sep)
        needles += [os.pardir + os.sep + p.name for p in parent.iterdir() if p.is_dir() and p != REPO]
    return needles


def test_nothing_names_a_path_outside_the_repository():
    needles = _outside_needles()
    bad = []
    for py in _py_files("app", "pipeline", "widgets", "tests", "bench", "src"):
        text = py.read_text()
        bad += [f"{py.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert not bad, bad


def test_pyproject_declares_every_package_folder():
    """A non-editable install carries only the packages pyproject lists: each folder with an
    __init__.py under app/, pipeline/, widgets/ must be one of them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for top, pkg in (("app", "kbingest.app"), ("pipeline", "kbingest.pipeline"), ("widgets", "kbingest.widgets")):
        assert mapping[pkg] == top
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"


def test_make_types_checks_every_front_end_and_silences_only_the_documented_modules():
    """Issue 28 item 7: mypy runs over pipeline/, app/ and widgets/ (all of them); error codes are
    silenced only where pyproject says why (Ray's stubs)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    types_line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if "$(BIN)/mypy" in ln)
    targets = set(types_line.split("$(BIN)/mypy", 1)[1].split())
    assert {"$(MYPY_TREE)/pipeline", "$(MYPY_TREE)/app", "$(MYPY_TREE)/widgets"} <= targets, types_line
    overrides = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    silenced = {}
    for o in overrides:
        if o.get("disable_error_code"):
            for m in [o["module"]] if isinstance(o["module"], str) else o["module"]:
                silenced[m] = sorted(o["disable_error_code"])
    assert set(silenced) <= {"kbingest.pipeline.executors.ray"}, silenced
    assert silenced.get("kbingest.pipeline.executors.ray", ["arg-type"]) == ["arg-type"]


def test_no_folder_at_the_root_shadows_the_installed_package():
    assert not (REPO / "kbingest").exists(), "a kbingest/ folder at the root shadows an installed kbingest"


@pytest.mark.xdist_group("install")  # both install tests build in the checkout's build/ folder
def test_a_regular_install_runs_from_the_repository_root(tmp_path):
    """`pip install .` (not editable) into a fresh virtual environment; `python -m kbingest` and the
    `kbingest` command then run with the repository root as the current directory, where app/,
    pipeline/ and widgets/ sit (a kbingest/ folder there would shadow the installed package)."""
    import sysconfig

    venv = tmp_path / "venv"
    r = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    py = venv / "bin" / "python"
    # offline: the dependencies and the build backend are this test environment's (a path in a .pth
    # file: its own .pth files, such as the editable install's finder, are not read)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(
        [str(py), "-c", "import kbingest.pipeline.models as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        env=env,
    )
    assert r.returncode == 0 and str(venv) in r.stdout, (r.stdout, r.stderr[-2000:])  # the installed copy
    for cmd in ([str(py), "-m", "kbingest", "--help"], [str(venv / "bin" / "kbingest"), "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(REPO), env=env)
        assert r.returncode == 0 and "usage: kbingest" in r.stdout, r.stderr[-2000:]


@pytest.mark.xdist_group("install")
def test_install_adds_only_the_kbingest_name(tmp_path):
    """`pip install .` puts one top-level import name into site-packages, and `python -m kbingest` runs."""
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    top = sorted(
        p.name
        for p in target.iterdir()
        if not p.name.endswith((".dist-info", ".egg-info")) and p.name not in ("bin", "__pycache__")
    )
    assert top == ["kbingest"], top
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run(
        [sys.executable, "-m", "kbingest", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0 and "kbingest" in r.stdout, r.stderr
    assert (target / "kbingest" / "pipeline" / "model_files" / "all-MiniLM-L6-v2" / "tokenizer.json").exists()
    docs = tmp_path / "docs"  # a job, from outside the checkout: package data and imports resolve installed
    docs.mkdir()
    (docs / "a.md").write_text("# A page\n\nWith a few words to chunk and index.\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbingest",
            "--home",
            str(tmp_path / "h"),
            "ingest",
            str(docs),
            "--kb",
            "k",
            "--batch",
            "--embedder",
            "fake",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
