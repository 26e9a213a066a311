"""jinja2 rendering of the report (autoescape on: every user string is escaped)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("featharm.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(context: dict) -> str:
    return _env().get_template("report.html.j2").render(**context)
