"""Live anchors measured once and cached; published Kodak anchors as the other source."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from helpers import compose_train, informative_codec
from skimage import data as skdata

from licexp.evaluation import anchor_cache, anchor_sources
from licexp.evaluation.anchor_cache import cache_path, cached_anchor_curve
from licexp.evaluation.anchor_sources import (
    KODAK_ANCHOR_DIR,
    evaluation_anchors,
    is_kodak,
    published_anchor,
)
from licexp.evaluation.anchors import AnchorResult, anchor_curve
from licexp.evaluation.evaluate import evaluate_codec
from licexp.evaluation.results import RDCurve

QUALITIES = (20, 80)


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, torch.Tensor]]:
    """Two 40x48 crops of a real photograph, float [3, H, W] in [0, 1]."""
    photo = torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float() / 255.0
    return [("face", photo[:, 100:140, 180:228]), ("suit", photo[:, 300:340, 100:148])]


class CountingAnchorCurve:
    """Stands in for ``anchor_curve`` in the cache module: counts its calls and delegates."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs) -> AnchorResult:
        self.calls += 1
        return anchor_curve(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch) -> CountingAnchorCurve:
    counter = CountingAnchorCurve()
    monkeypatch.setattr(anchor_cache, "anchor_curve", counter)
    return counter


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


def test_second_call_reads_the_cache_without_coding_again(photos, tmp_path, monkeypatch) -> None:
    first = cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)
    (stored,) = cache_files(tmp_path)

    def no_coding(*args, **kwargs):
        raise AssertionError("anchor_curve called although the cache holds the result")

    monkeypatch.setattr(anchor_cache, "anchor_curve", no_coding)
    second = cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)
    assert second.rows == first.rows
    assert second.curve == first.curve
    assert cache_files(tmp_path) == [stored]
    # the cached rates and qualities are those of a fresh measurement (times aside)
    fresh = anchor_curve(photos, "jpeg", QUALITIES)
    drop_times = [{k: v for k, v in row.items() if not k.endswith("_time")} for row in fresh.rows]
    assert drop_times == [
        {k: v for k, v in row.items() if not k.endswith("_time")} for row in second.rows
    ]


def shift_one_pixel(photos):
    (name, image), rest = photos[0], photos[1:]
    changed, coded = image.clone(), torch.round(image[0, 0, 0] * 255)
    changed[0, 0, 0] = (coded + (1 if coded < 255 else -1)) / 255
    return [(name, changed), *rest]


CHANGES = {
    "one pixel one 8-bit step": (shift_one_pixel, "jpeg", QUALITIES, "4:2:0"),
    "an image renamed": (lambda p: [("other", p[0][1]), *p[1:]], "jpeg", QUALITIES, "4:2:0"),
    "an image left out": (lambda p: p[:1], "jpeg", QUALITIES, "4:2:0"),
    "the images reordered": (lambda p: p[::-1], "jpeg", QUALITIES, "4:2:0"),
    "another quality": (lambda p: p, "jpeg", (20, 81), "4:2:0"),
    "another subsampling": (lambda p: p, "jpeg", QUALITIES, "4:4:4"),
    "another codec": (lambda p: p, "webp", QUALITIES, "4:2:0"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_changed_images_or_settings_miss_the_cache(photos, tmp_path, counting, change) -> None:
    alter, codec, qualities, subsampling = change
    cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)
    changed = cached_anchor_curve(
        alter(photos), codec, qualities, subsampling=subsampling, cache_dir=tmp_path
    )
    assert counting.calls == 2
    assert len(cache_files(tmp_path)) == 2
    expected = anchor_curve(alter(photos), codec, qualities, subsampling=subsampling)
    assert changed.curve.bpp == expected.curve.bpp


def test_what_pillow_does_not_see_hits_the_cache(photos, tmp_path, counting) -> None:
    """The key is what is coded: a change under half an 8-bit step, or a JPEG-only setting
    for WebP, leaves the bitstreams and so the cached results as they are."""
    cached_anchor_curve(photos, "webp", QUALITIES, cache_dir=tmp_path)
    nudged = [(name, (image + 1e-4).clamp(0, 1)) for name, image in photos]
    cached_anchor_curve(nudged, "webp", QUALITIES, subsampling="4:4:4", cache_dir=tmp_path)
    assert counting.calls == 1


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def swap_key(path: Path) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "key": "0" * 64}))


def break_rows(path: Path) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "rows": "not rows"}))


