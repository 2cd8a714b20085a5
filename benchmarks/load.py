"""Many visitors at once on one server: N browser sessions (Playwright driving Debian's Chromium).

    python benchmarks/load.py [--sessions 1 2 4 8] [--rounds 4] [--passes 1] [--heavy] [--torch-threads 1] [--run-nice 10]
                              [--app CHECKOUT]

Starts `streamlit run app.py` on a free port, then for each N opens N sessions at once, each in its own
browser context, each uploading its own picture and then scrubbing the step slider with the keyboard
(the app's in-page scrubber, or Streamlit's Step slider where it has none) and switching views
(Islands -> Levels x steps -> Islands), as people would. Latency is measured in
each page, on the page's own clock: from the keydown (or click) event to the moment the overlay of the
new step (or view) is on the page and its image has loaded; the harness only presses keys, so a session
never waits on another's measurement, and each presses its next key as soon as its own page's recorder has
seen the overlay (a promise in the page, woken by the check that records the overlay, rather than a poll
of the page every animation frame). Every time an overlay appears, the page checks that its caption names the session's own picture and that the model-input thumbnail has its
picture's colours (each session's photograph is tinted its own way): no session may ever show another's
picture.

With --heavy, one more session loads a 224 px GLOM (random weights, dim 512, 6 levels, 14 px patches)
and keeps running it, one more iteration each time (a new run), while the others scrub: a heavy run
must not freeze them. Its runs are timed from the key press to the end of its progress bar.

The server's resident memory is sampled every half second. Printed: per N, scrub and view-switch
latency p50 / p95 over all sessions (and the worst session's p95), the p95 ratio to a single session, the
same for a scrub until the frame that shows it is made (painted: the next animation frame's style, layout
and paint done on the page's thread, what a person waits for),
how long after a round's last key the whole viewer is drawn for its step (settled: where the app scrubs in
the page, the server hears of the step only once scrubbing stops; each visitor waits for it before switching
views),
the peak RSS against the caches' configured bound, the overlays and thumbnails that were not the
session's own over those checked (must be 0), the server's own time per scrub (the viewer's "drawn in"
p50/p95), the server's CPU use while they scrub (1 core = 100%), its CPU ms per scrub or view switch
(the work itself, which the machine's other load does not change much), the part of it in GLOM's niced run workers, the
browser's CPU use and its CPU ms per scrub or view switch (every page's Chromium processes: what the visitors'
own computers would spend, here on the server's cores), what the server sent each page per scrub or view switch
(KB over the websocket, and media files fetched by URL), the machine's load average, and the server's RSS over
time. Speed is never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import re
import statistics
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from explorer import limits, serve
from forward import cpu_name
from glom_viz.images import to_model_input

WAIT_MS = 180_000
VIEWPORT = {"width": 1400, "height": 1000}
SCRUBS_PER_ROUND = 4
RSS_EVERY_S = 0.5
SETTLED_POLL_MS = 100
# each session's photograph, tinted its own way (RGB factors), so their model inputs differ in colour
TINTS = [(1.0, 0.35, 0.35), (0.35, 1.0, 0.35), (0.35, 0.35, 1.0), (1.0, 1.0, 0.3), (1.0, 0.3, 1.0),
         (0.3, 1.0, 1.0), (0.6, 0.6, 0.6), (1.0, 0.65, 0.2), (0.2, 0.65, 1.0)]
COLOUR_TOLERANCE = 12.0  # mean RGB distance (0-255) within which a thumbnail is taken for a picture
CHROMIUM_ARGS = [*serve.CHROMIUM_ARGS, "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]
HEAVY = {"dim": "512", "levels": "6", "image size": "224", "patch size": "14"}  # glom-pytorch's default GLOM
# each heavy session's model has a seed of its own: runs are cached across sessions by content, so a second
# pass's heavy runs would otherwise be found in the cache and never run
HEAVY_SEEDS = itertools.count(1000)

# In the page: remember when each key or click happened and when each overlay appeared, and check every
# overlay against the session's own picture (caption and thumbnail colour).
RECORDER = """
({name, colour, others, tolerance}) => {
  const log = {events: [], shown: [], wrong: [], drawn: [], lastDrawn: ''};
  window.__glom = log;
  // the harness waits here for the overlay of a step: woken by the same check that records it
  let waiting = [];
  log.until = step => new Promise(resolve => { waiting.push({step, resolve}); check(); });
  document.addEventListener('keydown', e => log.events.push({t: performance.now(), kind: 'key'}), true);
  document.addEventListener('click', e => log.events.push({t: performance.now(), kind: 'click'}), true);
  const canvas = document.createElement('canvas');
  const meanColour = img => {
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d', {willReadFrequently: true});
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < pixels.length; i += 4) { sum[0] += pixels[i]; sum[1] += pixels[i + 1]; sum[2] += pixels[i + 2]; }
    const n = pixels.length / 4;
    return sum.map(s => s / n);
  };
  const distance = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  let last = null;
  log.thumbnails = 0;
  // every picture with its caption: Streamlit's images, and the in-page scrubber's where the app has one
  const figures = () => [
    ...[...document.querySelectorAll('[data-testid="stImage"]')].map(
      element => ({caption: element.innerText, img: element.querySelector('img')})),
    ...[...document.querySelectorAll('.glom-scrubber')].map(element => ({
      caption: element.querySelector('.glom-scrubber-caption').textContent,
      img: element.querySelector('.glom-scrubber-picture')}))];
  const check = () => {
    const now = performance.now();
    let current = null;
    for (const {caption, img} of figures()) {
      if (!img || !img.complete || !img.naturalWidth) continue;
      if (/ · level \\d+ · step \\d+ of \\d+/.test(caption) && !caption.startsWith(name + ' · ')) {
        log.wrong.push({t: now, what: 'caption', caption});
      }
      if (caption.startsWith('model input') && img.dataset.checked !== img.src) {
        img.dataset.checked = img.src;
        log.thumbnails += 1;
        const seen = meanColour(img);
        const own = distance(seen, colour);
        if (own > tolerance || others.some(other => distance(seen, other) < own)) {
          log.wrong.push({t: now, what: 'thumbnail', seen, own});
        }
      }
      const match = caption.match(/ · level (\\d+) · step (\\d+) of/);
      if (match && caption.startsWith(name + ' · ')) {
        current = {key: caption + '|' + img.src, step: +match[2], level: +match[1]};
      }
    }
    if ((current && current.key) !== (last && last.key)) {  // an overlay appeared, changed or went away
      if (current) {
        const entry = {t: now, step: current.step, level: current.level};
        log.shown.push(entry);
        // and when the frame that shows it was made: a task queued from the next animation frame runs once
        // that frame's style, layout and paint are done on the page's thread, as a person would see it
        requestAnimationFrame(() => {
          const channel = new MessageChannel();
          channel.port1.onmessage = () => { entry.painted = performance.now(); };
          channel.port2.postMessage(null);
        });
      }
      last = current;
    }
    if (current) {
      for (const waiter of waiting.filter(waiter => waiter.step === current.step)) waiter.resolve();
      waiting = waiting.filter(waiter => waiter.step !== current.step);
    }
    for (const element of document.querySelectorAll('[data-testid="stCaptionContainer"]')) {
      const drawn = element.innerText.match(/step (\\d+) · drawn in (\\d+) ms on the server/);
      if (drawn && element.innerText !== log.lastDrawn) {
        log.lastDrawn = element.innerText;
        log.drawn.push({t: now, step: +drawn[1], ms: +drawn[2]});
      }
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                      attributes: true, attributeFilter: ['src']});
  document.addEventListener('load', check, true);
  setInterval(check, 50);
}
"""


def photograph(index: int) -> tuple[bytes, tuple[float, float, float]]:
    """Session `index`'s picture (PNG bytes) and the mean colour (RGB) of its 64 px model input."""
    tint = np.array(TINTS[index % len(TINTS)])
    rgb = np.clip(data.coffee()[index * 5:, index * 9:].astype(float) * tint, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    _, shown, _ = to_model_input(rgb, 64, "crop")
    return buffer.getvalue(), tuple(shown.reshape(-1, 3).mean(axis=0).tolist())


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of a process's threads by their nice value (GLOM's run workers are niced, Streamlit's
    threads are at the server's own)."""
    by_nice: dict[int, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{task}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended
            continue
        nice = int(fields[16])
        by_nice[nice] = by_nice.get(nice, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return by_nice


BROWSER_SEEN: dict[int, float] = {}  # Chromium's processes (pid) and the CPU seconds each was last seen with


def browser_cpu_seconds(program: str = "chromium") -> float:
    """CPU seconds used so far by this process's descendants whose program's name contains ``program``
    (Debian's runs /usr/lib/chromium/): Chromium's pages come and go, so each process's time is kept as
    last seen (the sampler calls this every RSS_EVERY_S)."""
    parents, stats = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                stats[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    root = os.getpid()
    for pid, seconds in stats.items():
        ancestor = pid
        while ancestor in parents and ancestor != root:
            ancestor = parents[ancestor]
        if ancestor == root:
            try:
                if program in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode():
                    BROWSER_SEEN[pid] = max(seconds, BROWSER_SEEN.get(pid, 0.0))
            except OSError:
                continue
    return sum(BROWSER_SEEN.values())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# the src of the model-input thumbnail the page shows, loaded ('' while there is none)
MODEL_INPUT_SOURCE = """() => {
  const figure = [...document.querySelectorAll('[data-testid="stImage"]')].find(
    element => element.innerText.startsWith('model input'));
  const img = figure && figure.querySelector('img');
  return img && img.complete && img.naturalWidth ? img.src : '';
}"""


async def overlay_of(page, name: str) -> None:
    """Until the page shows an overlay of picture ``name``, loaded (before the recorder is in the page)."""
    await page.wait_for_function(
        """name => [...document.querySelectorAll('[data-testid="stImage"], .glom-scrubber-figure')].some(element =>
               element.innerText.startsWith(name + ' · level') &&
               [...element.querySelectorAll('img')].some(img => img.complete && img.naturalWidth > 0))""",
        arg=name, timeout=WAIT_MS)


async def shown(page, step: int) -> None:
    """Until the page's recorder has seen its own overlay of ``step`` on the page, loaded."""
    await asyncio.wait_for(page.evaluate("step => window.__glom.until(step)", step), WAIT_MS / 1000)


async def settled(page, step: int) -> None:
    """Until the viewer's last line names ``step`` (checked every SETTLED_POLL_MS, not every animation frame:
    the page's own work is what is measured). A scrubber that came back to the server's step tells it nothing."""
    await page.wait_for_function("step => window.__glom.drawn.at(-1)?.step === step", arg=step,
                                 polling=SETTLED_POLL_MS, timeout=WAIT_MS)


async def visitor(browser, url: str, index: int, colours: list, rounds: int, start: asyncio.Event,
                  ready: asyncio.Event) -> dict:
    """One session: upload its own picture, then scrub and switch views; its page's log, read at the end."""
    picture, colour = photograph(index)
    name = f"visitor-{index}.png"
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)  # on a busy machine eight pages take a while to draw
    page = await context.new_page()
    # bytes the server sent over the websocket; media files fetched, and those it did not have (must be 0)
    received = {"websocket": 0, "media": 0, "missing": 0}

    def count(kind: str, amount: int) -> None:
        received[kind] += amount
    page.on("websocket", lambda socket: socket.on("framereceived", lambda payload: count("websocket", len(payload))))
    page.on("request", lambda request: count("media", 1) if "/media/" in request.url else None)
    page.on("response", lambda response: count("missing", 1) if "/media/" in response.url and response.status >= 400
            else None)
    await page.goto(url)
    await page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=WAIT_MS)
    default_thumbnail = await page.evaluate(MODEL_INPUT_SOURCE)
    missing_at_start = received["missing"]
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
    await uploader.locator("input[type='file']").set_input_files({"name": name, "mimeType": "image/png",
                                                                   "buffer": picture})
    try:
        await overlay_of(page, name)
    except Exception:
        print(f"   {name}: no overlay; media files the server did not have: {received['missing'] - missing_at_start}",
              flush=True)
        raise
    # and the rest of that rerun drawn: the model input below the overlay arrives after it, and until then
    # the page still shows the default picture's (its own, not another visitor's)
    await page.wait_for_function(f"before => ![before, ''].includes(({MODEL_INPUT_SOURCE})())", arg=default_thumbnail,
                                 timeout=WAIT_MS)
    others = [c for i, c in enumerate(colours) if i != index]
    await page.evaluate(RECORDER, {"name": name, "colour": colour, "others": others, "tolerance": COLOUR_TOLERANCE})
    caption = await page.get_by_text(re.compile(re.escape(name) + r" · level \d+ · step \d+ of \d+")).first.inner_text()
    last = int(re.search(r"of (\d+)", caption).group(1))
    step = int(re.search(r"step (\d+) of", caption).group(1))
    ready.set()
    await start.wait()
    before = dict(received)
    # the in-page scrubber's slider where the app has one, else Streamlit's Step slider
    slider = page.locator(".glom-scrubber-range")
    if not await slider.count():
        slider = page.locator("[data-testid='stSlider']").filter(has_text="Step").get_by_role("slider")
    expected = []  # (kind, step) per key press or view switch, in order
    for round_ in range(rounds):
        await slider.focus()
        for scrub in range(SCRUBS_PER_ROUND):
            key, step = ("ArrowLeft", step - 1) if step > 0 else ("ArrowRight", step + 1)
            expected.append(("scrub" if scrub < SCRUBS_PER_ROUND - 1 else "last scrub", step))
            await page.keyboard.press(key)
            await shown(page, step)
        await settled(page, step)  # a person looks at what they scrubbed to before going on
        views = page.get_by_role("radiogroup", name="View")
        await views.get_by_role("radio", name="Levels × steps", exact=True).click()
        await page.get_by_text("Rows are levels").first.wait_for(timeout=WAIT_MS)
        expected.append(("view", step))
        await views.get_by_role("radio", name="Islands", exact=True).click()
        await shown(page, step)
    log = await page.evaluate("() => window.__glom")
    await context.close()
    sent = {kind: received[kind] - before[kind] for kind in received}
    return {"name": name, "last": last, **sent, **latencies(log, expected)}


def latencies(log: dict, expected: list[tuple[str, int]]) -> dict:
    """Scrub and view-switch latencies (s) from the page's log: each key press (or the click back to
    Islands) to the first overlay of its step shown after it, and for scrubs to the frame that shows it; and a
    round's last key press to the viewer's last line naming its step (the whole viewer drawn for it: the server
    told, measures and exports current)."""
    keys = [e["t"] for e in log["events"] if e["kind"] == "key"]
    clicks = [e["t"] for e in log["events"] if e["kind"] == "click"]
    scrub, painted, view, settled = [], [], [], []
    key_index = click_index = 0
    for kind, step in expected:
        if kind in ("scrub", "last scrub"):
            pressed = keys[key_index]
            key_index += 1
            out = scrub
            if kind == "last scrub":
                drawn = next((d["t"] for d in log["drawn"] if d["t"] >= pressed and d["step"] == step), None)
                if drawn is not None:
                    settled.append((drawn - pressed) / 1000)
        else:  # two clicks: to the sheet, back to Islands; timed from the second
            pressed = clicks[click_index + 1]
            click_index += 2
            out = view
        shown = next((s for s in log["shown"] if s["t"] >= pressed and s["step"] == step), None)
        if shown is not None:
            out.append((shown["t"] - pressed) / 1000)
            if out is scrub and "painted" in shown:
                painted.append((shown["painted"] - pressed) / 1000)
    server = [d["ms"] / 1000 for d in log["drawn"] if keys and d["t"] >= keys[0]]
    return {"scrub": scrub, "painted": painted, "view": view, "settled": settled, "wrong": log["wrong"],
            "thumbnails": log["thumbnails"], "server": server}


async def heavy_visitor(browser, url: str, stop: asyncio.Event, ready: asyncio.Event) -> list[float]:
    """A session that loads a 224 px GLOM and keeps running it (a new iteration count each time)."""
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto(url)
    await page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=WAIT_MS)
    await page.get_by_text("Random weights (seeded)").click()
    for label, value in {"Seed": str(next(HEAVY_SEEDS)), **HEAVY}.items():
        field = page.get_by_label(label, exact=True)
        await field.fill(value)
        await field.press("Enter")
        await page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=WAIT_MS)
    await page.get_by_text(re.compile(r"224 px · 6 levels · dim 512")).first.wait_for(timeout=WAIT_MS)
    ready.set()
    seconds = []
    iterations = page.locator("[data-testid='stSlider']").filter(has_text="Iterations").get_by_role("slider")
    while not stop.is_set():
        badge = await page.get_by_text(re.compile(r"dim 512 · \d+ iterations")).first.inner_text()
        count = int(re.search(r"(\d+) iterations", badge).group(1)) + 1  # a count not run yet: a new run
        if count > limits.MAX_ITERATIONS:
            break
        await iterations.focus()
        started = time.perf_counter()
        await page.keyboard.press("ArrowRight")
        await page.wait_for_function(  # its progress bar, then none: the run is over
            """count => [...document.querySelectorAll('[data-testid="stProgress"]')].some(
                   element => element.innerText.includes(`of ${count}`))""", arg=count, timeout=WAIT_MS)
        await page.wait_for_function("() => !document.querySelector('[data-testid=\"stProgress\"]')",
                                     timeout=WAIT_MS)
        seconds.append(time.perf_counter() - started)
    await context.close()
    return seconds


