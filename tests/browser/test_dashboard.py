"""The dashboard page (functions/read_api/dashboard.html) in a headless Chromium, served by the local stack's
read API (``GET /`` of the region's ``api_urls``) and reading the readings produced through Kinesis."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devicepipe_tools.events import encode, reading
from devicepipe_tools.local import stack
from devicepipe_tools.local.resources import clients as local_clients
from devicepipe_tools.producer import Entry, FailureFile, Producer
from tests.browser.conftest import ConsoleLog
from tests.integration.stack_helpers import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.integration]
REGION = "us-east-1"
HISTORY_LIMIT = 200  # what the page asks for: devices/{id}/readings?limit=200
TIMEOUT_MS = 20_000

#: branch -> device -> (readings to produce, minutes between the newest reading and now)
FLEET: dict[str, dict[str, tuple[int, int]]] = {
    "shop-north": {"ui-north-1": (230, 0), "ui-north-2": (14, 0), "ui-north-3": (9, 120)},
    "shop-south": {"ui-south-1": (11, 0), "ui-south-2": (6, 0)},
    "depot-east": {"ui-east-1": (8, 0)},
}
STALE = {"ui-north-3"}  # newest reading two hours old: past the default 900 s


def metrics_of(i: int) -> dict[str, Any]:
    """The metrics of a device's i-th reading: two numeric (charted) and one text (not charted)."""
    return {
        "temp_c": round(20 + 3 * math.sin(i / 6), 2),
        "humidity": round(0.4 + (i % 7) / 100, 3),
        "door": "open" if i % 5 == 0 else "closed",
    }


def fleet_readings(now_ms: int) -> dict[str, list[dict[str, Any]]]:
    """Each device's readings, oldest first, 15 s apart, the newest ``minutes`` before ``now_ms``."""
    out = {}
    for branch, devices in FLEET.items():
        for device, (count, minutes) in devices.items():
            newest = now_ms - minutes * 60_000
            out[device] = [
                reading(device, branch, newest - (count - 1 - i) * 15_000, i, **metrics_of(i)) for i in range(count)
            ]
    return out


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class LocalApi:
    url: str
    readings: dict[str, list[dict[str, Any]]]
    kinesis: Any
    stream: str
    failures: FailureFile

    def produce(self, docs: list[dict[str, Any]]) -> None:
        producer = Producer(self.kinesis, self.stream, self.failures)
        progress = producer.send(Entry(encode(d), d["device_id"], [str(d["seq"])]) for d in docs)
        assert (progress.sent, progress.failed) == (len(docs), 0)

    def answers(self, device: str, count: int) -> bool:
        status, body = get_json(f"{self.url}/devices/{device}/readings?limit={HISTORY_LIMIT}")
        return status == 200 and len(body["readings"]) == min(count, HISTORY_LIMIT)

    def serves_fleet(self) -> bool:
        status, body = get_json(f"{self.url}/branches")
        if status != 200 or {b["branch_id"]: b["devices"] for b in body["branches"]} != {
            branch: len(devices) for branch, devices in FLEET.items()
        }:
            return False
        for branch, devices in FLEET.items():
            status, body = get_json(f"{self.url}/branches/{branch}/devices")
            if status != 200 or {d["device_id"] for d in body["devices"]} != set(devices):
                return False
        return all(self.answers(device, len(docs)) for device, docs in self.readings.items())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """The local stack, with FLEET's readings produced through Kinesis and answered by the read API."""
    state_dir = tmp_path_factory.mktemp("stack")
    state = stack.up((REGION,), state_dir)
    try:
        url = state.get("api_urls", {}).get(REGION)
        assert url, f"the local stack serves no read API for {REGION} (state.json has no api_urls[{REGION!r}])"
        kinesis = local_clients(state["endpoint"], REGION, "kinesis")["kinesis"]
        stream = stack.region_resources(state, REGION).names["ReadingsStream"]
        failures = FailureFile(str(state_dir / "failed.jsonl"))
        local = LocalApi(url.rstrip("/"), fleet_readings(int(time.time() * 1000)), kinesis, stream, failures)
        local.produce([doc for docs in local.readings.values() for doc in docs])
        wait_for(local.serves_fleet, timeout_s=120)
        yield local
    finally:
        stack.down(state_dir)


