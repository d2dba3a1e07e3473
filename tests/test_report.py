"""The HTML report: self-contained (inline PNG and SVG), with tables, plots, image grids and the config."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image

from erasekit import erase
from erasekit.errors import EvaluationError
from erasekit.eval import EvalConfig, compare, evaluate
from erasekit.eval.results import Results
from erasekit.eval.sampling import ImageCache
from erasekit.models import load_pipeline
from erasekit.report import THUMB, image_grids, line_plot, render, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_path):
    """A run with the base and two UCE edits (1 and 2 concepts erased)."""
    root = tmp_path_factory.mktemp("report")
    pipe = load_pipeline(tiny_path)
    edits = {}
    for name, concepts in {"uce-1": ["dog"], "uce-2": ["dog", "cat"]}.items():
        edits[name] = str(erase(pipe, concepts, method="uce").save(root / f"{name}.safetensors"))
    csv = root / "prompts.csv"
    rows = [f"a photo of a {c},{s},{c},direct,object,{c}" for c in ("dog", "cat", "car") for s in range(2)]
    csv.write_text("prompt,seed,concept,role,family,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    config = EvalConfig(
        model=str(tiny_path),
        prompts=[str(csv)],
        edits=edits,
        classifier="erasekit.eval.testing:PixelClassifier",
        sampling_steps=2,
        size=16,
        output=str(root / "run"),
        cache_dir=str(root / "cache"),
    )
    evaluate(config, pipe=pipe, progress=False)
    return root / "run"


def test_report_is_one_self_contained_page(run_dir):
    page = render(run_dir)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["'](https?:|file:|/)""", page)  # nothing loaded from outside
    images = re.findall(r'src="data:image/png;base64,', page)
    assert len(images) == 3 * 6  # every row of every variant (3 groups x 2 rows shown, 3 variants)
    assert page.count("<svg") == 1  # accuracy vs number of erased concepts, for the object family
    assert "H_o" in page or "H (%)" in page
    for text in ("Headline numbers", "uce-1", "uce-2", "dog", "Config and protocol", "one CPU torch.Generator"):
        assert text in page


def test_accuracy_plot_puts_each_variant_at_its_number_of_erased_concepts(run_dir):
    page = render(run_dir)
    svg = page[page.index("<svg") : page.index("</svg>")]
    for tick in (">0<", ">1<", ">2<"):
        assert tick in svg


def test_line_plot_draws_one_polyline_and_legend_entry_per_series():
    svg = line_plot({"Acc erase": [(0, 100.0), (1, 5.0)], "Acc retain": [(0, 90.0), (1, 88.0)]}, "n", "acc", "t")
    assert svg.count("<polyline") == 2 and "Acc retain" in svg


def test_write_report_defaults_to_report_html_in_the_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html" and path.read_text(encoding="utf-8").endswith("</html>\n")


def test_compare_puts_runs_and_variants_side_by_side(run_dir):
    header, rows = compare([run_dir, run_dir / "results.json"], include="acc.erase")
    assert header == ["metric", *(["run/base", "run/uce-1", "run/uce-2"] * 2)]
    assert rows and all(row[0].endswith("acc.erase") for row in rows)
    assert rows[0][1:4] == rows[0][4:7]


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(EvaluationError, match="not an evaluation run"):
        render(tmp_path)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    shot = tmp_path / "report.png"
    page = write_report(run_dir)
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,1600",
         page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_explicit_images_are_hidden_unless_asked_and_large_images_are_downscaled(tmp_path):
    key = "a" * 64
    ImageCache(tmp_path).save(key, Image.new("RGB", (512, 512), "red"))
    results = Results({"cache_dir": str(tmp_path), "variants": {"base": {}}})
    rows = [
        {"set": s, "concept": c, "family": f, "prompt": "p", "seed": 0, "variants": {"base": {"key": key, "role": r}}}
        for s, c, f, r in [("i2p", "nudity", "explicit", "indirect"), ("mine", "car", "object", "retain")]
    ]
    page = image_grids(results, rows)
    assert page.count("<img") == 1 and "explicit: hidden" in page
    assert image_grids(results, rows, show_explicit=True).count("<img") == 2
    data = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (2 * THUMB, 2 * THUMB)
