"""Open the built site (_site/html) in headless Chromium and check what a reader sees; screenshots in _site_check/.

    python docs/check_site.py          # after `python docs/build.py`; exit 1 on any failed check

The site is served on 127.0.0.1 (http.server in a thread) and driven through the DevTools protocol
(websocket-client) in Debian's /usr/bin/chromium, with a new profile and no host but 127.0.0.1 resolved (a page
that needs a CDN fails here as it would offline). From the
landing page it clicks through to one library page (03_layers) and one experiment page (experiments/glue), and
on each checks: no console error, no failed request, the math rendered by MathJax (every `.math` element holds
MathJax output, no TeX error, no `$...$` left as text), at least one figure or table (every image loaded), every
link to the site itself answering 200 with its `#anchor` present, and code lines of 120 characters shown without
a scroll bar. Then a search for a class name returns its page. The checks are also written to
_site_check/checks.json.
"""
import base64, functools, http.server, json, os, re, shutil, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.parse, urllib.request
from pathlib import Path
import websocket

root = Path(__file__).resolve().parent.parent
site, shots = root / "_site" / "html", root / "_site_check"
# Debian's chromium (`apt-get install chromium`); $CHROMIUM or a Chrome already installed (GitHub's runners) also do
CHROMIUM = os.environ.get("CHROMIUM") or next((b for b in (shutil.which("google-chrome"), "/usr/bin/chromium",
                                                         shutil.which("chromium")) if b and Path(b).exists()),
                                              "/usr/bin/chromium")
WIDTH, HEIGHT = 1600, 1000
failures: list[str] = []
results: list[dict] = []

def check(ok: bool, what: str):
    print(("ok:   " if ok else "FAIL: ") + what)
    results.append(dict(ok=ok, check=what))
    if not ok: failures.append(what)