async def one_load(url: str, sessions: int, rounds: int, heavy: bool, mark=None) -> dict:
    """N visitors (and the heavy one) at once; ``mark(when, browser CPU seconds)`` is called as they start
    scrubbing ("start", every page set up and its picture uploaded) and as they are done ("end")."""
    from playwright.async_api import async_playwright

    colours = [photograph(i)[1] for i in range(sessions)]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=serve.CHROMIUM, args=CHROMIUM_ARGS)
        start, stop, ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
        heavy_task = asyncio.create_task(heavy_visitor(browser, url, stop, ready)) if heavy else None
        set_up = [asyncio.Event() for _ in range(sessions)]
        tasks = [asyncio.create_task(visitor(browser, url, i, colours, rounds, start, set_up[i]))
                 for i in range(sessions)]
        if heavy:
            await ready.wait()
        # every page drawn and its picture in (or one failed, which the gather below raises): start together
        everyone = asyncio.ensure_future(asyncio.gather(*(event.wait() for event in set_up)))
        await asyncio.wait([everyone, *tasks], return_when=asyncio.FIRST_COMPLETED)
        start.set()
        if mark is not None:
            mark("start", browser_cpu_seconds())
        results = await asyncio.gather(*tasks)
        stop.set()
        heavy_runs = await heavy_task if heavy_task else []
        if mark is not None:  # Chromium's processes, before they exit
            mark("end", browser_cpu_seconds())
        await browser.close()
    return {"visitors": results, "heavy_runs": heavy_runs}


