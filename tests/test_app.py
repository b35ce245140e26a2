"""`wbc app` in a real browser: Debian's headless Chromium driven by Selenium, against a real server process."""

import io
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from wbc.classes import CLASS_NAMES
from wbc.inference import Predictor
from wbc.training.config import TrainConfig
from wbc.jobs.train import train

from conftest import free_port, isolated, start_http_server, stop_process_group

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def exported_model(synthetic_data, tmp_path_factory):
    with isolated(tmp_path_factory.mktemp("app-model")):
        result = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=2,
                                   batch_size=16, image_size=32, progress=False))
    return Path(result.best_checkpoint).parent.parent / "model"


@pytest.fixture(scope="module")
def app_url(exported_model, tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("app-run")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    process = start_http_server(
        [sys.executable, "-m", "wbc", "app", "--model", str(exported_model), "--port", str(port)],
        f"http://127.0.0.1:{port}/health", env=env, cwd=workdir,
    )
    yield f"http://127.0.0.1:{port}"
    stop_process_group(process)


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def upload(browser, app_url, paths, timeout=120):
    """Open the page, choose ``paths`` in the file input and wait until the page has the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").text.startswith("model "))
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    WebDriverWait(browser, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    return browser


def page_cells(browser) -> dict[str, dict]:
    from selenium.webdriver.common.by import By

    cells = {}
    for card in browser.find_elements(By.CSS_SELECTOR, "#cells .cell"):
        cells[card.get_attribute("data-name")] = {
            "label": card.find_element(By.CSS_SELECTOR, ".label").text,
            "classes": card.get_attribute("class").split(),
            "text": card.text,
        }
    return cells


def page_counts(browser) -> dict[str, int]:
    from selenium.webdriver.common.by import By

    return {
        row.get_attribute("data-class"): int(row.find_element(By.CSS_SELECTOR, "td.n").text)
        for row in browser.find_elements(By.CSS_SELECTOR, "#counts tbody tr[data-class]")
    }


def test_page_shows_labels_heatmaps_and_the_differential_count(browser, app_url, exported_model, synthetic_data, tmp_path):
    from selenium.webdriver.common.by import By

    files = sorted((synthetic_data / "barcelona" / "valid").rglob("*.jpg"))[::3][:9]
    upload(browser, app_url, files)
    expected = {p.name: p for p in Predictor.load(exported_model).predict_sources(files, [f.name for f in files])}
    cells = page_cells(browser)
    assert set(cells) == set(expected)
    for name, cell in cells.items():
        assert cell["label"] == expected[name].label
        assert ("review" in cell["classes"]) == expected[name].review or "ood" in cell["classes"]
        assert "top 3:" in cell["text"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cells img[alt='Grad-CAM heatmap']")) == len(files)
    counted = [p for p in expected.values() if p.in_distribution]
    assert page_counts(browser) == {c: sum(p.label == c for p in counted) for c in CLASS_NAMES}
    assert int(browser.find_element(By.ID, "total").text) == len(counted)
    assert "calibrated" in browser.find_element(By.ID, "explain").text
    assert "TIFF" in browser.find_element(By.ID, "drop").text, "the page lists what it really accepts"
    assert "neither they nor their file names are written to disk or to a log" in browser.find_element(By.ID, "privacy").text
    assert browser.find_element(By.ID, "csv").get_attribute("href").startswith("blob:")
    screenshot = Path(os.environ.get("WBC_SCREENSHOT_DIR", tmp_path)) / "app.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


def test_a_zip_of_images_is_opened(browser, app_url, synthetic_data, tmp_path):
    files = sorted((synthetic_data / "barcelona" / "valid" / "platelet").glob("*.jpg"))[:3]
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in files:
            bundle.write(path, f"slide1/{path.name}")
        bundle.writestr("__MACOSX/._junk", b"x")
    upload(browser, app_url, [archive])
    assert sorted(page_cells(browser)) == sorted(f"cells.zip/slide1/{p.name}" for p in files)


def test_each_page_of_a_tiff_stack_is_a_cell_scored_like_the_page_alone(app_url, synthetic_data):
    from PIL import Image

    pages = [Image.open(path).convert("RGB") for path in sorted((synthetic_data / "barcelona" / "valid" / "basophil").glob("*.jpg"))[:3]]
    stack = io.BytesIO()
    pages[0].save(stack, "TIFF", save_all=True, append_images=pages[1:])
    answer = requests.post(f"{app_url}/api/classify", files={"files": ("three.tif", stack.getvalue())}, timeout=120)
    assert answer.status_code == 200, answer.text
    cells = {cell["name"]: cell for cell in answer.json()["cells"]}
    assert sorted(cells) == ["three.tif#1", "three.tif#2", "three.tif#3"]
    for index, page in enumerate(pages, 1):
        alone = io.BytesIO()
        page.save(alone, "PNG")
        (single,) = requests.post(f"{app_url}/api/classify", files={"files": ("page.png", alone.getvalue())}, timeout=120).json()["cells"]
        assert cells[f"three.tif#{index}"]["top"][0]["class"] == single["top"][0]["class"]
        assert cells[f"three.tif#{index}"]["top"][0]["probability"] == pytest.approx(single["top"][0]["probability"], abs=1e-5)


def test_files_as_cameras_write_them_are_scored_and_shown_as_their_plain_twins(app_url, tmp_path):
    """The page's API on EXIF-rotated, 12-bit, 16-bit and float files: each scored like the plain 8-bit file it means,
    and the image the page shows (its data URL) is that file's, so a phone photo stored on its side shows upright."""
    from conftest import faithful_inputs

    pairs = faithful_inputs(tmp_path / "faithful")
    files = [path for pair in pairs.values() for path in pair]
    answer = requests.post(f"{app_url}/api/classify", files=[("files", (p.name, p.read_bytes())) for p in files], timeout=120)
    assert answer.status_code == 200, answer.text
    cells = {cell["name"]: cell for cell in answer.json()["cells"]}
    for kind, (sent, meant) in pairs.items():
        assert cells[sent.name]["error"] == "", kind
        assert [t["class"] for t in cells[sent.name]["top"]] == [t["class"] for t in cells[meant.name]["top"]], kind
        assert [t["probability"] for t in cells[sent.name]["top"]] == pytest.approx([t["probability"] for t in cells[meant.name]["top"]]), kind
        assert cells[sent.name]["image"] == cells[meant.name]["image"], f"{kind}: the page shows what the file means"


def test_bad_uploads_get_a_clear_message_and_the_app_stays_up(browser, app_url, synthetic_data, tmp_path):
    from selenium.webdriver.common.by import By

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff\xd8\xff" + os.urandom(17 * 1024 * 1024))
    upload(browser, app_url, [empty, text, huge])
    message = browser.find_element(By.ID, "message").text
    assert message.startswith("Error: nothing could be classified")
    assert "empty.jpg" in message and "notes.jpg: not an image file" in message and "huge.jpg" in message and "MB limit" in message

    good = sorted((synthetic_data / "barcelona" / "valid" / "ig").glob("*.jpg"))[:2]
    upload(browser, app_url, [text, *good])
    cells = page_cells(browser)
    first = browser.find_element(By.CSS_SELECTOR, "#cells .cell")
    assert first.get_attribute("data-name") == "notes.jpg" and "unreadable" in first.get_attribute("class")
    assert {cells[p.name]["label"] for p in good} <= set(CLASS_NAMES)
    assert "could not be read" in browser.find_element(By.ID, "message").text
    assert requests.get(f"{app_url}/health", timeout=5).json() == {"status": "ok"}


def test_api_refuses_requests_with_nothing_to_classify(app_url):
    assert requests.post(f"{app_url}/api/classify", timeout=30).status_code == 400
    bad_zip = requests.post(f"{app_url}/api/classify", files={"files": ("x.zip", io.BytesIO(b"PK\x03\x04broken"))}, timeout=30)
    assert bad_zip.status_code == 400 and "not a readable zip" in bad_zip.json()["detail"]
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    empty_zip = requests.post(f"{app_url}/api/classify", files={"files": ("cells.zip", io.BytesIO(empty.getvalue()))}, timeout=30)
    assert empty_zip.status_code == 400 and "cells.zip: the zip archive holds no image files" in empty_zip.json()["detail"]
    described = requests.get(f"{app_url}/api/model", timeout=30).json()
    assert "version" in described and described["version"] is None, "a folder, not a registered version"


def test_the_page_says_when_its_port_is_taken_before_it_loads_the_model(app_url, exported_model):
    from click.testing import CliRunner

    from wbc.cli import cli

    port = app_url.rsplit(":", 1)[1]
    taken = CliRunner().invoke(cli, ["app", "--model", str(exported_model), "--port", port])
    assert taken.exit_code == 1, taken.output
    assert f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): another server has it? choose another " \
           "with --port" in taken.output and "open http" not in taken.output
    assert requests.get(f"{app_url}/health", timeout=10).status_code == 200, "the other server is untouched"


