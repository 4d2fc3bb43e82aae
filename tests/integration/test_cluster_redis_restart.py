"""Redis restart mid-traffic (issue 3, "Losing Redis"): two wsgate nodes,
senders on each streaming numbered messages to users on the other node;
redis-server is killed with SIGKILL mid-stream, the senders keep sending,
then redis-server starts again on the same port.

What must hold: no message is silently dropped. Each message is either
delivered to its target (once), or its sender was told with an error reply.

How the accounting is made exact although the error reply carries no id:
- Each sender has one message outstanding at a time: it sends message k
  and a ping. The gateway refuses a publish synchronously ("transport
  unavailable" / "transport busy"), so a refusal for k arrives before k's
  pong: refusals are attributed to k exactly. A refused message must never
  reach the other node.
- An accepted message may still be lost: the node reports "transport
  connection lost" when the Redis link drops before Redis answered the
  PUBLISH, or when Redis answered "0 receivers" while nodes were still
  resubscribing. Such a report comes later and names no message. So after
  an accepted k the sender waits (with a deadline) until k is delivered or
  a not yet matched "connection lost" error arrives, and matches that
  error to k. An accepted message that is neither delivered nor matched to
  an error before the deadline fails the test.
- At the end, each sender sends a marker until one is delivered: one
  publisher's messages on one topic arrive in order, so nothing older can
  arrive after it, and the deliveries are final. Then: no duplicates, no
  refused message delivered, every undelivered message matched to an
  error, and the "connection lost" errors left unmatched (reports for
  messages that Redis delivered just before it died: their fate was
  unknown to the node, so it told the sender) are at most two per sender
  (its outstanding message and the one before it).
"""
import asyncio
import time

from cluster import T, async_wait, cluster, run, uid, wait_health, wait_subscribed  # noqa: F401 (fixture)

REFUSED = ("Not delivered to other nodes: transport unavailable", "Not delivered to other nodes: transport busy, retry")
# Accepted, then reported: the link dropped before Redis confirmed it, or it
# reached no node while the nodes were resubscribing after the restart.
LOST = ("Not delivered to other nodes: transport connection lost",
        "Maybe not delivered to other nodes: the cluster is reconnecting, retry")
SETTLE_S = 15.0  # deadline for one message's fate
PACE_S = 0.005   # between two messages of one sender (keeps the counts small)


class Sender:
    def __init__(self, client, target_user, target_client):
        self.c = client
        self.target = target_user
        self.tc = target_client
        self.k = 0
        self.refused = set()
        self.accepted = set()
        self.by_error = set()   # accepted, settled by a "connection lost" error
        self.lost_seen = 0
        self.lost_used = 0
        self.pongs = 0
        self.scan = 0           # frames of self.c.received examined
        self.stop = False
        self.other_frames = []
        self.outstanding = None  # an accepted message whose fate is not known yet
        # The test holds the senders between two messages (gate cleared,
        # busy false) to act at a moment when no message is on its way.
        self.gate = asyncio.Event()
        self.gate.set()
        self.busy = False

    def delivered(self):
        """k -> times delivered, from the target's record."""
        out = {}
        for m in self.tc.received:
            if m.get("type") == "message" and m.get("from") == self.c.user and isinstance(m["content"], dict):
                k = m["content"]["k"]
                out[k] = out.get(k, 0) + 1
        return out

    def _scan(self, upto_pong=None):
        """Reads the sender's new frames; returns refusals seen before the
        pong number upto_pong (None: scan everything)."""
        refusals = 0
        rec = self.c.received
        while self.scan < len(rec):
            m = rec[self.scan]
            if upto_pong is not None and self.pongs >= upto_pong:
                break
            self.scan += 1
            t = m.get("type")
            if t == "pong":
                self.pongs += 1
            elif t == "error" and m.get("message") in REFUSED:
                assert upto_pong is not None, f"{self.c.user}: a refusal outside a send/pong window: {m}"
                refusals += 1
            elif t == "error" and m.get("message") in LOST:
                self.lost_seen += 1
            else:
                self.other_frames.append(m)
        return refusals

    async def send_one(self):
        self.k += 1
        k = self.k
        await self.c.send_to(self.target, {"s": self.c.user, "k": k})
        await self.c.send({"type": "ping"})
        want = self.pongs + 1
        await self.c.wait_for(lambda c: sum(1 for m in c.received[self.scan:] if m.get("type") == "pong")
                              + self.pongs >= want, SETTLE_S, f"pong after message {k}")
        refusals = self._scan(upto_pong=want)
        assert self.pongs == want
        assert refusals <= 1, f"{self.c.user}: {refusals} refusals for message {k}"
        if refusals:
            self.refused.add(k)
            return
        self.accepted.add(k)

        def settled(_):
            self._scan()
            return k in self.delivered() or self.lost_seen > self.lost_used
        # Either client's arrivals can settle it: wait on the target, re-check the sender.
        deadline = time.monotonic() + SETTLE_S
        self.outstanding = k
        while not settled(None):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.c.user} -> {self.target}: message {k} was accepted, but in {SETTLE_S}s it was neither "
                    f"delivered nor reported lost (lost errors seen {self.lost_seen}, matched {self.lost_used}); "
                    f"silently dropped?")
            try:
                await asyncio.wait_for(self._either_changes(), 0.05)
            except asyncio.TimeoutError:
                pass
        self.outstanding = None
        if k not in self.delivered():
            self.lost_used += 1
            self.by_error.add(k)

    async def _either_changes(self):
        a, b = len(self.c.received), len(self.tc.received)
        while len(self.c.received) == a and len(self.tc.received) == b:
            await asyncio.sleep(0.005)

    async def run(self):
        while not self.stop:
            await self.gate.wait()
            self.busy = True
            await self.send_one()
            self.busy = False
            await asyncio.sleep(PACE_S)

    def delivered_after(self, k0):
        return sum(1 for k in self.delivered() if k > k0)


