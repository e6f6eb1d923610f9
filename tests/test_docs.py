"""The documentation matches the code: every hook, public name and local-backend option is documented, the nav and
the docs folder agree, relative links resolve, and (with mkdocs installed) the site builds with ``--strict``."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import gpuflex
from gpuflex import hookspecs
from gpuflex.gpus import CATALOG

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (where ``](`` is code, not a link)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _hookspecs() -> dict[str, object]:
    return {
        name: obj
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and getattr(obj, "gpuflex_spec", None) is not None
    }


def _hook_sections() -> dict[str, str]:
    """``### <name>`` heading -> the text up to the next heading of level 2 or 3, in docs/reference/hooks.md."""
    text = _FENCE.sub("", (DOCS / "reference" / "hooks.md").read_text())
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{2,3}) +(.+?)[ \t]*$", text, flags=re.M)
    for level, title, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        if level == "###":
            assert title not in sections, f"hooks.md has two '### {title}' headings"
            sections[title] = body
    return sections


def _nav_pages() -> list[str]:
    text = MKDOCS_YML.read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M)


# -- (a) hooks ------------------------------------------------------------------------------------------------------


def test_every_hookspec_is_documented():
    missing = sorted(set(_hookspecs()) - set(_hook_sections()))
    assert not missing, f"docs/reference/hooks.md has no '### <name>' heading for {missing}"


def test_every_hook_heading_is_a_real_hook():
    unknown = sorted(set(_hook_sections()) - set(_hookspecs()))
    assert not unknown, f"docs/reference/hooks.md documents hooks that gpuflex/hookspecs.py lacks: {unknown}"


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hook_section_states_firstresult_and_parameters(name):
    body = _hook_sections().get(name)
    if body is None:
        pytest.skip("reported by test_every_hookspec_is_documented")
    firstresult = _hookspecs()[name].gpuflex_spec["firstresult"]  # type: ignore[attr-defined]
    expected = "**firstresult:** yes" if firstresult else "**firstresult:** no"
    assert expected in body, f"the section on {name} must say '{expected}'"
    full = (DOCS / "reference" / "hooks.md").read_text()
    signature = inspect.signature(_hookspecs()[name])  # type: ignore[arg-type]
    assert f"def {name}(" in full, f"hooks.md shows no signature for {name}"
    for param in signature.parameters:
        assert f"{param}:" in full.split(f"### {name}", 1)[1].split("\n### ", 1)[0], (
            f"hooks.md does not show parameter {param!r} of {name}"
        )


# -- (b) public API -------------------------------------------------------------------------------------------------


def test_every_public_name_is_in_the_api_reference():
    text = (DOCS / "reference" / "api.md").read_text()
    missing = [name for name in gpuflex.__all__ if f"`{name}" not in text]
    assert not missing, f"docs/reference/api.md does not mention {missing}"


def test_every_endpoint_parameter_is_in_the_api_reference():
    text = (DOCS / "reference" / "api.md").read_text()
    params = [p for p in inspect.signature(gpuflex.endpoint).parameters if p != "obj"]
    missing = [p for p in params if f"| `{p}` |" not in text]
    assert not missing, f"the parameter table in docs/reference/api.md lacks {missing}"


def test_every_error_is_in_the_errors_reference():
    text = (DOCS / "reference" / "errors.md").read_text()
    missing = [name for name in gpuflex.errors.__all__ if name not in text]
    assert not missing, f"docs/reference/errors.md does not mention {missing}"


# -- (c) nav --------------------------------------------------------------------------------------------------------


def test_every_nav_page_exists():
    pages = _nav_pages()
    assert pages, "found no pages in mkdocs.yml's nav"
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist under docs/: {missing}"
    assert len(pages) == len(set(pages)), "mkdocs.yml's nav lists a page twice"


def test_every_docs_page_is_in_the_nav():
    in_nav = set(_nav_pages())
    orphans = [page.relative_to(DOCS).as_posix() for page in _pages()]
    orphans = [page for page in orphans if page not in in_nav]
    assert not orphans, f"pages under docs/ missing from mkdocs.yml's nav: {orphans}"


# -- (d) links ------------------------------------------------------------------------------------------------------


def _relative_links() -> list[tuple[Path, str]]:
    links = []
    for page in _pages():
        for target in _LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
                continue  # a URL, an anchor on the same page, or a site-absolute path
            links.append((page, target))
    return links


def test_relative_links_resolve():
    assert _relative_links(), "found no relative links at all: the link pattern is broken"
    broken = []
    for page, target in _relative_links():
        path = target.split("#", 1)[0]
        if not (page.parent / path).resolve().exists():
            broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_relative_links_stay_inside_docs():
    outside = []
    for page, target in _relative_links():
        resolved = (page.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(DOCS.resolve()):
            outside.append(f"{page.relative_to(ROOT)}: {target}")
    assert not outside, "links out of docs/ break in the built site; name the file in code instead:\n" + "\n".join(
        outside
    )


# -- (e) local backend options --------------------------------------------------------------------------------------


def test_every_local_option_is_documented():
    pytest.importorskip("gpuflex_local")
    from gpuflex_local._config import LocalConfig

    text = (DOCS / "backends" / "local.md").read_text()
    missing = [field.name for field in attrs.fields(LocalConfig) if f"| `{field.name}` |" not in text]
    assert not missing, f"the options table in docs/backends/local.md lacks {missing}"


# -- GPU names ------------------------------------------------------------------------------------------------------


def test_gpu_catalog_table_matches_the_catalog():
    text = (DOCS / "how-to" / "choose-a-backend.md").read_text()
    for model in CATALOG.values():
        modal = f"`{model.modal_name}`" if model.modal_name else "—"
        row = f"| `{model.name}` | {model.family} | {model.memory_gb} |"
        assert row in text, f"docs/how-to/choose-a-backend.md has no catalog row starting {row!r}"
        line = next(line for line in text.splitlines() if line.startswith(row))
        for fact in (f"`{model.runpod_pool}`", model.runpod_id, modal, *(f"`{a}`" for a in model.aliases)):
            assert fact in line, f"the catalog row of {model.name} lacks {fact!r}"


# -- the site builds ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(MKDOCS_YML), "-d",
         str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "reference" / "hooks" / "index.html").is_file()


# -- the command line and the dev server ---------------------------------------------------------------------------


def _cli_sections() -> dict[str, str]:
    text = (DOCS / "reference" / "cli.md").read_text()
    sections: dict[str, str] = {}
    for block in text.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        sections[title.strip()] = body
    return sections


def test_every_cli_command_and_option_is_documented():
    import typer.main

    from gpuflex.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), type(group)
    sections = _cli_sections()
    for name, command in group.commands.items():
        title = f"gpuflex {name}"
        assert title in sections, f"docs/reference/cli.md has no '## {title}' section"
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert opt in sections[title], f"{title}: option {opt} is not documented"


def test_every_fixed_server_route_is_documented():
    from gpuflex.server._app import create_app

    app = create_app(ROOT / "tests" / "apps" / "serve_app.py")
    page = (DOCS / "how-to" / "dev-server.md").read_text()
    endpoint_paths = {p for route in app.state.gpuflex.routes for p in (route.path, f"{route.path}/jobs")}
    fixed = {r.path for r in app.routes if r.path not in endpoint_paths and not r.path.startswith("/docs/oauth2")}
    for path in sorted(fixed - {"/redoc"}):
        assert f"`{path}`" in page or f"{path}`" in page or path in page, f"route {path} is not in dev-server.md"
