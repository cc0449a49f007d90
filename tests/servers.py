"""Real servers on loopback for integration tests: moto's S3 server and a STAC API.

Both are started as subprocesses on free 127.0.0.1 ports and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pystac

DATA = Path(__file__).resolve().parent / "data"  # see data/SOURCES.md
SAMPLE = Path(__file__).resolve().parents[1] / "srlib" / "data" / "S2A_29RKH_20200219"
BUCKET = "sentinel-cogs"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
FILES = {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
         "rededge3": "B07", "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12",
         "scl": "SCL"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"server {url} did not start within {timeout} s")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Start moto's standalone S3 server; yield its ``host:port``."""
    port = free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{port}/moto-api/", proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{endpoint}", **{
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]})


def _prefix(item: dict) -> str:
    href = item["assets"]["red"]["href"]
    return href.split(".amazonaws.com/", 1)[1].rsplit("/", 1)[0]


def upload_sample(endpoint: str) -> dict:
    """Upload the bundled 29RKH COGs as Earth Search lays them out; return the item dict.

    The item is the real Earth Search item of those files, with hrefs rewritten to
    ``s3://`` and (since the publisher decimated the files 10x) ``proj:shape`` and
    ``proj:transform`` rewritten to the files' real grid.
    """
    import rasterio

    item = json.loads((SAMPLE / "item.json").read_text())
    client = s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    prefix = _prefix(item)
    for key, asset in list(item["assets"].items()):
        if key not in FILES:
            del item["assets"][key]
            continue
        path = SAMPLE / f"{FILES[key]}.tif"
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
        asset["href"] = f"s3://{BUCKET}/{prefix}/{path.name}"
        with rasterio.open(path) as src:
            asset["proj:shape"] = list(src.shape)
            asset["proj:transform"] = list(src.transform)[:6]
    return item


def broken_item(endpoint: str, item: dict, *, day: str, nir: bytes | None) -> dict:
    """A copy of the sample item on another date whose ``nir`` asset is missing
    (``nir=None``) or holds ``nir`` bytes instead of a GeoTIFF."""
    client = s3_client(endpoint)
    copy = json.loads(json.dumps(item))
    copy["id"] = f"S2A_29RKH_{day}_0_L2A"
    copy["properties"]["datetime"] = f"{day[:4]}-{day[4:6]}-{day[6:]}T11:34:25.405000Z"
    for key, asset in copy["assets"].items():
        name = asset["href"].rsplit("/", 1)[1]
        new_key = f"broken-{day}/{name}"
        asset["href"] = f"s3://{BUCKET}/{new_key}"
        if key == "nir":
            if nir is not None:
                client.put_object(Bucket=BUCKET, Key=new_key, Body=nir)
        else:
            client.upload_file(str(SAMPLE / name), BUCKET, new_key)
    return copy


def zero_item(endpoint: str, item: dict, *, day: str, workdir: Path) -> dict:
    """A copy of the sample item on another date whose every band is nodata (zeros)."""
    import numpy as np
    import rasterio

    client = s3_client(endpoint)
    copy = json.loads(json.dumps(item))
    copy["id"] = f"S2A_29RKH_{day}_0_L2A"
    copy["properties"]["datetime"] = f"{day[:4]}-{day[4:6]}-{day[6:]}T11:34:25.405000Z"
    for asset in copy["assets"].values():
        name = asset["href"].rsplit("/", 1)[1]
        with rasterio.open(SAMPLE / name) as src:
            profile = src.profile
        path = workdir / f"zero-{day}-{name}"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((1, profile["height"], profile["width"]), profile["dtype"]))
        key = f"zero-{day}/{name}"
        client.upload_file(str(path), BUCKET, key)
        asset["href"] = f"s3://{BUCKET}/{key}"
    return copy


def metadata_items() -> list[dict]:
    """Real Earth Search v1 items of 2023 and 2025 (baseline >= 04.00), assets not served."""
    out = []
    for path in sorted((DATA / "earthsearch").glob("S2*_L2A.json")):
        item = json.loads(path.read_text())
        if item.get("collection") == "sentinel-2-l2a":
            out.append(item)
    return out