CORRUPTIONS = {
    "truncated": truncate,
    "binary garbage": lambda path: path.write_bytes(b"\x00\xff" * 40),
    "other results": swap_key,
    "rows not a list": break_rows,
    "no curve": lambda path: path.write_text(json.dumps({"format": 1})),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_an_unusable_cache_file_is_measured_again_with_a_warning(
    photos, tmp_path, counting, caplog, corrupt
) -> None:
    first = cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger="licexp.evaluation.anchor_cache"):
        again = cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)
    assert counting.calls == 2
    assert f"anchor cache file {path} unusable" in caplog.text
    assert again.curve.bpp == first.curve.bpp
    cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path)  # rewritten: a hit
    assert counting.calls == 2


def test_an_unwritable_cache_folder_measures_without_it(photos, tmp_path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="licexp.evaluation.anchor_cache"):
        result = cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=blocker / "cache")
    assert "measuring without it" in caplog.text
    assert result.curve.bpp == anchor_curve(photos, "jpeg", QUALITIES).curve.bpp


def big_result(tag: int) -> AnchorResult:
    """A result whose JSON is large (megabytes), so that a non-atomic write is caught."""
    rows = [{"name": f"image{i}", "tag": tag, "bpp": i / 7} for i in range(20_000)]
    return AnchorResult(rows=rows, curve=RDCurve(name=f"result{tag}", bpp=[1.0], psnr=[30.0]))


def run_at_once(target, count: int) -> list[object]:
    """``target(index)`` in ``count`` threads started together; their results."""
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = target(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.skipif(anchor_cache.fcntl is None, reason="no fcntl: no lock on this platform")
def test_jobs_asking_at_once_measure_once_and_share_the_file(photos, tmp_path, monkeypatch) -> None:
    calls = []

    def slow_anchor_curve(*args, **kwargs) -> AnchorResult:
        calls.append(threading.get_ident())
        threading.Event().wait(0.2)  # the others ask meanwhile
        return big_result(len(calls))

    monkeypatch.setattr(anchor_cache, "anchor_curve", slow_anchor_curve)
    results = run_at_once(
        lambda _: cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path), 4
    )
    assert len(calls) == 1
    assert all(result.rows == results[0].rows for result in results)
    (path,) = cache_files(tmp_path)
    assert json.loads(path.read_text())["rows"] == results[0].rows


def test_concurrent_writers_never_show_a_reader_half_a_file(photos, tmp_path, monkeypatch) -> None:
    """Without the lock (as off POSIX) every job measures and writes the same file; a reader
    polling it meanwhile sees nothing or a whole file, never part of one."""
    monkeypatch.setattr(anchor_cache, "fcntl", None)
    writers, rounds = 4, 2
    barrier = threading.Barrier(writers)

    def racing_anchor_curve(*args, **kwargs) -> AnchorResult:
        barrier.wait()  # every writer measures before any writes
        return big_result(threading.get_ident())

    monkeypatch.setattr(anchor_cache, "anchor_curve", racing_anchor_curve)
    settings = anchor_cache.anchor_settings("jpeg", QUALITIES)
    path = cache_path(tmp_path, "jpeg", anchor_cache.anchor_cache_key(photos, settings))
    done, whole, partial = threading.Event(), [], []

    def poll() -> None:
        while not done.is_set():
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                continue
            (whole if text.endswith(b"}") else partial).append(len(text))

    reader = threading.Thread(target=poll)
    reader.start()
    for _ in range(rounds):  # each round: the file missing, every writer measures and writes
        path.unlink(missing_ok=True)
        run_at_once(
            lambda _: cached_anchor_curve(photos, "jpeg", QUALITIES, cache_dir=tmp_path), writers
        )
    done.set()
    reader.join()
    assert not partial, f"a reader saw {len(partial)} partial files"
    assert whole, "the reader never saw the file"
    rows = json.loads(path.read_text())["rows"]
    assert rows == big_result(rows[0]["tag"]).rows  # one writer's file, whole
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


KODAK_SHAPES = [(512, 768) if index % 3 else (768, 512) for index in range(24)]


def kodak_like(shapes=KODAK_SHAPES, names=None) -> list[tuple[str, torch.Tensor]]:
    """Stand-ins for the Kodak images: their names and sizes (the pixels do not matter)."""
    names = names or [f"kodim{index:02d}" for index in range(1, 25)]
    return [(name, torch.zeros(3, *shape)) for name, shape in zip(names, shapes, strict=True)]


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (kodak_like(), True),
        (kodak_like()[:23], False),
        (kodak_like([(256, 256)] * 24), False),  # crops
        (kodak_like(names=[f"kodim{i:02d}" for i in [1, *range(1, 24)]]), False),  # a repeat
        (kodak_like(names=[f"photo{i:02d}" for i in range(1, 25)]), False),
    ],
    ids=["kodak", "23 images", "crops", "a repeat", "other names"],
)
def test_only_the_24_full_kodak_images_count_as_kodak(images, expected) -> None:
    assert is_kodak(images) is expected


