"""Every fenced ```python block in README.md and docs/*.md runs, so a page cannot drift from the code.

How a page's blocks run:

* The blocks of one page run in order, in one namespace, so a later block may use names an
  earlier block made. Each page runs in its own Python process (a page may register a rule or
  a model, and registries refuse a name twice), in a fresh temporary working directory, with
  one intra-op thread.
* Budgets are tiny as written: a snippet takes a few iterations, a handful of episodes and
  small models, and says in a comment what a real run would use (``fixed(20)  # 600 for a
  published figure``). A page's blocks together should finish in a few seconds.
* Data: the embedded ``Glyphs`` set, ``Sinusoid``, or generated tensors. A snippet may write
  ``Omniglot("path/to/omniglot", ...)``: the working directory holds a small generated
  Omniglot in the official layout (zips and Vinyals split files) at ``path/to/omniglot``.
* The real Omniglot is ``../shared/data/omniglot`` from the working directory (a link to the
  repository's neighbour ``shared/data/omniglot``). A block that reads it carries, on the line
  right before its fence::

      <!-- snippet: needs omniglot -->

  and runs only where that folder exists; where it is absent, that block and the page's later
  blocks (which may build on it) are skipped. A block that names ``../shared/data/omniglot``
  without the marker is an error.
* A block that starts a process group (``dist.init_process_group(...)``, as under ``torchrun``)
  carries ``<!-- snippet: torchrun -->`` on the line before its fence: its page then runs as the
  one process of a one-process ``torchrun`` launch (``RANK=0``, ``WORLD_SIZE=1``, a free
  ``MASTER_PORT`` in the environment).
* The rare block that cannot run here (it needs a GPU, a server, a peer library
  that is not installed, or a data set we cannot generate) says so, with the reason, on the
  line right before its fence::

      <!-- snippet: skip (needs a CUDA device) -->

  A skip without a reason, or any other ``<!-- snippet: ... -->`` text, is an error.
* Only blocks fenced exactly as ```python run; write other languages as ```bash, ```toml,
  ```text.

A failing block is reported with its page and the page's line numbers in the traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import OMNIGLOT, REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REAL_OMNIGLOT_PATH = "../shared/data/omniglot"
GENERATED_OMNIGLOT_PATH = "path/to/omniglot"
PAGE_TIMEOUT_S = 300

_FENCE_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^skip\s*\((?P<reason>.*)\)$")


@dataclass(frozen=True)
class Snippet:
    page: str  # relative to the repository root
    line: int  # 1-based line of the block's first code line
    source: str
    skip_reason: str | None = None
    needs_omniglot: bool = False
    torchrun: bool = False


_DIRECTIVES = "<!-- snippet: skip (reason) -->, <!-- snippet: needs omniglot --> or <!-- snippet: torchrun -->"
_FLAGS = {"needs omniglot": "needs_omniglot", "torchrun": "torchrun"}


def _directive(line: str, where: str) -> dict:
    """The :class:`Snippet` fields the line before a fence sets; a bad directive raises."""
    match = _DIRECTIVE.match(line)
    if match is None:
        if "snippet:" in line and "<!--" in line:
            raise ValueError(f"{where}: malformed snippet directive {line.strip()!r}; write {_DIRECTIVES}")
        return {}
    body = match["body"].strip()
    if body in _FLAGS:
        return {_FLAGS[body]: True}
    skip = _SKIP.match(body)
    if skip is not None:
        reason = skip["reason"].strip()
        if not reason:
            raise ValueError(f"{where}: <!-- snippet: skip () --> needs a reason inside the parentheses")
        return {"skip_reason": reason}
    raise ValueError(f"{where}: unknown snippet directive {body!r}; write {_DIRECTIVES}")


def extract(text: str, page: str) -> list[Snippet]:
    """The ```python blocks of a Markdown text, in order, with their directives."""
    lines = text.splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        opened = _FENCE_OPEN.match(lines[i])
        if opened is None:
            i += 1
            continue
        fence, indent = opened["fence"], len(opened["indent"])
        language = opened["info"].strip().split()[0] if opened["info"].strip() else ""
        start = i + 1
        end = start
        while end < len(lines) and not (
            lines[end].strip().startswith(fence[0] * len(fence)) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{i + 1}: a code fence is never closed")
        if language == "python":
            previous = lines[i - 1] if i > 0 else ""
            fields = _directive(previous, f"{page}:{i}")
            body = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[start:end])
            if REAL_OMNIGLOT_PATH in body and not (fields.get("needs_omniglot") or "skip_reason" in fields):
                raise ValueError(f"{page}:{start + 1}: this block reads {REAL_OMNIGLOT_PATH}; "
                                 f"put <!-- snippet: needs omniglot --> on the line before its fence")
            snippets.append(Snippet(page, start + 1, body + "\n", **fields))
        else:
            # the directive belongs to ```python blocks only; elsewhere it would silently do nothing
            previous = lines[i - 1] if i > 0 else ""
            if _DIRECTIVE.match(previous):
                raise ValueError(f"{page}:{i}: a snippet directive stands before a ```{language} block; "
                                 f"only ```python blocks run")
        i = end + 1
    return snippets