def write_catalog(root: Path, items: list[dict]) -> Path:
    """A static STAC catalogue (catalog -> sentinel-2-l2a collection -> items)."""
    collection_json = json.loads(
        (DATA / "earthsearch" / "earthsearch_v1_collection_sentinel-2-l2a.json").read_text())
    collection_json["links"] = []
    collection = pystac.Collection.from_dict(collection_json)
    catalog = pystac.Catalog(id="srlib-test", description="loopback test catalogue")
    catalog.add_child(collection)
    for data in items:
        data = {**data, "links": []}
        collection.add_item(pystac.Item.from_dict(data))
    collection.update_extent_from_items()
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@contextlib.contextmanager
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server on loopback that records the JSON bodies POSTed to it."""
    import http.server
    import threading

    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/T000/secret", received
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def stac_api(catalog_json: Path) -> Iterator[str]:
    """Serve a static catalogue with stac-fastapi-static; yield the API URL."""
    port = free_port()
    env = {**os.environ, "CATALOG_HREF": catalog_json.resolve().as_uri(),
           "APP_HOST": "127.0.0.1", "APP_PORT": str(port), "RELOAD": "false",
           "LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "stac_fastapi.static.app:app",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


#: pg_ctl command line of each running test server, by URL (see :func:`restart_postgres`)
_PG_CTL: dict[str, list[str]] = {}


def restart_postgres(url: str, *, down_s: float = 0.0) -> None:
    """Stop a test server started by :func:`postgres` (dropping every connection), keep
    it down for ``down_s`` seconds, and start it again on the same port and data."""
    ctl = _PG_CTL[url]
    subprocess.run([*ctl, "-m", "fast", "stop"], check=True, capture_output=True)
    time.sleep(down_s)
    log = Path(ctl[ctl.index("-D") + 1]).parent / "pg.log"
    port = url.rsplit(":", 1)[1].split("/")[0]
    sock = Path(ctl[ctl.index("-D") + 1]).parent / "pgsock"
    subprocess.run([*ctl, "-l", str(log), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """Start a throw-away PostgreSQL cluster (Debian's server binaries) on loopback.

    As root the cluster runs as the ``postgres`` user (PostgreSQL refuses root).
    Yields a SQLAlchemy URL.
    """
    initdb = shutil.which("initdb") or next(iter(sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    bindir = Path(initdb).resolve().parent
    data, sock = workdir / "pgdata", workdir / "pgsock"
    sock.mkdir(parents=True, exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(workdir / "pg.log"), "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    _PG_CTL[url] = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-w"]
    try:
        yield url
    finally:
        _PG_CTL.pop(url, None)
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], check=False, capture_output=True)


@contextlib.contextmanager
def loopback_sources(workdir: Path, extra_items=None) -> Iterator[tuple[str, str, dict]]:
    """moto S3 with the bundled sample and a STAC API serving it and the real metadata
    items; ``extra_items(endpoint, item)`` adds more items. Yields (url, endpoint, item)."""
    with moto_s3() as endpoint:
        item = upload_sample(endpoint)
        more = extra_items(endpoint, item) if extra_items else []
        catalog = write_catalog(workdir, [item, *more, *metadata_items()])
        with stac_api(catalog) as url:
            yield url, endpoint, item


SLURM_CONF = """\
ClusterName=srlibtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
{node} State=UNKNOWN
PartitionName={host} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm(workdir: Path) -> Iterator[dict[str, str]]:
    """Start a single-node SLURM (Debian's slurm-wlm and munge) on this machine.

    The daemons run as root with their own munge key, ports and state under
    ``workdir``; the node and the partition are named after ``hostname -s``. Yields the
    environment the clients need (``SLURM_CONF``) plus ``partition``.
    """
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        raise RuntimeError(f"{missing} not found: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise RuntimeError("the single-node SLURM of the tests runs its daemons as root")
    sbin = lambda b: shutil.which(b) or f"/usr/sbin/{b}"  # noqa: E731
    for sub in ("munge", "state", "spool"):
        (workdir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    munge = workdir / "munge"
    subprocess.run([sbin("mungekey"), "-c", "-k", str(munge / "key")], check=True,
                   capture_output=True)
    subprocess.run([sbin("munged"), "--force", f"--key-file={munge / 'key'}",
                    f"--socket={munge / 'socket'}", f"--pid-file={munge / 'pid'}",
                    f"--log-file={munge / 'log'}", f"--seed-file={munge / 'seed'}"],
                   check=True, capture_output=True)
    host = socket.gethostname().split(".")[0]
    node = subprocess.run([sbin("slurmd"), "-C"], check=True, capture_output=True,
                          text=True).stdout.splitlines()[0]  # NodeName=.. CPUs=.. RealMemory=..
    conf = workdir / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, node=node, root=workdir,
                                      ctld_port=free_port(), d_port=free_port()))
    (workdir / "plugstack.conf").write_text("")
    env = {"SLURM_CONF": str(conf)}
    run_env = {**os.environ, **env}
    try:
        subprocess.run([sbin("slurmctld"), "-f", str(conf)], check=True, env=run_env)
        subprocess.run([sbin("slurmd"), "-f", str(conf)], check=True, env=run_env)
        deadline = time.time() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True,
                                   text=True, env=run_env).stdout.strip()
            if state == "idle":
                break
            if time.time() > deadline:
                logs = [(workdir / f).read_text()[-2000:] for f in ("slurmctld.log",
                                                                    "slurmd.log")
                        if (workdir / f).exists()]
                raise RuntimeError(f"SLURM node is {state!r}, not idle, after 60 s: {logs}")
            time.sleep(0.5)
        yield {**env, "partition": host}
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env=run_env)
        subprocess.run(["scontrol", "shutdown"], capture_output=True, env=run_env)
        subprocess.run([sbin("munged"), "--stop", f"--socket={munge / 'socket'}"],
                       capture_output=True)


