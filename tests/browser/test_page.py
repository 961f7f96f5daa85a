"""The upload page in a real browser: Debian's chromium driven by Playwright, against the real servers.

Chromium comes from `scripts/test-tools.sh` (run by `make test`); Playwright never downloads a browser.
The page is served by the shared `stack` (tests/conftest.py): a real gunicorn talking to a real model server
on free loopback ports. Each behaviour is checked at a desktop size and at a phone's (touch), with and
without JavaScript where the page works both ways. ZEROLENS_SCREENSHOTS=1 also writes the README's
screenshots into docs/screenshots/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.servers import MODEL_DIR, ROOT, Proc

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000  # the longest any condition is waited on: a busy 2-core CI machine, not a fixed sleep
SIZES = {  # the browser context of each screen size: a laptop, and a phone held upright
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "mobile": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
UNSURE = "Not sure — this may be something it does not know."
SCREENSHOTS = ROOT / "docs" / "screenshots"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/browser-setup.sh", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def base_url(stack: tuple[Proc, Proc]) -> str:
    """Where the shared stack's web tier serves the page."""
    _, web = stack
    return f"http://127.0.0.1:{web.ports['http']}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless chromium, launched by Playwright."""
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real photo (scikit-image's coffee, a JPEG), a plain grey picture the model is unsure about, and bad
    uploads: a text file named .jpg, a JPEG cut off after 2,000 bytes, and one over the 20 MB limit."""
    from skimage import data

    tmp = tmp_path_factory.mktemp("uploads")
    coffee = tmp / "coffee.jpg"
    Image.fromarray(data.coffee()).save(coffee, "JPEG", quality=92)
    grey = tmp / "grey.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(grey, "PNG")
    text = tmp / "notes.jpg"
    text.write_text("this is not a photo, just text named .jpg\n" * 20)
    broken = tmp / "broken.jpg"
    broken.write_bytes(coffee.read_bytes()[:2000])
    large = tmp / "large.jpg"
    large.write_bytes(coffee.read_bytes() + os.urandom(21 * 1024 * 1024))
    return {"coffee": coffee, "grey": grey, "text": text, "broken": broken, "large": large}


def new_page(browser: Browser, size: str = "desktop", **context_options) -> tuple[Page, list[str], list[str]]:
    """A page in a fresh context at a screen size, with its console errors and uncaught exceptions."""
    context = browser.new_context(**SIZES[size], **context_options)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    console_errors: list[str] = []
    page_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    return page, console_errors, page_errors


def cards(page: Page) -> Locator:
    """The result cards, one per photo, in upload order."""
    return page.locator("#result-grid > li.result-card")


def choose(page: Page, *photos: Path, javascript: bool = True) -> None:
    """Choose the photos: with JavaScript they are classified at once; without, the form is posted."""
    page.set_input_files("#image-input", list(photos))
    if not javascript:
        page.click("#classify-button")  # a plain form post to /uploader: the server renders the results


def expect_espresso(card: Locator) -> None:
    """The card names the coffee photo's top label, with a confident first bar and no doubt."""
    items = card.locator("li.prediction")
    expect(items.first.locator(".prediction-label")).to_have_text("espresso")
    expect(items).to_have_count(5)
    expect(items.first.locator(".prediction-pct")).to_have_text(re.compile(r"^\d+\.\d %$"))
    expect(card.locator(".unsure")).to_be_hidden()
    expect(card.locator(".result-error")).to_be_hidden()
    expect(card.locator(".timings summary")).to_have_text(re.compile(r"^Took \d+ ms$"))


def error_words(scope: Locator) -> tuple[str, str]:
    """The error's title and message as the page shows them, white space collapsed."""
    title = scope.locator(".error-title").first
    message = scope.locator(".error-message").first
    expect(title).to_be_visible()
    return " ".join(title.inner_text().split()), " ".join(message.inner_text().split())


@pytest.mark.parametrize("size", SIZES)
def test_upload_with_javascript(browser, base_url, files, size):
    page, console_errors, page_errors = new_page(browser, size)
    try:
        page.goto(base_url + "/")
        expect(page.locator("#results")).to_be_hidden()
        expect(page.locator("#classify-button")).to_be_hidden()  # choosing a photo is enough

        choose(page, files["coffee"])
        card = cards(page).first
        expect(cards(page)).to_have_count(1)
        expect_espresso(card)
        expect(card.locator(".result-name")).to_have_text("coffee.jpg")
        expect(page.locator("#status")).to_have_text("Done: espresso.")
        expect(page.locator("#error")).to_have_count(0)

        # The answer is below the form: the page scrolls to it and focuses it (a screen reader reads it next).
        expect(card).to_be_in_viewport(ratio=1)
        expect(page.locator("#results")).to_be_focused()
        thumb = card.locator("img.thumb")
        expect(thumb).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function("document.querySelector('#result-grid img.thumb').naturalWidth > 0")

        fills = card.locator(".bar-fill")
        widths = fills.evaluate_all("els => els.map(e => e.style.width)")
        assert len(widths) == 5 and all(re.fullmatch(r"\d+(\.\d+)?%", w) for w in widths), widths
        assert float(widths[0][:-1]) > 50, widths  # espresso is far ahead
        first = fills.first.bounding_box()
        bar = card.locator(".bar").first.bounding_box()
        assert first and bar and 0.5 * bar["width"] < first["width"] <= bar["width"], (first, bar)

        # One "took N ms" (the web tier's total); the breakdown stays folded until asked for.
        timings = card.locator(".timings")
        expect(timings.locator(".timings-list")).to_be_hidden()
        timings.locator("summary").click()
        expect(timings).to_contain_text(re.compile(r"Inference: \d+\.\d ms"))
        expect(timings).to_contain_text(re.compile(r"From your browser, there and back: \d+\.\d ms"))
        expect(timings).to_contain_text("Model efficientnet_lite0, batch of 1.")

        assert console_errors == [], console_errors
        assert page_errors == [], page_errors
    finally:
        page.context.close()


@pytest.mark.parametrize("size", SIZES)
def test_upload_without_javascript(browser, base_url, files, size):
    page, _, page_errors = new_page(browser, size, java_script_enabled=False)
    try:
        page.goto(base_url + "/")
        expect(page.locator("#classify-button")).to_be_visible()
        choose(page, files["coffee"], javascript=False)
        expect(page).to_have_url(re.compile(r"/uploader#results$"))  # the browser lands on the answer
        expect(page).to_have_title(re.compile(r"^Results · "))
        card = cards(page).first
        expect(cards(page)).to_have_count(1)
        expect_espresso(card)
        expect(card.locator(".result-name")).to_have_text("coffee.jpg")
        expect(card).to_be_in_viewport()
        expect(card.locator(".thumb")).to_be_hidden()  # the server keeps no photo to show
        expect(page.locator("#error")).to_have_count(0)
        card.locator(".timings summary").click()
        expect(card.locator(".timings")).to_contain_text(re.compile(r"Inference: \d+\.\d ms"))
        assert page_errors == [], page_errors
    finally:
        page.context.close()


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
@pytest.mark.parametrize("size", SIZES)
def test_several_photos_give_a_grid_with_an_error_of_its_own(browser, base_url, files, size, javascript):
    page, _, page_errors = new_page(browser, size, java_script_enabled=javascript)
    try:
        page.goto(base_url + "/")
        choose(page, files["coffee"], files["text"], files["grey"], javascript=javascript)
        expect(cards(page)).to_have_count(3)
        coffee, text, grey = (cards(page).nth(i) for i in range(3))
        expect(coffee.locator(".result-name")).to_have_text("coffee.jpg")
        expect(text.locator(".result-name")).to_have_text("notes.jpg")
        expect(grey.locator(".result-name")).to_have_text("grey.png")
        expect_espresso(coffee)
        expect(text.locator(".result-error")).to_be_visible()
        expect(text.locator(".error-title")).to_have_text("This file is not a photo we can read")
        expect(text.locator(".error-code")).to_have_text("Error 415")
        expect(text.locator(".predictions")).to_be_hidden()
        expect(grey.locator(".unsure")).to_be_visible()
        expect(grey.locator(".unsure")).to_have_text(UNSURE)
        if javascript:
            expect(page.locator("#status")).to_have_text("Done: 3 photos, 1 could not be classified.")
        expect(coffee).to_be_in_viewport()
        boxes = cards(page).evaluate_all("els => els.map(e => e.getBoundingClientRect().toJSON())")
        a, b = boxes[0], boxes[1]  # measured at once: the page may still be scrolling
        if size == "desktop":  # side by side
            assert a["y"] == b["y"] and b["x"] >= a["x"] + a["width"], boxes
        else:  # one above the other
            assert a["x"] == b["x"] and b["y"] >= a["y"] + a["height"], boxes
        assert page_errors == [], page_errors
    finally:
        page.context.close()


def dispatch_with_files(page: Page, selector: str, event: str, photos: list[Path]) -> None:
    """Dispatch a paste or drop event carrying the photos as Files, as the browser does for a real one."""
    payload = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in photos]
    page.evaluate(
        """([selector, type, photos]) => {
          const data = new DataTransfer();
          for (const [name, b64] of photos) {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const type = name.endsWith(".png") ? "image/png" : "image/jpeg";
            data.items.add(new File([bytes], name, {type}));
          }
          const event = new Event(type, {bubbles: true, cancelable: true});
          Object.defineProperty(event, type === "paste" ? "clipboardData" : "dataTransfer", {value: data});
          document.querySelector(selector).dispatchEvent(event);
        }""",
        [selector, event, payload],
    )


