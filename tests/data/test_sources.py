"""Sources (Hydra-instantiated), dataset configs, fingerprints and the archive download."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lopt.data import download
from lopt.data.download import ARCHIVES, Archive, ensure_file
from lopt.data.sources import (
    AmazonFoodSource,
    CustomSource,
    LastFmSource,
    MovieLensSource,
    NoRatingsError,
    SyntheticSource,
)
from tests.helpers.hydra import compose_config
from tests.helpers.paths import REPO_ROOT

CONF = REPO_ROOT / "conf" / "dataset"
DATASET_FILES = sorted(CONF.glob("*.yaml"))
PREPROCESS_KEYS = {"min_rating", "min_users_per_item", "min_items_per_user", "iterative", "test_ratio", "valid_ratio"}


def test_expected_dataset_configs_exist() -> None:
    names = {p.stem for p in DATASET_FILES}
    assert {
        "synthetic",
        "ml100k",
        "ml1m",
        "ml10m",
        "ml20m",
        "ml25m",
        "ml_latest_small",
        "amazon_food",
        "amazon_food_snap",
        "lastfm2k",
        "custom",
    } <= names


@pytest.mark.parametrize("conf_path", DATASET_FILES, ids=lambda p: p.stem)
def test_dataset_config_instantiates(conf_path: Path, tmp_path: Path) -> None:
    # composed, so the shared preprocess block (conf/preprocess/default.yaml) is pulled in
    dataset = compose_config([f"dataset={conf_path.stem}"]).dataset
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "c")}})
    cfg.dataset = OmegaConf.to_container(dataset, resolve=False)
    if cfg.dataset.name == "custom":
        cfg.dataset.source.path = str(tmp_path / "x.csv")
    assert set(cfg.dataset) - {"download"} == {"name", "source", "preprocess"}
    assert set(cfg.dataset.preprocess) == PREPROCESS_KEYS
    source = instantiate(cfg.dataset.source)
    assert callable(source.load) and callable(source.fingerprint)
    if isinstance(source, MovieLensSource | LastFmSource | AmazonFoodSource):
        assert str(source.path).startswith(str(tmp_path))
    if isinstance(source, MovieLensSource | LastFmSource):
        assert source.archive in ARCHIVES


def test_synthetic_config_loads_small_frame(tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONF / "synthetic.yaml")
    source = instantiate(cfg.source)
    df = source.load()
    assert df.height == cfg.source.n_interactions
    assert source.fingerprint() == instantiate(cfg.source).fingerprint()
    cfg.source.seed = 1
    assert instantiate(cfg.source).fingerprint() != source.fingerprint()


def test_ml100k_source_reads_existing_file(ml100k_path: Path) -> None:
    source = MovieLensSource(ml100k_path, "tab", archive="ml-100k")
    assert source.load().height == 100_000
    assert len(source.fingerprint()) == 64


def test_file_fingerprint_tracks_content_and_options(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("u,i,t\n1,2,3\n")
    a = CustomSource(f, "u", "i", "t")
    first = a.fingerprint()
    assert first == CustomSource(f, "u", "i", "t").fingerprint()
    assert first != CustomSource(f, "u", "i", None).fingerprint()
    f.write_text("u,i,t\n1,2,3\n4,5,6\n")
    os.utime(f, ns=(1, 1))
    assert a.fingerprint() != first
    assert a.load().rows() == [(1, 2, 3), (4, 5, 6)]


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: MovieLensSource("x", "txt"), "dataset.source.format"),
        (lambda: MovieLensSource("x", "dat", archive="ml-5m"), "dataset.source.archive"),
        (lambda: AmazonFoodSource("x", "json"), "dataset.source.format"),
        (lambda: CustomSource("???", "u", "i", "t"), "dataset.source.path"),
        (lambda: CustomSource("x", "u", "u", "t"), "dataset.source.user_col"),
        (lambda: CustomSource("x", None, "i", "t"), "dataset.source.user_col"),
        (lambda: CustomSource("x", "u", "i", "t", separator=""), "dataset.source.separator"),
        (lambda: CustomSource("x", "u", "i", "t", file_format="xlsx"), "dataset.source.file_format"),
        (lambda: SyntheticSource(10, 10, 5, 2, 0.5, 0.5, 0.3, 0), "dataset.source.n_interactions"),
        (lambda: SyntheticSource(10, 10, 50, 2, 0.5, 0.5, 0.3, -1), "dataset.source.seed"),
    ],
)
def test_bad_arguments_name_the_config_key(make, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make()


def test_missing_file_without_archive(tmp_path: Path) -> None:
    source = AmazonFoodSource(tmp_path / "Reviews.csv", "kaggle_csv")
    with pytest.raises(FileNotFoundError) as err:
        source.load()
    msg = str(err.value)
    assert str(tmp_path / "Reviews.csv") in msg and "dataset.source.path=" in msg
    assert "kaggle.com" in msg


def test_download_failure_names_path_url_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/ml-100k.zip"  # discard port: connection refused, no network
    monkeypatch.setitem(ARCHIVES, "ml-100k", Archive(url, "ml-100k/u.data", None))
    target = tmp_path / "ml-100k" / "u.data"
    with pytest.raises(FileNotFoundError) as err:
        ensure_file(target, "ml-100k", "dataset.source.path")
    msg = str(err.value)
    assert str(target) in msg and url in msg and "dataset.source.path=/path/to/u.data" in msg
    assert not target.exists()


def test_download_extracts_member_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = tmp_path / "served" / "ml-1m.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::2::5::100\n2::3::4::200\n")
        zf.writestr("ml-1m/movies.dat", "ignored\n")
    calls: list[Path] = []

    def fake_fetch(spec: Archive, folder: Path) -> str:
        calls.append(folder)
        return str(zip_path)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    target = tmp_path / "data" / "ml-1m" / "ratings.dat"
    source = MovieLensSource(None, "dat", archive="ml-1m", default_path=target, lock_dir=tmp_path / "cache")
    assert source.load().rows() == [(1, 2, 100), (2, 3, 200)]
    assert calls == [target.parent] and target.is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["ratings.dat"]  # no lock file beside
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["download-ml-1m.lock"]
    source.load()
    assert len(calls) == 1  # an existing file is never fetched again


def test_registry_has_all_movielens_archives() -> None:
    movielens = {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small"}
    assert set(ARCHIVES) == movielens | {"hetrec2011-lastfm-2k", "hetrec2011-lastfm-2k-timestamps"}
    for name, spec in ARCHIVES.items():
        if name in movielens:
            assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert spec.known_hash is None or spec.known_hash.split(":")[0] in ("md5", "sha256")
    assert ARCHIVES["ml-10m"].member == "ml-10M100K/ratings.dat"


@pytest.mark.parametrize(
    ("given", "meant"),
    [("tab", "\t"), ("\\t", "\t"), ("\t", "\t"), ("::", "::"), (",", ","), ("semicolon", ";"), ("\\\\", "\\")],
)
def test_separator_names_and_typed_escapes(tmp_path: Path, given: str, meant: str) -> None:
    """`separator=tab` and a typed `\\t` (what a shell hands Hydra for '\\t') both mean a tab;
    they read the same file and share one fingerprint (one cache entry)."""
    f = tmp_path / "r.txt"
    f.write_text(meant.join(["u", "i", "t"]) + "\n" + meant.join(["1", "2", "3"]) + "\n")
    source = CustomSource(f, "u", "i", "t", separator=given)
    assert source.separator == meant
    assert source.load().rows() == [(1, 2, 3)]
    assert source.fingerprint() == CustomSource(f, "u", "i", "t", separator=meant).fingerprint()


def test_separator_with_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match=r"dataset\.source\.separator must not contain a line break"):
        CustomSource("x", "u", "i", "t", separator="\n")


def test_ratings_from_a_source_without_them_name_the_keys(tmp_path: Path) -> None:
    """load(rating=True): generated data and a custom file without rating_col refuse, naming
    dataset.preprocess.min_rating (and rating_col); with rating_col the column comes back."""
    with pytest.raises(NoRatingsError, match=r"dataset=synthetic.*dataset\.preprocess\.min_rating=null"):
        SyntheticSource(20, 20, 100, 2, 0.5, 0.5, 0.3, 0).load(rating=True)
    f = tmp_path / "r.csv"
    f.write_text("u,i,t,r\n1,2,3,4.5\n")
    with pytest.raises(NoRatingsError, match=r"dataset\.source\.rating_col is null"):
        CustomSource(f, "u", "i", "t").load(rating=True)
    rated = CustomSource(f, "u", "i", "t", rating_col="r")
    assert rated.load(rating=True).rows() == [(1, 2, 3, 4.5)] and rated.load().rows() == [(1, 2, 3)]
    assert rated.fingerprint() != CustomSource(f, "u", "i", "t").fingerprint()
    ml = tmp_path / "u.data"
    ml.write_text("1\t2\t4\t100\n")
    assert MovieLensSource(ml, "tab").load(rating=True)["rating"].to_list() == [4.0]
