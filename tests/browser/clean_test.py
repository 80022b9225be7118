"""Drives `finetune clean`'s page in a real headless Chromium (Playwright for Python, the system's
Chromium: no browser download): keys and buttons delete, move and undo; the cards are the API's items
in loss order; two tabs acting on the same image at once leave one action done and one refused.

Usage: clean_test.py URL DATA [--screenshot PNG]
Run by tests/clean.rs (`browser_page_cleans_with_keys_and_buttons`), which then checks the folder.
Prints one JSON line: {"ok": true, "deleted": [paths], "moved": [{"from", "to"}]}.
"""
import argparse
import json
import os
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("FINETUNE_CHROMIUM", "/usr/bin/chromium")


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.load(r)


def items(url, **q):
    return get(url, "/api/items?" + urllib.parse.urlencode(q))


def card_ids(page):
    return [int(x) for x in page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)")]


def selected_id(page):
    return int(page.get_attribute(".card.selected", "data-id"))


def wait_gone(page, id_):
    page.wait_for_selector(f'.card[data-id="{id_}"]', state="detached", timeout=10000)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("data")
    p.add_argument("--screenshot")
    a = p.parse_args()
    url = a.url
    deleted, moved = [], []
    by_id = {i["id"]: i for i in items(url, split="all")}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector(".card")
        classes = get(url, "/api/classes")
        assert page.input_value("#class") == classes[0]
        # The cards are the API's items for that class, largest loss first.
        api = items(url, **{"class": classes[0], "split": "all", "sort": "loss"})
        assert card_ids(page) == [i["id"] for i in api], (card_ids(page)[:5], api[:2])
        losses = [i["loss"] for i in api]
        assert losses == sorted(losses, reverse=True)
        if a.screenshot:
            page.screenshot(path=a.screenshot)

        # Keyboard: → selects the second card, Delete deletes it.
        page.keyboard.press("ArrowRight")
        victim = selected_id(page)
        assert victim == api[1]["id"]
        page.keyboard.press("Delete")
        wait_gone(page, victim)
        deleted.append(by_id[victim]["path"])
        page.wait_for_function("document.getElementById('changes').textContent === '1'")
        # A digit moves the selected card to that class (2: the second class).
        target = selected_id(page)
        page.keyboard.press("2")
        wait_gone(page, target)
        now = [i for i in items(url, **{"class": classes[1]}) if i["id"] == target]
        assert now, "moved into the second class"
        moved.append({"from": by_id[target]["path"], "to": now[0]["path"]})
        # Buttons: Delete on the first card, then "Move to…" the third class on the next one.
        first = card_ids(page)[0]
        page.click(f'.card[data-id="{first}"] button[data-act="delete"]')
        wait_gone(page, first)
        deleted.append(by_id[first]["path"])
        nxt = card_ids(page)[0]
        page.select_option(f'.card[data-id="{nxt}"] select[data-act="move"]', classes[2])
        wait_gone(page, nxt)
        page.wait_for_function("document.getElementById('changes').textContent === '4'")
        # u undoes that last move: the card is back, the file at its old path.
        page.keyboard.press("u")
        page.wait_for_selector(f'.card[data-id="{nxt}"]')
        back = [i for i in items(url, **{"class": classes[0]}) if i["id"] == nxt]
        assert back and back[0]["path"] == by_id[nxt]["path"], back
        page.wait_for_function("document.getElementById('changes').textContent === '3'")
        assert get(url, "/api/summary")["changes"] == 3

        # Two tabs on the same first card, deleting at once: one deletes, the other is told.
        page2 = browser.new_page()
        page2.goto(url + "/")
        page2.wait_for_selector(".card")
        same = card_ids(page)[0]
        assert card_ids(page2)[0] == same
        page.click(f'.card[data-id="{same}"] button[data-act="delete"]', no_wait_after=True)
        page2.click(f'.card[data-id="{same}"] button[data-act="delete"]', no_wait_after=True)
        settled = (
            "document.getElementById('status').textContent.includes('already deleted') || "
            "!document.querySelector('.card[data-id=\"%d\"]')" % same
        )
        page.wait_for_function(settled)
        page2.wait_for_function(settled)
        deleted.append(by_id[same]["path"])
        statuses = [page.text_content("#status"), page2.text_content("#status")]
        assert sum("already deleted" in s for s in statuses) == 1, statuses
        assert get(url, "/api/summary")["changes"] == 4

        # The split selector shows that split only.
        page.select_option("#split", "valid")
        page.wait_for_function(
            "[...document.querySelectorAll('.card small')].every(s => s.textContent.startsWith('valid'))"
        )
        n_valid = len(items(url, **{"class": classes[0], "split": "valid"}))
        page.wait_for_function(f"document.querySelectorAll('.card').length === {n_valid}")
        browser.close()
    print(json.dumps({"ok": True, "deleted": deleted, "moved": moved}))


if __name__ == "__main__":
    main()
