"""decaylab.data.hf_text: Hugging Face text corpora from local copies, with the network disabled."""

import hashlib
import json

import datasets  # in the test extra: its absence is a failure, not a skip
import pytest
import torch

from decaylab import data
from decaylab.data import CorruptDataError, MissingDataError, hf_text

DOCS = ["Once upon a time, there was a cat.", "The cat sat.\n\nThen it slept. ☀", "Ünïcode döcument", "end"]
VALIDATION = ["A validation story.", "Another one."]


def stream(docs: list[str], sep: bytes = b"\xff") -> bytes:
    return sep.join(d.encode("utf-8") for d in docs)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Hugging Face offline mode, and a load_dataset that fails the test if it is called."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)

    def no_hub(*args, **kwargs):
        raise AssertionError(f"load_dataset{args} called with the network disabled")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)


def online(monkeypatch, rows: list[dict], calls: list) -> None:
    """Pretend the Hub is reachable and serves ``rows`` as a stream."""
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False, raising=False)

    def fake_load_dataset(repo, split=None, streaming=False, cache_dir=None, **kwargs):
        calls.append({"repo": repo, "split": split, "streaming": streaming, "cache_dir": cache_dir})
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


def as_bytes(text: data.TextData) -> bytes:
    return bytes(torch.cat([text.train, text.val, text.test]).numpy())  # the held-out tail: validation, then test


# --- local copies -------------------------------------------------------------------------------------


def test_save_to_disk_round_trip(tmp_path) -> None:
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "tinystories"))
    text = data.load("tinystories", root=tmp_path, max_bytes=None)
    expected = stream(DOCS)
    assert as_bytes(text) == expected
    n_held = int(len(expected) * 0.1)  # held out: its first half validation, the rest test
    assert len(text.val) == n_held // 2 and len(text.test) == n_held - n_held // 2
    assert len(text.train) == len(expected) - n_held
    assert text.train.dtype == torch.uint8 and text.vocab_size == 256 and text.name == "tinystories"
    assert text.meta["sha256"] == hashlib.sha256(expected).hexdigest()
    assert text.meta["documents"] == len(DOCS) and text.meta["repo"] == "roneneldan/TinyStories"
    assert decoded(text).split("<|endoftext|>") == DOCS
    x, y = text.batch("train", 3, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 8) and torch.equal(y[:, :-1], x[:, 1:])


def decoded(text: data.TextData) -> str:
    return data.TextData.decode(as_bytes(text))


def test_datasetdict_splits(tmp_path) -> None:
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS}),
                               "validation": datasets.Dataset.from_dict({"text": VALIDATION})})
    dd.save_to_disk(str(tmp_path / "openwebtext"))
    assert as_bytes(data.load("openwebtext", root=tmp_path, max_bytes=None)) == stream(DOCS)
    val = data.load_hf_text("openwebtext", tmp_path, split="validation", max_bytes=None)
    assert as_bytes(val) == stream(VALIDATION) and val.meta["split"] == "validation"
    with pytest.raises(MissingDataError, match=r"DatasetDict folder with splits \['train', 'validation'\]"):
        data.load_hf_text("openwebtext", tmp_path, split="test")


def test_max_bytes_and_separator(tmp_path) -> None:
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "tinystories"))
    capped = data.load_hf_text("tinystories", tmp_path, max_bytes=40)
    assert as_bytes(capped) == stream(DOCS)[:40] and capped.meta["documents"] == 2
    newline = data.load_hf_text("tinystories", tmp_path, max_bytes=None, separator=b"\n\n", val_fraction=0.5)
    held = len(stream(DOCS, b"\n\n")) // 2
    assert as_bytes(newline) == stream(DOCS, b"\n\n") and (len(newline.val), len(newline.test)) == (held // 2,
                                                                                                    held - held // 2)


def test_parquet_files(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "tinystories" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"text": DOCS[:2]}), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": DOCS[2:]}), folder / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"text": VALIDATION}), folder / "validation-00000-of-00001.parquet")
    assert as_bytes(data.load_hf_text("tinystories", tmp_path, max_bytes=None)) == stream(DOCS)
    val = data.load_hf_text("tinystories", tmp_path, split="validation", max_bytes=None)
    assert as_bytes(val) == stream(VALIDATION)


def test_arrow_files_without_split_names_are_train(tmp_path) -> None:
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(saved))
    (tmp_path / "mycorpus").mkdir()
    for f in saved.glob("*.arrow"):
        (tmp_path / "mycorpus" / "shard.arrow").write_bytes(f.read_bytes())
    text = data.load_hf_text("mycorpus", tmp_path, max_bytes=None)
    assert as_bytes(text) == stream(DOCS) and text.meta["repo"] is None
    with pytest.raises(MissingDataError, match="no local copy of 'mycorpus' split 'validation'"):
        data.load_hf_text("mycorpus", tmp_path, split="validation")


