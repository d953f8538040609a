"""Build the documentation site from the notebooks, offline, into `_site/html` (Sphinx + myst-nb, no execution).

    python docs/build.py            # stage nbs/ into _site/src, then sphinx-build -W --keep-going into _site/html
    python docs/build.py --fresh    # the same, from an empty Sphinx environment

Every notebook of nbs/ (and its folders, as nbdev's `recursive = True`) is a page, in the order of the notebook
names (= notebook numbers), grouped by their first digit; nbs/index.ipynb (the README) is the landing page.
The notebooks are staged as nbdev's own site shows them: `#| hide` cells dropped, `#| ...` directive lines
removed (the landing page drops what README.md drops); links resolved (results/ copied beside the pages, other
repository files linked on GitHub, a link to nothing left as it is so that Sphinx fails on it). MathJax 3 is
served from the site itself (the npm package `mathjax`, fetched once with `npm pack` into _site/).
"""
import configparser, json, os, re, shutil, subprocess, sys, tarfile, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
docs, nbs, results = root / "docs", root / "nbs", root / "results"
work = root / "_site"                               # everything the build writes; the site is _site/html
out = work / "html"
src = work / "src"
MATHJAX = "3.2.2"                                   # the npm package `mathjax`: es5/tex-chtml.js and its fonts
cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(root / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]
GROUPS = {"0": "Model library", "1": "Harness: data and experiments", "2": "Benchmarks"}
README_SKIP = {"hide", "export", "exports", "exporti", "default_exp"}   # what .ci/readme.py leaves out of README.md

def notebooks() -> list[Path]:
    "Every notebook nbdev sees (no `_`/`.` names or folders, no checkpoints), in name order."
    found = [p for p in nbs.rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(nbs).parts)]
    return sorted(found, key=lambda p: (len(p.relative_to(nbs).parts), str(p.relative_to(nbs))))

def text(s) -> str: return "".join(s) if isinstance(s, list) else s

def directives(lines) -> dict:
    "nbdev's `#| name args` lines of a cell: {name: args}."
    out = {}
    for l in lines:
        m = re.match(r"#\|\s*([\w-]+):?\s*(.*)$", l)
        if m: out[m.group(1)] = m.group(2).strip()
    return out

# ---------------------------------------------------------------------------------------------- links and images
LINK = re.compile(r"(!?\[(?:[^\]\n`]|`[^`\n]*`)*\]\()([^()\s]+)(\))")   # [text](target), ![alt](target); no titles
IMG = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')

def resolve(target: str, nb: Path) -> str:
    "The target of a relative link in notebook `nb` as the staged page sees it."
    if re.match(r"^([a-z][\w+.-]*:|#|/)", target): return target          # URL, anchor, absolute
    path, _, anchor = target.partition("#")
    anchor = "#" + anchor if anchor else ""
    bases = [nb.parent] + ([root] if nb.name == cfg.get("readme_nb", "index.ipynb") else [])   # README's paths
    for base in bases:
        p = (base / path).resolve()
        if not p.exists(): continue
        if p.is_relative_to(nbs) or p.is_relative_to(results):
            staged = src / (p.relative_to(nbs) if p.is_relative_to(nbs) else p.relative_to(root))
            return os.path.relpath(staged, (src / nb.relative_to(nbs)).parent) + anchor
        if p.is_relative_to(root):                                           # another file of the repository
            kind = "tree" if p.is_dir() else "blob"
            return f"{cfg['git_url']}/{kind}/{cfg['branch']}/{p.relative_to(root).as_posix()}{anchor}"
    return target                                                            # broken: Sphinx reports it

def fix_markdown(md: str, nb: Path) -> str:
    "Links and images of a markdown cell resolved (`resolve`); fenced code left alone."
    sub = lambda m: m.group(1) + resolve(m.group(2), nb) + m.group(3)
    parts = re.split(r"(```.*?```)", md, flags=re.S)
    return "".join(p if i % 2 else IMG.sub(sub, LINK.sub(sub, p)) for i, p in enumerate(parts))

# ---------------------------------------------------------------------------------------------- notebooks
def stage_notebook(nb_path: Path, toc: str | None = None) -> dict:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    is_readme = nb_path.name == cfg.get("readme_nb", "index.ipynb") and nb_path.parent == nbs
    cells = []
    for cell in nb["cells"]:
        cell = dict(cell, source=text(cell["source"]))
        if cell["cell_type"] == "markdown":
            cell["source"] = fix_markdown(cell["source"], nb_path)
        elif cell["cell_type"] == "code":
            lines = cell["source"].splitlines()
            d = directives(lines)
            if "hide" in d or d.get("include") == "false" or (is_readme and d.keys() & README_SKIP): continue
            cell["source"] = "\n".join(l for l in lines if not re.match(r"#\|", l)).strip("\n")
            if d.get("output") == "false": cell["outputs"] = []
            if d.get("echo") == "false": cell["source"] = ""           # nbdev: the outputs without the code
            if not cell["source"].strip():
                if not cell.get("outputs"): continue
                cell["metadata"] = dict(cell.get("metadata", {}), tags=["remove-input"])
        cells.append(cell)
    if toc: cells.append({"cell_type": "markdown", "id": "site-toc", "metadata": {}, "source": toc})
    return dict(nb, cells=cells)

