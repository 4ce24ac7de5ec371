"""Scale-out on real parts (issue #18): two ingesters in one share group, two schedulers and two API
processes against one database under load — every reading stored once, every notification sent
once, every acknowledgement recorded once.

The real commands (``coldchain ingest`` / ``scheduler`` / ``api``) run as the runtime role against
a database, a Mosquitto and a fake WeCom robot (real HTTP) of this test's own. A demo province of
300 probes reports at about 3 000 readings/s over MQTT QoS 1 for 20 s; some messages are published
twice and some readings repeated in a later message. Sixteen refrigerated compartments, each in a
unit of its own and with its own robots per level, go above +8 ℃ for 8 s under a zero-delay rule,
so alarms open, escalate on a second-scale ladder (2 s, 4 s, reminders every 3 s), get
acknowledged — through API 1 or API 2, two of them through both at once — resolve, and are closed
through the other API. Meanwhile one ingester is killed with SIGKILL and restarted with its
client id (as systemd would), and one scheduler gets SIGTERM and is started again.

Then, exactly: the stored readings are the distinct published (probe, ts) with their values; one
alarm per excursion and no other alarm; every outbox row sent once, and the robot got each
merged request once (compared request by request through ``sent_in``), its @mention follow-ups,
never more than 20 requests a minute per robot; each acknowledgement once, by the right person,
the same through both APIs; both APIs' boards alike. The scenario prints what it did (messages,
repeats, the outbox's rows by step, merged requests, the race's answers, its timings).

The scenario restarts the killed ingester under its own client id, as systemd does: while a
member is away, Mosquitto goes on queueing its share in its persistent session. The last test is
the way out for a member gone for good (killed, or stopped when scaling in): ``--leave``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from apihelp import PASSWORD
from dbhelp import as_runtime, query
from fakewecom import FakeWecom
from ingesthelp import count, publish, seed_fleet, stream
from scalehelp import (
    ALARMS,
    OUTBOX,
    Child,
    Children,
    Fleet,
    Load,
    board_view,
    build_fleet,
    busiest_minute,
    clean_env,
    http_ok,
    notices_in,
    once_problems,
    outbox_requests,
    owed_steps,
    robot_requests,
    stored_readings,
    wait_for,
    wait_http,
)

from coldchain import services

PROBES, TARGETS, RACES = 300, 16, 2  # RACES: targets acknowledged through both APIs at once
LOAD_SECONDS = 20.0
EXCURSION_AT, EXCURSION_STAGGER, EXCURSION_SECONDS = 3.0, 0.25, 8.0
KILL_INGESTER_AT, RESTART_INGESTER_AT, TERM_SCHEDULER_AT = 7.0, 10.0, 8.0
STEPS, REMINDER = (2.0, 4.0), 3.0
SHARE_GROUP = "scale"
API = "/api/v1"
CLOSURE = {"cause": "扩容测试：模拟超温", "action": "核查设备后恢复", "vaccine_disposition": "未受影响继续使用"}
MENTIONED = {"报警通知", "升级通知"}  # the card kinds a mention follows (alarms.card.MENTION_KINDS)


def test_the_exactly_once_comparison_names_a_duplicate_a_loss_and_a_stranger() -> None:
    """The scenario's verdicts all come from :func:`once_problems`: it must fail on each fault."""
    assert once_problems([("p", 1), ("p", 2)], [("p", 2), ("p", 1)], "读数") == []
    assert once_problems(["a", "a", "b"], ["b", "a", "a"], "通知") == []  # a multiset: twice expected, twice got
    (doubled,) = once_problems([("p", 1), ("p", 2)], [("p", 1), ("p", 2), ("p", 2)], "读数")
    assert doubled.startswith("读数：重复 1 条") and "('p', 2)" in doubled
    (lost,) = once_problems([("p", 1), ("p", 2)], [("p", 1)], "读数")
    assert lost.startswith("读数：缺 1 条")
    (stranger,) = once_problems([1], [1, 7], "报警")
    assert stranger.startswith("报警：多出 1 条")
    # One robot request received twice is a duplicate even though its cards are all expected.
    request = ("u1-l1", ((5, "报警通知", "一级负责人"),))
    assert once_problems([request], [request, request], "机器人请求")[0].startswith("机器人请求：重复 1 条")
    text = "**1. 温度超上限** …\n> 12.0 ℃ · 05-06 14:45 起已 3秒 · 二级负责人：升级通知 · 报警编号 42\n"
    assert notices_in(text + "> 通知：一级负责人 · 报警通知 · 报警编号 7") == [
        (42, "升级通知", "二级负责人"),
        (7, "报警通知", "一级负责人"),
    ]


