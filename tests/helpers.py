"""Small generated ABID-like data for tests (never real ABID images in the repo)."""

from __future__ import annotations

import base64
import io
import json
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image, ImageDraw


def make_bin_image(path: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """A dark, noisy 'bin' with `count` bright blobs, saved as JPEG."""
    rng = random.Random(seed)
    img = Image.effect_noise((size, size), 20).convert("RGB").point(lambda v: v // 4)
    draw = ImageDraw.Draw(img)
    r = max(2, size // 12)
    for _ in range(count):
        x, y = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(230, 220, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)
    return path


def make_abid_folder(root: Path, counts: dict[int, int], size: int = 48, start_id: int = 1) -> list[str]:
    """An ABID-layout folder: images/<id>.jpg + metadata/<id>.json, `counts` = {count: n images}.

    Ids are zero-padded to 5 digits like the real bucket."""
    ids = []
    next_id = start_id
    for count, n in sorted(counts.items()):
        for _ in range(n):
            id_ = f"{next_id:05d}"
            make_bin_image(root / "images" / f"{id_}.jpg", count, size=size, seed=next_id)
            write_metadata(root / "metadata" / f"{id_}.json", count)
            ids.append(id_)
            next_id += 1
    return ids


def write_metadata(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    items = {f"B00TEST{i:03d}": {"asin": f"B00TEST{i:03d}", "quantity": 1} for i in range(count)}
    path.write_text(json.dumps({"BIN_FCSKU_DATA": items, "EXPECTED_QUANTITY": count}))


# ---------------------------------------------------------------- self-contained HTML pages
class _Checker(HTMLParser):
    """Collects every src/href and checks that tags close in order (void elements aside)."""

    VOID = frozenset({"img", "meta", "link", "br", "hr", "input"})

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.urls: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_page(page: Path) -> int:
    """Well-formed, every image a data: URI that decodes, no http(s) anywhere. Returns the image count."""
    text = page.read_text(encoding="utf-8")
    parser = _Checker()
    parser.feed(text)
    parser.close()
    assert not parser.errors and parser.stack == []
    assert not re.search(r"https?://", text), "the page must not reference the network"
    assert parser.urls and all(u.startswith("data:image/") for u in parser.urls)
    for uri in parser.urls:
        header, payload = uri.split(",", 1)
        assert header.endswith(";base64")
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as im:
            im.load()
    return len(parser.urls)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_in_chromium(page: Path, out: Path, window: tuple[int, int] = (1200, 2400)) -> list[str]:
    """Screenshot `page` in headless Chromium; returns the URLs the page itself requested (from the
    browser's net log; the browser's own background calls have no page origin and are ignored)."""
    log = out.with_suffix(".netlog.json")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={out.parent / 'chromium-profile'}", f"--window-size={window[0]},{window[1]}",
           f"--log-net-log={log}", f"--screenshot={out}", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    net = json.loads(log.read_text())
    start = net["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in net["events"]
            if e["type"] == start and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"
            and not e["params"]["url"].startswith(("data:", "file:"))]
