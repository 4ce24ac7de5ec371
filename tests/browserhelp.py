"""Headless Chromium (Debian's ``chromium``) driven by Playwright against the real app served by
uvicorn on a free local port — the pages' own JavaScript runs, as in a clinic's browser.

Playwright is used only as a driver: its own browser downloads are never run (nothing may download
at run time); ``CHROMIUM`` points it at the system browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from apihelp import PASSWORD

CHROMIUM = os.environ.get("COLDCHAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> None:
    """Skip, saying why, where no browser is installed (``./dev test`` installs Debian's chromium)."""
    if CHROMIUM is None:
        pytest.skip("没有 chromium：浏览器测试需要 Debian 的 chromium 包（./dev test 会自动安装）")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("没有 playwright（测试依赖，./dev test 会安装）")


@dataclass
class Console:
    """Everything the page complained about: uncaught exceptions, console errors, failed requests."""

    problems: list[str] = field(default_factory=list)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.problems.append(f"console: {msg.text} {msg.location}")

    def attach(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("requestfailed", lambda req: self.problems.append(f"requestfailed: {req.url} {req.failure}"))


PHONE = (390, 844)
"""Site staff open the pages from WeChat on a phone: every page test runs in a phone's window."""


@contextmanager
def browser_page(base: str, viewport: tuple[int, int] = PHONE) -> Iterator[tuple[Any, Console]]:
    """A page of a fresh headless Chromium at ``base`` in a ``viewport`` (width, height) window,
    with everything the page complains about collected in the :class:`Console`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            width, height = viewport
            context = browser.new_context(viewport={"width": width, "height": height}, locale="zh-CN", base_url=base)
            page = context.new_page()
            console = Console()
            console.attach(page)
            yield page, console
        finally:
            browser.close()


def sign_in(page: Any, username: str, target: str) -> None:
    """Through the login page, as a person would: the redirect, the form, the way back."""
    page.goto(target)
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{target}")