@pytest.mark.parametrize("size", SIZES)
def test_a_pasted_photo_is_classified(browser, base_url, files, size):
    page, console_errors, page_errors = new_page(browser, size)
    try:
        page.goto(base_url + "/")
        dispatch_with_files(page, "body", "paste", [files["coffee"]])
        expect(cards(page)).to_have_count(1)
        expect_espresso(cards(page).first)
        expect(cards(page).first).to_be_in_viewport(ratio=1)
        assert console_errors == [] and page_errors == [], (console_errors, page_errors)
    finally:
        page.context.close()


def test_dropped_photos_are_classified_each(browser, base_url, files):
    page, _, page_errors = new_page(browser)
    try:
        page.goto(base_url + "/")
        dispatch_with_files(page, "#dropzone", "drop", [files["grey"], files["coffee"]])
        expect(cards(page)).to_have_count(2)
        expect(cards(page).nth(0).locator(".unsure")).to_have_text(UNSURE)
        expect_espresso(cards(page).nth(1))
        expect(page.locator("#status")).to_have_text("Done: 2 photos.")
        assert page_errors == [], page_errors
    finally:
        page.context.close()


@pytest.mark.parametrize("size", SIZES)
def test_the_unsure_message_reads_the_same_with_and_without_javascript(browser, base_url, files, size):
    seen = []
    for javascript in (True, False):
        page, _, _ = new_page(browser, size, java_script_enabled=javascript)
        try:
            page.goto(base_url + "/")
            choose(page, files["grey"], javascript=javascript)
            unsure = cards(page).first.locator(".unsure")
            expect(unsure).to_be_visible()
            seen.append(unsure.inner_text())
            top = cards(page).first.locator(".prediction-pct").first.inner_text()
            assert float(top.removesuffix(" %")) < 50, top
        finally:
            page.context.close()
    assert seen == [UNSURE, UNSURE], seen


