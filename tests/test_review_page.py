"""The quality score and the review page as users meet them: batch inference over a small folder of real radiographs
(one of them with its grey levels inverted, a broken file beside them), ``report.csv``'s ``qc_score``, and
``review.html`` opened from disk in headless Chromium: thumbnails drawn, worst score first, filters, links."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLE, REPO, run_bundle
from PIL import Image

sys.path.insert(0, str(REPO))
from pacs.stack import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

pytestmark = pytest.mark.slow
NAMES = ["CHNCXR_0601_1.png", "CHNCXR_0603_1.png", "CHNCXR_0605_1.png", "MCUCXR_0196_1.png"]


@pytest.fixture(scope="module")
def run_output(real_trained_model, tmp_path_factory) -> Path:
    from conftest import REAL_SAMPLE

    folder = tmp_path_factory.mktemp("review_inputs")
    for name in NAMES:
        shutil.copy(REAL_SAMPLE / "images" / name, folder / name)
    with Image.open(REAL_SAMPLE / "images" / NAMES[0]) as image:
        Image.fromarray(255 - np.asarray(image.convert("L"))).save(folder / "inverted.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path_factory.mktemp("review_out")
    run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(folder),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(real_trained_model["weights"]),
        "--num_workers",
        "0",
        # the inverted image is here for its quality score: the frontal-chest check would skip it
        # (tests/test_frontal_chest_check.py)
        "--inputs#frontal_chest_only",
        "false",
        expect=3,  # one input failed
    )
    return out


def rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv") as f:
        return {row["input"]: row for row in csv.DictReader(f)}


def test_every_mask_has_a_quality_score_and_an_inverted_image_scores_lower(run_output):
    report = rows(run_output)
    review_below = json.loads((BUNDLE / "configs" / "inference.json").read_text())["quality"]["review_below"]
    for name in [*NAMES, "inverted.png"]:
        assert report[name]["status"] == "ok"
        assert 0 <= float(report[name]["qc_score"]) <= 1, report[name]
        assert ("review" in report[name]["quality_flags"]) == (float(report[name]["qc_score"]) < review_below)
    assert report["broken.png"]["status"] == "failed" and report["broken.png"]["qc_score"] == ""
    assert float(report["inverted.png"]["qc_score"]) < float(report[NAMES[0]]["qc_score"])


def test_the_review_page_shows_the_worst_masks_first_with_filters_and_links(run_output):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extras)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or bash pacs/setup_pacs.sh)")
    page_file = run_output / "review.html"
    assert page_file.is_file() and (run_output / "review_rows.js").is_file()
    text = page_file.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    report = rows(run_output)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(page_file.as_uri())
            page.wait_for_function("[...document.images].length > 0 && [...document.images].every(i => i.complete)")
            cards = page.locator(".card")
            assert cards.count() == 5  # the ok inputs; the failed one is listed apart, with its reason
            widths = page.eval_on_selector_all("#grid img", "images => images.map(i => i.naturalWidth)")
            assert all(w > 0 for w in widths), widths  # every thumbnail decoded
            scores = [float(s) for s in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.qc)")]
            assert scores == sorted(scores)
            assert scores[0] == min(float(r["qc_score"]) for r in report.values() if r["qc_score"])
            assert "broken.png" in page.locator("#problems").inner_text()
            # every link on the cards opens a file of the run
            hrefs = page.eval_on_selector_all(".card a", "links => links.map(a => a.getAttribute('href'))")
            assert hrefs and all((run_output / h).is_file() for h in hrefs), hrefs
            # filters: failed inputs only, then a flag
            page.select_option("#status", "failed")
            assert page.locator(".card").count() == 0 and "broken.png" in page.locator("#problems").inner_text()
            page.select_option("#status", "")
            flags = [f for f in page.eval_on_selector_all("#flag option", "o => o.map(x => x.value)") if f]
            assert flags, "no quality flag offered"  # the inverted image's mask is flagged at least
            ok = [r for r in report.values() if r["status"] == "ok"]
            counts = {f: sum(f in r["quality_flags"].split(";") for r in ok) for f in flags}
            rarest = min(counts, key=counts.get)
            page.select_option("#flag", rarest)
            assert page.locator(".card").count() == counts[rarest] >= 1
            page.screenshot(path=str(run_output / "review_screenshot.png"))
        finally:
            browser.close()
