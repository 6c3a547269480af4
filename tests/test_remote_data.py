"""A data dir served over HTTP by a server on 127.0.0.1 that the test starts, injecting 500s, bodies
cut short, slow responses, 404s and wrong bytes: retried, cached, verified, and trained on with the
same losses, bit for bit, as the local data dir."""

import collections
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from launching import explain, metrics, run_pretrain
from synthetic_data import make_data_dir, train_stream

from data_prep.manifest import load_manifest
from data_prep.storage import DataSource, FetchError
from data_prep.verify import verify

SLOW_S = 1.5  # a "slow" response waits this long, past the client's timeout below
TIMEOUT_S = 0.5


class _Handler(BaseHTTPRequestHandler):
    """Serves files below ``server.root``; ``server.faults[path]`` lists faults for its next requests."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        relative = self.path.lstrip("/")
        with server.lock:
            server.requests[relative] += 1
            planned = server.faults.get(relative)
            fault = planned.pop(0) if planned else None
            if fault:
                server.served_faults.append((relative, fault))
        path = server.root / relative
        if fault == "404" or not path.is_file():
            self.send_error(404)
            return
        if fault == "500":
            self.send_error(500)
            return
        data = path.read_bytes()
        if fault == "wrong":
            data = data[:-1] + bytes([data[-1] ^ 1])
        if fault == "slow":
            time.sleep(SLOW_S)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data[: len(data) // 2] if fault == "truncate" else data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a slow response

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("remote") / "data", train_shards=3, samples_per_shard=40)


@pytest.fixture
def server(data_dir):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.lock = data_dir, threading.Lock()
    httpd.faults, httpd.served_faults, httpd.requests = {}, [], collections.Counter()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _shards(data_dir):
    return [entry["path"] for entry in load_manifest(data_dir)["splits"]["train"]["shards"]]


def test_transient_failures_are_retried_and_permanent_ones_name_the_url(server, data_dir):
    shard = _shards(data_dir)[0]
    sha256 = hashlib.sha256((data_dir / shard).read_bytes()).hexdigest()
    server.faults[shard] = ["500", "truncate", "slow", "wrong"]
    source = DataSource(server.url, retries=4, backoff_s=0.01, timeout_s=TIMEOUT_S)
    assert source.read_bytes(shard, sha256) == (data_dir / shard).read_bytes()
    assert source.retries == 4 and server.requests[shard] == 5

    server.faults[shard] = ["500"] * 3
    with pytest.raises(FetchError, match=rf"cannot fetch {server.url}/{shard}: .*500.* after 2 retries"):
        DataSource(server.url, retries=2, backoff_s=0.01).read_bytes(shard, sha256)
    server.faults[shard] = ["wrong"] * 3
    with pytest.raises(FetchError, match="sha256 does not match the manifest's after 2 retries"):
        DataSource(server.url, retries=2, backoff_s=0.01).read_bytes(shard, sha256)
    server.faults[shard] = ["404"]
    before = server.requests[shard]
    with pytest.raises(FetchError, match=rf"cannot fetch {server.url}/{shard}: not found"):
        source.read_bytes(shard, sha256)
    assert server.requests[shard] == before + 1  # a 404 is not retried

    # the training stream turns a permanent failure into one error line, with no skip budget
    server.faults[_shards(data_dir)[1]] = ["404"] * 10
    stream = train_stream(server.url, seed=1, micro_batch_size=8, skip_budget=1000, source=source)
    errors = [batch["error"] for _, batch in zip(range(8), stream.batches()) if "error" in batch]
    assert len(errors) == 1 and f"{server.url}/{_shards(data_dir)[1]}: not found" in errors[0]


def test_cache_serves_later_reads_is_bounded_and_rechecked(server, data_dir, tmp_path):
    first, second = _shards(data_dir)[:2]
    size = (data_dir / first).stat().st_size
    digest = {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in (first, second)}
    source = DataSource(server.url, cache_dir=tmp_path / "cache", cache_bytes=int(size * 1.5))
    for name in (first, first, second, second, first):
        assert source.read_shard_bytes(f"{server.url}/{name}", digest[name]) == (data_dir / name).read_bytes()
    # first fetched, hit; second fetched (first evicted: room for one), hit; first fetched again
    assert (server.requests[first], server.requests[second]) == (2, 1)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest[first]}.tar"]
    cached = tmp_path / "cache" / f"{digest[first]}.tar"
    cached.write_bytes(b"corrupt" + cached.read_bytes()[7:])  # a damaged cache entry is fetched again
    assert source.read_shard_bytes(f"{server.url}/{first}", digest[first]) == (data_dir / first).read_bytes()
    assert server.requests[first] == 3


def test_verify_reads_a_remote_data_dir(server, data_dir):
    server.faults[_shards(data_dir)[2]] = ["500"]
    problems, lines = verify(server.url)
    assert problems == [] and lines[0].startswith(server.url) and "120 samples" in lines[1]
    server.faults[_shards(data_dir)[2]] = ["404"] * 10
    problems, _ = verify(server.url)
    assert len(problems) == 1 and "not found" in problems[0] and _shards(data_dir)[2] in problems[0]


@pytest.mark.slow
def test_training_over_http_with_faults_equals_the_local_run_bit_for_bit(server, data_dir, tmp_path):
    common = ["max_steps=6", "loader.retry_backoff_s=0.05", f"loader.timeout_s={TIMEOUT_S}"]
    local = run_pretrain(data_dir, tmp_path / "local", *common, ranks=1)
    assert local.returncode == 0, explain(local)
    shards = _shards(data_dir)
    server.faults = {
        "manifest.json": ["500"],
        shards[0]: ["500"],
        shards[1]: ["truncate"],
        shards[2]: ["slow"],
    }
    remote = run_pretrain(
        server.url, tmp_path / "remote", *common, f"loader.cache_dir={tmp_path / 'cache'}", ranks=1
    )
    assert remote.returncode == 0, explain(remote)
    assert len(server.served_faults) == 4  # every fault was met, and survived
    assert [r["loss"] for r in metrics(tmp_path / "remote")] == [
        r["loss"] for r in metrics(tmp_path / "local")
    ]
    assert metrics(tmp_path / "remote")[-1]["fetch_retries"] == 4
    assert remote.stderr.count("warning: fetching") == 4
    assert (tmp_path / "remote" / "tokenizer").is_dir() and len(list((tmp_path / "cache").iterdir())) >= 3