ERRORS = {  # the upload, whether the web tier is made to shed it, the status and the headline a user reads
    "not-a-photo": ("text", False, 415, "This file is not a photo we can read"),
    "broken-photo": ("broken", False, 400, "This photo could not be read"),
    "too-large": ("large", False, 413, "The photo is too large"),
    "busy": ("coffee", True, 503, "The service is busy"),
}


@pytest.mark.parametrize("kind", ERRORS)
@pytest.mark.parametrize("size", SIZES)
def test_each_error_reads_the_same_with_and_without_javascript(browser, base_url, files, size, kind):
    upload, shed, code, title = ERRORS[kind]
    options = {}
    if shed:  # a request a proxy says arrived a minute ago waited too long: the web tier refuses it with 503
        options = {"extra_http_headers": {"X-Request-Start": f"t={time.time() - 60:.3f}"}}
    seen = {}
    for javascript in (True, False):
        page, _, page_errors = new_page(browser, size, java_script_enabled=javascript, **options)
        try:
            page.goto(base_url + "/")
            choose(page, files[upload], javascript=javascript)
            scope = page.locator("#results, #error").filter(has=page.locator(".error-title:visible"))
            seen[javascript] = error_words(scope)
            expect(scope.locator(".error-code").first).to_have_text(f"Error {code}")
            expect(scope.first).to_be_in_viewport()
            assert page_errors == [], page_errors
        finally:
            page.context.close()
    assert seen[True] == seen[False], seen
    headline, message = seen[True]
    assert headline == title, seen
    assert re.fullmatch(r"[A-Z].*[.!?]", message), message  # a sentence, not a lower-case fragment
    assert str(code) not in headline, headline  # the code is shown small, never as the headline


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
@pytest.mark.parametrize("size", SIZES)
def test_error_pages_have_a_heading_and_a_way_back(browser, base_url, size, javascript):
    page, _, _ = new_page(browser, size, java_script_enabled=javascript)
    try:
        for path, code, heading in (
            ("/no-such-page", 404, "Page not found"),
            ("/uploader", 405, "This page cannot be opened directly"),
        ):
            response = page.goto(base_url + path)
            assert response is not None and response.status == code
            expect(page.locator("h1")).to_have_text(heading)
            expect(page).to_have_title(re.compile("^" + re.escape(heading) + " · "))
            expect(page.locator("#error .error-code")).to_have_text(f"Error {code}")
            expect(page.locator("#error-message")).to_have_text(re.compile(r"^[A-Z].*[.!?]$"))
            expect(page.locator("#upload-form")).to_be_visible()  # the form is still there, below
            back = page.get_by_role("link", name="Back to the upload page")
            expect(back).to_have_attribute("href", "/")
        back.click()
        expect(page.locator("h1")).to_have_text("Classify a photo")
    finally:
        page.context.close()


