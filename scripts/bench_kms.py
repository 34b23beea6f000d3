#!/usr/bin/env python3
"""make bench, KMS part: what a cache miss costs with each provider, and how
many KMS calls a cold start makes.

Starts moto (AWS KMS) and an OpenBao dev server (transit) on loopback from
the venv `make deps-peers` made, and two throwaway PostgreSQL 15 clusters:
  * "warm": the normal shared cache; pgbench of vault.resolve(g, 1) per
    provider is the warm hit rate;
  * "cold": secret_vault.cache_groups = 0, so every call is a miss that reads
    the tables and unwraps through the KMS: the cold miss rate;
  * cold start: 100 groups of 4 versions under AWS, restart, the worker warms
    them; KMS calls counted (one per group is the goal, not one per version).
BENCH_SECONDS shortens the pgbench runs.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import json

sys.path.insert(0, os.path.dirname(__file__))
from bench import PGBIN, as_pg, free_port, pgbench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("SECRET_VAULT_PEERS", os.path.join(ROOT, "target", "peers"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIABENCHBENCHBENCH0", "AWS_SECRET_ACCESS_KEY": "bench-secret-not-checked",
           "AWS_DEFAULT_REGION": "us-east-1"}


def wait_port(port):
    import socket
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


class Peers:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="secret_vault-bench-peers-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        # moto without signature checks: the bench measures latency, the
        # tests check signatures.
        self.moto_port = free_port()
        self.moto = subprocess.Popen([f"{PEERS}/bin/moto_server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.bao_port = free_port()
        self.bao = subprocess.Popen([f"{PEERS}/bin/bao", "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.bao_port}",
                                     "-dev-root-token-id=root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.moto_port)
        wait_port(self.bao_port)
        self.bao_call("POST", "sys/mounts/transit", {"type": "transit"})
        self.bao_call("POST", "transit/keys/bench", {"derived": True})
        self.token_file = os.path.join(self.dir, "token")
        with open(self.token_file, "w") as f:
            f.write("root")
        os.chmod(self.token_file, 0o644)
        self.key_arn = self.kms("CreateKey", {})["KeyMetadata"]["Arn"]

    def bao_call(self, method, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.bao_port}/v1/{path}", method=method,
                                     data=json.dumps(body).encode(), headers={"X-Vault-Token": "root"})
        for _ in range(50):
            try:
                urllib.request.urlopen(req).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"OpenBao {path}")

    def kms(self, op, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.moto_port}/", data=json.dumps(body).encode(), headers={
            "X-Amz-Target": f"TrentService.{op}", "Content-Type": "application/x-amz-json-1.1",
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKIABENCHBENCHBENCH0/20260101/us-east-1/kms/aws4_request, "
                             "SignedHeaders=host, Signature=00"})
        return json.loads(urllib.request.urlopen(req).read())

    def stop(self):
        for p in (self.moto, self.bao):
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    def __init__(self, extra):
        self.dir = tempfile.mkdtemp(prefix="secret_vault-bench-kms-", dir="/tmp")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        as_pg(f"{PGBIN}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    f"shared_preload_libraries = 'secret_vault'\nfsync = off\nsynchronous_commit = off\n{extra}\n")
        self.start()

    def start(self):
        env = dict(os.environ, **AWS_ENV)
        r = subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", self.data, "-l",
                            os.path.join(self.dir, "log"), "-w", "start"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    def restart(self):
        as_pg(f"{PGBIN}/pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")
        self.start()

    def psql(self, sql):
        return as_pg(f"{PGBIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.dir,
                     "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql).stdout.strip()

    def stop(self):
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def setup(c, peers):
    c.psql("CREATE EXTENSION secret_vault")
    c.psql(f"""SELECT vault.add_kms_key('aws', 'aws', '{{"region": "us-east-1", "key_id": "{peers.key_arn}",
               "endpoint": "http://127.0.0.1:{peers.moto_port}"}}')""")
    c.psql(f"""SELECT vault.add_kms_key('bao', 'transit', '{{"address": "http://127.0.0.1:{peers.bao_port}",
               "key": "bench", "token_file": "{peers.token_file}"}}')""")
    for kms in ("local", "aws", "bao"):
        c.psql(f"SELECT vault.create_group('bench/{kms}', kms_key => '{kms}')")