def test_the_page_on_an_address_other_machines_reach_refuses_to_start_without_logins(exported_model, tmp_path):
    from click.testing import CliRunner

    from wbc.app.auth import read_logins, verify_password
    from wbc.cli import cli

    refused = CliRunner().invoke(cli, ["app", "--model", str(exported_model), "--host", "0.0.0.0"], env={"WBC_APP_AUTH_FILE": None})
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert "wbc app on 0.0.0.0 is open to other machines and needs logins" in refused.output and "wbc app-login" in refused.output

    logins = tmp_path / "logins"
    added = CliRunner().invoke(cli, ["app-login", "lab-tech", "--auth-file", str(logins)], input="s3cret pass\ns3cret pass\n")
    assert added.exit_code == 0 and "added login lab-tech" in added.output and "s3cret" not in logins.read_text()
    assert logins.stat().st_mode & 0o777 == 0o600
    assert verify_password("s3cret pass", read_logins(logins)["lab-tech"]) and not verify_password("s3cret", read_logins(logins)["lab-tech"])
    changed = CliRunner().invoke(cli, ["app-login", "lab-tech", "--auth-file", str(logins)], input="other\nother\n")
    assert "changed the password of login lab-tech" in changed.output and verify_password("other", read_logins(logins)["lab-tech"])
    logins.write_text("lab-tech s3cret\n")
    broken = CliRunner().invoke(cli, ["app", "--model", str(exported_model), "--host", "0.0.0.0", "--auth-file", str(logins)])
    assert broken.exit_code == 1 and f"{logins}, line 1: not a 'name:scrypt$...' login" in broken.output