@dataclass
class Run:
    """What the scenario did and saw, for the assertions."""

    t0: float = 0.0  # time.time() the load started
    acks: dict[int, tuple[int | None, list[int]]] = field(default_factory=dict)  # alarm → (API index, statuses)
    closes: dict[int, int] = field(default_factory=dict)  # alarm → status of the close
    board_statuses: Counter[int] = field(default_factory=Counter)
    takeover: tuple[int, int] = (0, 0)  # readings of the ingester's downtime stored by then / published
    scheduler_term_exit: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


async def _at(run: Run, offset: float) -> None:
    await asyncio.sleep(max(0.0, run.t0 + offset - time.time()))


async def _acknowledge(
    run: Run, fleet: Fleet, apis: list[httpx.AsyncClient], heads: list[dict[str, str]], until: float
) -> None:
    """Acknowledge each target's alarm as soon as an API lists it: target i through API i % 2,
    the first RACES through both APIs at the same moment (exactly one may win)."""
    index = {p.compartment: i for i, p in enumerate(fleet.targets)}
    n = 0
    while len(run.acks) < len(index) and time.monotonic() < until:
        n += 1
        r = await apis[n % 2].get(f"{API}/alarms", params={"kind": "high", "limit": 1000}, headers=heads[n % 2])
        assert r.status_code == 200, r.text
        for alarm in r.json():
            i = index.get(alarm["compartment_id"])
            if i is None or alarm["id"] in run.acks:
                continue
            path, body = f"{API}/alarms/{alarm['id']}/acknowledge", {"on_site": True, "comment": "扩容测试到场"}
            ways = [0, 1] if i < RACES else [i % 2]
            answers = await asyncio.gather(*(apis[k].post(path, json=body, headers=heads[k]) for k in ways))
            run.acks[alarm["id"]] = (None if i < RACES else i % 2, [a.status_code for a in answers])
        await asyncio.sleep(0.3)


async def _read_boards(run: Run, apis: list[httpx.AsyncClient], heads: list[dict[str, str]], until: float) -> None:
    """Both boards every second, each with the token the *other* API issued (sessions are shared)."""
    while time.monotonic() < until:
        for k in (0, 1):
            r = await apis[k].get(f"{API}/board", headers=heads[1 - k])
            run.board_statuses[r.status_code] += 1
        await asyncio.sleep(1.0)


async def _kill_and_restart_ingester(
    run: Run, ingester: Child, restart: Callable[[], Child], health: str, url: str, load: Load
) -> None:
    await _at(run, KILL_INGESTER_AT)
    ingester.proc.kill()  # SIGKILL: nothing committed is lost, nothing unacknowledged either
    killed = time.time()
    await _at(run, RESTART_INGESTER_AT)
    # How much of what was published while it was away the other ingester stored meanwhile.
    lo, hi = int((killed + 0.5) * 1000), int((time.time() - 0.5) * 1000)
    window = {k for k in load.expected if lo <= k[1] < hi}
    stored = {(s, ms) for s, ms, _ in stored_readings(url) if lo <= ms < hi}
    run.takeover = (len(window & stored), len(window))
    again = restart()
    await wait_for(lambda: http_ok(health) or again.proc.poll() is not None, 60, "重启的采集服务就绪")


async def _terminate_and_restart_scheduler(run: Run, children: Children, scheduler: Child, env: dict[str, str]) -> None:
    await _at(run, TERM_SCHEDULER_AT)
    scheduler.proc.terminate()
    started = time.monotonic()
    await wait_for(lambda: scheduler.proc.poll() is not None, 30, "调度器收到 SIGTERM 后退出")
    run.timings["scheduler_stop_s"] = time.monotonic() - started
    run.scheduler_term_exit = scheduler.proc.returncode
    children.start("scheduler-1b", "scheduler", env=env)


