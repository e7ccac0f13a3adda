"""Serving latency on this CPU: each runtime's bare forward (the floor) against the endpoint.

    .venv/bin/python bench/serve.py [--image-size 224] [--requests 60] [--rounds 6] [--threads 4]
                                    [--clients 8] [--batching on,off] [--data ../shared/abid-sample]

An untrained resnet18 at the model's input size (weights do not change the cost), packaged as
model.tar.gz (with its ONNX graph) and served by `bincli deploy` (a background
`python -m bincli.backends.local.server`). Real ABID JPEGs from the sample. Figures:
  bare forward   each runtime (onnxruntime, torchscript, eager channels_last) on a ready tensor, batch 1
                 (ms) and batch 8 (img/s), in a PLAIN process (main thread, no server, no pool), started
                 in its own session like the server so the scheduler treats both alike
  handler        where one request's time goes in that process: decode, transform, forward, answer+JSON
  endpoint       for each batching setting (deploy.max_batch_size 8 and 1): 1 client (httpx keep-alive)
                 p50/p95; 8 clients at once, req/s; boto3 invoke_endpoint p50 (what `bincli predict` sends);
                 GET /ping p50 (the HTTP round trip alone: 1-client p50 - handler - this = thread hops, body)
  goals          1-client p50 <= 1.15x the fastest runtime's bare batch-1 forward; 8-client req/s >= 0.9x
                 the fastest runtime's batch-8 img/s. Ratios per round of (floor, endpoint) measured back
                 to back, so load from elsewhere on the machine hits both alike
  cold predict   wall time of a fresh `bincli predict one.jpg` process against the endpoint (target < 0.8 s)
Prints figures; asserts nothing. The client threads share the CPU with the server (2 cores here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def build_model_tar(tmp: Path, image_size: int) -> Path:
    import torch

    from bincli.artifacts.bundle import package_model
    from bincli.core.classes import ClassSpec
    from bincli.core.contract import IMAGENET_MEAN, IMAGENET_STD
    from bincli.core.model import build_model

    spec = ClassSpec.parse("1-5")
    model_dir = tmp / "model"
    model_dir.mkdir()
    torch.manual_seed(0)
    torch.save(build_model("resnet18", spec.num_classes).state_dict(), model_dir / "model.pth")
    (model_dir / "model_info.json").write_text(json.dumps({
        "arch": "resnet18", "classes": str(spec), "labels": spec.labels, "counts": spec.counts,
        "image_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metrics": {}}))
    return package_model(model_dir, tmp / "model.tar.gz")


# The floors run in their own plain process, started like the endpoint's server (a new session), so both
# get the same treatment from the scheduler (Linux autogroups give each session a fair share).
WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
from PIL import Image
from bincli.artifacts.loader import load_model
from bincli.core import inference, runtimes
model, tmp = load_model(Path(sys.argv[1]))
size = model.image_size
built = {}
for name in runtimes.available():
    try:
        built[name] = runtimes.warm_up(runtimes.build(name, model.net, tmp, model.info), size)
    except Exception as exc:
        print(f"skip {name}: {exc}", file=sys.stderr)
bodies = [Path(p).read_bytes() for p in sys.argv[2:]]
x1, x8 = torch.randn(1, 3, size, size), torch.randn(8, 3, size, size)


def forward(name, batch, n):
    run, x = built[name], (x1 if batch == 1 else x8)
    run(x)  # untimed, after the idle time
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stages(n):
    out = {"decode": [], "transform": [], "forward": [], "answer+json": [], "handler": []}
    for i in range(n):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        img = inference.input_fn(body, "image/jpeg")
        t1 = time.perf_counter()
        x = model.transform(img).unsqueeze(0)
        t2 = time.perf_counter()
        logits = model.forward(x)
        t3 = time.perf_counter()
        probs = torch.softmax(logits.float() / model.temperature, dim=1)
        inference.output_fn(model.describe(probs[0]), "application/json")
        t4 = time.perf_counter()
        inference.handle_request(model, body, "image/jpeg", "application/json")
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("transform", t1, t2), ("forward", t2, t3), ("answer+json", t3, t4),
                        ("handler", t4, t5)):
            out[k].append((b - a) * 1000)
    return out


print(json.dumps({"ready": list(built), "chosen": model.runtime.name}), flush=True)
for line in sys.stdin:
    what, *args = line.split()
    if what == "forward":
        print(json.dumps(forward(args[0], int(args[1]), int(args[2]))), flush=True)
    else:
        print(json.dumps(stages(int(args[0]))), flush=True)
import shutil
shutil.rmtree(tmp, ignore_errors=True)
"""