def slurm_job(job_id: str, env: dict[str, str], *, timeout: float = 600) -> dict[str, str]:
    """Wait for a SLURM job to end; return its ``scontrol show job`` fields."""
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        if fields["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return fields
        if time.time() > deadline:
            raise TimeoutError(f"SLURM job {job_id} still {fields['JobState']} after "
                               f"{timeout} s")
        time.sleep(1)


def _dated(item: dict, day: str, tile: str) -> dict:
    copy = json.loads(json.dumps(item))
    copy["id"] = f"S2A_{tile}_{day}_0_L2A"
    copy["properties"]["datetime"] = f"{day[:4]}-{day[4:6]}-{day[6:]}T11:34:25.405000Z"
    copy["properties"]["grid:code"] = f"MGRS-{tile}"
    return copy


def split_items(endpoint: str, item: dict, *, day: str, workdir: Path,
                keep: tuple[str, ...] = ("west", "east")) -> list[dict]:
    """The sample cut into two adjacent tiles of one acquisition on ``day`` (the west
    half as 29RKH, the east half as a neighbour, 29RLH), each with its own files, grid
    and data footprint; ``keep`` chooses which of the two exist."""
    import numpy as np
    import rasterio
    from rasterio.warp import transform_geom
    from rasterio.windows import Window

    client = s3_client(endpoint)
    out = []
    for half, tile in (("west", "29RKH"), ("east", "29RLH")):
        if half not in keep:
            continue
        copy = _dated(item, day, tile)
        for asset in copy["assets"].values():
            name = asset["href"].rsplit("/", 1)[1]
            with rasterio.open(SAMPLE / name) as src:
                w = src.width
                cols = (0, int(np.ceil(w / 2))) if half == "west" else (w // 2, w)
                window = Window(cols[0], 0, cols[1] - cols[0], src.height)
                data = src.read(window=window)
                profile = {**src.profile, "width": cols[1] - cols[0],
                           "transform": src.window_transform(window)}
                crs = src.crs
            path = workdir / f"{day}-{half}-{name}"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
            key = f"split-{day}-{half}/{name}"
            client.upload_file(str(path), BUCKET, key)
            asset["href"] = f"s3://{BUCKET}/{key}"
            asset["proj:shape"] = [profile["height"], profile["width"]]
            asset["proj:transform"] = list(profile["transform"])[:6]
            if name == "B04.tif":
                t, h, wd = profile["transform"], profile["height"], profile["width"]
                x0, y0 = t.c, t.f
                x1, y1 = x0 + wd * t.a, y0 + h * t.e
                ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
                copy["geometry"] = transform_geom(crs, "EPSG:4326",
                                                  {"type": "Polygon", "coordinates": [ring]})
                xs = [p[0] for p in copy["geometry"]["coordinates"][0]]
                ys = [p[1] for p in copy["geometry"]["coordinates"][0]]
                copy["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
        out.append(copy)
    return out


def coarse_red_item(endpoint: str, item: dict, *, day: str, workdir: Path) -> dict:
    """A copy of the sample on ``day`` whose red band is at twice the pixel size of the
    other 10 m-group bands (mixed band resolutions)."""
    import rasterio
    from rasterio.enums import Resampling

    client = s3_client(endpoint)
    copy = _dated(item, day, "29RKH")
    for key, asset in copy["assets"].items():
        name = asset["href"].rsplit("/", 1)[1]
        if key != "red":  # the sample's files, as uploaded
            continue
        with rasterio.open(SAMPLE / name) as src:
            shape = (src.height // 2, src.width // 2)
            data = src.read(out_shape=(1, *shape), resampling=Resampling.average)
            transform = src.transform * src.transform.scale(src.width / shape[1],
                                                            src.height / shape[0])
            profile = {**src.profile, "height": shape[0], "width": shape[1],
                       "transform": transform, "blockxsize": 256, "blockysize": 256}
        path = workdir / f"coarse-{day}-{name}"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        client.upload_file(str(path), BUCKET, f"coarse-{day}/{name}")
        asset["href"] = f"s3://{BUCKET}/coarse-{day}/{name}"
        asset["proj:shape"] = list(shape)
        asset["proj:transform"] = list(transform)[:6]
    return copy