@pytest.mark.timeout(240)
async def test_two_ingesters_two_schedulers_two_apis_under_load_do_everything_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    if services.mosquitto_executable() is None:
        pytest.skip("本机没有 mosquitto 可执行文件，无法启动本测试自己的代理")
    wall, run = time.monotonic(), Run()
    broker = services.start_mosquitto(tmp_path / "broker")
    wecom = FakeWecom()
    fleet = build_fleet(db_url, wecom, probes=PROBES, targets=TARGETS, apis=2)
    run.timings["fleet_s"] = time.monotonic() - wall
    env = clean_env(
        COLDCHAIN_DATABASE_URL=as_runtime(db_url),
        COLDCHAIN_OWNER_DATABASE_URL=db_url,
        COLDCHAIN_MQTT_URL=broker.url,
        COLDCHAIN_WECOM_WEBHOOK_URL=wecom.url("fallback"),  # must never be used: every unit has robots
        COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK="true",
        COLDCHAIN_ESCALATION_STEPS=",".join(f"{s:g}s" for s in STEPS),
        COLDCHAIN_REMINDER_INTERVAL=f"{REMINDER:g}s",
        COLDCHAIN_STATE_DIR=str(tmp_path / "state"),
    )
    children = Children(env, tmp_path)
    health = [services.free_port(), services.free_port()]
    ports = [services.free_port(), services.free_port()]
    # Ingester A takes its id and group from the environment, B from the command line.
    a_env = {"COLDCHAIN_INGEST_CLIENT_ID": "scale-ingest-a", "COLDCHAIN_INGEST_SHARE_GROUP": SHARE_GROUP}

    def start_a() -> Child:
        return children.start("ingest-a", "ingest", "--health-port", str(health[0]), env=a_env)

    codes: dict[str, int | None] = {}
    try:
        ingesters = [
            start_a(),
            children.start(
                "ingest-b", "ingest", "--client-id", "scale-ingest-b", "--share-group", SHARE_GROUP,
                "--health-port", str(health[1]),
            ),
        ]  # fmt: skip
        api_children = [children.start(f"api-{k + 1}", "api", "--port", str(p)) for k, p in enumerate(ports)]
        schedulers = [children.start(f"scheduler-{k + 1}", "scheduler") for k in range(2)]
        for port, child in zip(health, ingesters, strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", child)
        for port, child in zip(ports, api_children, strict=True):
            wait_http(f"http://127.0.0.1:{port}{API}/health", child)
        run.timings["started_s"] = time.monotonic() - wall

        apis = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports]
        heads = []
        for api, user in zip(apis, fleet.users, strict=True):
            r = await api.post(f"{API}/auth/token", json={"username": user, "password": PASSWORD})
            assert r.status_code == 200, r.text
            heads.append({"Authorization": f"Bearer {r.json()['access_token']}"})

        run.t0 = time.time() + 0.2
        excursions = {
            p.serial: (
                int((run.t0 + EXCURSION_AT + i * EXCURSION_STAGGER) * 1000),
                int((run.t0 + EXCURSION_AT + i * EXCURSION_STAGGER + EXCURSION_SECONDS) * 1000),
            )
            for i, p in enumerate(fleet.targets)
        }
        load = Load(fleet, excursions)
        until = time.monotonic() + LOAD_SECONDS + 25
        await _at(run, 0)
        await asyncio.gather(
            load.run(broker.url, LOAD_SECONDS),
            _acknowledge(run, fleet, apis, heads, until),
            _read_boards(run, apis, heads, time.monotonic() + LOAD_SECONDS),
            _kill_and_restart_ingester(
                run, ingesters[0], start_a, f"http://127.0.0.1:{health[0]}/healthz", db_url, load
            ),
            _terminate_and_restart_scheduler(run, children, schedulers[0], {}),
        )
        run.timings["load_done_s"] = time.monotonic() - wall
        count_sql = "SELECT count(*) AS n FROM probe_readings"
        await wait_for(lambda: query(db_url, count_sql)[0]["n"] >= len(load.expected), 60, "全部读数入库")
        await asyncio.sleep(1.5)  # anything redelivered late must not add a row either
        run.timings["readings_in_s"] = time.monotonic() - wall

        # Every excursion over, and what the ladder owes each alarm written, before anyone closes.
        def settled() -> bool:
            alarms = [a for a in query(db_url, ALARMS) if a["kind"] == "high"]
            if len(alarms) < TARGETS or any(a["resolved_at"] is None for a in alarms):
                return False
            steps: dict[int, set[str]] = {}
            for row in query(db_url, OUTBOX):
                steps.setdefault(row["alarm_id"], set()).add(row["step"])
            return all(owed_steps(a, STEPS, REMINDER) <= steps.get(a["id"], set()) for a in alarms)

        await wait_for(settled, 45, "全部报警恢复、应发的升级与通知均已写入发件箱")
        await wait_for(lambda: len(run.acks) == TARGETS, 5, "全部报警已确认")
        run.timings["resolved_s"] = time.monotonic() - wall
        for alarm_id, (via, _) in sorted(run.acks.items()):
            k = 1 if via is None else 1 - via  # closed through the API that did not acknowledge it
            current = await apis[k].get(f"{API}/alarms/{alarm_id}", headers=heads[k])
            r = await apis[k].post(
                f"{API}/alarms/{alarm_id}/close",
                json={"version": current.json()["version"], **CLOSURE},
                headers=heads[k],
            )
            run.closes[alarm_id] = r.status_code

        # Quiet: every alarm's closing notice written, every row sent, and nothing more for 3 s.
        def snapshot() -> tuple[int, int, int, int]:
            rows = query(db_url, OUTBOX)
            return (
                len(rows),
                sum(r["sent_at"] is None for r in rows),
                sum(r["step"] == "closed" for r in rows),
                len(wecom.messages()),
            )

        deadline = time.monotonic() + 40
        while True:
            last = snapshot()
            if last[1] == 0 and last[2] >= TARGETS:
                await asyncio.sleep(3.0)
                if snapshot() == last:
                    break
            assert time.monotonic() < deadline, f"发件箱 40 秒内未静止：{snapshot()}"
            await asyncio.sleep(0.5)
        run.timings["quiet_s"] = time.monotonic() - wall

        details = [
            {a: (await apis[k].get(f"{API}/alarms/{a}", headers=heads[k])).json() for a in run.acks} for k in (0, 1)
        ]
        boards = [(await apis[k].get(f"{API}/board", headers=heads[k])).json() for k in (0, 1)]
        for api in apis:
            await api.aclose()
    finally:
        codes = children.stop_all()
        wecom.close()
        broker.stop()
    run.timings["wall_s"] = time.monotonic() - wall
    logs = children.tails()
    print(f"\n负载：{load.messages} 条消息（重发 {load.repeated_messages}），{load.readings} 个读数"
          f"（重复 {load.repeated_readings}），不同读数 {len(load.expected)}；"
          f"采集服务 A 宕机期间 B 已入库 {run.takeover[0]}/{run.takeover[1]}；时间 {run.timings}")  # fmt: skip

    # --- readings: each distinct published (probe, ts) stored once, with its value
    stored = stored_readings(db_url)
    assert not once_problems(list(load.expected), [(s, ms) for s, ms, _ in stored], "读数"), logs
    assert [r for r in stored if load.expected[(r[0], r[1])] != r[2]] == []
    assert load.repeated_messages > 0 and load.repeated_readings > 0
    assert query(db_url, "SELECT count(*) AS n FROM ingest_dead_letters")[0]["n"] == 0

    # --- alarms: one per excursion, none besides
    alarms = query(db_url, ALARMS)
    expected_alarms = [(p.compartment, "high") for p in fleet.targets]
    assert not once_problems(expected_alarms, [(a["compartment_id"], a["kind"]) for a in alarms], "报警"), alarms
    assert all(a["opened"] == 1 and a["state"] == "closed" and a["closed"] == 1 for a in alarms), alarms

    # --- acknowledgements: once each, by whoever's API won, the same seen through both APIs
    users = {r["username"]: r["id"] for r in query(db_url, "SELECT id, username FROM users")}
    for a in alarms:
        via, statuses = run.acks[a["id"]]
        assert sorted(statuses) == ([200, 409] if via is None else [200]), (a["id"], statuses)
        winner = statuses.index(200) if via is None else via
        assert a["acknowledged_by"] == users[fleet.users[winner]], (a, statuses)
        assert a["acked"] == 1 and a["audited"] == 1, a
        assert run.closes[a["id"]] == 200
        seen = [details[k][a["id"]] for k in (0, 1)]
        for d in seen:
            assert [e["action"] for e in d["events"]].count("acknowledged") == 1, d["events"]
            assert d["acknowledged_by"] == a["acknowledged_by"] and d["state"] == "closed"
        assert seen[0]["acknowledged_at"] == seen[1]["acknowledged_at"]
        assert seen[0]["events"] == seen[1]["events"] and seen[0]["notifications"] == seen[1]["notifications"]

    # --- the outbox: what is owed written once (its key is unique), each row sent once
    outbox = query(db_url, OUTBOX)
    steps: dict[int, set[str]] = {}
    for row in outbox:
        steps.setdefault(row["alarm_id"], set()).add(row["step"])
        assert row["sent_at"] is not None and row["attempts"] == 1 and row["last_error"] is None, row
        assert "fallback" not in row["target"] and not row["target"].startswith("none:"), row
    for a in alarms:
        assert owed_steps(a, STEPS, REMINDER) | {"closed"} <= steps[a["id"]], (a, steps[a["id"]])

    # --- the robot: each merged request once, each card once, its mentions, within 20 a minute
    received, texts = robot_requests(wecom)
    assert all(cards for _, cards in received), "机器人收到的 markdown 中没有可识别的报警卡片"
    sent = outbox_requests(outbox)
    kinds = Counter(row["step"].split("-")[0] for row in outbox)
    print(f"发件箱 {len(outbox)} 行 {dict(kinds)}；机器人 markdown 请求 {len(received)}（合并多条的 "
          f"{sum(len(cs) > 1 for _, cs in received)}），@提醒 {len(texts)}；确认 {run.acks}")  # fmt: skip
    cards = [(key, *card) for key, cs in sent for card in cs]
    assert not once_problems(cards, [(key, *card) for key, cs in received for card in cs], "机器人收到的报警卡片")
    assert not once_problems(sent, received, "机器人收到的请求")
    wanted_texts = [key for key, cs in received if any(c[1] in MENTIONED for c in cs)]
    assert not once_problems(wanted_texts, texts, "@提醒负责人")
    assert busiest_minute(wecom)[1] <= 20, busiest_minute(wecom)
    assert query(db_url, "SELECT count(*) AS n FROM robot_posts")[0]["n"] == len(wecom.messages())

    # --- the APIs agree, and every process ended as it should
    assert boards[0]["tiles"] and board_view(boards[0]) == board_view(boards[1])
    assert set(run.board_statuses) == {200}, run.board_statuses
    assert run.scheduler_term_exit == 0, logs
    assert codes.pop("ingest-a#0") == -9
    # uvicorn ends a graceful shutdown by raising the signal again (0.29+): SIGTERM is its clean exit.
    assert all(code == (-15 if name.startswith("api") else 0) for name, code in codes.items()), (codes, logs)
    assert "Traceback" not in "".join(c.log.read_text(errors="replace") for c in children.started), logs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "stopped"])
