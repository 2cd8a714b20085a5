"""Every export written and read back: CSV, JSON, NPZ, PNG and the zip bundle compare equal to what went
in; static figures come from the real Chromium through kaleido."""

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

from glom_viz import export, render
from glom_viz.errors import ExportError

HAS_CHROMIUM = export.find_browser() is not None


def read_csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


@pytest.fixture
def labels():
    return np.random.default_rng(0).integers(-1, 9, (3, 2, 12))  # 3 steps, 2 levels, grid (3, 4)


def test_labels_csv_reads_back_equal(labels):
    rows = read_csv(export.labels_to_csv(labels, (3, 4)))
    assert list(rows[0]) == ["step", "level", "patch", "row", "col", "island"]
    assert len(rows) == labels.size
    back = np.full(labels.shape, 99)
    for r in rows:
        patch = int(r["patch"])
        assert (int(r["row"]), int(r["col"])) == divmod(patch, 4)
        back[int(r["step"]), int(r["level"]), patch] = int(r["island"])
    np.testing.assert_array_equal(back, labels)


def test_labels_csv_of_one_level(labels):
    rows = read_csv(export.labels_to_csv(labels[:, 1], (3, 4), level=5))
    assert {r["level"] for r in rows} == {"5"}
    back = np.array([int(r["island"]) for r in rows]).reshape(3, 12)
    np.testing.assert_array_equal(back, labels[:, 1])
    with pytest.raises(ExportError, match="grid"):
        export.labels_to_csv(labels, (4, 4))


@pytest.fixture
def measures():
    return {
        level: [{"n_islands": np.int64(3 + level), "within_cosine": np.float32(0.5 + 0.125 * t),
                 "change": float("nan") if t == 0 else 0.25, "silhouette": None} for t in range(3)]
        for level in (0, 1)
    }


def test_measures_csv_reads_back_equal(measures):
    rows = read_csv(export.measures_to_csv(measures))
    assert list(rows[0]) == ["level", "step", "n_islands", "within_cosine", "change", "silhouette"]
    assert len(rows) == 6
    for r in rows:
        source = measures[int(r["level"])][int(r["step"])]
        assert int(r["n_islands"]) == source["n_islands"]
        assert float(r["within_cosine"]) == pytest.approx(float(source["within_cosine"]))
        assert r["silhouette"] == ""
        assert r["change"] == ("" if int(r["step"]) == 0 else "0.25")


def test_measures_json_reads_back_equal(measures):
    document = json.loads(export.measures_to_json(measures, level_names=["parts", "wholes"]))
    assert document["level_names"] == ["parts", "wholes"]
    assert set(document["measures"]) == {"0", "1"}
    for level, steps in measures.items():
        for t, source in enumerate(steps):
            back = document["measures"][str(level)][t]
            assert back["n_islands"] == int(source["n_islands"])
            assert back["within_cosine"] == pytest.approx(float(source["within_cosine"]))
            assert back["change"] == (None if t == 0 else 0.25)
            assert back["silhouette"] is None


def test_states_npz_reads_back_equal(labels):
    states = torch.randn(3, 1, 12, 2, 8)
    coords = np.random.default_rng(1).normal(size=(3, 12, 2)).astype(np.float32)
    data = export.states_to_npz(states, labels=labels, coords=coords, bf16=states.to(torch.bfloat16))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["bf16", "coords", "labels", "states"]
        np.testing.assert_array_equal(npz["states"], states.numpy())
        np.testing.assert_array_equal(npz["labels"], labels)
        np.testing.assert_array_equal(npz["coords"], coords)
        np.testing.assert_array_equal(npz["bf16"], states.to(torch.bfloat16).float().numpy())
    with pytest.raises(ExportError, match="object"):
        export.states_to_npz(np.array([{"a": 1}], dtype=object))


def test_image_png_decodes_to_the_same_pixels():
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(export.image_to_png(rgb))))
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ExportError):
        export.image_to_png(rgb / 255.0)


