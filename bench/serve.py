"""Serving latency on this CPU: each runtime's bare forward (the floor) against the endpoint.

    .venv/bin/python bench/serve.py [--image-size 224] [--requests 60] [--rounds 6] [--threads 4]
                                    [--clients 8] [--batching on,off] [--data ../shared/abid-sample]

An untrained resnet18 at the model's input size (weights do not change the cost), packaged as
model.tar.gz (with its ONNX graph) and served by `bincli deploy` (a background
`python -m bincli.backends.local.server`). Real ABID JPEGs from the sample. Figures:
  bare forward   each runtime (onnxruntime, torchscript, eager channels_last) on a ready tensor, batch 1
                 (ms) and batch 8 (img/s), in a PLAIN process (main thread, no server, no pool), started
                 in its own session like the server so the scheduler treats both alike; the runtimes take
                 uint8 pixels (the served graph holds the eval normalize); "onnxruntime-net" is the net
                 alone on normalized floats (graphs as exported before): the floors are the fastest of all
  handler        where one request's time goes in that process, wall and thread CPU, torch on one thread as
                 in the server: decode, pixels (the eval preset's resize), forward, answer+JSON, all four
  endpoint       for each batching setting (deploy.max_batch_size 8 and 1): 1 client (keep-alive, the
                 stdlib's http.client: see Lean; httpx too) p50/p95, and the server's own stage times for
                 them (/metrics stages_ms: read, prepare, wait, forward, respond); 8 clients at once, req/s, server and
                 client CPU per request, batch sizes; the local backend's runtime client p50 (what
                 `bincli predict` sends: backends/local/client.py); GET /ping p50 (the HTTP round trip alone)
  goals          1-client p50 <= 1.15x the fastest runtime's bare batch-1 forward; 8-client req/s >= 0.9x
                 the best batch-8 img/s. Ratios per round of (floor, endpoint) measured back to back, so
                 load from elsewhere on the machine hits both alike; the GOALS block at the end says MET or not
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
import json, sys, time, warnings
from pathlib import Path
import torch
from bincli.artifacts.loader import load_model
from bincli.backends.local.server import _one_torch_thread_beside
from bincli.core import inference, runtimes
model, tmp = load_model(Path(sys.argv[1]))
size = model.image_size
built = {}
for name in runtimes.available():
    try:
        built[name] = runtimes.warm_up(runtimes.build(name, model.net, tmp, model.info), size)
    except Exception as exc:
        print(f"skip {name}: {exc}", file=sys.stderr)
if "onnxruntime" in built:  # the net alone, as graphs were exported before the eval normalize moved in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.net, (torch.randn(1, 3, size, size),), str(tmp / "net.onnx"), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    net_only = runtimes.OnnxRuntime(tmp / "net.onnx", runtimes.normalize_of(model.info))
    net_only.normalize = None  # fed normalized floats directly: the net's forward alone
    built["onnxruntime-net"] = net_only
bodies = [Path(p).read_bytes() for p in sys.argv[2:]]
gen = torch.Generator().manual_seed(0)
pixels = {n: torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen) for n in (1, 8)}
floats = {n: runtimes.normalize_of(model.info)(x) for n, x in pixels.items()}


def forward(name, batch, n):
    run, x = built[name], (floats if name == "onnxruntime-net" else pixels)[batch]
    run(x)  # untimed, after the idle time
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(x)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stages(n):
    # As the server runs them: torch on one thread beside ONNX Runtime (server._one_torch_thread_beside).
    _one_torch_thread_beside(model)
    keys = ("decode", "pixels", "forward", "answer+json", "handler")
    wall, cpu = {k: [] for k in keys}, {k: [] for k in keys}
    for i in range(n):
        body = bodies[i % len(bodies)]
        t, c = [time.perf_counter()], [time.thread_time()]
        img = inference.input_fn(body, "image/jpeg")
        t.append(time.perf_counter()), c.append(time.thread_time())
        x = model.pixels(img).unsqueeze(0)
        t.append(time.perf_counter()), c.append(time.thread_time())
        logits = model.forward(x)
        t.append(time.perf_counter()), c.append(time.thread_time())
        inference.output_fn(inference.answer_logits(model, logits, single=True), "application/json")
        t.append(time.perf_counter()), c.append(time.thread_time())
        inference.handle_request(model, body, "image/jpeg", "application/json")
        t.append(time.perf_counter()), c.append(time.thread_time())
        for j, k in enumerate(keys):
            wall[k].append((t[j + 1] - t[j]) * 1000)
            cpu[k].append((c[j + 1] - c[j]) * 1000)
    return {"wall": wall, "cpu": cpu}


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

    def stages(self, n: int) -> dict[str, dict[str, list[float]]]:
        return self._ask(f"stages {n}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


class Lean:
    """A keep-alive HTTP client from the standard library: about 0.5 ms of CPU per request against httpx's
    1.2-1.9 (measured on this machine, issue 14). The clients share the endpoint's 2 cores, so the goals
    are measured with this one, to time the endpoint rather than the client library; httpx is printed too."""

    def __init__(self, url: str, timeout: float = 120):
        import http.client
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)

    def post(self, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def _poster(url: str, lib: str):
    """(post(body) -> (status, text), close) for the client library `lib` ("lean" or "httpx")."""
    if lib == "lean":
        c = Lean(url)

        def post(body: bytes) -> tuple[int, str]:
            status, data = c.post(body)
            json.loads(data)  # as a client would
            return status, data.decode()
        return post, c.close
    import httpx

    h = httpx.Client(base_url=url, timeout=120)

    def post_httpx(body: bytes) -> tuple[int, str]:
        r = h.post("/invocations", content=body, headers={"Content-Type": "image/jpeg"})
        r.json()
        return r.status_code, r.text
    return post_httpx, h.close


def one_client(url: str, bodies: list[bytes], n: int, lib: str = "lean") -> tuple[list[float], float]:
    post, close = _poster(url, lib)
    lat = []
    try:
        post(bodies[0])
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            status, text = post(bodies[i % len(bodies)])
            lat.append((time.perf_counter() - t0) * 1000)
            assert status == 200, text
        return lat, n / (time.perf_counter() - t_all)
    finally:
        close()


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


def runtime_client(name: str, url: str, bodies: list[bytes], n: int) -> list[float]:
    """What `bincli predict` sends to a local endpoint: the local backend's runtime client."""
    from bincli.backends.local.client import LocalEndpointClient

    p = LocalEndpointClient(name, url)
    p.invoke(bodies[0], "image/jpeg")
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        p.invoke(bodies[i % len(bodies)], "image/jpeg")
        lat.append((time.perf_counter() - t0) * 1000)
    p.close()
    return lat


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 if it cannot be read)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except (psutil.Error, TypeError, ValueError):
        return 0.0