def attribute_values(page: Page, selector: str, attribute: str) -> list[str]:
    values: list[str] = page.locator(selector).evaluate_all(f"els => els.map(e => e.getAttribute('{attribute}'))")
    return values


def charted(page: Page) -> list[float]:
    """The values of the chart's points, in drawing order (oldest first)."""
    return [float(v) for v in attribute_values(page, "#chart svg circle", "data-value")]


def test_branches_devices_and_a_chart_of_the_history(
    page: Page, console: ConsoleLog, api: LocalApi, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    screenshot = tmp_path / "dashboard.png"
    # Given the page, served by the region's read API
    page.goto(api.url + "/")
    # Then it names the serving region and lists every branch produced, with its device count
    expect(page.locator("#region")).to_have_text(REGION)
    branches = page.locator("#branches li[data-branch]")
    expect(branches).to_have_count(len(FLEET))
    assert set(attribute_values(page, "#branches li[data-branch]", "data-branch")) == set(FLEET)
    for branch, devices in FLEET.items():
        count = f"{len(devices)} device" + ("s" if len(devices) != 1 else "")
        expect(page.locator(f'#branches li[data-branch="{branch}"] .count')).to_have_text(count)

    # When a branch is clicked, Then its devices are listed with their latest reading, the stale one marked
    page.click('#branches li[data-branch="shop-north"]')
    rows = page.locator("#devices tbody tr[data-device]")
    expect(rows).to_have_count(len(FLEET["shop-north"]))
    assert set(attribute_values(page, "#devices tbody tr", "data-device")) == set(FLEET["shop-north"])
    for device in FLEET["shop-north"]:
        row = page.locator(f'#devices tr[data-device="{device}"]')
        expect(row).to_have_attribute("data-stale", "true" if device in STALE else "false")
        expect(row).to_contain_text("Stale" if device in STALE else "Live")
        newest = api.readings[device][-1]["metrics"]
        expect(row.locator("td.metrics")).to_contain_text(f"temp_c {newest['temp_c']:g}")
    expect(page.locator("#devices-meta")).to_contain_text("1 stale")

    # When a device is clicked, Then its history is charted: one point per reading, the first metric by default
    device = "ui-north-2"
    page.click(f'#devices tr[data-device="{device}"]')
    expect(page.locator("#chart svg circle")).to_have_count(len(api.readings[device]))
    assert attribute_values(page, "#metric option", "value") == ["temp_c", "humidity"]  # not "door": text
    expect(page.locator("#metric")).to_have_value("temp_c")
    assert charted(page) == [d["metrics"]["temp_c"] for d in api.readings[device]]
    assert page.locator("#chart svg .tick.x text").count() >= 2  # time labels
    assert page.locator("#chart svg .tick.y text").count() >= 2  # value labels
    expect(page.locator("#chart svg path.line")).to_have_count(1)

    # When another metric is picked, Then the chart draws it
    page.select_option("#metric", "humidity")
    expect(page.locator("#chart svg .axis-title").last).to_have_text("humidity")
    assert charted(page) == [d["metrics"]["humidity"] for d in api.readings[device]]

    # When a device with more readings than the page asks for is chosen with the keyboard (Enter on its row),
    # Then the chart holds the newest HISTORY_LIMIT of them
    busy = "ui-north-1"
    page.focus(f'#devices tr[data-device="{busy}"]')
    page.keyboard.press("Enter")
    expect(page.locator(f'#devices tr[data-device="{busy}"]')).to_have_attribute("aria-current", "true")
    expect(page.locator("#chart svg circle")).to_have_count(min(len(api.readings[busy]), HISTORY_LIMIT))
    assert charted(page) == [d["metrics"]["humidity"] for d in api.readings[busy][-HISTORY_LIMIT:]]
    page.select_option("#metric", "temp_c")
    expect(page.locator("#chart svg .axis-title").last).to_have_text("temp_c")
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"dashboard screenshot: {screenshot}")

    # When another branch is clicked, Then its devices replace the first one's and the chart is cleared
    page.click('#branches li[data-branch="shop-south"]')
    expect(rows).to_have_count(len(FLEET["shop-south"]))
    expect(page.locator("#chart svg")).to_have_count(0)
    expect(page.locator("#banner")).to_be_hidden()
    assert console.errors == [], f"console errors (screenshot: {screenshot}): {console.errors}"
    assert screenshot.stat().st_size > 10_000, screenshot