class Floors:
    """The model's runtimes in a plain worker process: bare forwards and the handler's stages."""

    def __init__(self, tar: Path, images: list[Path]):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(tar), *map(str, images)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        hello = json.loads(self.proc.stdout.readline())
        self.runtimes, self.chosen = hello["ready"], hello["chosen"]

    def _ask(self, line: str):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def forward(self, runtime: str, batch: int, n: int) -> list[float]:
        return self._ask(f"forward {runtime} {batch} {n}")

    def stages(self, n: int) -> dict[str, list[float]]:
        return self._ask(f"stages {n}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def one_client(url: str, bodies: list[bytes], n: int) -> tuple[list[float], float]:
    import httpx

    lat = []
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/invocations", content=bodies[0], headers={"Content-Type": "image/jpeg"})
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            r = c.post("/invocations", content=bodies[i % len(bodies)], headers={"Content-Type": "image/jpeg"})
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
        return lat, n / (time.perf_counter() - t_all)


def ping_client(url: str, n: int) -> list[float]:
    """GET /ping one after another: the HTTP round trip alone (client, uvicorn, routing), no model."""
    import httpx

    lat = []
    with httpx.Client(base_url=url, timeout=60) as c:
        c.get("/ping")
        for _ in range(n):
            t0 = time.perf_counter()
            c.get("/ping")
            lat.append((time.perf_counter() - t0) * 1000)
    return lat


def boto3_client(name: str, url: str, bodies: list[bytes], n: int) -> list[float]:
    from bincli.backends.runtime import EndpointPredictor

    p = EndpointPredictor(name, url)
    p.invoke(bodies[0], "image/jpeg")
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        p.invoke(bodies[i % len(bodies)], "image/jpeg")
        lat.append((time.perf_counter() - t0) * 1000)
    p.close()
    return lat


def many_clients(url: str, bodies: list[bytes], n: int, clients: int) -> tuple[list[float], float]:
    import httpx

    per = max(1, n // clients)

    def run(k: int) -> list[float]:
        out = []
        with httpx.Client(base_url=url, timeout=120) as c:
            for i in range(per):
                t0 = time.perf_counter()
                r = c.post("/invocations", content=bodies[(k * per + i) % len(bodies)],
                           headers={"Content-Type": "image/jpeg"})
                out.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
        return out

    t_all = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for chunk in pool.map(run, range(clients)) for x in chunk]
    return lat, len(lat) / (time.perf_counter() - t_all)


def cold_predict(work: Path, image: Path, rounds: int) -> list[float]:
    bincli = Path(sys.executable).parent / "bincli"
    cmd = [str(bincli), "predict", str(image), "-w", str(work), "--json"]
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        assert out.returncode == 0, out.stderr
    return walls


def endpoint_figures(cfg_values: dict, tar: Path, floors: Floors, fastest: str, bodies: list[bytes],
                     images: list[Path], args, cold: bool) -> dict:
    from bincli.backends.local.endpoint import deploy, teardown
    from bincli.config import load_config

    cfg = load_config(None, cfg_values, env={}).config
    t0 = time.perf_counter()
    record = deploy(cfg, model=tar)
    out = {"start_s": time.perf_counter() - t0, "one": [], "rounds": [], "many": [], "many_rounds": []}
    try:
        per = max(5, args.requests // args.rounds)
        for _ in range(args.rounds):  # alternating (floor, endpoint) rounds: ratios per round
            f1 = floors.forward(fastest, 1, per)
            o, _ = one_client(record["url"], bodies, per)
            out["one"] += o
            out["rounds"].append((statistics.median(f1), statistics.median(o)))
        for _ in range(max(2, args.rounds // 2)):
            f8 = floors.forward(fastest, 8, max(3, per // 4))
            lat, rps = many_clients(record["url"], bodies, args.clients * max(3, per // 2), args.clients)
            out["many"] += lat
            out["many_rounds"].append((8000 / statistics.median(f8), rps))
        out["ping"] = ping_client(record["url"], args.requests)
        out["boto"] = boto3_client(record["name"], record["url"], bodies, args.requests)
        out["cold"] = cold_predict(cfg.workdir, images[0], args.cold_rounds) if cold else None
    finally:
        teardown(cfg)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--threads", type=int, default=4, help="the endpoint's deploy.threads")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6, help="alternating floor / endpoint rounds")
    ap.add_argument("--batching", default="on,off", help="endpoints to measure: on (max_batch_size 8), off (1)")
    ap.add_argument("--cold-rounds", type=int, default=5)
    ap.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    args = ap.parse_args()

    images = sorted((args.data / "images").glob("*.jpg"))[:64]
    if not images:
        raise SystemExit(f"no JPEGs in {args.data / 'images'}")
    bodies = [p.read_bytes() for p in images]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bincli-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        tar = build_model_tar(tmp, args.image_size)
        import torch

        print(f"resnet18 at {args.image_size}x{args.image_size}, {len(images)} ABID JPEGs, {os.cpu_count()} CPUs, "
              f"torch threads {torch.get_num_threads()}, endpoint threads {args.threads}; "
              f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        floors = Floors(tar, images)
        try:
            print(f"bare forward in a plain process (median of {args.requests}; the handler picks "
                  f"{floors.chosen}):")
            bare = {}
            for name in floors.runtimes:
                b1 = floors.forward(name, 1, args.requests)
                b8 = floors.forward(name, 8, max(5, args.requests // 4))
                bare[name] = (statistics.median(b1), 8000 / statistics.median(b8))
                print(f"  {name:12s} batch 1 {bare[name][0]:6.1f} ms (min {min(b1):5.1f})   "
                      f"batch 8 {bare[name][1]:6.1f} img/s")
            fastest = min(bare, key=lambda k: bare[k][0])
            st = floors.stages(args.requests)
            print(f"one request in-process, {floors.chosen} (p50 ms): " + ", ".join(
                f"{k} {statistics.median(v):.2f}" for k, v in st.items()))
            results = {}
            for i, mode in enumerate(m.strip() for m in args.batching.split(",") if m.strip()):
                values = {"workdir": tmp / f"work-{mode}", "deploy.port": 0, "deploy.threads": args.threads,
                          "deploy.name": f"bench-{mode}", "deploy.max_batch_size": 8 if mode == "on" else 1}
                results[mode] = endpoint_figures(values, tar, floors, fastest, bodies, images, args, cold=i == 0)
        finally:
            floors.close()

    print(f"fastest bare runtime: {fastest} ({bare[fastest][0]:.1f} ms at batch 1, {bare[fastest][1]:.1f} img/s "
          f"at batch 8)")
    for mode, r in results.items():
        one, many = r["one"], r["many"]
        p1 = [o / f for f, o in r["rounds"]]
        p8 = [rps / f8 for f8, rps in r["many_rounds"]]
        print(f"endpoint, batching {mode} (deploy {r['start_s']:.1f} s to /ping healthy):")
        print(f"  1 client, HTTP keep-alive       p50 {statistics.median(one):7.1f} ms   p95 {pct(one, .95):7.1f} ms")
        print(f"  1 client, boto3 invoke_endpoint p50 {statistics.median(r['boto']):7.1f} ms")
        print(f"  HTTP round trip, GET /ping      p50 {statistics.median(r['ping']):7.1f} ms")
        print(f"  {args.clients} clients at once              p50 {statistics.median(many):7.1f} ms   "
              f"{statistics.median(x[1] for x in r['many_rounds']):6.1f} req/s")
        print(f"  goal 1-client p50 / bare batch-1:  {statistics.median(p1):.2f}x (target <= 1.15x; rounds "
              f"{', '.join(f'{x:.2f}' for x in p1)})")
        print(f"  goal {args.clients}-client req/s / bare batch-8: {statistics.median(p8):.2f}x (target >= 0.90x; "
              f"rounds {', '.join(f'{x:.2f}' for x in p8)})")
        if r["cold"]:
            cold = r["cold"]
            print(f"cold `bincli predict one.jpg`      median {statistics.median(cold):5.2f} s   "
                  f"min {min(cold):5.2f} s (target < 0.8 s; {args.cold_rounds} runs)")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