def test_redis_sigkill_and_restart_mid_traffic(cluster):  # noqa: F811
    redis = cluster.redis()
    a = cluster.redis_node(redis, "A", ttl_ms=3000)
    b = cluster.redis_node(redis, "B", ttl_ms=3000)
    for n in (a, b):
        wait_health(n, lambda h: h.get("transport_connected") is True, what="transport connected")

    async def body(clients):
        senders = []
        users = {"A": [], "B": []}
        for src, dst in ((a, b), (b, a), (a, b), (b, a)):
            su, tu = uid(f"snd{src.node_id}"), uid(f"tgt{dst.node_id}")
            sc = await clients.connect(src.url(su), su)
            tc = await clients.connect(dst.url(tu), tu)
            users[src.node_id].append(su)
            users[dst.node_id].append(tu)
            senders.append(Sender(sc, tu, tc))
        # Presence changes while Redis is down: a user on A who leaves, and
        # one who arrives on B (its topic is subscribed only on reconnect).
        leaver, late = uid("leaverA"), uid("lateB")
        leaver_c = await clients.connect(a.url(leaver), leaver)
        await wait_subscribed(redis, [s.target for s in senders] + [leaver])
        await async_wait(lambda: leaver in redis.hgetall("wsgate:node:A:users"), what="the leaver's presence")
        tasks = [asyncio.create_task(s.run()) for s in senders]

        async def watch(what, cond, timeout=20.0):
            """Waits for cond() while checking the senders have not failed."""
            deadline = time.monotonic() + timeout
            while not cond():
                for t in tasks:
                    if t.done():
                        t.result()  # raises the sender's failure
                        raise AssertionError("a sender stopped early")
                if time.monotonic() >= deadline:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                await asyncio.sleep(0.02)

        try:
            # 1. Traffic flows.
            await watch("20 deliveries per sender", lambda: all(len(s.delivered()) >= 20 for s in senders))
            assert all(not s.refused for s in senders), [s.refused for s in senders]

            # 2. Redis stops answering writes (PUBLISH included): each
            # sender's next message is accepted by its node and left
            # without a reply. Then Redis dies: those messages were in
            # flight, and their senders must hear that they were lost.
            # The senders are held between messages first, so that every
            # message sent after the pause surely reaches Redis after it.
            for s in senders:
                s.gate.clear()
            await watch("every sender between two messages", lambda: all(not s.busy for s in senders))
            k_pause = [s.k for s in senders]
            redis.cmd("CLIENT", "PAUSE", "60000", "WRITE")
            for s in senders:
                s.gate.set()
            await watch("a message of every sender in flight in the paused Redis",
                        lambda: all(s.outstanding is not None and s.outstanding > k0
                                    for s, k0 in zip(senders, k_pause)))
            in_flight = [s.outstanding for s in senders]
            redis.kill()
            for n in (a, b):
                await watch(f"{n.node_id} /health transport_connected false",
                            lambda n=n: n.health()["transport_connected"] is False)
                assert n.metric("wsgate_transport_connected") == 0
            await watch("the in-flight messages to be settled",
                        lambda: all(s.outstanding != k for s, k in zip(senders, in_flight)))
            for s, k in zip(senders, in_flight):
                assert k in s.by_error and k not in s.delivered(), \
                    f"{s.c.user}: message {k} was in flight when Redis died: expected a 'connection lost' error"
            # The nodes keep trying to reconnect (with growing backoff) and are
            # refused: counted every time, logged once (not once per attempt).
            for n in (a, b):
                failed = n.metric("wsgate_redis_connect_failures_total")
                await watch(f"{n.node_id} to fail 4 reconnects",
                            lambda n=n, f=failed: n.metric("wsgate_redis_connect_failures_total") >= f + 4)
                assert "Connection refused" in n.stderr_text()
            # Keep sending while it is down: each sender has messages refused.
            marks = [len(s.refused) for s in senders]
            await watch("10 refusals per sender while Redis is down",
                        lambda: all(len(s.refused) >= m + 10 for s, m in zip(senders, marks)))

            await leaver_c.close()
            await async_wait(lambda: a.connections() == 4, what="the leaver gone from A")
            late_c = await clients.connect(b.url(late), late)
            users["B"].append(late)
            await async_wait(lambda: b.connections() == 5, what="the late user on B")

            # 3. Redis comes back on the same port (empty: nothing persisted).
            k_restart = [s.k for s in senders]
            redis.start()
            for n in (a, b):
                await watch(f"{n.node_id} /health transport_connected true",
                            lambda n=n: n.health()["transport_connected"] is True, timeout=T * 2)
                assert n.metric("wsgate_transport_connected") == 1
            await watch("20 deliveries per sender after the restart",
                        lambda: all(s.delivered_after(k) >= 20 for s, k in zip(senders, k_restart)))
        finally:
            for s in senders:
                s.stop = True
            done, _ = await asyncio.wait(tasks, timeout=SETTLE_S + 5)
        for t in tasks:
            assert t in done, "a sender did not finish"
            t.result()

        # 4. Final markers: deliveries are final once each sender's marker arrived.
        for s in senders:
            deadline = time.monotonic() + T
            while True:
                await s.c.send_to(s.target, "end")
                try:
                    await s.tc.wait_for(lambda c: "end" in c.contents(sender=s.c.user), 2.0, "the end marker")
                    break
                except AssertionError:
                    if time.monotonic() >= deadline:
                        raise
            await s.c.barrier()
            s._scan()

        # 5. The accounting.
        report = []
        for s in senders:
            d = s.delivered()
            sent = set(range(1, s.k + 1))
            assert s.refused | s.accepted == sent and not (s.refused & s.accepted)
            dups = {k: n for k, n in d.items() if n > 1}
            assert not dups, f"{s.c.user}: delivered more than once: {dups}"
            assert set(d) <= sent, f"{s.c.user}: delivered messages never sent: {set(d) - sent}"
            assert not (set(d) & s.refused), f"{s.c.user}: refused yet delivered: {sorted(set(d) & s.refused)}"
            undelivered = s.accepted - set(d)
            assert undelivered <= s.by_error, (
                f"{s.c.user}: accepted, never delivered and never reported: {sorted(undelivered - s.by_error)}")
            assert s.lost_used <= s.lost_seen
            unmatched = s.lost_seen - s.lost_used
            assert unmatched <= 2, f"{s.c.user}: {unmatched} 'connection lost' errors matched no message"
            order = [m["content"]["k"] for m in s.tc.received
                     if m.get("type") == "message" and m.get("from") == s.c.user and isinstance(m["content"], dict)]
            assert order == sorted(order), f"{s.c.user}: delivered out of order"
            assert not s.other_frames, f"{s.c.user}: unexpected frames {s.other_frames}"
            report.append(f"{s.c.user}: sent {len(sent)} delivered {len(d)} refused {len(s.refused)} "
                          f"lost-reported {s.lost_seen} (undelivered {len(undelivered)})")
        print("\n".join(report))
        assert sum(len(s.refused) for s in senders) >= 20

        # 6. Presence was written again into the fresh Redis.
        for n in (a, b):
            await async_wait(lambda n=n: redis.hgetall(f"wsgate:node:{n.node_id}:users") ==
                             {u: "1" for u in users[n.node_id]}, what=f"{n.node_id}'s presence rewritten")
        assert {"A", "B"} <= redis.smembers("wsgate:nodes")
        # The user who arrived while Redis was down is reachable from A.
        await wait_subscribed(redis, [late])
        await senders[0].c.send_to(late, "welcome")
        await late_c.wait_for(lambda c: "welcome" in c.contents(), what="a message to the late user")
        for n in (a, b):
            m = n.metrics()
            assert m.get("wsgate_transport_publish_failed_total") >= 5
            assert m.get("wsgate_transport_connected") == 1

    run(body, timeout=100)