def write_published(folder: Path, codec: str, bpp: list[float], psnr: list[float]) -> None:
    results = {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": [0.9] * len(bpp)}
    (folder / f"{codec}.json").write_text(json.dumps({"name": codec.upper(), "results": results}))


def test_published_anchors_are_read_from_the_folder_for_kodak(tmp_path, monkeypatch) -> None:
    write_published(tmp_path, "jpeg", [0.3, 0.6, 1.2], [26.0, 29.5, 33.0])
    write_published(tmp_path, "vtm", [0.1, 0.4], [30.0, 36.0])
    monkeypatch.setattr(anchor_sources, "cached_anchor_curve", None)  # never measured
    found = evaluation_anchors(kodak_like(), ["jpeg", "vtm"], "published", published_dir=tmp_path)
    assert list(found) == ["jpeg", "vtm"]
    assert found["jpeg"].curve.bpp == [0.3, 0.6, 1.2]
    assert found["vtm"].curve.psnr == [30.0, 36.0]
    assert found["jpeg"].curve.name == "published-jpeg"
    assert found["jpeg"].curve.metadata["licexp"]["eval_set"] == "Kodak"
    assert found["jpeg"].rows == []


def test_published_anchors_name_what_is_missing(tmp_path) -> None:
    write_published(tmp_path, "jpeg", [0.3, 0.6], [26.0, 29.5])
    with pytest.raises(FileNotFoundError, match=r"no published anchor 'webp' in .*\['jpeg'\]"):
        published_anchor("webp", tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder of published anchors at .*nowhere"):
        published_anchor("jpeg", tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text('{"results": {"bpp": [0.3]}}')
    with pytest.raises(ValueError, match="has no bpp and PSNR-RGB points"):
        published_anchor("bad", tmp_path)
    with pytest.raises(ValueError, match=r"anchors_source must be one of \['live', 'published'\]"):
        evaluation_anchors(kodak_like(), ["jpeg"], "pubished")


def test_published_on_other_images_measures_live_with_a_warning(
    photos, tmp_path, monkeypatch, caplog
) -> None:
    asked = []

    def measure(images, codec, *, cache_dir):
        asked.append((codec, cache_dir))
        return AnchorResult(rows=[], curve=RDCurve(name=codec))

    monkeypatch.setattr(anchor_sources, "cached_anchor_curve", measure)
    with caplog.at_level(logging.WARNING, logger="licexp.evaluation.anchor_sources"):
        found = evaluation_anchors(
            photos, ["jpeg", "vtm"], "published", cache_dir=tmp_path, published_dir=tmp_path
        )
    assert list(found) == ["jpeg"] and asked == [("jpeg", tmp_path)]
    assert "needs the 24 Kodak images" in caplog.text and "without vtm" in caplog.text


@pytest.mark.skipif(not KODAK_ANCHOR_DIR.is_dir(), reason=f"no {KODAK_ANCHOR_DIR}")
@pytest.mark.parametrize("codec", ["jpeg", "webp", "jpeg2000", "bpg_444_x265_ycbcr", "vtm"])
def test_compressais_published_kodak_anchors_load(codec) -> None:
    (found,) = evaluation_anchors(kodak_like(), [codec], "published").values()
    published = json.loads((KODAK_ANCHOR_DIR / f"{codec}.json").read_text())["results"]
    assert found.curve.bpp == published["bpp"]
    assert found.curve.psnr == published["psnr-rgb"]
    assert "CompressAI's published Kodak results" in found.curve.description


def test_evaluations_share_the_cached_anchors(photos, tmp_path, monkeypatch) -> None:
    """Two evaluations of one image set, as two jobs of a sweep: the second reads the
    anchors the first measured and writes the same anchor files."""
    codec = informative_codec()
    dataset = [{"name": name, "image": image} for name, image in photos]
    cache = tmp_path / "cache"
    evaluate_codec(codec, dataset, tmp_path / "job0", "job0", ["jpeg"], anchors_cache=cache)
    monkeypatch.setattr(anchor_cache, "anchor_curve", None)  # a call would fail
    evaluate_codec(codec, dataset, tmp_path / "job1", "job1", ["jpeg"], anchors_cache=cache)
    for name in ("anchor_jpeg.json", "anchor_jpeg_per_image.csv"):
        assert (tmp_path / "job0" / name).read_text() == (tmp_path / "job1" / name).read_text()


def test_train_and_eval_cache_live_anchors_under_the_logs() -> None:
    train = compose_train()
    evaluation = compose_train(config_name="eval")
    for anchors in (train.evaluation, evaluation):
        assert anchors.anchors_source == "live"
        assert anchors.published_anchors is None
    expected = f"{train.paths.log_dir}/cache/anchors"
    assert train.evaluation.anchors_cache == evaluation.anchors_cache == expected
