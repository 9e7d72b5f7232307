"""Progress bars for long loops: tqdm when asked for, the plain iterable otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], show: bool, **tqdm_kwargs) -> Iterator[T] | Iterable[T]:
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **tqdm_kwargs)
