#!/usr/bin/env python3
"""The status page in a real headless Chromium (Debian's, driven by Playwright).

Run by tests/ui.rs against a live instance: signs in with the admin token, checks that every route
renders with its split, sees a split change made with `switchyard ctl`, and clicks "Roll back" with a
reason, then checks through the API that the rollback reached the proxy and was audited as the token's
actor. Prints one JSON line of measures: the page's size and load time (navigation to the routes
drawn). Exits non-zero, naming the step, on any failure.

Usage: check_ui.py --admin URL --token TOKEN --ctl PATH --screenshot FILE
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def api(admin, token, path):
    req = urllib.request.Request(admin + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_until(predicate, timeout=10.0):
    """Polls from Python: the page's CSP forbids the eval that Playwright's wait_for_function needs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def fail(step, detail=""):
    print(f"FAILED at {step}: {detail}", file=sys.stderr)
    sys.exit(1)


def check_fleet(args):
    """An instance of a fleet: the page says which fleet and instance, and whether it reaches etcd."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(args.admin + "/ui")
        page.fill("#token", args.token)
        page.click("#login-form button")
        want = "fleet " + args.fleet + ", instance "
        if not wait_until(lambda: want in page.locator("#meta").inner_text()):
            fail("fleet", page.locator("#meta").inner_text())
        meta = page.locator("#meta").inner_text()
        browser.close()
    print(json.dumps({"meta": meta}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--fleet", help="only check that the page names this fleet prefix and its state")
    args = ap.parse_args()
    if args.fleet:
        return check_fleet(args)
    with urllib.request.urlopen(args.admin + "/ui", timeout=10) as r:
        page_bytes = len(r.read())
        csp = r.headers.get("content-security-policy", "")
    if "frame-ancestors 'none'" not in csp:
        fail("headers", "the page may be framed: " + csp)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        dialogs = []
        def confirm(d):
            dialogs.append(d.message)
            d.accept()
        page.on("dialog", confirm)
        page.goto(args.admin + "/ui")
        if not page.locator("#login").is_visible():
            fail("login", "no login box before a token is given")
        # Load time: a fresh navigation with the token in the session, to the routes drawn.
        page.fill("#token", args.token)
        page.click("#login-form button")
        page.wait_for_selector('section[data-route="api"] [data-testid="split-bar"]', timeout=10000)
        start = time.perf_counter()
        page.reload()
        page.wait_for_selector('section[data-route="api"] [data-testid="split-bar"]', timeout=10000)
        load_ms = (time.perf_counter() - start) * 1000
        bar = page.locator('section[data-route="api"] [data-testid="split-bar"]').inner_text()
        if "v1 100.00% (baseline)" not in bar:
            fail("initial split", bar)
        if page.locator('section[data-route="web"] [data-testid="split-bar"]').inner_text().find("blue is live") < 0:
            fail("blue/green", page.locator('section[data-route="web"]').inner_text())
        if "rule 0" not in page.locator('section[data-route="api"]').inner_text():
            fail("rules", page.locator('section[data-route="api"]').inner_text())

        # The plan with the current step marked.
        current = page.locator('section[data-route="pay"] ol.plan li.current')
        if not wait_until(lambda: current.count() == 1 and "1. header X-Canary: yes" in current.inner_text()):
            fail("plan", page.locator('section[data-route="pay"]').inner_text())

        # A rollout's newest check, with its figures and what the step needs (nobody sends X-Canary).
        check = page.locator('section[data-route="pay"] [data-testid="rollout-check"]')
        if not wait_until(lambda: check.count() > 0 and "more canary requests; only requests with X-Canary: yes reach the canary" in check.inner_text()):
            fail("rollout check", page.locator('section[data-route="pay"]').inner_text())
        if "INCONCLUSIVE" not in check.inner_text().upper():
            fail("rollout check verdict", check.inner_text())

        # The banner names what needs a person: the starved rollout paused.
        banner = page.locator('[data-testid="banner"]')
        if not wait_until(lambda: "pay: rollout paused" in banner.inner_text() and "starved" in banner.inner_text()):
            fail("banner", banner.inner_text())
        if banner.get_attribute("class") != "warn":
            fail("banner colour", banner.get_attribute("class"))
        # The newest event first: the pause, above the checks before it.
        events = page.locator('section[data-route="pay"] [data-testid="rollout-events"] li')
        if "pause" not in events.first.inner_text():
            fail("newest event first", events.first.inner_text())

        # Mirror differences say what differed.
        diffs = page.locator('section[data-route="api"] [data-testid="mirror-diffs"]')
        if not wait_until(lambda: diffs.count() > 0 and "body at /" in diffs.inner_text()):
            fail("mirror diffs", page.locator('section[data-route="api"]').inner_text())
        # Per field: v2's own version is significant, against the noise of v1 answering twice.
        fields = page.locator('section[data-route="api"] [data-testid="significant-fields"]')
        if not wait_until(lambda: fields.count() > 0 and "/version (value)" in fields.inner_text()):
            fail("significant fields", page.locator('section[data-route="api"]').inner_text())

        # A change made with ctl shows up without a reload.
        env = dict(os.environ, SWITCHYARD_ADMIN=args.admin, SWITCHYARD_TOKEN=args.token)
        out = subprocess.run([args.ctl, "ctl", "set-split", "api", "v2=25%", "--reason", "ui test: 25%"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            fail("ctl set-split", out.stdout + out.stderr)
        api_bar = page.locator('section[data-route="api"] [data-testid="split-bar"]')
        if not wait_until(lambda: "v2 25.00%" in api_bar.inner_text()):
            fail("split change by ctl", page.locator('section[data-route="api"]').inner_text())
        # Live numbers: each target has a row once traffic came through; v2, failing half its requests,
        # is coloured against the baseline by the route's gates.
        page.wait_for_selector('section[data-route="api"] tr[data-target="v1"]', timeout=10000)
        v2_errors = page.locator('section[data-route="api"] tr[data-target="v2"] [data-testid="error-rate"]')
        if not wait_until(lambda: v2_errors.count() == 1 and "bad" in (v2_errors.get_attribute("class") or ""), timeout=20):
            fail("error colour", page.locator('section[data-route="api"]').inner_text())
        v1_errors = page.locator('section[data-route="api"] tr[data-target="v1"] [data-testid="error-rate"]')
        if "bad" in (v1_errors.get_attribute("class") or ""):
            fail("the baseline is not judged against itself", v1_errors.get_attribute("class"))
        # Plots start full: right after a reload the sparklines already hold the last seconds (the
        # instance has been up for a while by now), before the page has sampled anything itself.
        page.reload()
        page.wait_for_selector('section[data-route="api"] tr[data-target="v1"]', timeout=10000)
        if page.locator('section[data-route="api"] tr[data-target="v1"] svg.spark path').count() == 0:
            fail("plots on first load", page.locator('section[data-route="api"] tr[data-target="v1"]').inner_html())
        page.screenshot(path=args.screenshot, full_page=True)

        # On a phone (390 px wide) nothing is wider than the screen.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(args.admin + "/ui")
        phone.fill("#token", args.token)
        phone.click("#login-form button")
        phone.wait_for_selector('section[data-route="api"] [data-testid="split-bar"]', timeout=10000)
        phone.screenshot(path=args.screenshot.replace(".png", "-phone.png"), full_page=True)
        width = phone.evaluate("document.documentElement.scrollWidth")
        if width > 390:
            wide = phone.evaluate("Array.from(document.querySelectorAll('body *')).filter((e) => e.getBoundingClientRect().right > 391).slice(0, 8).map((e) => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))")
            fail("phone width", "the page is %d px wide at 390 px: %s" % (width, wide))
        phone.close()

        # A rollback needs a reason; with one, clicking reaches the proxy.
        page.click('section[data-route="api"] button[data-action="rollback"]')
        page.wait_for_selector("#message.error", timeout=5000)
        page.fill('input[data-reason="api"]', "ui test: roll back")
        page.click('section[data-route="api"] button[data-action="rollback"]')
        message = page.locator("#message")
        if not wait_until(lambda: message.get_attribute("class") == "info"
                          and "v1 100.00%" in api_bar.inner_text()):
            fail("rollback click", message.inner_text() + "\n" + api_bar.inner_text())
        if not dialogs or "Roll back api?" not in dialogs[-1]:
            fail("rollback confirmation", dialogs)
        if errors:
            fail("script errors", errors)
        browser.close()

    route = api(args.admin, args.token, "/v1/routes/api")
    shares = {t["target"]: t["share"] for t in route["split"]["targets"]}
    if shares.get("v1") != 100.0:
        fail("rollback in the proxy", route)
    last = api(args.admin, args.token, "/v1/audit")["entries"][-1]
    if (last["action"], last["actor"], last["reason"]) != ("route.rollback", "ops", "ui test: roll back"):
        fail("audit", last)
    print(json.dumps({"page_bytes": page_bytes, "load_ms": round(load_ms, 1)}))


if __name__ == "__main__":
    main()