def test_with_logins_every_route_but_health_needs_one_and_uploads_leave_no_trace(browser, exported_model, synthetic_data, tmp_path):
    """Bound to every interface (requests go to 127.0.0.1 only): 401 without or with a wrong login, 200 with one, in a
    real browser too; an upload of over a megabyte (starlette's spooling size) leaves no file in the server's
    temporary folder, and its name appears in no log."""
    import base64

    import numpy as np
    from PIL import Image

    from wbc.app.auth import add_login

    logins = tmp_path / "logins"
    add_login(logins, "lab-tech", "s3cret pass")
    port = free_port()
    workdir = tmp_path / "run"
    workdir.mkdir()
    process = start_http_server(
        [sys.executable, "-m", "wbc", "app", "--model", str(exported_model), "--host", "0.0.0.0", "--port", str(port)],
        f"http://127.0.0.1:{port}/health", env={**os.environ, "WBC_APP_AUTH_FILE": str(logins),
                                                "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        for path in ("/", "/api/model"):
            assert requests.get(url + path, timeout=10).status_code == 401
            assert requests.get(url + path, auth=("lab-tech", "wrong"), timeout=10).status_code == 401
            assert requests.get(url + path, auth=("lab-tech", "s3cret pass"), timeout=30).status_code == 200
        assert requests.post(f"{url}/api/classify", timeout=10).status_code == 401
        big = tmp_path / "PATIENT-4711-smear.png"
        noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
        Image.fromarray(noise).save(big)
        assert big.stat().st_size > 1024 * 1024
        before = sorted((workdir / "tmp").rglob("*"))  # what the server's libraries left at start-up
        answer = requests.post(f"{url}/api/classify", files={"files": (big.name, big.read_bytes())}, auth=("lab-tech", "s3cret pass"),
                               timeout=120)
        assert answer.status_code == 200 and answer.json()["cells"][0]["name"] == big.name
        assert sorted((workdir / "tmp").rglob("*")) == before, "no upload was spooled to disk"

        cell = sorted((synthetic_data / "barcelona" / "valid" / "monocyte").glob("*.jpg"))[0]
        # the browser logs in as after its basic-auth dialog: every request it sends carries the login
        login = base64.b64encode(b"lab-tech:s3cret pass").decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {login}"}})
        try:
            upload(browser, f"{url}/", [cell])
            assert list(page_cells(browser)) == [cell.name]
        finally:
            browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    finally:
        stop_process_group(process)
    log = process.log.read_text()
    assert "PATIENT-4711" not in log and cell.name not in log


def test_the_page_with_tta_scores_the_mean_of_the_eight_views_with_its_flags(exported_model, synthetic_data, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    process = start_http_server([sys.executable, "-m", "wbc", "app", "--model", str(exported_model), "--port", str(port), "--tta"],
                                f"http://127.0.0.1:{port}/health", env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        expected = Predictor.load(exported_model, tta=True)
        info = requests.get(f"{url}/api/model", timeout=30).json()
        assert info["tta"] is True and info["ood_threshold"] == pytest.approx(expected.calibration.tta.ood_threshold)
        image = sorted((synthetic_data / "barcelona" / "valid" / "monocyte").glob("*.jpg"))[0]
        answer = requests.post(f"{url}/api/classify", files={"files": (image.name, image.read_bytes())}, timeout=120)
        assert answer.status_code == 200, answer.text
        (cell,) = answer.json()["cells"]
        (prediction,) = expected.predict_sources([str(image)])
        assert cell["label"] == prediction.label and cell["top"][0]["probability"] == pytest.approx(prediction.confidence, abs=1e-4)
        assert cell["in_distribution"] is prediction.in_distribution is not None
    finally:
        stop_process_group(process)