# The child process: runs one page's blocks in one namespace; the traceback names the page and
# its line numbers (the page's text is put in linecache so the failing line is shown too).
_RUNNER = textwrap.dedent(
    """
    import json, linecache, sys
    import torch
    torch.set_num_threads(1)
    plan = json.load(sys.stdin)
    linecache.cache[plan["page"]] = (len(plan["text"]), None, plan["text"].splitlines(True), plan["page"])
    namespace = {"__name__": "__main__"}
    for block in plan["blocks"]:
        code = compile("\\n" * (block["line"] - 1) + block["source"], plan["page"], "exec")
        exec(code, namespace)
        print(f"ran {plan['page']}:{block['line']}", flush=True)
    """
)


def _prepare_directory(root: Path, text: str) -> Path:
    """The fresh working directory of one page, with what its snippets may read."""
    work = root / "repo"
    work.mkdir(parents=True)
    if GENERATED_OMNIGLOT_PATH in text:
        from omniglot_fixtures import make_omniglot

        make_omniglot(work / GENERATED_OMNIGLOT_PATH)
    if OMNIGLOT.is_dir():
        shared = root / "shared" / "data"
        shared.mkdir(parents=True)
        (shared / "omniglot").symlink_to(OMNIGLOT, target_is_directory=True)
    return work


def _one_process_torchrun() -> dict[str, str]:
    """What ``torchrun --nproc-per-node 1`` puts in its process's environment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _real_omniglot_present() -> bool:
    return (OMNIGLOT / "images_background.zip").is_file()


def run_page(page: Path, tmp_path: Path, repo: Path = REPO) -> tuple[list[Snippet], list[str]]:
    """Run a page's runnable blocks; return them and the notes on what was skipped."""
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(repo).as_posix()
    snippets = extract(text, name)
    runnable, notes = [], []
    for snippet in snippets:
        if snippet.skip_reason is not None:
            notes.append(f"{name}:{snippet.line} skipped: {snippet.skip_reason}")
        elif snippet.needs_omniglot and not _real_omniglot_present():
            notes.append(f"{name}:{snippet.line} and later blocks skipped: {OMNIGLOT.name} data is absent")
            break
        else:
            runnable.append(snippet)
    if not runnable:
        return runnable, notes
    work = _prepare_directory(tmp_path, text)
    plan = {"page": name, "text": text, "blocks": [{"line": s.line, "source": s.source} for s in runnable]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    if any(s.torchrun for s in runnable):
        env.update(_one_process_torchrun())
    try:
        done = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(plan), cwd=work, env=env,
                              capture_output=True, text=True, timeout=PAGE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the python snippets of {name} ran past {PAGE_TIMEOUT_S} s; snippets must be tiny as "
                    f"written (last block started: {str(err.stdout or '').strip().splitlines()[-1:]})",
                    pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"a python snippet of {name} failed (exit {done.returncode}):\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}", pytrace=False)
    return runnable, notes


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_snippets_run(page: Path, tmp_path: Path):
    runnable, notes = run_page(page, tmp_path)
    for note in notes:
        print(note)  # shown with -rA or on failure: what did not run here
    if not runnable:
        pytest.skip("; ".join(notes) or "no ```python blocks")


