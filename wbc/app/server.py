"""``wbc app``: a web page where a lab uploads cell images (or a zip of them) and gets, for each cell,
the class, calibrated confidence, top-3 classes, a Grad-CAM heatmap and review / out-of-distribution
flags, plus the differential count of the batch (table, bar chart, CSV).

FastAPI serves one static page (``wbc/app/index.html``) and a JSON API:
``GET /api/model`` (what is loaded and what the flags mean) and ``POST /api/classify`` (multipart
``files``). Unreadable uploads come back as per-file errors; a request with nothing to score gets a
400 with the reason. The server keeps serving.
"""

from __future__ import annotations

import base64
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.formparsers import MultiPartParser

from wbc import defaults
from wbc.classes import CLASS_NAMES
from wbc.app.auth import verify_password
from wbc.data.images import MAX_IMAGE_BYTES, split_pages
from wbc.errors import WBCError
from wbc.evaluation.explain import GradCam, image_png, overlay_png
from wbc.inference import Prediction, Predictor
from wbc.serving.tables import counted_cells, differential_count, display_path, out_of_distribution, predictions_frame
from wbc.tracking.registry import version_line

PAGE = Path(__file__).with_name("index.html")
MAX_FILES = 500
"""Cells per request; more are refused with a message (split the batch)."""
MAX_ZIP_BYTES = 256 * 1024 * 1024
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
"""Decompressed bytes per request, all files and zip members together (a zip bomb stops here)."""
HEATMAP_LIMIT = 200
"""Grad-CAM costs a backward pass per cell; cells past this many in one request get none."""
TOP_K = 3


class UploadError(WBCError, ValueError):
    """An upload the page refuses as a whole (too many files, too large); answered with HTTP 400."""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class _Budget:
    """What one request may still read, in files and in decompressed bytes."""

    def __init__(self) -> None:
        self.files = MAX_FILES
        self.bytes = MAX_UPLOAD_BYTES

    def take(self, name: str, size: int) -> None:
        self.files -= 1
        self.bytes -= size
        if self.files < 0:
            raise UploadError(f"more than {MAX_FILES} images in one upload: send them in smaller batches")
        if self.bytes < 0:
            raise UploadError(f"{name}: the upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB once unpacked: send smaller batches")


def _too_big(name: str) -> str:
    return f"{name}: file is over the {MAX_IMAGE_BYTES // (1024 * 1024)} MB limit"


def expand_uploads(uploads: list[UploadFile]) -> list[tuple[str, bytes | str]]:
    """(name, file bytes or an error message) per cell: plain files as they are, zip archives opened.

    Raises :class:`UploadError` when the request holds more than :data:`MAX_FILES` images or more than
    :data:`MAX_UPLOAD_BYTES` once unpacked.
    """
    budget = _Budget()
    cells: list[tuple[str, bytes | str]] = []
    for upload in uploads:
        name = upload.filename or "upload"
        head = upload.file.read(4)
        upload.file.seek(0)
        if head == b"PK\x03\x04" or name.lower().endswith(".zip"):
            data = upload.file.read(MAX_ZIP_BYTES + 1)
            if len(data) > MAX_ZIP_BYTES:
                budget.take(name, 0)
                cells.append((name, f"{name}: zip file is over the {MAX_ZIP_BYTES // (1024 * 1024)} MB limit"))
            else:
                cells += _expand_zip(name, data, budget)
            continue
        data = upload.file.read(MAX_IMAGE_BYTES + 1)
        budget.take(name, min(len(data), MAX_IMAGE_BYTES))
        cells += [(name, _too_big(name))] if len(data) > MAX_IMAGE_BYTES else _pages(name, data, budget)
    return cells


def _pages(name: str, data: bytes, budget: _Budget) -> list[tuple[str, bytes | str]]:
    """Each page of a multi-page TIFF or an animation a cell of its own (``name#page``); one image as it is."""
    pages = split_pages(data, name)
    for page_name, page in pages[1:]:
        budget.take(page_name, len(page))
    return pages


