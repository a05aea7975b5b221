"""jinja2 for the formats with no serializer (preseed, boot menus, the setup script).

Every value is validated by its caller; as a last guard, a value with a newline or a quote
stops the rendering, unless the caller marked it as a Block (a multi-line text it vouches for,
such as a terminfo source placed in a quoted here-document).
"""

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"
_UNSAFE = set("\n\r\"'")


class Block(str):
    """Multi-line text its caller vouches for."""


def _guard(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, Block) and _UNSAFE & set(value):
        raise ValueError(f"refusing to template {value!r}: it has a newline or a quote")
    return value


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
    finalize=_guard,
)


def render_template(name: str, **values: Any) -> str:
    return _env.get_template(name).render(**values)
