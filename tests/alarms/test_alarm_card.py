"""What every notice says about the people at the end of an alarm (issue #17): who is on it or that
nobody is, who answers for it with their phones, how it ended, how it was closed — and whom a WeCom
text message @mentions. Pure formatting, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alarms.card import AlarmCard, Closure, Handling, Person, handling_text, people_text
from alarms.messages import template_message, wecom_markdown, wecom_mention

NOW = datetime(2024, 5, 6, 7, 5, tzinfo=UTC)  # 15:05 in Beijing
PEOPLE = (Person(1, "王一", "13900000001"), Person(2, "李二", "13900000002"), Person(3, "张三", None))


def card(**changes: object) -> AlarmCard:
    base: dict[str, object] = {
        "alarm_id": 17,
        "unit_name": "向阳街道卫生院",
        "unit_code": "6101130002",
        "equipment_name": "冰箱",
        "compartment_name": "冷藏",
        "kind_label": "温度超上限",
        "severity": "critical",
        "temperature": 9.3,
        "t_min": 2.0,
        "t_max": 8.0,
        "since": NOW - timedelta(minutes=35),
        "duration": timedelta(minutes=35),
        "level": 3,
        "step_kind": "escalate",
        "link": "https://cc.example/alarms/17",
        "people": PEOPLE,
    }
    base.update(changes)
    return AlarmCard(**base)  # type: ignore[arg-type]


def test_nobody_yet_and_who_answers_with_phones() -> None:
    (message,) = wecom_markdown([card()], NOW)
    assert '> 处置：<font color="warning">尚无人确认</font>' in message
    assert "> 负责人：一级 王一 13900000001；二级 李二 13900000002；三级 张三" in message


def test_an_escalation_after_the_acknowledgement_carries_it() -> None:
    handled = Handling(by="王一", at=NOW - timedelta(minutes=20), channel="wechat", on_site=True, comment="已在现场")
    (message,) = wecom_markdown([card(handling=handled)], NOW)
    assert "> 处置：王一 05-06 14:45 经微信确认，已在现场：“已在现场”" in message
    assert "尚无人确认" not in message
    assert handling_text(card(handling=Handling("李二", NOW, "web", False))) == "李二 05-06 15:05 经平台确认"


def test_resolution_and_closing_notices() -> None:
    over = card(
        step_kind="resolved_notice",
        resolved_at=NOW - timedelta(minutes=5),
        lowest=7.9,
        highest=10.4,
        temperature=5.0,
    )
    (message,) = wecom_markdown([over], NOW)
    assert "**1. 温度超上限 · 已恢复**" in message
    assert "三级负责人 · 恢复通知 · 报警编号 17" in message
    assert "05-06 15:00 恢复正常，持续 30 分钟，期间最高 10.4 ℃、最低 7.9 ℃" in message
    assert message.endswith("[填写原因与处置并关闭](https://cc.example/alarms/17)")
    closed = card(
        step_kind="closed_notice",
        level=2,
        resolved_at=NOW - timedelta(minutes=5),
        closure=Closure(by="王一", cause="门未关严", action="关门", vaccine_disposition="继续使用"),
    )
    (message,) = wecom_markdown([closed], NOW)
    assert "二级负责人 · 关闭通知" in message
    assert "王一 关闭：原因 门未关严；处置 关门；疫苗处理 继续使用" in message
    assert "负责人：" not in message and "尚无人确认" not in message


def test_mentions_only_for_notices_that_send_people_out() -> None:
    mention = wecom_mention([card(), card(alarm_id=18, people=(Person(1, "王一", "13900000001"),))])
    assert mention is not None
    assert mention["msgtype"] == "text"
    assert mention["text"]["mentioned_mobile_list"] == ["13900000001", "13900000002"]  # no phone, no mention
    assert "17、18" in mention["text"]["content"]
    assert wecom_mention([card(step_kind="resolved_notice", resolved_at=NOW)]) is None
    assert wecom_mention([card(step_kind="reminder")]) is None  # mentioned when the level was reached
    assert wecom_mention([card(people=())]) is None


def test_template_message_carries_the_state() -> None:
    body = template_message("oX", "TPL", card(handling=Handling("王一", NOW, "wechat", True)), "https://mp.example/a")
    assert "处置：王一 05-06 15:05 经微信确认，已在现场" in body["data"]["remark"]["value"]
    assert "负责人：一级 王一 13900000001" in body["data"]["remark"]["value"]
    over = template_message(
        "oX", "TPL", card(step_kind="resolved_notice", resolved_at=NOW - timedelta(minutes=5)), "https://mp.example/a"
    )
    assert over["data"]["keyword4"]["value"] == "已恢复，持续30分钟"
    assert people_text(card(people=())) is None
