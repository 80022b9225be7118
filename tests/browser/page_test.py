"""Drives `finetune serve`'s web page in a real headless Chromium (Playwright for Python, the system's
Chromium: no browser download) and checks that what it shows is what the API answers.

Usage: page_test.py URL MODEL IMAGE [IMAGE...] [--screenshot PNG]
Run by tests/serve.rs (`browser_page_matches_the_api`). Prints one JSON summary line; exits non-zero on
any mismatch. Every input the page offers is exercised: the file chooser (by keyboard), drag and drop,
paste, and the live webcam through Chromium's fake camera.
"""
import argparse
import base64
import io
import json
import os
import sys
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium")


def api(url, model, body, ctype):
    """The API's own answer for these exact bytes (all classes)."""
    req = urllib.request.Request(
        f"{url}/predictions/{model}?top_k=1000", data=body, headers={"Content-Type": ctype}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def shown(card):
    """Labels and scores a result card shows, in order, with the percentage text next to each bar."""
    return card.eval_on_selector_all(
        ".bar",
        """bars => bars.map(b => ({label: b.dataset.label, score: parseFloat(b.dataset.score),
              text: b.querySelector('.lbl span:last-child').textContent,
              width: parseFloat(b.querySelector('.fill').style.width)}))""",
    )


def check_card(card, answer, what):
    got = shown(card)
    assert [g["label"] for g in got] == [a["label"] for a in answer], (what, got, answer)
    for g, a in zip(got, answer):
        assert abs(g["score"] - a["score"]) < 1e-6, (what, g, a)
        assert g["text"] == f"{100 * a['score']:.1f}%", (what, g, a)
        assert abs(g["width"] - 100 * a["score"]) < 0.01, (what, g, a)
    scores = [g["score"] for g in got]
    assert scores == sorted(scores, reverse=True), (what, scores)
    top = card.query_selector(".bar.top")
    assert top is not None and top.get_attribute("data-label") == answer[0]["label"], what
    # The "unknown" notice shows exactly when the API says so, with its score.
    notice = card.query_selector("[data-unknown='1']")
    if answer[0].get("unknown"):
        assert notice is not None, (what, answer[0])
        assert f"{answer[0]['unknown_score']:.3f}" in notice.inner_text(), (what, notice.inner_text())
        UNKNOWN_SEEN.append(what)
    else:
        assert notice is None, (what, answer[0])


UNKNOWN_SEEN = []


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("model")
    p.add_argument("images", nargs="+")
    p.add_argument("--screenshot")
    a = p.parse_args()
    url = a.url.rstrip("/")
    photos = [open(x, "rb").read() for x in a.images]
    sent = []  # (request body, content type, answer) of every /predictions call the page made

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--disable-gpu",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # Listening from the start turns Chromium's file-chooser interception on before any click:
        # turned on only inside expect_file_chooser, it races the key press and misses the dialog.
        page.on("filechooser", lambda fc: None)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Every /predictions call the page makes, recorded in the page: the bytes sent, their type, the answer.
        record = (
            """(() => {
              const real = window.fetch;
              window.__sent = [];
              window.fetch = async (input, init) => {
                const res = await real(input, init);
                if (String(input).includes('/predictions/') && init && init.body instanceof Blob) {
                  const bytes = new Uint8Array(await init.body.arrayBuffer());
                  let bin = ''; for (const b of bytes) bin += String.fromCharCode(b);
                  const answer = await res.clone().json();
                  window.__sent.push([btoa(bin), init.headers['Content-Type'], answer]);
                }
                return res;
              };
            })()"""
        )

        def last_sent():
            b64, ctype, answer = page.evaluate("window.__sent[window.__sent.length - 1]")
            sent.append(1)
            return base64.b64decode(b64), ctype, answer

        page.goto(url + "/")
        # Installed after load (the page looks fetch up at each call); an init script would also do,
        # but with one Chromium's file chooser never opened.
        page.evaluate(record)
        page.wait_for_selector(f"#model option[value='{a.model}']", state="attached")
        page.wait_for_selector("#card-list dd")
        card_text = page.inner_text("#card")
        assert "Test accuracy" in card_text, card_text
        page.wait_for_selector("#confusion img")
        assert a.model in page.inner_text("#curl")

        def wait_card(source, n):
            page.wait_for_function(
                f"document.querySelectorAll('article[data-source={source}][data-done]').length >= {n}"
            )
            card = page.query_selector(f"article[data-source={source}]")  # newest first
            assert card.get_attribute("data-done") == "1", card.inner_text()
            return card

        # 1. The file chooser, opened from the keyboard: Tab to the drop zone, press Enter.
        page.focus("#drop")
        with page.expect_file_chooser() as fc:
            page.keyboard.press("Enter")
        fc.value.set_files(a.images[0])
        card = wait_card("file", 1)
        body, ctype, answer = last_sent()
        assert body == photos[0], "a small image must be sent untouched"
        assert api(url, a.model, photos[0], ctype) == answer
        check_card(card, answer, "file")

        # 2. Drag and drop of several files at once.
        def data_transfer_js(event):
            return f"""([files, sel]) => {{
                const dt = new DataTransfer();
                for (const [b64, name] of files) {{
                  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                  dt.items.add(new File([bytes], name, {{type: 'image/jpeg'}}));
                }}
                const target = sel ? document.querySelector(sel) : document;
                target.dispatchEvent({event});
            }}"""

        # Unique names: the thumbnail's alt text tells which photo a card is about.
        drops = [(base64.b64encode(x).decode(), f"drop{i}.jpg") for i, x in enumerate(photos[1:3])]
        page.evaluate(
            data_transfer_js("new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})"),
            [drops, "#drop"],
        )
        wait_card("drop", len(drops))
        for card in page.query_selector_all("article[data-source=drop]"):
            name = card.query_selector("img").get_attribute("alt")
            body = photos[1 + int(name[len("drop"):-len(".jpg")])]
            check_card(card, api(url, a.model, body, "image/jpeg"), "drop " + name)

        # 3. Paste.
        page.evaluate(
            data_transfer_js("new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true})"),
            [[(base64.b64encode(photos[-1]).decode(), "pasted.jpg")], None],
        )
        card = wait_card("paste", 1)
        check_card(card, api(url, a.model, photos[-1], "image/jpeg"), "paste")

        # 4. A large photo is downscaled in the browser before upload.
        from PIL import Image

        big = Image.open(io.BytesIO(photos[0])).convert("RGB").resize((2000, 1500))
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=90)
        page.set_input_files("#file", files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()}])
        card = wait_card("file", 2)
        body, ctype, answer = last_sent()
        up = Image.open(io.BytesIO(body))
        assert up.format == "JPEG" and max(up.size) == 1024, (up.format, up.size)
        assert api(url, a.model, body, ctype) == answer
        check_card(card, answer, "downscaled")

        # 5. Live webcam through Chromium's fake camera (localhost is a secure context).
        assert page.is_enabled("#webcam-start")
        page.click("#webcam-start")
        page.wait_for_function("document.getElementById('video').videoWidth > 0")
        page.click("#snap")
        card = wait_card("webcam", 1)
        body, ctype, answer = last_sent()
        assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8", ctype
        assert api(url, a.model, body, ctype) == answer
        check_card(card, answer, "webcam")
        page.click("#webcam-stop")

        # Latency is shown for each result.
        meta = page.inner_text("article[data-source=webcam] .latency")
        assert "ms total" in meta and "ms server" in meta, meta
        assert not errors, errors
        if a.screenshot:
            page.click("#clear")
            page.set_input_files("#file", a.images[:4])
            page.wait_for_function("document.querySelectorAll('article[data-done]').length >= %d" % min(4, len(a.images)))
            page.screenshot(path=a.screenshot, full_page=True)
        browser.close()
    print(json.dumps({"ok": True, "checked_requests": len(sent), "unknown_cards": len(UNKNOWN_SEEN)}))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"page test failed: {e!r}", file=sys.stderr)
        sys.exit(1)