def serve(directory: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

class Browser:
    "Headless Chromium on one page, driven through the DevTools protocol."
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="meo-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",     # offline: a CDN request fails, visibly
            "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(self.profile) / "DevToolsActivePort", time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() - t0 > 30:
                raise RuntimeError(f"{CHROMIUM} did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60)
        self.id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log", "Network"): self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)

    def send(self, method, **params):
        self.id += 1
        self.ws.send(json.dumps(dict(id=self.id, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.id:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for i, e in enumerate(self.events):
                if e.get("method") == method: return self.events.pop(i)
            self.ws.settimeout(max(0.1, timeout - (time.time() - t0)))
            try: self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException: break
        raise TimeoutError(f"no {method} in {timeout} s")

    def js(self, expr):
        r = self.send("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r: raise RuntimeError(f"{expr[:80]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        "The console errors, exceptions and failed requests so far (and forget them)."
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown": out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        self.events = [e for e in self.events if e.get("method") not in
                       ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded", "Network.loadingFailed")]
        return out

    def loaded(self):
        "Wait for the load event, then for MathJax's typesetting and the fonts."
        self.wait_event("Page.loadEventFired")
        self.js("(window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise : null")
        self.js("document.fonts.ready.then(() => true)")
        time.sleep(0.3)

    def goto(self, url):
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", url=url); self.loaded()

    def click(self, selector) -> str:
        "Click the first link matching `selector` like a reader; returns the URL it leads to."
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        href = self.js(f"(() => {{ const a = document.querySelector({json.dumps(selector)}); if (!a) return null;"
                       f" a.click(); return a.href; }})()")
        if href: self.loaded()
        return href

    def screenshot(self, path: Path, selector: str | None = None):
        if selector: self.js(f"document.querySelector({json.dumps(selector)})?.scrollIntoView({{block: 'center'}})")
        else: self.js("window.scrollTo(0, 0)")
        time.sleep(0.2)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        try: self.send("Browser.close")
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

# what one page shows: math, figures, tables, links, code width (evaluated in the page)
PAGE_FACTS = r"""(() => {
  const article = document.querySelector('article') || document.body;
  const math = [...article.querySelectorAll('.math')];
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let n; (n = walker.nextNode());) {
    if (n.parentElement.closest('pre, code, mjx-container, script, style, .math')) continue;
    const m = n.textContent.match(/\$[^$\s][^$]*\$/);
    if (m) raw.push(m[0].slice(0, 60));
  }
  const imgs = [...article.querySelectorAll('img')];
  const pres = [...article.querySelectorAll('div.highlight pre')];
  const longest = p => Math.max(...p.textContent.split('\n').map(l => l.length));
  const wide = pres.filter(p => longest(p) <= 120 && p.scrollWidth > p.clientWidth + 1);
  return {
    title: document.title,
    math: math.length,
    math_rendered: math.filter(e => e.querySelector('mjx-container')).length,
    mjx: article.querySelectorAll('mjx-container').length,
    tex_errors: article.querySelectorAll('mjx-merror').length,
    raw_dollars: raw,
    images: imgs.length,
    images_broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    tables: article.querySelectorAll('table').length,
    code_blocks: pres.length,
    code_max_line: pres.length ? Math.max(...pres.map(longest)) : 0,
    directives: pres.filter(p => /^#\|/m.test(p.textContent)).length,
    code_scrolling: wide.map(p => p.textContent.split('\n')[0].slice(0, 60)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
})()"""

def check_links(page: str, links: list[str], base: str, seen: dict):
    "Every link to the site answers 200 and its #anchor exists on the page it names."
    bad = []
    for href in sorted(set(links)):
        if not href.startswith(base): continue
        url, _, anchor = href.partition("#")
        if url not in seen:
            try: seen[url] = urllib.request.urlopen(url).read().decode("utf-8", "replace")
            except urllib.error.HTTPError as e: seen[url] = e.code
        body = seen[url]
        if isinstance(body, int): bad.append(f"{href} ({body})")
        elif anchor and url.endswith(".html") and not re.search(
                r'\bid="' + re.escape(urllib.parse.unquote(anchor)) + '"', body): bad.append(f"{href} (no such anchor)")
    n = len({h for h in links if h.startswith(base)})
    check(not bad, f"{page}: {n} links to the site work" + (f"; broken: {bad[:5]}" if bad else ""))

def check_page(b: Browser, name: str, base: str, seen: dict, figure_needed=True):
    facts = b.js(PAGE_FACTS)
    errors = b.errors()
    check(not errors, f"{name}: no console errors" + (f": {errors[:5]}" if errors else ""))
    check(facts["math"] > 0 and facts["math_rendered"] == facts["math"] and facts["tex_errors"] == 0,
          f"{name}: math rendered by MathJax ({facts['math_rendered']}/{facts['math']} formulas, "
          f"{facts['tex_errors']} TeX errors)")
    check(not facts["raw_dollars"], f"{name}: no $...$ left as text" +
          (f": {facts['raw_dollars'][:3]}" if facts["raw_dollars"] else ""))
    if figure_needed:
        check(facts["images"] + facts["tables"] > 0 and not facts["images_broken"],
              f"{name}: {facts['images']} figures and {facts['tables']} tables shown" +
              (f"; broken images: {facts['images_broken']}" if facts["images_broken"] else ""))
    check(not facts["code_scrolling"], f"{name}: {facts['code_blocks']} code blocks (longest line "
          f"{facts['code_max_line']} characters); none of <= 120 characters scrolls" +
          (f": {facts['code_scrolling'][:3]}" if facts["code_scrolling"] else ""))
    check(facts["directives"] == 0, f"{name}: no nbdev directive (#| ...) shown ({facts['directives']} code blocks with one)")
    check_links(name, facts["links"], base, seen)
    return facts

def main():
    if not (site / "index.html").exists(): sys.exit(f"no site in {site}: run `python docs/build.py` first")
    if not Path(CHROMIUM).exists(): sys.exit(f"no browser at {CHROMIUM}: `apt-get install -y chromium` (Debian)")
    print(f"browser: {CHROMIUM}")
    shots.mkdir(exist_ok=True)
    server = serve(site)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    b, seen = Browser(), {}
    try:
        b.goto(base + "index.html")
        check_page(b, "landing page", base, seen)
        # one click from the landing page: the layers, serving, every experiment (their tables and figures in them)
        nav = b.js("[...document.querySelectorAll('nav.bd-docs-nav a[href]')].map(a => a.href)")
        experiments = sorted(h for h in nav if "/experiments/" in h)
        check(any(h.endswith("/03_layers.html") for h in nav) and any(h.endswith("/04b_serving.html") for h in nav)
              and len(experiments) > 0, f"landing page: the sidebar links 03_layers, 04b_serving and "
              f"{len(experiments)} experiment pages")
        for h in experiments:
            body = urllib.request.urlopen(h).read().decode()
            article = body[body.find("<article"):body.find("</article>")]
            n_img, n_table = article.count("<img"), article.count("<table")
            check(n_img > 0 and n_table > 0, f"{h.removeprefix(base)}: {n_table} tables and {n_img} figures")
        b.screenshot(shots / "index.png")
        b.screenshot(shots / "index-figure.png", "article img")
        # a reader's clicks: the sidebar to the layers notebook, then to an experiment
        href = b.click('nav.bd-docs-nav a[href$="03_layers.html"]')
        check(bool(href) and b.js("location.pathname").endswith("/03_layers.html"),
              f"landing page -> 03_layers by the sidebar link ({href})")
        check_page(b, "03_layers", base, seen, figure_needed=False)     # the derivation: math and code, no results
        b.screenshot(shots / "03_layers.png")
        b.screenshot(shots / "03_layers-math.png", "article div.math")
        href = b.click('nav.bd-docs-nav a[href$="experiments/glue.html"]')
        check(bool(href) and b.js("location.pathname").endswith("/experiments/glue.html"),
              f"03_layers -> experiments/glue by the sidebar link ({href})")
        check_page(b, "experiments/glue", base, seen)
        b.screenshot(shots / "glue.png")
        b.screenshot(shots / "glue-figure.png", "article img")
        b.screenshot(shots / "glue-table.png", "article table")
        # search (Sphinx's own index, in the browser)
        b.goto(base + "search.html?q=MEOLinear")
        t0, hits = time.time(), []
        while time.time() - t0 < 20 and not hits:
            time.sleep(0.3)
            hits = b.js("[...document.querySelectorAll('#search-results li a')].map(a => a.getAttribute('href'))")
        errors = b.errors()
        check(any("layers" in h for h in hits) and not errors,
              f"search for MEOLinear: {len(hits)} results, the layers pages among them" + (f"; {errors}" if errors else ""))
        b.screenshot(shots / "search.png")
    finally:
        b.close(); server.shutdown()
    (shots / "checks.json").write_text(json.dumps(dict(browser=CHROMIUM, checks=results), indent=1))
    print(f"screenshots in {shots.relative_to(root)}/: {', '.join(sorted(p.name for p in shots.glob('*.png')))}")
    print(f"site check: {'passed' if not failures else f'{len(failures)} checks failed'}")
    sys.exit(1 if failures else 0)

if __name__ == "__main__": main()