async def test_a_member_gone_for_good_leaves_the_share_group_with_leave(
    db_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """When one ingester of a share group dies or is stopped, Mosquitto keeps its persistent
    session (7 days) in the group and goes on handing it its share: those readings wait,
    unacknowledged, for the same client id (docs/ingest.md, "Scale out"). A member removed for good
    therefore leaves with ``coldchain ingest --client-id A --share-group G --leave``: it stores what
    queued for it, deletes its session and exits — nothing lost or doubled, and from then on the
    remaining member gets everything."""
    if services.mosquitto_executable() is None:
        pytest.skip("本机没有 mosquitto 可执行文件，无法启动本测试自己的代理")
    broker = services.start_mosquitto(tmp_path / "broker")
    messages = stream(seed_fleet(db_url, 40), 800)
    env = clean_env(COLDCHAIN_DATABASE_URL=as_runtime(db_url), COLDCHAIN_MQTT_URL=broker.url)
    children, health = Children(env, tmp_path), [services.free_port(), services.free_port()]

    def start(name: str, port: int, *more: str) -> Child:
        return children.start(
            name, "ingest", "--client-id", name, "--share-group", SHARE_GROUP, "--health-port", str(port), *more
        )

    try:
        a, b = start("takeover-a", health[0]), start("takeover-b", health[1])
        for port, child in zip(health, (a, b), strict=True):
            wait_http(f"http://127.0.0.1:{port}/healthz", child)
        await publish(broker.url, messages[:200])
        await wait_for(lambda: count(db_url, "probe_readings") == 200 * 8, 30, "两个采集服务都在时全部入库")
        a.proc.send_signal(stop)
        a.proc.wait(20)
        await publish(broker.url, messages[200:600])  # part of these queue for A's session
        leaving = start("takeover-a", health[0], "--leave")
        assert leaving.proc.wait(60) == 0, leaving.log.read_text(errors="replace")
        await wait_for(lambda: count(db_url, "probe_readings") == 600 * 8, 30, "A 离开时交出排队的读数")
        await publish(broker.url, messages[600:])  # A's session is gone: B alone gets all of these
        await wait_for(lambda: count(db_url, "probe_readings") == 800 * 8, 15, "A 离开后 B 接收全部")
        await asyncio.sleep(1.0)
        stored = [(s, ms) for s, ms, _ in stored_readings(db_url)]
        expected = [(r["probe"], r["ts"]) for _, body in messages for r in json.loads(body)["readings"]]
        assert not once_problems(expected, stored, "读数")
        assert "已离开共享订阅组" in leaving.log.read_text(errors="replace")
    finally:
        children.stop_all()
        broker.stop()
