"""Output for people: progress lines and tables. Library code gets `say`; only tasks print."""

from typing import Iterable, Sequence

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)


def say(line: str) -> None:
    out.print(line, markup=False)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(str(v) for v in row))
    out.print(t)