def test_the_page_says_what_the_model_knows(browser, base_url):
    page, _, _ = new_page(browser)
    try:
        page.goto(base_url + "/")
        link = page.get_by_role("link", name="1,000 ImageNet classes")
        expect(link).to_be_visible()
        response = page.request.get(base_url + link.get_attribute("href"))
        assert response.ok and response.headers["content-type"].startswith("text/plain")
        served = response.text().splitlines()
        # The list the page links to is the one the model answers with, in class-index order.
        labels = json.loads((MODEL_DIR / "labels.json").read_text(encoding="utf-8"))
        assert served == labels and len(served) == 1000
    finally:
        page.context.close()


@pytest.mark.parametrize("size", SIZES)
def test_the_pickers_fit_the_device(browser, base_url, files, size):
    page, _, _ = new_page(browser, size)
    try:
        page.goto(base_url + "/")
        touch = size == "mobile"
        assert page.evaluate("matchMedia('(pointer: coarse)').matches") is touch
        expect(page.get_by_text("or drop them here, or paste one.")).to_be_visible(visible=not touch)
        camera = page.locator("label[for=camera-input]")
        expect(camera).to_be_visible(visible=touch)
        expect(page.locator("#camera-input")).to_have_attribute("capture", "environment")
        # The native "Choose File" button is hidden behind the label, which the keyboard still reaches.
        native = page.locator("#image-input").bounding_box()
        assert native and native["width"] <= 1 and native["height"] <= 1, native
        expect(page.locator("label[for=image-input]")).to_have_text("Choose photos")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        expect(page.locator("#image-input")).to_be_focused()
        if touch:
            page.set_input_files("#camera-input", files["coffee"])
            expect_espresso(cards(page).first)  # the camera's photo is classified like a chosen one
    finally:
        page.context.close()


def test_bad_file_shows_an_error_then_a_good_upload_works(browser, base_url, files):
    page, console_errors, page_errors = new_page(browser)
    try:
        page.goto(base_url + "/")
        choose(page, files["text"])  # sent as image/jpeg: only the server can tell
        card = cards(page).first
        expect(card.locator(".result-error")).to_be_visible()
        expect(card.locator(".thumb")).to_be_hidden()  # not decodable by the browser either
        choose(page, files["coffee"])
        expect(cards(page)).to_have_count(1)
        expect_espresso(cards(page).first)
        # Chromium logs the 415 response as a console error (which shows the collector that the first test
        # relies on works), but no script throws.
        assert any("415" in text for text in console_errors), console_errors
        assert page_errors == [], page_errors
    finally:
        page.context.close()


@pytest.mark.parametrize("size", SIZES)
def test_screenshots(browser, base_url, files, size, tmp_path):
    """The README's pictures of the page: empty, one result, a grid of several, an error.

    Written into docs/screenshots/ when ZEROLENS_SCREENSHOTS=1, else into a temporary folder.
    """
    folder = SCREENSHOTS if os.environ.get("ZEROLENS_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page, _, _ = new_page(browser, size, reduced_motion="reduce", color_scheme="light")
    try:

        def shoot(name: str) -> None:
            page.wait_for_function("[...document.images].every(img => img.hidden || img.complete)")
            page.locator("#result-grid details[open]").evaluate_all("els => els.forEach(e => e.open = false)")
            # What the screen shows (a full-page capture would lay a phone's page out again, without touch).
            page.screenshot(path=folder / f"{size}-{name}.png", animations="disabled")

        page.goto(base_url + "/")
        shoot("empty")
        choose(page, files["coffee"])
        expect(page.locator("#status")).to_have_text("Done: espresso.")
        shoot("result")
        choose(page, files["coffee"], files["grey"], files["text"])
        expect(page.locator("#status")).to_have_text(re.compile("^Done: 3 photos"))
        shoot("several")
        page.goto(base_url + "/no-such-page")
        shoot("error")
    finally:
        page.context.close()
    assert sorted(p.name for p in folder.glob(f"{size}-*.png")) == [
        f"{size}-{name}.png" for name in ("empty", "error", "result", "several")
    ]