def _expand_zip(name: str, data: bytes, budget: _Budget) -> list[tuple[str, bytes | str]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [
            info for info in archive.infolist()
            if not info.is_dir() and not Path(info.filename).name.startswith(".") and "__MACOSX" not in info.filename
        ]
    except (zipfile.BadZipFile, ValueError, OSError):
        budget.take(name, 0)
        return [(name, f"{name}: not a readable zip archive")]
    if not members:
        budget.take(name, 0)
        return [(name, f"{name}: the zip archive holds no image files")]
    cells: list[tuple[str, bytes | str]] = []
    for info in members:
        member = f"{name}/{info.filename}"
        if info.file_size > MAX_IMAGE_BYTES:
            budget.take(member, 0)
            cells.append((member, _too_big(member)))
            continue
        try:
            with archive.open(info) as handle:
                content = handle.read(MAX_IMAGE_BYTES + 1)  # the header's size can lie; the read is capped
        except Exception as error:  # noqa: BLE001 - corrupt or encrypted members: zlib, lzma, bz2, zipfile errors
            budget.take(member, 0)
            cells.append((member, f"{member}: cannot be read from the zip ({type(error).__name__})"))
            continue
        budget.take(member, len(content))
        cells += [(member, _too_big(member))] if len(content) > MAX_IMAGE_BYTES else _pages(member, content, budget)
    return cells


class CellClassifier:
    """Scores uploads with a :class:`Predictor` and explains each prediction with Grad-CAM."""

    def __init__(self, predictor: Predictor, model_uri: str, version: str | None = None) -> None:
        self.predictor = predictor
        self.model_uri = model_uri
        self.version = version
        self.gradcam = GradCam(predictor.model)
        # Grad-CAM hooks the shared model while it runs: one request at a time uses it
        self.lock = threading.Lock()

    def describe(self) -> dict:
        calibration = self.predictor.active_calibration
        own = self.predictor.calibration
        info = {
            "model": self.model_uri,
            "version": self.version,
            "arch": self.predictor.model.arch,
            "image_size": self.predictor.image_size,
            "classes": list(CLASS_NAMES),
            "calibrated": calibration is not None,
            "tta": self.predictor.tta,
            "tta_without_thresholds": self.predictor.tta and own is not None and calibration is None,
        }
        if calibration is not None:
            info.update(
                temperature=calibration.temperature,
                review_threshold=calibration.review_threshold,
                target_error=calibration.target_error,
                review_fraction=None if calibration.accepted_fraction is None else 1 - calibration.accepted_fraction,
                accepted_error=calibration.accepted_error,
                ood_threshold=calibration.ood_threshold,
                flag_rate=calibration.flag_rate,
                fitted_on=calibration.fitted_on,
            )
        return info

    def classify(self, cells: list[tuple[str, bytes | str]]) -> dict:
        predictions = self.predictor.predict_received(cells, keep_pixels=True)
        good = [p for p in predictions if p.error is None]
        if not good:
            reasons = "; ".join(p.error for p in predictions[:5]) or "no files were uploaded (multipart form parts named 'files')"
            raise UploadError(f"nothing could be classified: {reasons}")
        heatmaps = self._heatmaps(good[:HEATMAP_LIMIT])
        rows = [self._row(index, p, heatmaps.get(id(p))) for index, p in enumerate(predictions)]
        # what needs a person first: unreadable, out of distribution, review; then the rest in upload order
        rows.sort(key=lambda row: (not row["error"], row["in_distribution"] is not False, row["review"] is not True, row["index"]))
        return {"cells": rows, "counts": batch_summary(predictions), "model": self.describe()}

    def _heatmaps(self, predictions: list[Prediction]) -> dict[int, str]:
        if not predictions:
            return {}
        maps = {}
        for start in range(0, len(predictions), 32):
            chunk = predictions[start : start + 32]
            images = torch.from_numpy(np.stack([p.pixels for p in chunk]))
            targets = torch.tensor([int(p.probabilities.argmax()) for p in chunk])
            for prediction, image, heatmap in zip(chunk, images, self.gradcam.heatmaps(images, targets)):
                maps[id(prediction)] = _data_url(overlay_png(image, heatmap))
        return maps

    def _row(self, index: int, prediction: Prediction, heatmap: str | None) -> dict:
        row = {
            "index": index,
            "name": display_path(prediction.name),
            "label": prediction.label,
            "confidence": prediction.confidence,
            "top": [],
            "review": prediction.review,
            "in_distribution": prediction.in_distribution,
            "in_distribution_score": prediction.in_distribution_score,
            "error": prediction.error or "",
            "image": None,
            "heatmap": heatmap,
        }
        if prediction.probabilities is not None:
            order = prediction.probabilities.argsort()[::-1][:TOP_K]
            row["top"] = [{"class": CLASS_NAMES[i], "probability": float(prediction.probabilities[i])} for i in order]
            row["image"] = _data_url(image_png(prediction.pixels))
        return row


def batch_summary(predictions: list[Prediction]) -> dict:
    """The differential count (``wbc predict``'s rule) with the cells left out of it, by name."""
    table = predictions_frame(predictions).assign(name=[display_path(p.name) for p in predictions])
    counts = differential_count(table)
    return {
        "table": [{"class": name, "cells": int(cells), "percent": float(percent)} for name, cells, percent in counts.itertuples(index=False)],
        "total": int(counts["cells"].sum()),
        "review": int((counted_cells(table)["review"] == True).sum()),  # noqa: E712 - None means "no calibration"
        "excluded_out_of_distribution": list(out_of_distribution(table)["name"]),
        "unreadable": list(table.loc[table["error"] != "", "name"]),
    }


class PortInUse(WBCError):
    """The address and port the page should listen on are taken."""


def check_port_free(host: str, port: int) -> None:
    """Raises :class:`PortInUse` when another server listens on ``host``:``port`` (or it cannot be bound), so the
    page says so before it loads a model and prints an address that is not its own."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        raise PortInUse(f"cannot listen on {host}:{port} ({error.strerror or error}): another server has it? "
                        "choose another with --port") from None


def create_app(model_uri: str, batch_size: int = defaults.SCORING_BATCH, logins: dict[str, str] | None = None,
               tta: bool = False) -> FastAPI:
    """The page and its API on ``model_uri`` (with ``tta``, scoring the mean logits of each image's 8 flips/rotations;
    Grad-CAM still explains the image as uploaded). With ``logins`` (``{name: scrypt hash}``, :mod:`wbc.app.auth`) every
    route but ``/health`` needs HTTP basic auth. Uploads are held in memory, never spooled to disk, and neither
    they nor their names are logged."""
    classifier = CellClassifier(Predictor.load(model_uri, batch_size=batch_size, tta=tta, torch_model=True), model_uri,
                                version_line(model_uri))
    MultiPartParser.spool_max_size = MAX_ZIP_BYTES + 1  # starlette spools bigger parts to a temporary file
    login = _login_check(logins)
    app = FastAPI(title="wbc", description="White blood cell classification", version="1")

    @app.get("/", response_class=HTMLResponse, dependencies=login)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/model", dependencies=login)
    def model_info() -> dict:
        return classifier.describe()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/api/classify", dependencies=login)
    def classify(files: list[UploadFile] = File(default=[])) -> dict:
        try:
            cells = expand_uploads(files)
            with classifier.lock:
                return classifier.classify(cells)
        except UploadError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    return app


def _login_check(logins: dict[str, str] | None) -> list:
    """The route dependency that answers 401 without a valid login (none when ``logins`` is None)."""
    if logins is None:
        return []
    basic = HTTPBasic(realm="wbc", auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        encoded = logins.get(credentials.username) if credentials else None
        if encoded is None or not verify_password(credentials.password, encoded):
            raise HTTPException(status_code=401, detail="log in with your wbc login", headers={"WWW-Authenticate": 'Basic realm="wbc"'})

    return [Depends(check)]