def test_every_page_is_found():
    assert (REPO / "README.md") in PAGES and len(PAGES) > 1
    assert sum(p.read_text(encoding="utf-8").count("```python") for p in PAGES) > 0


# ------------------------------------------------------------------ the conventions themselves


def test_extract_reads_blocks_directives_and_lines():
    text = textwrap.dedent(
        """\
        # Page
        ```python
        x = 1
        ```
        text
        <!-- snippet: skip (needs a CUDA device) -->
        ```python
        torch.zeros(1, device="cuda")
        ```
        ```bash
        echo not python
        ```
        <!-- snippet: needs omniglot -->
        ```python
        Omniglot("../shared/data/omniglot", "train")
        ```
        <!-- snippet: torchrun -->
        ```python
        dist.init_process_group("gloo")
        ```
        """
    )
    first, skipped, real, distributed = extract(text, "page.md")
    assert distributed.torchrun and not first.torchrun
    assert (first.line, first.source, first.skip_reason, first.needs_omniglot) == (3, "x = 1\n", None, False)
    assert (skipped.line, skipped.skip_reason) == (8, "needs a CUDA device")
    assert (real.line, real.needs_omniglot, real.skip_reason) == (15, True, None)


@pytest.mark.parametrize(
    "directive, message",
    [
        ("<!-- snippet: skip () -->", "needs a reason"),
        ("<!-- snippet: skip -->", "unknown snippet directive"),
        ("<!-- snippet: needs imagenet -->", "unknown snippet directive"),
        ("<!-- snippet skip (x) -->", None),  # not a directive at all: no colon
    ],
)
def test_bad_directives_are_errors(directive, message):
    text = f"{directive}\n```python\nx = 1\n```\n"
    if message is None:
        assert extract(text, "page.md")[0].skip_reason is None
    else:
        with pytest.raises(ValueError, match=message):
            extract(text, "page.md")


def test_real_data_path_needs_the_marker_and_directives_need_python():
    with pytest.raises(ValueError, match="needs omniglot"):
        extract(f'```python\nOmniglot("{REAL_OMNIGLOT_PATH}")\n```\n', "page.md")
    with pytest.raises(ValueError, match="only ```python blocks run"):
        extract("<!-- snippet: skip (x) -->\n```bash\nls\n```\n", "page.md")
    with pytest.raises(ValueError, match="never closed"):
        extract("```python\nx = 1\n", "page.md")


def test_a_failing_block_names_its_page_line(tmp_path: Path):
    page = tmp_path / "docs" / "broken.md"
    page.parent.mkdir()
    page.write_text("intro\n\n```python\nvalue = 1\n```\n\n```python\nassert value == 2, 'drifted'\n```\n")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_page(page, tmp_path / "run", repo=tmp_path)
    assert 'File "docs/broken.md", line 8' in str(failure.value) and "drifted" in str(failure.value)


def test_without_real_data_a_marked_block_and_the_rest_of_its_page_are_skipped(tmp_path: Path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("<!-- snippet: needs omniglot -->\n```python\nraise SystemExit(3)\n```\n\n"
                    "```python\nraise SystemExit(4)\n```\n")
    import test_docs_snippets as module

    monkeypatch.setattr(module, "_real_omniglot_present", lambda: False)
    runnable, notes = module.run_page(page, tmp_path / "run", repo=tmp_path)
    assert runnable == [] and notes == ["page.md:3 and later blocks skipped: omniglot data is absent"]