def test_other_text_column(tmp_path) -> None:
    datasets.Dataset.from_dict({"story": DOCS, "id": list(range(4))}).save_to_disk(str(tmp_path / "tinystories"))
    with pytest.raises(CorruptDataError, match=r"has columns \['story', 'id'\]; expected a string column 'text'"):
        data.load_hf_text("tinystories", tmp_path)
    assert as_bytes(data.load_hf_text("tinystories", tmp_path, text_field="story", max_bytes=None)) == stream(DOCS)


# --- errors -------------------------------------------------------------------------------------------


def test_missing_directory_offline(tmp_path) -> None:
    with pytest.raises(MissingDataError) as err:
        data.load("tinystories", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "tinystories" / "train") in message and "save_to_disk" in message
    assert "offline mode" in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(MissingDataError, match="download=False"):
        data.load("openwebtext", root=tmp_path, download=False)


def test_corrupt_local_copy(tmp_path) -> None:
    base = tmp_path / "tinystories"
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(base))
    next(base.glob("*.arrow")).write_bytes(b"garbage" * 10)
    with pytest.raises(CorruptDataError) as err:
        data.load("tinystories", root=tmp_path)
    assert str(base) in str(err.value) and "load_from_disk" in str(err.value)
    (base / "state.json").write_text("{not json")
    with pytest.raises(CorruptDataError, match="state.json|JSONDecodeError"):
        data.load("tinystories", root=tmp_path)


def test_non_text_documents_and_bad_parquet(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "nums").mkdir()
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "nums" / "train.parquet")
    with pytest.raises(CorruptDataError, match="document 0 of .* is int, expected str"):
        data.load_hf_text("nums", tmp_path)
    (tmp_path / "nums" / "train.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptDataError, match=r"train.parquet could not be read as parquet"):
        data.load_hf_text("nums", tmp_path)


def test_argument_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="plain folder name"):
        data.load_hf_text("../etc", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        data.load_hf_text("tinystories", tmp_path, split="train[:10%]")
    with pytest.raises(ValueError, match="max_bytes"):
        data.load_hf_text("tinystories", tmp_path, max_bytes=-1)
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_hf_text("tinystories", tmp_path, val_fraction=0.0)


# --- the download path, with a stand-in for the Hub -------------------------------------------------------


def test_download_streams_a_prefix_and_saves_it(tmp_path, monkeypatch) -> None:
    calls: list = []
    rows = [{"text": d, "meta": i} for i, d in enumerate(DOCS)]
    online(monkeypatch, rows, calls)
    text = data.load_hf_text("tinystories", tmp_path, max_bytes=40)
    assert calls == [{"repo": "roneneldan/TinyStories", "split": "train", "streaming": True,
                      "cache_dir": str(tmp_path / "huggingface")}]
    assert as_bytes(text) == stream(DOCS)[:40]
    saved = tmp_path / "tinystories" / "train"
    note = json.loads((saved / hf_text.NOTE_FILE).read_text())
    assert note["complete"] is False and note["documents"] == 2 and note["repo"] == "roneneldan/TinyStories"
    assert datasets.load_from_disk(str(saved))["text"] == DOCS[:2]

    # the saved prefix is enough for the same request: no Hub call
    assert as_bytes(data.load_hf_text("tinystories", tmp_path, max_bytes=40)) == stream(DOCS)[:40]
    assert len(calls) == 1
    # a longer request streams again and replaces the prefix with the whole (complete) split
    full = data.load_hf_text("tinystories", tmp_path, max_bytes=None)
    assert as_bytes(full) == stream(DOCS) and len(calls) == 2
    assert json.loads((saved / hf_text.NOTE_FILE).read_text())["complete"] is True
    assert data.load_hf_text("tinystories", tmp_path, max_bytes=None).meta["documents"] == 4 and len(calls) == 2


def test_short_prefix_offline_warns_and_is_used(tmp_path, monkeypatch) -> None:
    calls: list = []
    with monkeypatch.context() as m:
        online(m, [{"text": d} for d in DOCS], calls)
        data.load_hf_text("tinystories", tmp_path, max_bytes=10)
    # back offline (the autouse fixture's settings are restored)
    with pytest.warns(UserWarning, match="holds only the first .* bytes"):
        text = data.load_hf_text("tinystories", tmp_path, max_bytes=1000)
    assert as_bytes(text) == stream(DOCS[:1]) and len(calls) == 1


def test_hub_failure_says_where_to_put_a_local_copy(tmp_path, monkeypatch) -> None:
    online(monkeypatch, [], [])

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(MissingDataError) as err:
        data.load("openwebtext", root=tmp_path)
    message = str(err.value)
    assert "Skylion007/openwebtext" in message and "Couldn't reach" in message
    assert str(tmp_path / "openwebtext" / "train") in message
    assert not (tmp_path / "openwebtext").exists()
