"""The service page (/services/NAME) under attack: markup through check output, an alert's summary,
labels and link into the page and its SVG; path tricks in the name; the CSP on the answer; and
every view, allowed or refused, in the audit log."""

from __future__ import annotations

import re
import time
from pathlib import Path

from sqlalchemy import select

from opsroom.audit.models import AuditRecordRow
from tests.e2e.harness import login
from tests.e2e.test_service_page import feed, post_alert, site
from tests.factories import PASSWORDS

SVG_BREAKOUT = '</svg></figure><script>alert("svg")</script><svg>'
EVIL = '"><img src=x onerror=alert(1)>'


def _no_markup_from_input(html: str) -> None:
    # Attributes can only come with a tag: with no tag from input, `onerror=` stays text.
    assert "<script" not in html and "<img" not in html and "<svg onload" not in html
    assert html.count("</svg>") == html.count("<svg")  # every SVG opened is the one closed, none injected


async def test_xss_through_check_output_alert_summary_and_labels(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        now = time.time()
        await feed(served.rt, "web-http", [(now - 300, "OK", 5.0, "OK"), (now - 200, "OK", 6.0, "OK"),
                                           (now - 100, "WARNING", 7.0, f"WARNING - {SVG_BREAKOUT}")])
        await feed(served.rt, "web-tcp", [(now - 100, "OK", 2.0, EVIL)])
        answer = await post_alert(served.base, service="web", name="Evil<script>", summary=SVG_BREAKOUT,
                                  labels={"team": EVIL, "x<svg onload=alert(2)>": "y"})
        assert answer.status_code == 200, answer.text
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        try:
            page = await dev.get("/services/web")
            assert page.status_code == 200, page.text
            _no_markup_from_input(page.text)
            assert "WARNING - &lt;/svg&gt;&lt;/figure&gt;&lt;script&gt;" in page.text
            assert "&lt;/svg&gt;&lt;/figure&gt;&lt;script&gt;alert(&#34;svg&#34;)" in page.text  # the summary
            assert "team=&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
            assert "x&lt;svg onload=alert(2)&gt;=y" in page.text
            assert "<svg onload" not in page.text
        finally:
            await dev.aclose()


async def test_xss_through_an_alert_link_is_not_a_link(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        sent = await post_alert(served.base, service="web", url="javascript:alert(document.cookie)")
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        try:
            page = await dev.get("/services/web")
            assert page.status_code == 200
            # Refused at the door or kept as text: never an href that runs script.
            assert 'href="javascript:' not in page.text.lower(), sent.text
            assert "javascript:" not in re.sub(r"<[^>]*>", "", page.text) or sent.status_code != 200
        finally:
            await dev.aclose()


async def test_path_traversal_and_odd_names_find_nothing(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        try:
            for path in ("/services/..%2F..%2Fetc%2Fpasswd", "/services/../../etc/passwd", "/services/%2e%2e",
                         "/services/web%00", "/services/web%0d%0aSet-Cookie:%20x=1", "/services/" + "a" * 5000,
                         "/services/%3Cscript%3Ealert(1)%3C%2Fscript%3E"):
                resp = await dev.get(path)
                assert resp.status_code in (404, 307, 308), (path, resp.status_code)
                assert "root:" not in resp.text and "<script>" not in resp.text, path
                assert "x" not in resp.cookies and "x=1" not in resp.headers.get("set-cookie", ""), path
            # A name that reaches the page (one path segment) is answered by it, as text.
            named = await dev.get("/services/%3Cscript%3Ealert(1)")
            assert named.status_code == 404 and "text/html" in named.headers["content-type"]
            assert "&#39;&lt;script&gt;alert(1)&#39;" in named.text and "<script>" not in named.text
            dotted = await dev.get("/services/%2e%2e%5cetc")
            assert dotted.status_code == 404 and "I don&#39;t know a service called" in dotted.text
        finally:
            await dev.aclose()


async def test_the_page_carries_a_strict_csp_and_no_inline_script(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        try:
            page = await dev.get("/services/web")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
            assert "<script" not in page.text and " style=" not in page.text and "<style" not in page.text
        finally:
            await dev.aclose()


async def test_every_view_is_audited_and_a_refused_one_too(tmp_path: Path) -> None:
    roles = [{"name": "outsider", "permissions": ["approval.read"]}]
    users = [{"name": "dev", "roles": ["viewer"]}, {"name": "you", "roles": ["operator"]},
             {"name": "boss", "roles": ["outsider"]}]
    async with site(tmp_path, roles=roles, users=users) as served:
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        boss = await login(served.base, "boss", PASSWORDS["boss"])
        try:
            assert (await dev.get("/services/web")).status_code == 200
            refused = await boss.get("/services/web")
            assert refused.status_code == 403 and "may not see service status" in refused.text
            assert "web-http" not in refused.text
        finally:
            await dev.aclose()
            await boss.aclose()
        async with served.rt.read() as s:
            rows = list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "service.view")
                                         .order_by(AuditRecordRow.seq))).scalars())
        assert [(r.actor, r.door, r.target, r.outcome) for r in rows] == [
            ("dev", "web", "service:web", "ok"), ("boss", "web", "service:web", "refused")]
        assert rows[0].details["hours"] == 24
