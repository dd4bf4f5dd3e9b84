"""Generated tables in the documentation pages: a report script renders a CSV (or a measurement) as markdown
and puts it between a page's markers, so that a number lives in one place and the page shows it.

    <!-- table:pareto -->
    | ... the script's output ... |
    <!-- /table -->
"""
from pathlib import Path
from typing import Tuple, Union

END = '<!-- /table -->'


def markers(name: str) -> Tuple[str, str]:
    return f'<!-- table:{name} -->', END


def _span(text: str, name: str, page: Union[str, Path]) -> Tuple[int, int]:
    """Where the table ``name`` stands in ``text``: after its begin marker, up to the next end marker."""
    begin, end = markers(name)
    if text.count(begin) != 1:
        raise ValueError(f'{page}: needs exactly one {begin!r} marker, found {text.count(begin)}')
    start = text.index(begin) + len(begin)
    stop = text.find(end, start)
    if stop < 0:
        raise ValueError(f'{page}: {begin!r} has no {end!r} after it')
    return start, stop


def read_table(page: Union[str, Path], name: str) -> str:
    """The markdown that stands between the page's markers for ``name`` (without the surrounding newlines)."""
    text = Path(page).read_text(encoding='utf-8')
    start, stop = _span(text, name, page)
    return text[start:stop].strip('\n')


def write_table(page: Union[str, Path], name: str, table: str) -> None:
    """Replace what stands between the page's markers for ``name`` with ``table``."""
    page = Path(page)
    text = page.read_text(encoding='utf-8')
    start, stop = _span(text, name, page)
    page.write_text(text[:start] + '\n' + table.strip('\n') + '\n' + text[stop:], encoding='utf-8')
