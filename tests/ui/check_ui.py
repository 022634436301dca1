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

        # A rollout's newest check, with its figures and what the step needs (nobody sends X-Canary).
        check = page.locator('section[data-route="pay"] [data-testid="rollout-check"]')
        if not wait_until(lambda: check.count() > 0 and "more canary requests; only requests with X-Canary: yes reach the canary" in check.inner_text()):
            fail("rollout check", page.locator('section[data-route="pay"]').inner_text())
        if "INCONCLUSIVE" not in check.inner_text().upper():
            fail("rollout check verdict", check.inner_text())

        # A change made with ctl shows up without a reload.
        env = dict(os.environ, SWITCHYARD_ADMIN=args.admin, SWITCHYARD_TOKEN=args.token)
        out = subprocess.run([args.ctl, "ctl", "set-split", "api", "v2=25%", "--reason", "ui test: 25%"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            fail("ctl set-split", out.stdout + out.stderr)
        api_bar = page.locator('section[data-route="api"] [data-testid="split-bar"]')
        if not wait_until(lambda: "v2 25.00%" in api_bar.inner_text()):
            fail("split change by ctl", page.locator('section[data-route="api"]').inner_text())
        # Live numbers: each target has a row once traffic came through.
        page.wait_for_selector('section[data-route="api"] tr[data-target="v1"]', timeout=10000)
        page.screenshot(path=args.screenshot, full_page=True)

        # A rollback needs a reason; with one, clicking reaches the proxy.
        page.click('section[data-route="api"] button[data-action="rollback"]')
        page.wait_for_selector("#message.error", timeout=5000)
        page.fill('input[data-reason="api"]', "ui test: roll back")
        page.click('section[data-route="api"] button[data-action="rollback"]')
        message = page.locator("#message")
        if not wait_until(lambda: message.get_attribute("class") == "info"
                          and "v1 100.00%" in api_bar.inner_text()):
            fail("rollback click", message.inner_text() + "\n" + api_bar.inner_text())
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
