"""A read-only sequence whose items are made on demand, so a catalog of scans is not all in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """``n`` items, item ``i`` made by ``load(i)`` each time it is asked for.

    Example:
        >>> squares = LazySequence(4, lambda i: i * i)
        >>> list(squares), squares[-1], squares[1:3]
        ([0, 1, 4, 9], 9, [1, 4])
    """

    def __init__(self, n: int, load: Callable[[int], T]) -> None:
        self._n, self._load = n, load

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> T: ...

    @overload
    def __getitem__(self, i: slice) -> list[T]: ...

    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._load(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._load(i % self._n)

    def __iter__(self) -> Iterator[T]:
        return (self._load(i) for i in range(self._n))
