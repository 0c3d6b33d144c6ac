"""The web page in headless Chromium (Playwright, Debian's chromium): generate text, an image and a sound,
see them appear and in the gallery, and keep a screenshot of every tab."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install "
                                                          "chromium; .ci/run installs it)")]


def test_page_generates_text_image_and_sound_and_shows_them_in_the_gallery(serve_runs, tmp_path_factory,
                                                                          server_process) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")

    runs = [serve_runs[name] for name in ("poems", "digits", "flute", "reverse")]
    root = tmp_path_factory.mktemp("browser")
    shots = root / "screenshots"
    shots.mkdir()
    process, url = server_process(runs, root / "gallery")
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "blob:", "data:"))
                    else None)
            page.goto(url)
            page.wait_for_selector('nav button[data-tab="poems"]')

            page.click('nav button[data-tab="poems"]')
            panel = page.locator("#panel-poems")
            panel.locator('textarea[name="prompt"]').fill("The")
            panel.locator('input[name="max_new_tokens"]').fill("40")
            panel.locator('input[name="seed"]').fill("3")
            panel.locator("button.primary").click()
            panel.locator(".result .text-out").first.wait_for(timeout=60_000)
            assert panel.locator(".result .text-out").first.inner_text().startswith("The")
            assert panel.locator(".result .badge").first.inner_text() == "AI-generated"
            page.screenshot(path=str(shots / "poems.png"), full_page=True)

            page.click('nav button[data-tab="digits"]')
            panel = page.locator("#panel-digits")
            panel.locator('input[name="num_samples"]').fill("4")
            panel.locator("button.primary").click()
            page.wait_for_function("() => [...document.querySelectorAll('#panel-digits .grid img')]"
                                   ".filter(i => i.complete && i.naturalWidth > 0).length === 4", timeout=60_000)
            page.screenshot(path=str(shots / "digits.png"), full_page=True)

            page.click('nav button[data-tab="flute"]')
            panel = page.locator("#panel-flute")
            panel.locator('textarea[name="notes"]').fill("C4:1 E4:1 G4:1")
            panel.locator("button.primary").click()
            page.wait_for_function("() => { const a = document.querySelector('#panel-flute .result audio');"
                                   " return a && a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 1; }",
                                   timeout=60_000)
            page.screenshot(path=str(shots / "flute.png"), full_page=True)

            page.click('nav button[data-tab="reverse"]')
            panel = page.locator("#panel-reverse")
            panel.locator('textarea[name="input"]').fill("cat")
            panel.locator('input[name="beam"]').fill("2")
            panel.locator("button.primary").click()
            panel.locator(".result canvas.attention").wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "reverse.png"), full_page=True)

            page.click('nav button[data-tab="gallery"]')
            gallery = page.locator("#panel-gallery")
            page.wait_for_function("() => document.querySelectorAll('#panel-gallery .result').length === 4",
                                   timeout=30_000)
            kinds = sorted(gallery.locator(".result").evaluate_all("cards => cards.map(c => c.dataset.kind)"))
            assert kinds == ["audio", "image", "sequence", "text"]
            gallery.locator(".result .manifest summary").first.click()
            assert '"ai_generated": true' in gallery.locator(".result .manifest pre").first.inner_text()
            page.screenshot(path=str(shots / "gallery.png"), full_page=True)

            gallery.locator('.result[data-kind="image"] button.remix').click()
            page.wait_for_function("() => document.querySelectorAll('#panel-gallery .result').length === 5",
                                   timeout=60_000)
            page.once("dialog", lambda dialog: dialog.accept())
            gallery.locator(".result button.delete").first.click()
            page.wait_for_function("() => document.querySelectorAll('#panel-gallery .result').length === 4",
                                   timeout=30_000)
            browser.close()
        assert outside == []  # nothing was fetched from outside the server
    finally:
        process.terminate()
        process.wait(timeout=30)
    names = sorted(p.name for p in shots.iterdir())
    assert names == ["digits.png", "flute.png", "gallery.png", "poems.png", "reverse.png"]
    print(f"\nscreenshots: {shots}")