def test_bundle_manifest_lists_every_file_with_its_hash(labels, measures):
    files = {
        "labels.csv": export.labels_to_csv(labels, (3, 4)),
        "measures.json": export.measures_to_json(measures),
        "figures/overlay.png": export.image_to_png(np.zeros((4, 4, 3), np.uint8)),
    }
    manifest = export.provenance({"dim": 32, "levels": 2}, "c" * 64, "e" * 64, seed=3, iters=2,
                                 method="kmeans", params={"n_islands": None}, level=1)
    bundle = export.make_bundle(files, manifest)
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert sorted(archive.namelist()) == sorted([*files, "manifest.json"])
        document = json.loads(archive.read("manifest.json"))
        listed = {entry["name"]: entry for entry in document["files"]}
        assert set(listed) == set(files)
        for name, data in files.items():
            assert archive.read(name) == data
            assert listed[name]["sha256"] == export.sha256_bytes(archive.read(name))
            assert listed[name]["bytes"] == len(data)
    for key in ("created", "model_config", "checkpoint_sha256", "image_sha256", "islands_seed", "iters", "method",
                "params", "packages", "level"):
        assert key in document
    assert "model_seed" not in document and "seed" not in document, "a checkpoint's model has no seed to report"
    assert document["packages"]["numpy"] == np.__version__
    assert document["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert export.make_bundle(files, manifest) == bundle  # same inputs, same bytes


def test_provenance_takes_full_hashes_and_a_seed_only_for_seeded_weights():
    seeded = export.provenance({}, None, "e" * 64, 0, 2, "kmeans", {}, model_seed=7)
    assert seeded["checkpoint_sha256"] is None and seeded["model_seed"] == 7 and seeded["islands_seed"] == 0
    for bad in ("e" * 32, "E" * 64, "random:0", "x" * 64):
        with pytest.raises(ExportError, match="full sha256"):
            export.provenance({}, "c" * 64, bad, 0, 2, "kmeans", {})
        with pytest.raises(ExportError, match="full sha256"):
            export.provenance({}, bad, "e" * 64, 0, 2, "kmeans", {})
    with pytest.raises(ExportError, match="model_seed"):
        export.provenance({}, "c" * 64, "e" * 64, 0, 2, "kmeans", {}, model_seed=3)
    with pytest.raises(ExportError, match="model_seed"):
        export.provenance({}, None, "e" * 64, 0, 2, "kmeans", {})


def test_run_bundle_holds_the_run_and_says_how_it_was_made(labels, measures):
    states = np.random.default_rng(1).normal(size=(3, 12, 2, 4)).astype(np.float16)
    image = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    overlay = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    provenance = export.provenance({"dim": 4, "levels": 2}, "c" * 64, "e" * 64, seed=0, iters=2,
                                   method="kmeans", params={"n_islands": None})
    bundle = export.run_bundle(states, labels, (3, 4), measures, image=image, overlay=overlay, step=2, level=1,
                               provenance=provenance, truth="objects")
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        document = json.loads(archive.read("manifest.json"))
        assert {entry["name"] for entry in document["files"]} == set(archive.namelist()) - {"manifest.json"}
        assert document["step"] == 2 and document["level"] == 1 and document["truth"] == "objects"
        assert document["states_dtype"] == "float16" and document["image_sha256"] == "e" * 64
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read("islands-level1-step2.png")))),
                                      overlay)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read("input.png")))), image)
        with np.load(io.BytesIO(archive.read("states.npz")), allow_pickle=False) as stored:
            np.testing.assert_array_equal(stored["states"], states)
            np.testing.assert_array_equal(stored["labels"], labels)
        assert archive.read("labels.csv") == export.labels_to_csv(labels, (3, 4))
        assert json.loads(archive.read("measures.json"))["truth"] == "objects"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "manifest.json", "a//b"])
def test_bundle_refuses_unsafe_names(name):
    with pytest.raises(ExportError, match="relative path"):
        export.make_bundle({name: b"x"}, {})


def test_provenance_does_not_import_streamlit():
    code = ("import sys, glom_viz.export as e; "
            "p = e.provenance({}, 'c' * 64, 'e' * 64, 0, 1, 'kmeans', {}); "
            "assert 'streamlit' not in sys.modules, 'streamlit imported'; "
            "assert 'packages' in p and 'streamlit' in p['packages']")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def small_figure():
    return go.Figure(go.Scatter(x=[0, 1, 2], y=[2, 0, 1], marker=dict(color=render.PALETTE[0])),
                     layout=dict(width=320, height=200))


def test_html_is_self_contained_and_interactive():
    html = export.figure_to_html(small_figure()).decode("utf-8")
    assert "<html>" in html[:100] and html.rstrip().endswith("</html>")
    assert "Plotly.newPlot" in html
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inline, works offline


def test_no_browser_is_said_clearly(monkeypatch):
    export.stop_export_server()
    monkeypatch.setattr(export, "find_browser", lambda: None)
    with pytest.raises(ExportError, match="apt-get install chromium"):
        export.figure_to_png(small_figure())
    with pytest.raises(ExportError, match="Chromium"):
        export.figure_to_svg(small_figure())
    assert not export.export_server_running()


@pytest.mark.skipif(not HAS_CHROMIUM, reason="no Chromium-based browser installed (apt-get install chromium)")
def test_real_png_and_svg_export():
    png = export.figure_to_png(small_figure(), scale=2)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (640, 400)
    # the marker colour is really drawn
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - render.PALETTE_RGB[0]).sum(axis=1) < 30).any()
    root = ET.fromstring(export.figure_to_svg(small_figure()))
    assert root.tag.endswith("svg") and root.get("width") == "320"
    assert export.export_server_running()  # kept warm for the next export


@pytest.mark.skipif(not HAS_CHROMIUM, reason="no Chromium-based browser installed (apt-get install chromium)")
def test_island_map_exports_with_its_overlay():
    image = np.full((32, 32, 3), 200, np.uint8)
    labels = np.repeat([0, 1], 8)  # top half island 0, bottom half island 1
    fig = render.island_map_figure(image, labels, (4, 4), title=None)
    fig.update_layout(width=200, height=200, margin=dict(l=0, r=0, t=0, b=0))
    shown = np.asarray(Image.open(io.BytesIO(export.figure_to_png(fig, scale=1))).convert("RGB")).astype(int)
    overlay = render.draw_islands(image, labels, (4, 4)).astype(int)
    for row, island_pixel in ((50, overlay[8, 16]), (150, overlay[24, 16])):
        assert np.abs(shown[row, 100] - island_pixel).max() <= 3