def cache_bound_mb() -> float:
    """What the caches may hold in all: st.cache_data's functions by their byte bounds (at most the server's
    server.maxCacheDataSize in all), and the model store's bound."""
    def mb(text: str) -> float:
        number, unit = re.fullmatch(r"(\d+)\s*([KMG]B)", text.upper()).groups()
        return float(number) * {"KB": 1 / 1024, "MB": 1, "GB": 1024}[unit]
    data = sum(mb(c) for c in (limits.RUN_CACHE_BYTES, limits.DERIVED_CACHE_BYTES, limits.PICTURE_CACHE_BYTES,
                               limits.PICTURE_CACHE_BYTES))
    config = serve.ROOT / ".streamlit" / "config.toml"
    if config.is_file():
        server = tomllib.loads(config.read_text()).get("server", {}).get("maxCacheDataSize")
        data = min(data, mb(server)) if server else data
    return data + limits.MODEL_CACHE_BYTES / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=4, help=f"rounds of {SCRUBS_PER_ROUND} scrubs and a view switch")
    parser.add_argument("--min-scrubs", type=int, default=192,
                        help="more rounds for few sessions, so every N's p95 is over at least this many scrubs")
    parser.add_argument("--passes", type=int, default=1, help="the whole table again, to see how noisy it is")
    parser.add_argument("--heavy", action="store_true", help="one more session keeps running a 224 px GLOM")
    parser.add_argument("--app", type=Path, default=serve.APP.parent,
                        help="the checkout whose app.py to serve (another commit's worktree, to compare)")
    parser.add_argument("--torch-threads", type=int, default=None, help="GLOM_VIZ_TORCH_THREADS for the server")
    parser.add_argument("--run-nice", type=int, default=None, help="GLOM_VIZ_RUN_NICE for the server (0: runs "
                                                                   "at the priority of the pages' threads)")
    args = parser.parse_args()
    env = {} if args.torch_threads is None else {"GLOM_VIZ_TORCH_THREADS": str(args.torch_threads)}
    env |= {} if args.run_nice is None else {"GLOM_VIZ_RUN_NICE": str(args.run_nice)}
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average before: {load_average()}; "
          f"torch threads {args.torch_threads or limits.TORCH_THREADS}; GLOM runs in {limits.RUN_WORKERS} threads "
          f"niced +{limits.RUN_NICE if args.run_nice is None else args.run_nice}; heavy run: {args.heavy}")
    print(f"app: {args.app.resolve() / 'app.py'}")
    with serve.serve_process(env=env, script=args.app.resolve() / "app.py") as (url, process):
        samples: list[tuple[float, float]] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set() and process.poll() is None:
                try:
                    samples.append((time.monotonic(), rss_mb(process.pid)))
                    browser_cpu_seconds()  # before a closed page's process is gone
                except (OSError, StopIteration):  # the server is gone (or going: no VmRSS line)
                    return
                time.sleep(RSS_EVERY_S)

        threading.Thread(target=sample, daemon=True).start()
        asyncio.run(one_load(url, 1, 1, False))  # warm: the model loaded, the first runs made
        idle_mb = rss_mb(process.pid)
        single_p95 = single_painted_p95 = None
        print(f"server RSS after a warm visit: {idle_mb:.0f} MB; caches' configured bound: {cache_bound_mb():.0f} MB")
        print(f"{'N':>2} {'scrub p50':>10} {'p95':>7} {'worst p95':>10} {'p95/1':>6} {'painted p50':>11} {'p95':>7} "
              f"{'p95/1':>6} {'view p50':>9} {'p95':>7} "
              f"{'settled p50':>11} {'p95':>7} {'RSS peak':>9} {'wrong/seen':>10} {'heavy runs':>12} {'server ms':>12} {'CPU':>5} {'ms/act':>6} {'runs':>5} {'Chrome':>6} "
              f"{'ms/act':>6} {'KB/act':>6} {'media/act':>9} {'load':>16}")
        for n in [n for _ in range(args.passes) for n in args.sessions]:
            rounds = max(args.rounds, -(-args.min_scrubs // (SCRUBS_PER_ROUND * n)))
            begun, marks = time.monotonic(), {}

            def mark(when: str, browser_seconds: float) -> None:  # the scrubbing alone, not the pages' setup
                marks[when] = (time.monotonic(), cpu_seconds(process.pid), thread_cpu_seconds(process.pid),
                               browser_seconds)

            result = asyncio.run(one_load(url, n, rounds, args.heavy, mark))
            (t0, server0, threads0, browser0), (t1, server1, threads1, browser1) = marks["start"], marks["end"]
            elapsed = t1 - t0
            server_seconds = server1 - server0
            server_cpu = server_seconds / elapsed
            own_nice = os.getpriority(os.PRIO_PROCESS, process.pid)  # the server's main thread
            runs_cpu = sum(seconds - threads0.get(nice, 0.0) for nice, seconds in threads1.items()
                           if nice > own_nice) / elapsed  # in the niced run workers
            browser_cpu = (browser1 - browser0) / elapsed
            scrub = [s for v in result["visitors"] for s in v["scrub"]]
            painted = [s for v in result["visitors"] for s in v["painted"]]
            view = [s for v in result["visitors"] for s in v["view"]]
            settled = [s for v in result["visitors"] for s in v["settled"]]
            actions = max(1, len(scrub) + len(view))
            per_action = server_seconds / actions  # the server's CPU per scrub or switch
            browser_per_action = (browser1 - browser0) / actions  # Chromium's (every page's) for the same
            worst = max(percentile(v["scrub"], 95) for v in result["visitors"])
            wrong = sum(len(v["wrong"]) for v in result["visitors"])
            thumbnails = sum(v["thumbnails"] for v in result["visitors"])
            drawn = [s for v in result["visitors"] for s in v["server"]]
            peak = max(mb for t, mb in samples if t >= begun)
            p95 = percentile(scrub, 95)
            painted_p95 = percentile(painted, 95)
            if n == 1:  # each pass against its own single session
                single_p95, single_painted_p95 = p95, painted_p95
            ratio = p95 / single_p95 if single_p95 else float("nan")
            painted_ratio = painted_p95 / single_painted_p95 if single_painted_p95 else float("nan")
            kb_per_action = sum(v["websocket"] for v in result["visitors"]) / 1024 / actions
            media_per_action = sum(v["media"] for v in result["visitors"]) / actions
            runs = result["heavy_runs"]
            heavy = f"{statistics.median(runs):.2f} s x{len(runs)}" if runs else "-"
            print(f"{n:>2} {percentile(scrub, 50):>9.4f}s {p95:>6.4f}s {worst:>9.4f}s {ratio:>6.2f} "
                  f"{percentile(painted, 50):>10.4f}s {painted_p95:>6.4f}s {painted_ratio:>6.2f} "
                  f"{percentile(view, 50):>8.3f}s {percentile(view, 95):>6.3f}s "
                  f"{percentile(settled, 50):>10.3f}s {percentile(settled, 95):>6.3f}s {peak:>7.0f}MB {wrong:>3}/{thumbnails:<4} "
                  f"{heavy:>12} {percentile(drawn, 50) * 1000:>6.0f}/{percentile(drawn, 95) * 1000:<5.0f} "
                  f"{server_cpu:>5.0%} {per_action * 1000:>6.0f} {runs_cpu:>5.0%} {browser_cpu:>6.0%} "
                  f"{browser_per_action * 1000:>6.0f} {kb_per_action:>6.1f} {media_per_action:>9.2f} "
                  f"{load_average():>16}", flush=True)
            for visitor_result in result["visitors"]:
                for wrong_one in visitor_result["wrong"][:3]:
                    print(f"   {visitor_result['name']} showed: {wrong_one}")
            missing = sum(v["missing"] for v in result["visitors"])
            if missing:
                print(f"   media files a page asked for that the server no longer had: {missing}")
        sampling.set()
        begun = samples[0][0]
        every = max(1, len(samples) // 24)
        print("server RSS over time (s: MB): " + ", ".join(f"{t - begun:.0f}: {mb:.0f}" for t, mb in samples[::every]))
        print(f"server RSS: peak {max(mb for _, mb in samples):.0f} MB over the run, {rss_mb(process.pid):.0f} MB "
              f"at the end; load average after: {load_average()}")


if __name__ == "__main__":
    main()