def main():
    peers = Peers()
    clusters = []
    try:
        warm = Cluster("")
        clusters.append(warm)
        setup(warm, peers)
        cold = Cluster("secret_vault.cache_groups = 0")
        clusters.append(cold)
        setup(cold, peers)
        rows = []
        for kms in ("local", "aws", "bao"):
            sql = f"SELECT vault.resolve('bench/{kms}', 1);"
            warm.psql(sql)
            hit = pgbench(warm, sql, 1)
            k0 = int(cold.psql("SELECT kms_calls FROM vault.stats()"))
            miss = pgbench(cold, sql, 1)
            k1 = int(cold.psql("SELECT kms_calls FROM vault.stats()"))
            rows.append((kms, hit, miss, k1 - k0))

        # Cold start: 100 groups x 4 versions under AWS.
        warm.psql("SELECT vault.create_group('start/' || i, propagation_delay => '0', kms_key => 'aws') "
                  "FROM generate_series(1, 100) i")
        warm.psql("SELECT vault.rotate('start/' || i) FROM generate_series(1, 100) i, generate_series(1, 3)")
        warm.restart()
        t0 = time.time()
        while int(warm.psql("SELECT cached_groups FROM vault.stats()")) < 103 and time.time() - t0 < 60:
            time.sleep(0.2)
        warmed_in = time.time() - t0
        time.sleep(2)
        start_calls = int(warm.psql("SELECT kms_calls_aws FROM vault.stats()"))
        warm.psql("SELECT count(vault.current('start/' || i)) FROM generate_series(1, 100) i")
        after_use = int(warm.psql("SELECT kms_calls_aws FROM vault.stats()"))

        # Re-wrap after a transit rotation: throughput against the pacing
        # setting, and vault.current tps during a pass against before.
        warm.psql("SELECT vault.create_group('rw/' || i, propagation_delay => '0', kms_key => 'bao') "
                  "FROM generate_series(1, 100) i")
        warm.psql("SELECT vault.rotate('rw/' || i) FROM generate_series(1, 100) i, generate_series(1, 3)")
        cur = "SELECT * FROM vault.current('bench/local');"
        warm.psql(cur)
        before = pgbench(warm, cur, 2)
        def rotate_and_rewrap(rate):
            warm.psql(f"ALTER SYSTEM SET secret_vault.rewrap_rate = {rate}")
            warm.psql("SELECT pg_reload_conf()")
            time.sleep(0.5)
            peers.bao_call("POST", "transit/keys/bench/rotate", {})
            return int(warm.psql("SELECT vault.rewrap('bao')")), time.time()

        def wait_settled(t0):
            while int(warm.psql("SELECT rows_old FROM vault.rewrap_status WHERE kms_key = 'bao'")) > 0 \
                    and time.time() - t0 < 600:
                time.sleep(0.05)
            return time.time() - t0

        rewraps = []
        for rate in (20, 100, 1000):
            todo, t0 = rotate_and_rewrap(rate)
            rewraps.append((rate, todo, wait_settled(t0)))
        # vault.current during a pass paced to last longer than the pgbench run.
        pace = max(1, int(401 / (SECONDS + 2)))
        todo, t0 = rotate_and_rewrap(pace)
        during = pgbench(warm, cur, 2)
        still_moving = int(warm.psql("SELECT rows_old FROM vault.rewrap_status WHERE kms_key = 'bao'"))
        wait_settled(t0)

        print()
        print(f"{'provider':<10} {'warm hit':>12} {'cold miss':>12} {'miss/hit':>9} {'miss latency':>13}  KMS calls")
        for kms, hit, miss, calls in rows:
            name = "transit" if kms == "bao" else kms
            print(f"{name:<10} {hit:>8.0f} tps {miss:>8.0f} tps {miss / hit:>8.3f}x {1000 / miss:>10.2f} ms  "
                  f"{calls} in {SECONDS} s")
        print()
        print(f"cold start, 100 AWS groups x 4 versions (and 1 more AWS group): worker warmed them in {warmed_in:.1f} s with "
              f"{start_calls} AWS KMS calls; {after_use - start_calls} more to serve vault.current of all 100")
        print()
        print(f"re-wrap after a transit key rotation, 401 rows (transit rewrap, one row per call):")
        for rate, todo, took in rewraps:
            print(f"  rewrap_rate {rate:>4}/s: {todo} rows in {took:.1f} s = {todo / took:.0f} rows/s")
        print(f"  vault.current (2 clients) during a pass at {pace}/s (still {still_moving} rows to go when pgbench "
              f"ended): {during:.0f} tps vs {before:.0f} before = {during / before:.2f}x")
        print("pgbench -M prepared, 1 client; cold = secret_vault.cache_groups = 0 (every call reads the tables and "
              "unwraps through the KMS); peers on loopback (moto, OpenBao dev).")
    finally:
        for c in clusters:
            c.stop()
        peers.stop()


if __name__ == "__main__":
    sys.exit(main())
