import gzip

import pytest
import torch

from ffnn import data


def test_load_from_mirror_gives_scaled_flat_tensors(tiny, tmp_path):
    ds = data.load(tiny, tmp_path / "data")
    assert ds.x_train.shape == (600, 784) and ds.x_test.shape == (200, 784)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.sha256 == tiny.digest
    # installed in torchvision's layout, verified, uncompressed
    assert sorted(p.name for p in (tmp_path / "data" / "TINY" / "raw").iterdir()) == sorted(data.FILES)


def test_load_matches_torchvision_to_tensor(tiny, tmp_path):
    """torchvision's MNIST reader + ToTensor on the same files is the trusted reference."""
    from torchvision import datasets, transforms

    ds = data.load(tiny, tmp_path / "data")
    (tmp_path / "data" / "MNIST").symlink_to(tmp_path / "data" / "TINY")
    ref = datasets.MNIST(str(tmp_path / "data"), train=False, download=False, transform=transforms.ToTensor())
    for i in (0, 17, 199):
        image, label = ref[i]
        assert torch.equal(image.reshape(-1), ds.x_test[i])
        assert label == ds.y_test[i].item()


def test_load_from_data_dir_needs_no_source(tiny, tmp_path):
    data.prepare(tiny, tmp_path / "data")
    offline = data.DatasetSpec("tiny", "TINY", tiny.sha256)  # no mirror, no download class
    assert len(data.load(offline, tmp_path / "data").y_train) == 600


def test_source_argument_beats_env_and_mirrors(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FFNN_DATA_SOURCE", str(tmp_path / "nowhere"))
    no_mirror = data.DatasetSpec("tiny", "TINY", tiny.sha256)
    data.prepare(no_mirror, tmp_path / "data", source=tmp_path / "mirror")
    assert (tmp_path / "data" / "TINY" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_env_source_is_used(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FFNN_DATA_SOURCE", str(tmp_path / "mirror"))
    no_mirror = data.DatasetSpec("tiny", "TINY", tiny.sha256)
    data.prepare(no_mirror, tmp_path / "data")


def test_corrupted_source_file_names_file_and_checksum_and_leaves_nothing(tiny, tmp_path):
    gz = tmp_path / "mirror" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(gz.read_bytes()))
    raw[20] ^= 0xFF
    gz.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(data.DataError) as err:
        data.prepare(tiny, tmp_path / "data")
    msg = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in msg and tiny.sha256["train-labels-idx1-ubyte"] in msg
    assert "\n" not in msg
    assert not (tmp_path / "data" / "TINY" / "raw" / "train-labels-idx1-ubyte").exists()
    assert not list((tmp_path / "data" / "TINY" / "raw").glob(".*part"))


def test_truncated_gzip_is_reported_and_leaves_nothing(tiny, tmp_path):
    gz = tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:500])
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz"):
        data.prepare(tiny, tmp_path / "data")
    assert [p.name for p in (tmp_path / "data" / "TINY" / "raw").iterdir()
            if p.name.startswith("t10k-images")] == []


def test_corrupted_file_in_data_dir_is_reported(tiny, tmp_path):
    folder = data.prepare(tiny, tmp_path / "data")
    target = folder / "t10k-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(data.DataError, match=f"t10k-images-idx3-ubyte.*{tiny.sha256['t10k-images-idx3-ubyte']}"):
        data.load(tiny, tmp_path / "data")


def test_missing_data_without_source_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FFNN_DATA_SOURCE", raising=False)
    offline = data.DatasetSpec("tiny", "TINY", {name: "0" * 64 for name in data.FILES})
    with pytest.raises(data.DataError, match="--data-source"):
        data.prepare(offline, tmp_path / "data")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(data.DataError, match="mnist, fashion-mnist"):
        data.get_spec("cifar")


def test_mnist_checksums_are_the_shared_mirrors():
    """The embedded sums equal ../shared/datasets/mnist/SHA256SUMS where that file exists."""
    from pathlib import Path
    sums = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist" / "SHA256SUMS"
    if not sums.exists():
        pytest.skip("no shared MNIST mirror beside this checkout")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    assert listed == data.DATASETS["mnist"].sha256