def default_exp(nb_path: Path) -> str | None:
    for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", text(cell["source"]), re.M)
        if cell["cell_type"] == "code" and m: return m.group(1)

def write_if_changed(path: Path, content: str):
    "Write only what changed, so that Sphinx rebuilds only those pages."
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != content: path.write_text(content, encoding="utf-8")

def toctree(caption: str, entries: list[str]) -> str:
    return "```{toctree}\n:hidden:\n:maxdepth: 1\n:caption: " + caption + "\n\n" + "\n".join(entries) + "\n```\n"

def stage() -> int:
    "Write the site's sources into _site/src; returns the number of notebook pages."
    pages = notebooks()
    readme = nbs / cfg.get("readme_nb", "index.ipynb")
    groups: dict[str, list[str]] = {}
    for p in pages:
        if p == readme: continue
        rel = p.relative_to(nbs)
        name = (rel.parts[0].replace("_", " ").capitalize() if len(rel.parts) > 1
                else GROUPS.get(rel.name[0], "Notebooks"))
        groups.setdefault(name, []).append(rel.with_suffix("").as_posix())
    # the API reference: autodoc of the model library, the modules exported by the 0x notebooks
    modules = [m.removesuffix(".__init__") for p in pages if p.parent == nbs and p.name[0] == "0"
               if (m := default_exp(p)) and m != "__init__"]
    api = []
    for m in modules:
        mod = f"{cfg['lib_name']}.{m}"
        nb = next(p for p in pages if p.parent == nbs and default_exp(p) in (m, m + ".__init__"))
        write_if_changed(src / "api" / f"{mod}.md", f"# `{mod}`\n\nExported from [{nb.name}](../{nb.stem}.ipynb).\n\n"
                         f"```{{eval-rst}}\n.. automodule:: {mod}\n   :members:\n```\n")
        api.append(f"api/{mod}")
    toc = "".join(toctree(c, e) for c, e in groups.items()) + toctree("API reference", api)
    keep = set()
    for p in pages:
        staged = src / p.relative_to(nbs)
        write_if_changed(staged, json.dumps(stage_notebook(p, toc if p == readme else None), indent=1))
        keep.add(staged)
    for old in src.rglob("*.ipynb"):                                        # notebooks removed since the last build
        if old not in keep: old.unlink()
    # results/ beside the pages (the notebooks show ../../results/*.png and link the CSVs)
    for f in results.rglob("*"):
        if f.is_file() and not f.relative_to(results).parts[0] in ("runs", "local"):
            dst = src / "results" / f.relative_to(results)
            if not dst.exists() or dst.read_bytes() != f.read_bytes():
                dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, dst)
    shutil.copytree(docs / "_static", src / "_static", dirs_exist_ok=True)
    mathjax()
    return len(pages)

def mathjax():
    "MathJax 3 in _site/src/_static/mathjax, from the npm package (fetched once into _site/)."
    dst = src / "_static" / "mathjax"
    if (dst / "tex-chtml.js").exists(): return
    tgz = work / f"mathjax-{MATHJAX}.tgz"
    if not tgz.exists():
        npm = shutil.which("npm")
        if not npm: sys.exit("npm is needed once to fetch MathJax (the npm package `mathjax`): install Node.js")
        subprocess.run([npm, "pack", f"mathjax@{MATHJAX}", "--silent", "--pack-destination", str(work)], check=True,
                       stdout=subprocess.DEVNULL)
    with tarfile.open(tgz) as t:
        members = [m for m in t.getmembers() if m.name.startswith("package/es5/") and m.isfile()]
        for m in members: m.name = m.name.removeprefix("package/es5/")
        members = [m for m in members if "/" in m.name or m.name == "tex-chtml.js"]   # one bundle, what it loads
        t.extractall(dst, members=members, filter="data")

def main():
    t0 = time.time()
    work.mkdir(exist_ok=True)
    n = stage()
    args = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "-c", str(docs),
            "-d", str(work / "doctrees"), str(src), str(out)]
    if "--fresh" in sys.argv: args.insert(3, "-E")
    rc = subprocess.run(args, cwd=root, env=dict(os.environ, MEO_DOCS_ROOT=str(root))).returncode
    if rc: sys.exit(f"sphinx-build failed (exit {rc}): the warnings above are errors")
    missing = [p for p in notebooks() if not (out / p.relative_to(nbs).with_suffix(".html")).exists()]
    if missing: sys.exit(f"no page for {[str(p.relative_to(root)) for p in missing]}")
    (out / ".nojekyll").touch()                                              # GitHub Pages: serve _static/ as is
    print(f"built {n} notebook pages into {out.relative_to(root)}/ in {time.time() - t0:.0f} s")

if __name__ == "__main__": main()
