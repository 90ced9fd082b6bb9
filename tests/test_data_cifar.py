"""decaylab.data.cifar on tiny archives made in the exact on-disk format of the official ones."""

import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from decaylab import data
from decaylab.data import CIFAR, CorruptDataError, MissingDataError, file_md5
from decaylab.data.cifar import CIFAR_FILE_MD5

N = 3  # images per batch file

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the archives are Python-2 pickles


def cifar10_members(seed: int = 0) -> dict[str, bytes]:
    """The members of cifar-10-python.tar.gz, with N random images in each batch."""
    rng = np.random.default_rng(seed)
    members = {}
    for i, file in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        members[f"cifar-10-batches-py/{file}"] = _pickle({
            b"batch_label": f"batch {i}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, N)],
            b"data": rng.integers(0, 256, (N, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(N)],
        })
    members["cifar-10-batches-py/batches.meta"] = _pickle(
        {b"num_cases_per_batch": N, b"label_names": CIFAR10_NAMES, b"num_vis": 3072})
    return members


def cifar100_members(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    members = {}
    for file, n in (("train", 5), ("test", 2)):
        members[f"cifar-100-python/{file}"] = _pickle({
            b"filenames": [f"{file}_{j}.png".encode() for j in range(n)],
            b"batch_label": file.encode(),
            b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        })
    members["cifar-100-python/meta"] = _pickle({
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return members


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A .tar.gz with a folder entry and the members, as the official archives are laid out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(next(iter(members)).split("/")[0])
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def raw_batches(members: dict[str, bytes], files: list[str], label_key: bytes = b"labels"):
    objs = [pickle.loads(members[f], encoding="bytes") for f in files]
    return np.concatenate([o[b"data"] for o in objs]), np.concatenate([o[label_key] for o in objs])


@pytest.fixture
def cifar10(tmp_path):
    members = cifar10_members()
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    return tmp_path, archive, members


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CIFAR tests must not reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- round trips ------------------------------------------------------------------------------------


def test_cifar10_round_trip(cifar10) -> None:
    root, archive, members = cifar10
    d = data.load("cifar10", root=root, md5=file_md5(archive), download=False)
    # the test batch held out in two halves: validation first, then test
    assert (d.n_train, d.n_val + d.n_test, d.input_shape, d.num_classes) == (5 * N, N, (3, 32, 32), 10)
    assert d.n_val == N // 2 and d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    train_files = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
    raw_x, raw_y = raw_batches(members, train_files)
    assert torch.equal(d.y_train, torch.from_numpy(raw_y))  # batches 1..5 in order
    # x is the raw pixels (R plane, G plane, B plane; row-major 32x32), /255, normalized per channel
    pixels = torch.from_numpy(raw_x).float().view(-1, 3, 32, 32) / 255
    mean, std = torch.tensor(CIFAR["cifar10"].mean), torch.tensor(CIFAR["cifar10"].std)
    assert torch.allclose(d.x_train, (pixels - mean[:, None, None]) / std[:, None, None], rtol=1e-6, atol=1e-6)
    assert d.x_train[0, 1, 0, 0] == (raw_x[0, 1024] / 255 - mean[1]) / std[1]
    test_x, test_y = raw_batches(members, ["cifar-10-batches-py/test_batch"])
    assert torch.equal(torch.cat([d.y_val, d.y_test]), torch.from_numpy(test_y))
    assert d.meta["classes"][:2] == ["airplane", "automobile"] and d.meta["source"] == str(archive)


def test_cifar10_unnormalized_is_pixels_over_255(cifar10) -> None:
    root, archive, members = cifar10
    d = data.load_cifar10(root, md5=file_md5(archive), download=False, normalize=False)
    test_x, _ = raw_batches(members, ["cifar-10-batches-py/test_batch"])
    held_out = torch.cat([d.x_val, d.x_test])
    assert torch.equal((held_out * 255).round().to(torch.uint8).view(N, -1), torch.from_numpy(test_x))
    assert d.meta["normalize"] is None


def test_cifar100_round_trip_fine_and_coarse(tmp_path) -> None:
    members = cifar100_members()
    archive = write_archive(tmp_path / "cifar-100-python.tar.gz", members)
    md5 = file_md5(archive)
    fine = data.load("cifar100", root=tmp_path, md5=md5, download=False)
    coarse = data.load("cifar100", root=tmp_path, md5=md5, download=False, labels="coarse")
    assert (fine.n_train, fine.n_val + fine.n_test, fine.num_classes, coarse.num_classes) == (5, 2, 100, 20)
    _, fine_y = raw_batches(members, ["cifar-100-python/train"], b"fine_labels")
    _, coarse_y = raw_batches(members, ["cifar-100-python/train"], b"coarse_labels")
    assert torch.equal(fine.y_train, torch.from_numpy(fine_y))
    assert torch.equal(coarse.y_train, torch.from_numpy(coarse_y))
    assert torch.equal(fine.x_train, coarse.x_train)
    assert coarse.name == "cifar100-coarse" and coarse.meta["classes"][3] == "coarse3"
    with pytest.raises(ValueError, match="labels must be one of"):
        data.load_cifar("cifar10", tmp_path, labels="coarse")


def test_extracted_folder_is_read_with_per_file_checksums(tmp_path, monkeypatch) -> None:
    members = cifar10_members(seed=1)
    for name, blob in members.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
        monkeypatch.setitem(CIFAR_FILE_MD5, name, __import__("hashlib").md5(blob).hexdigest())
    d = data.load_cifar10(tmp_path, download=False)
    assert d.n_train == 5 * N and d.meta["source"] == str(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"changed")
    with pytest.raises(CorruptDataError, match=r"test_batch has md5 \w{32}, expected \w{32}"):
        data.load_cifar10(tmp_path, download=False)


# --- errors -----------------------------------------------------------------------------------------


def test_checksum_mismatch_names_expected_actual_and_path(cifar10) -> None:
    root, archive, _ = cifar10
    with pytest.raises(CorruptDataError) as err:
        data.load_cifar10(root, download=False)  # the official md5: the tiny archive does not match
    message = str(err.value)
    assert "c58f30108f718f92721af3b95e74349a" in message
    assert file_md5(archive) in message
    assert str(archive) in message
    with pytest.raises(CorruptDataError, match="eb9058c3a382ffc7106e4002c42a8d85"):
        write_archive(root / "cifar-100-python.tar.gz", cifar100_members())
        data.load_cifar100(root, download=True)  # present: checked, never downloaded again


def test_missing_file_says_where_to_put_it(tmp_path) -> None:
    with pytest.raises(MissingDataError) as err:
        data.load("cifar10", root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert "c58f30108f718f92721af3b95e74349a" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert isinstance(err.value, FileNotFoundError)


def test_partial_extracted_folder_is_reported(tmp_path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"x")
    with pytest.raises(MissingDataError, match=r"cifar-100-python exists but lacks \['test', 'meta'\]"):
        data.load_cifar100(tmp_path, download=False)


def test_offline_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MissingDataError) as err:
        data.load_cifar100(tmp_path)  # download=True by default
    message = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(tmp_path / "cifar-100-python.tar.gz") in message and "Name or service not known" in message
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_download_saves_the_verified_archive(tmp_path, monkeypatch) -> None:
    blob_path = write_archive(tmp_path / "served" / "archive.tar.gz", cifar10_members())
    blob = blob_path.read_bytes()
    requested = []

    def serve(url, timeout=None):
        requested.append(url)
        return io.BytesIO(blob)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    root = tmp_path / "root"
    d = data.load_cifar10(root, md5=file_md5(blob_path))
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == blob and d.n_val + d.n_test == N
    # a download that does not match the checksum is not kept
    with pytest.raises(CorruptDataError, match=r"downloaded .* has md5 \w{32}, expected 0{32}"):
        data.load_cifar100(root, md5="0" * 32)
    assert not (root / "cifar-100-python.tar.gz").exists()
    assert not (root / "cifar-100-python.tar.gz.part").exists()


def test_corrupt_pickle_names_the_member_and_the_expected_format(tmp_path) -> None:
    members = cifar10_members()
    members["cifar-10-batches-py/data_batch_2"] = b"\x80\x02}q\x00garbage"
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(CorruptDataError) as err:
        data.load_cifar10(tmp_path, md5=file_md5(archive), download=False)
    message = str(err.value)
    assert "cifar-10-batches-py/data_batch_2" in message and str(archive) in message
    assert "not a readable pickle" in message and "b'data'" in message and "b'labels'" in message


def test_wrong_pickle_contents_are_reported(tmp_path) -> None:
    members = cifar10_members()
    members["cifar-10-batches-py/data_batch_1"] = _pickle({b"data": np.zeros((2, 3072), np.uint8)})
    members["cifar-10-batches-py/test_batch"] = _pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(CorruptDataError, match=r"data_batch_1 in .* holds \[b'data'\]; expected a dict with keys"):
        data.load_cifar10(tmp_path, md5=file_md5(archive), download=False)
    members["cifar-10-batches-py/data_batch_1"] = cifar10_members()["cifar-10-batches-py/data_batch_1"]
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(CorruptDataError, match=r"test_batch .* shape \(2, 100\); expected uint8 of shape \(N, 3072\)"):
        data.load_cifar10(tmp_path, md5=file_md5(archive), download=False)


def test_missing_member_and_non_archive(tmp_path) -> None:
    members = cifar10_members()
    del members["cifar-10-batches-py/test_batch"]
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(CorruptDataError, match=r"has no member\(s\) \['cifar-10-batches-py/test_batch'\]"):
        data.load_cifar10(tmp_path, md5=file_md5(archive), download=False)
    archive.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CorruptDataError, match="not a readable gzip-compressed tar archive"):
        data.load_cifar10(tmp_path, md5=file_md5(archive), download=False)


def test_argument_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        data.load_cifar("cifar1000", tmp_path)
    with pytest.raises(ValueError, match="md5 must be"):
        data.load_cifar10(tmp_path, md5="abc")
