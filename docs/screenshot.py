"""Make docs/app.png: the web page on the champion with validation images and two shifted ones.

Usage: python docs/screenshot.py --data-dir ../shared/data [--model models:/wbc-classifier@champion]
Needs Debian's chromium and chromium-driver. Starts `wbc app` on a free port, uploads one validation
image per class plus two copies put through strong shifts (stain, resolution), saves the page.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

from wbc.classes import CLASS_NAMES
from wbc.data.images import decode_image
from wbc.data.shifts import apply_shift


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--model", default="models:/wbc-classifier@champion")
    parser.add_argument("--output", default=str(Path(__file__).with_name("app.png")))
    args = parser.parse_args()

    valid = Path(args.data_dir) / "barcelona" / "valid"
    files = [sorted((valid / name).glob("*.jpg"))[7] for name in CLASS_NAMES]
    scratch = Path(tempfile.mkdtemp())
    for shift, severity, source in (("stain", 3, files[6]), ("resolution", 3, files[4])):
        shifted = apply_shift(decode_image(source, 360).unsqueeze(0), shift, severity, seed=3)[0]
        target = scratch / f"{shift}-{source.name}"
        Image.fromarray(shifted.permute(1, 2, 0).numpy()).save(target, quality=92)
        files.append(target)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "wbc", "app", "--model", args.model, "--port", str(port)],
                              start_new_session=True)
    try:
        for _ in range(120):
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model").text.startswith("model "))
            driver.find_element(By.ID, "files").send_keys("\n".join(str(p.resolve()) for p in files))
            WebDriverWait(driver, 300).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
            driver.save_screenshot(args.output)
            print(driver.find_element(By.ID, "message").text)
        finally:
            driver.quit()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