def many_clients(url: str, bodies: list[bytes], n: int, clients: int, lib: str = "lean") -> tuple[list[float], float]:
    per = max(1, n // clients)

    def run(k: int) -> list[float]:
        out = []
        post, close = _poster(url, lib)
        try:
            for i in range(per):
                t0 = time.perf_counter()
                status, text = post(bodies[(k * per + i) % len(bodies)])
                out.append((time.perf_counter() - t0) * 1000)
                assert status == 200, text
        finally:
            close()
        return out

    t_all = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [x for chunk in pool.map(run, range(clients)) for x in chunk]
    return lat, len(lat) / (time.perf_counter() - t_all)


def httpx_get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=30).json()


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


def endpoint_figures(cfg_values: dict, tar: Path, floors: Floors, fastest: tuple[str, str], bodies: list[bytes],
                     images: list[Path], args, cold: bool) -> dict:
    """`fastest`: (the runtime fastest at batch 1, the one with the most img/s at batch 8)."""
    from bincli.backends.local.endpoint import deploy, teardown
    from bincli.config import load_config

    cfg = load_config(None, cfg_values, env={}).config
    t0 = time.perf_counter()
    record = deploy(cfg, model=tar)
    out = {"start_s": time.perf_counter() - t0, "one": [], "rounds": [], "many": [], "many_rounds": []}
    try:
        per = max(5, args.requests // args.rounds)
        for _ in range(args.rounds):  # alternating (floor, endpoint) rounds: ratios per round
            f1 = floors.forward(fastest[0], 1, per)
            o, _ = one_client(record["url"], bodies, per)
            out["one"] += o
            out["rounds"].append((statistics.median(f1), statistics.median(o)))
        out["stages"] = httpx_get_json(record["url"] + "/metrics").get("stages_ms", {})  # the 1-client requests
        server_pid, out["cpu"] = record.get("pid"), []
        before = httpx_get_json(record["url"] + "/metrics").get("batching", {})
        for _ in range(max(2, args.rounds // 2)):
            f8 = floors.forward(fastest[1], 8, max(3, per // 4))
            server0, client0 = cpu_s(server_pid), time.process_time()
            lat, rps = many_clients(record["url"], bodies, args.clients * max(3, per // 2), args.clients)
            out["cpu"].append(((cpu_s(server_pid) - server0) * 1000 / len(lat),
                               (time.process_time() - client0) * 1000 / len(lat)))
            out["many"] += lat
            out["many_rounds"].append((8000 / statistics.median(f8), rps))
            out.setdefault("many_n", []).append((len(lat), rps))
        after = httpx_get_json(record["url"] + "/metrics").get("batching", {})
        out["batching"] = {k: after[k] - before.get(k, 0) for k in ("batches", "images", "forward_busy_s")
                           if k in after}
        out["batching"]["largest"] = after.get("largest")
        out["many_s"] = sum(n / rps for n, rps in out.pop("many_n"))
        out["httpx_one"], _ = one_client(record["url"], bodies, args.requests, lib="httpx")
        out["httpx_many"] = many_clients(record["url"], bodies, args.clients * max(3, per // 2), args.clients,
                                         lib="httpx")[1]
        out["ping"] = ping_client(record["url"], args.requests)
        out["client"] = runtime_client(record["name"], record["url"], bodies, args.requests)
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
                print(f"  {name:15s} batch 1 {bare[name][0]:6.1f} ms (min {min(b1):5.1f})   "
                      f"batch 8 {bare[name][1]:6.1f} img/s")
            # The floors: the fastest of them all, the served graph or the net alone (the stricter).
            fastest = (min(bare, key=lambda k: bare[k][0]), max(bare, key=lambda k: bare[k][1]))
            st = floors.stages(args.requests)
            cpu = {k: statistics.median(v) for k, v in st["cpu"].items()}
            print(f"one request in-process, {floors.chosen}, p50 ms wall (thread CPU): " + ", ".join(
                f"{k} {statistics.median(v):.2f} ({cpu[k]:.2f})" for k, v in st["wall"].items()))
            results = {}
            for i, mode in enumerate(m.strip() for m in args.batching.split(",") if m.strip()):
                values = {"workdir": tmp / f"work-{mode}", "deploy.port": 0, "deploy.threads": args.threads,
                          "deploy.name": f"bench-{mode}", "deploy.max_batch_size": 8 if mode == "on" else 1}
                results[mode] = endpoint_figures(values, tar, floors, fastest, bodies, images, args, cold=i == 0)
        finally:
            floors.close()

    print(f"floors: batch 1 {fastest[0]} {bare[fastest[0]][0]:.1f} ms; batch 8 {fastest[1]} "
          f"{bare[fastest[1]][1]:.1f} img/s (re-measured each round, beside the endpoint's)")
    goals = []
    for mode, r in results.items():
        one, many = r["one"], r["many"]
        p1 = [o / f for f, o in r["rounds"]]
        p8 = [rps / f8 for f8, rps in r["many_rounds"]]
        print(f"endpoint, batching {mode} (deploy {r['start_s']:.1f} s to /ping healthy):")
        print(f"  1 client, HTTP keep-alive       p50 {statistics.median(one):7.1f} ms   p95 {pct(one, .95):7.1f} ms "
              f"(stdlib http.client; httpx: p50 {statistics.median(r['httpx_one']):.1f} ms)")
        stages = {k: v["p50"] for k, v in r["stages"].items() if v.get("p50") is not None}
        if stages:
            print("    server side p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                  + f"; outside them (HTTP, hand-offs, the client) {statistics.median(one) - sum(stages.values()):.2f}")
        print(f"  1 client, bincli's runtime client p50 {statistics.median(r['client']):5.1f} ms (what predict sends)")
        print(f"  HTTP round trip, GET /ping      p50 {statistics.median(r['ping']):7.1f} ms")
        print(f"  {args.clients} clients at once              p50 {statistics.median(many):7.1f} ms   "
              f"{statistics.median(x[1] for x in r['many_rounds']):6.1f} req/s "
              f"(httpx clients: {r['httpx_many']:.1f} req/s)")
        server_cpu, client_cpu = (statistics.median(x[i] for x in r["cpu"]) for i in (0, 1))
        batching = r["batching"]
        per_image = 1000 / bare[fastest[1]][1]
        print(f"    CPU per request: server {server_cpu:.1f} ms, the clients (this process, same cores) "
              f"{client_cpu:.1f} ms; the floor's batch 8 takes {per_image:.1f} ms of wall time per image "
              f"(at most {2 * per_image:.1f} ms CPU on 2 cores)")
        if batching.get("batches"):
            mean = batching["images"] / batching["batches"]
            print(f"    batches of the {args.clients}-client rounds: mean {mean:.2f} images (largest ever "
                  f"{batching['largest']}); a forward running {batching['forward_busy_s'] / r['many_s']:.0%} "
                  f"of their time")
        print(f"  1-client p50 / bare batch-1 per round:  {', '.join(f'{x:.2f}' for x in p1)}")
        print(f"  {args.clients}-client req/s / bare batch-8 per round: {', '.join(f'{x:.2f}' for x in p8)}")
        goals.append((f"batching {mode}: 1-client p50 / bare batch-1", statistics.median(p1), "<=", 1.15))
        goals.append((f"batching {mode}: {args.clients}-client req/s / bare batch-8", statistics.median(p8), ">=",
                      0.90))
        if r["cold"]:
            cold = r["cold"]
            print(f"cold `bincli predict one.jpg`      median {statistics.median(cold):5.2f} s   "
                  f"min {min(cold):5.2f} s ({args.cold_rounds} runs)")
            goals.append(("cold `bincli predict` median (s)", statistics.median(cold), "<=", 0.8))
    print(f"GOALS (issue 14; ratios are medians of per-round ratios; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for what, value, op, target in goals:
        met = value <= target if op == "<=" else value >= target
        print(f"  {what:48s} {value:6.2f}  target {op} {target:.2f}  {'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
