"""The Gradio demo (`python -m train.demo`) as a user meets it: a local server driven by headless Chromium through
Playwright — upload a digit, ask, read SigPhi's answer — and the retriever-generator's answers with documents.

The browser test needs Debian's chromium (`make test` installs it where apt-get can) and the `playwright` package;
without them it is skipped with the reason, except under `CI=true` (CI runs as root with apt-get), where a missing
browser fails it. Its screenshot goes to the git-ignored `test-artifacts/`.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import QUESTION
from tests.test_ecosystem import retriever_generator  # noqa: F401  (fixture: a tiny retriever-generator)
from train.demo import load_answerer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def browser_missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (make browser, or apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def digit_png(tmp_path) -> Path:
    """The first `load_digits` image as the 8×8 greyscale PNG a user would upload."""
    from sklearn.datasets import load_digits

    path = tmp_path / "digit.png"
    Image.fromarray(np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def demo_url(tiny_dir):
    """`python -m train.demo --model <tiny SigPhi>` serving on a free local port; stopped afterwards."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "train.demo", "--model", str(tiny_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, f"the demo server exited:\n{server.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the demo server did not answer within 120 s"
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


BROWSER_REQUIRED = os.environ.get("CI", "").lower() == "true"


@pytest.mark.browser
@pytest.mark.skipif(browser_missing() is not None and not BROWSER_REQUIRED, reason=str(browser_missing()))
def test_a_user_uploads_a_digit_asks_and_reads_sigphis_answer(demo_url, tiny_dir, digit_png):
    if browser_missing() is not None:
        pytest.fail(f"CI=true requires the browser test, but {browser_missing()}")
    from playwright.sync_api import expect, sync_playwright

    answer, _ = load_answerer(str(tiny_dir), max_new_tokens=32)
    expected, _ = answer(Image.open(digit_png).convert("RGB"), QUESTION)  # Gradio hands the model an RGB image
    assert expected, "the tiny model's answer must not be empty, or the check below would prove nothing"

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(demo_url)
            page.locator("#ask").click()
            expect(page.get_by_text("Upload an image first.").first).to_be_visible(timeout=30_000)

            page.locator("#image input[type=file]").set_input_files(str(digit_png))
            page.locator("#question textarea").fill(QUESTION)
            page.locator("#ask").click()
            expect(page.locator("#answer textarea")).to_have_value(expected, timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "demo-sigphi.png"), full_page=True)
        finally:
            browser.close()


def test_a_retriever_generator_folder_answers_with_its_retrieved_documents_and_scores(retriever_generator,  # noqa: F811
                                                                                     digit_png, tmp_path):
    model, processor, _ = retriever_generator
    model.save_pretrained(tmp_path / "rag")
    processor.save_pretrained(tmp_path / "rag")
    answer, retrieves = load_answerer(str(tmp_path / "rag"), max_new_tokens=4, n_docs=2)
    assert retrieves
    image, question = Image.open(digit_png).convert("RGB"), "In the sample archive, what colour is this?"
    text, documents = answer(image, question)
    # what the page shows is what the model retrieves and answers when called directly
    scores, _, retrieved = model.eval().retrieve(processor, [question], [image], 2)
    expected = model.generate(processor, question, image, n_docs=2, max_new_tokens=4, do_sample=False).strip()
    assert expected, "the tiny model's answer must not be empty, or the check below would prove nothing"
    assert text == expected
    assert [document for _, document in documents] == [
        document["text"] if document["text"] is not None else "(an image document)" for document in retrieved[0]]
    assert [score for score, _ in documents] == pytest.approx(scores[0].tolist(), abs=1e-4)
    assert scores[0].tolist() == sorted(scores[0].tolist(), reverse=True)


def test_an_unusable_model_path_is_refused_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "train.demo", "--model", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"demo.py: error: {tmp_path / 'missing'}: ")

