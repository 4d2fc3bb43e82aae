"""1,000 concurrent clients on one node, every message accounted for.

One asyncio process of websockets clients (Debian's python3-websockets).
Clients connect from 127.0.K.x source addresses, 50 per address, so the
default per-IP limit (100 per window) is respected, not disabled.

Users: 800 users; the first 200 hold two connections each (1,000
connections). Every connection sends 10 direct messages to users chosen by a
seeded random generator; each message must arrive exactly once on every
connection of its target (exact multiset per receiver), and nowhere else.
Then one broadcast must reach all 1,000 connections exactly once.
"""
import asyncio
import json
import random
from collections import Counter

import websockets

from wsgate_fixture import M, run

N_CONN = 1000
N_USERS = 800
DOUBLE = N_CONN - N_USERS           # users 0..199 have two connections
PER_CONN = 10
PER_IP = 50
SEED = 20240611


def user_of(conn_index):
    return f"load{conn_index if conn_index < N_USERS else conn_index - N_USERS}"


def source_of(conn_index):
    k = conn_index // PER_IP
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


class Client:
    def __init__(self, index):
        self.index = index
        self.user = user_of(index)
        self.ws = None
        self.received = Counter()     # (from, content) for direct messages
        self.broadcasts = Counter()
        self.other = []
        self.total = 0
        self.changed = asyncio.Event()
        self.reader = None

    async def read_loop(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg.get("type") == "message":
                self.received[(msg["from"], json.dumps(msg["content"]))] += 1
            elif msg.get("type") == "broadcast":
                self.broadcasts[(msg["from"], json.dumps(msg["content"]))] += 1
            else:
                self.other.append(raw)
            self.total += 1
            self.changed.set()


async def wait_until(pred, timeout, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_1000_clients_every_message_accounted_for(start_server):
    """1,000 concurrent connections; 10,000 direct messages (to users with one
    or two connections) each delivered exactly once per target connection;
    one broadcast delivered exactly once to all 1,000."""
    s = start_server("--ip-window-ms", "600000")
    rng = random.Random(SEED)
    clients = [Client(i) for i in range(N_CONN)]
    conns_of_user = {}
    for c in clients:
        conns_of_user.setdefault(c.user, []).append(c)
    assert len(conns_of_user) == N_USERS

    # plan: every connection sends PER_CONN messages to random other users
    plan = []
    expected = {i: Counter() for i in range(N_CONN)}
    for c in clients:
        for k in range(PER_CONN):
            target = f"load{rng.randrange(N_USERS)}"
            content = {"from_conn": c.index, "k": k, "pad": "x" * rng.randrange(0, 200)}
            text = json.dumps({"type": "send_message", "target_user": target, "content": content})
            plan.append((c, text))
            for r in conns_of_user[target]:
                expected[r.index][(c.user, json.dumps(content))] += 1
    total_expected = sum(sum(e.values()) for e in expected.values())
    assert total_expected > N_CONN * PER_CONN  # some targets have two connections

    async def go():
        m0 = s.metrics()
        sem = asyncio.Semaphore(100)

        async def open_one(c):
            async with sem:
                c.ws = await asyncio.wait_for(websockets.connect(
                    s.url(c.user), local_addr=(source_of(c.index), 0), open_timeout=30,
                    close_timeout=10, ping_interval=None, compression=None, max_queue=None), 40)
                c.reader = asyncio.ensure_future(c.read_loop())
        await asyncio.gather(*(open_one(c) for c in clients))
        try:
            health = s.health()
            assert health["connections"] == N_CONN, health

            # everyone sends, interleaved across connections
            async def send_all(c, texts):
                for t in texts:
                    await c.ws.send(t)
            by_client = {}
            for c, t in plan:
                by_client.setdefault(c.index, []).append(t)
            await asyncio.gather(*(send_all(clients[i], ts) for i, ts in by_client.items()))

            await wait_until(lambda: sum(sum(c.received.values()) for c in clients) >= total_expected,
                             120, "all direct messages")
            # one broadcast, from a user with two connections
            sender = clients[0]
            await sender.ws.send('{"type":"broadcast","content":{"final":true}}')
            await wait_until(lambda: all(c.broadcasts for c in clients), 60, "broadcast everywhere")
            # barrier per connection: a ping round trip; anything queued
            # before it (duplicates included) has arrived by then.
            pongs_before = [len(c.other) for c in clients]
            await asyncio.gather(*(c.ws.send('{"type":"ping"}') for c in clients))
            await wait_until(lambda: all(len(c.other) > pongs_before[i] for i, c in enumerate(clients)),
                             60, "barrier pongs")

            bad = []
            for c in clients:
                if c.received != expected[c.index]:
                    missing = expected[c.index] - c.received
                    extra = c.received - expected[c.index]
                    bad.append((c.index, c.user, sum(missing.values()), sum(extra.values())))
                if c.broadcasts != Counter({(sender.user, '{"final": true}'): 1}):
                    bad.append((c.index, "broadcast", dict(c.broadcasts)))
                if any(json.loads(o) != {"type": "pong"} for o in c.other):
                    bad.append((c.index, "unexpected", c.other[:3]))
            assert not bad, f"{len(bad)} connections wrong, e.g. {bad[:10]}"

            m1 = s.metrics()
            sent_direct = N_CONN * PER_CONN
            assert m1.get(M.messages_in, type="send_message") - m0.get(M.messages_in, type="send_message") \
                == sent_direct
            assert m1.get(M.messages_out, type="message") - m0.get(M.messages_out, type="message") \
                == total_expected
            assert m1.get(M.messages_out, type="broadcast") - m0.get(M.messages_out, type="broadcast") \
                == N_CONN
            assert m1.get(M.undeliverable) == m0.get(M.undeliverable)
            assert m1.get(M.slow_consumer) == 0
        finally:
            for c in clients:
                if c.reader:
                    c.reader.cancel()

            async def close_one(c):
                async with sem:
                    if c.ws:
                        await c.ws.close()
            await asyncio.gather(*(close_one(c) for c in clients), return_exceptions=True)

    run(go(), timeout=400)
    s.wait_for(lambda: s.health()["connections"] == 0, timeout=30, what="all 1000 closed")
