"""The floor every renderer stands on: the Jinja environment over the tool's templates and
black. The templates ship inside the tool's wheel as `transpiler/templates/` (pyproject.toml
maps the checkout's top-level `templates/` there); a checkout or an editable install reads
them where they stand."""

from __future__ import annotations

import functools
from pathlib import Path

import black
import jinja2

BLACK_MODE = black.Mode(magic_trailing_comma=False)


@functools.cache
def template_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):  # installed; a checkout
        if (candidate / "__init__.py.jinja").is_file():
            return candidate
    raise RuntimeError(f"the transpiler's templates are missing from its installation ({here}); reinstall it")


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def format_python(source: str, path: str) -> str:
    try:
        return black.format_str(source, mode=BLACK_MODE)
    except black.parsing.InvalidInput as error:  # a bug in a template or a rewrite
        raise RuntimeError(f"emitted {path} is not valid Python: {error}") from error
