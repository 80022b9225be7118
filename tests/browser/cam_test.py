"""Grad-CAM heatmaps as a person sees them, in a real headless Chromium (Playwright for Python, the
system's Chromium): `finetune serve`'s page with "show heatmaps" on, and the `interpret` report
with its hover from the predicted class's map to the actual class's.

Usage: cam_test.py URL MODEL REPORT.html IMAGE [IMAGE...] [--screenshots DIR]
Run by tests/cam.rs. Prints one JSON summary line; exits non-zero on any mismatch. With
--screenshots, writes DIR/cam-page.png and DIR/cam-report.png (docs/).
"""
import argparse
import io
import json
import os
import sys
import urllib.request

import numpy as np
from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium")


def cam_api(url, model, body):
    """The API's own overlay for these bytes: (PNG bytes, explained label)."""
    req = urllib.request.Request(
        f"{url}/predictions/{model}?cam=1", data=body, headers={"Content-Type": "image/jpeg"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "image/png", r.headers["Content-Type"]
        return r.read(), urllib.parse.unquote(r.headers["X-Cam-Label"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("model")
    p.add_argument("report")
    p.add_argument("images", nargs="+")
    p.add_argument("--screenshots")
    a = p.parse_args()
    url = a.url.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # 1. The page: with the toggle on, each result carries the overlay the API gives for the
        # same bytes, and names the class it explains (the top bar's).
        page.goto(url + "/")
        page.wait_for_selector(f"#model option[value='{a.model}']", state="attached")
        page.check("#cam-toggle")
        page.set_input_files("#file", a.images)
        page.wait_for_function(
            "document.querySelectorAll('article[data-done]').length >= %d" % len(a.images))
        cards = page.query_selector_all("article[data-done]")
        for card in cards:
            assert card.get_attribute("data-done") == "1", card.inner_text()
            assert card.get_attribute("data-cam") == "1", card.inner_text()
            name = card.query_selector("img").get_attribute("alt")
            body = open(next(i for i in a.images if os.path.basename(i) == name), "rb").read()
            png, label = cam_api(url, a.model, body)
            shown = card.eval_on_selector(
                "img.cam", """async img => { await img.decode();
                  const b = await (await fetch(img.src)).arrayBuffer();
                  return {bytes: Array.from(new Uint8Array(b)), w: img.naturalWidth, h: img.naturalHeight,
                          visible: img.getBoundingClientRect().width > 100}; }""")
            # The page's requests may share the worker's batches: a pixel may move by a level.
            diff = np.abs(np.asarray(Image.open(io.BytesIO(bytes(shown["bytes"]))), dtype=int)
                          - np.asarray(Image.open(io.BytesIO(png)), dtype=int))
            assert diff.max() <= 2, (name, diff.max())
            assert shown["visible"], "the heatmap is too small to read"
            top = card.query_selector(".bar.top").get_attribute("data-label")
            assert label == top, (label, top)
            assert f"“{label}”" in card.query_selector("figcaption").inner_text()
        if a.screenshots:
            page.screenshot(path=os.path.join(a.screenshots, "cam-page.png"), full_page=True)

        # 2. The report: the predicted class's map shows; hovering swaps in the actual class's.
        page.goto("file://" + os.path.abspath(a.report))
        figs = page.query_selector_all("#top-losses figure")
        assert figs, "no top losses"
        for f in figs[:3]:
            pred, actual = f.query_selector(".cam.predicted"), f.query_selector(".cam.actual")
            assert pred.is_visible() and not actual.is_visible()
            f.query_selector(".cams").hover()
            assert actual.is_visible() and not pred.is_visible()
            assert actual.get_attribute("alt") == "heatmap of " + f.get_attribute("data-actual")
        page.mouse.move(0, 0)
        if a.screenshots:
            page.screenshot(path=os.path.join(a.screenshots, "cam-report.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 900})
        assert not errors, errors
        browser.close()
    print(json.dumps({"ok": True, "cards": len(cards), "report_figures": len(figs)}))


if __name__ == "__main__":
    import urllib.parse
    try:
        main()
    except AssertionError as e:
        print(f"cam browser test failed: {e!r}", file=sys.stderr)
        sys.exit(1)