def test_auto_refresh_draws_new_readings_and_can_be_paused(page: Page, console: ConsoleLog, api: LocalApi) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    device, branch = "ui-east-1", "depot-east"
    docs = api.readings[device]
    page.clock.install()  # the page's timers: fast-forwarded below instead of waiting 10 s
    page.goto(f"{api.url}/#branch={branch}&device={device}")  # the selection is kept in the URL
    expect(page.locator(f'#devices tr[data-device="{device}"]')).to_have_attribute("aria-current", "true")
    expect(page.locator("#chart svg circle")).to_have_count(len(docs))

    # Given auto-refresh paused, When the device reports, Then nothing is fetched however long one waits
    page.uncheck("#autorefresh")
    now_ms = int(time.time() * 1000)
    more = [reading(device, branch, now_ms + i, len(docs) + i, **metrics_of(len(docs) + i)) for i in range(2)]
    api.produce(more)
    wait_for(lambda: api.answers(device, len(docs) + 2))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.clock.run_for(60_000)
    page.wait_for_timeout(1_000)  # real time, for any request event to arrive
    assert requests == []
    expect(page.locator("#chart svg circle")).to_have_count(len(docs))

    # When auto-refresh is resumed, Then the page refreshes (at once, then every 10 s) and charts the new readings
    page.check("#autorefresh")
    expect(page.locator("#chart svg circle")).to_have_count(len(docs) + 2)
    requests.clear()
    with page.expect_request(lambda r: r.url.endswith(f"/devices/{device}/readings?limit={HISTORY_LIMIT}")):
        page.clock.run_for(10_000)
    assert {u.split("?")[0].rsplit("/", 1)[-1] for u in requests} == {"branches", "devices", "readings"}
    expect(page.locator("#updated")).to_contain_text("Updated")
    assert console.errors == []


def test_api_errors_are_shown_in_a_banner_as_text(page: Page, console: ConsoleLog, api: LocalApi) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    # Given a branch the API does not know, Then the API's message is shown and the rest of the page still works
    page.goto(f"{api.url}/#branch=no-such-branch")
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("404")
    expect(banner).to_contain_text("branch no-such-branch has no devices")
    expect(page.locator("#branches li[data-branch]")).to_have_count(len(FLEET))
    expect(page.locator("#devices-empty")).to_be_visible()

    # Given an id carrying markup, Then the API's 400 is shown and the id is shown as text: nothing parsed as HTML
    markup = "<img src=x onerror=window.pwned=1>"
    page.goto(f"{api.url}/#branch={urllib.parse.quote(markup, safe='')}")
    expect(banner).to_contain_text("HTTP 400 invalid_parameter")
    expect(banner).to_contain_text("branch_id: must be")
    expect(page.locator("#devices-title")).to_have_text(f"Devices — {markup}")
    assert page.locator("img").count() == 0
    assert page.evaluate("window.pwned") is None

    # When the branch is selected from the list, Then the banner goes away with the error
    page.click('#branches li[data-branch="shop-south"]')
    expect(page.locator("#devices tbody tr[data-device]")).to_have_count(len(FLEET["shop-south"]))
    expect(banner).to_be_hidden()
    # the only console errors are the browser's own lines for the failed requests: no script error
    assert console.errors and all("Failed to load resource" in e for e in console.errors), console.errors


def test_api_token_is_sent_as_a_bearer_token_and_kept_for_the_tab(
    page: Page, console: ConsoleLog, api: LocalApi
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(api.url + "/")
    expect(page.locator("#branches li[data-branch]")).to_have_count(len(FLEET))
    with page.expect_request(lambda r: r.url.endswith("/branches")) as first:
        page.reload()
    assert "authorization" not in first.value.headers
    expect(page.locator("#branches li[data-branch]")).to_have_count(len(FLEET))
    # When a token is entered, Then every API call carries it, also after a reload of the tab
    page.fill("#token", "eyJ.test.token")
    with page.expect_request(lambda r: r.url.endswith("/branches")) as with_token:
        page.press("#token", "Enter")
    assert with_token.value.headers.get("authorization") == "Bearer eyJ.test.token"
    with page.expect_request(lambda r: r.url.endswith("/branches")) as after_reload:
        page.reload()
    assert after_reload.value.headers.get("authorization") == "Bearer eyJ.test.token"
    expect(page.locator("#token")).to_have_value("eyJ.test.token")
    assert console.errors == []
