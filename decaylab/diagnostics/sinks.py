r"""Where a monitor's records go: JSON Lines, CSV, TensorBoard.

A sink is any object with ``write(records)`` (a list of record dicts
``{"step": int, "metric": str, "value": float, "model": int | None}``) and ``close()``. The
monitor writes each sample's records as it makes them and closes its sinks when it closes.

* :class:`JSONLSink` — one JSON object per line, the record as is (``NaN``/``Infinity`` as
  Python's ``json`` writes them).
* :class:`CSVSink` — header ``step,metric,value,model``; ``model`` is empty for unstacked records.
* :class:`TensorBoardSink` — scalars in TensorBoard event files (needs the ``tensorboard``
  package); tag = the metric, or ``f"{metric}/model_{k}"`` for stacked model ``k``.

:func:`read_jsonl` and :func:`read_csv` read the first two back into records.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "run.csv")
>>> sink = CSVSink(path)
>>> sink.write([{"step": 1, "metric": "loss", "value": 0.5, "model": None},
...             {"step": 1, "metric": "weight_norm/total", "value": 3.0, "model": 1}])
>>> sink.close()
>>> print(open(path).read().strip())
step,metric,value,model
1,loss,0.5,
1,weight_norm/total,3.0,1
>>> read_csv(path)[1]
{'step': 1, 'metric': 'weight_norm/total', 'value': 3.0, 'model': 1}
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any

__all__ = ["Sink", "JSONLSink", "CSVSink", "TensorBoardSink", "read_jsonl", "read_csv"]

FIELDS = ("step", "metric", "value", "model")


class Sink:
    """Base class: ``write(records)`` as they come, ``close()`` at the end."""

    def write(self, records: list[dict[str, Any]]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def flush(self) -> None:
        """Push buffered records to storage (``close`` does it too)."""

    def close(self) -> None:
        self.flush()


class _FileSink(Sink):
    def __init__(self, path: str | os.PathLike, append: bool):
        self.path = os.fspath(path)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", newline="", encoding="utf-8")

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class JSONLSink(_FileSink):
    """One record per line as JSON. ``append=True`` adds to an existing file."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        super().__init__(path, append)

    def write(self, records: list[dict[str, Any]]) -> None:
        self._file.writelines(json.dumps(r) + "\n" for r in records)


class CSVSink(_FileSink):
    """Rows ``step,metric,value,model`` under that header (written unless appending to a non-empty file)."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        has_rows = append and os.path.exists(path) and os.path.getsize(path) > 0
        super().__init__(path, append)
        self._writer = csv.writer(self._file)
        if not has_rows:
            self._writer.writerow(FIELDS)

    def write(self, records: list[dict[str, Any]]) -> None:
        self._writer.writerows(
            (r["step"], r["metric"], repr(r["value"]), "" if r["model"] is None else r["model"]) for r in records
        )


class TensorBoardSink(Sink):
    """Scalars into TensorBoard event files under ``log_dir`` (``torch.utils.tensorboard.SummaryWriter``)."""

    def __init__(self, log_dir: str | os.PathLike, **writer_kwargs: Any):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch imports tensorboard lazily and raises here when it is missing
            raise ImportError(
                "TensorBoardSink needs the tensorboard package: pip install tensorboard"
            ) from exc
        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir, **writer_kwargs)
        self._closed = False

    def write(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            tag = r["metric"] if r["model"] is None else f"{r['metric']}/model_{r['model']}"
            self._writer.add_scalar(tag, r["value"], global_step=r["step"])

    def flush(self) -> None:
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a :class:`JSONLSink` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a :class:`CSVSink` file, with ``step``/``model`` as ints and ``value`` as a float."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {"step": int(row["step"]), "metric": row["metric"], "value": float(row["value"]),
             "model": None if row["model"] == "" else int(row["model"])}
            for row in csv.DictReader(f)
        ]
