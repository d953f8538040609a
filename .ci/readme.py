"""Make README.md from nbs/index.ipynb without Quarto (what `nbdev_readme` does with it).

    python .ci/readme.py             # render README.md from the notebook as committed
    python .ci/readme.py --execute   # first run the notebook and store its outputs (then render)
    python .ci/readme.py --check     # exit 1 if README.md is not what the notebook renders to
"""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb_path, readme = root / "nbs" / "index.ipynb", root / "README.md"
skip = {"hide", "export", "exports", "exporti", "default_exp"}

def execute():
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    import os
    nb = read_nb(nb_path)
    os.chdir(nb_path.parent); sys.path.insert(0, str(root))
    CaptureShell().run_all(nb, exc_stop=True)
    write_nb(nb, nb_path)

def text(src): return "".join(src) if isinstance(src, list) else src

def render() -> str:
    nb, parts = json.loads(nb_path.read_text()), []
    for cell in nb["cells"]:
        src = text(cell["source"])
        if cell["cell_type"] == "markdown": parts.append(src.strip()); continue
        if cell["cell_type"] != "code": continue
        lines = src.splitlines()
        directives = {re.match(r"#\|\s*(\S+)", l).group(1).rstrip(":") for l in lines if re.match(r"#\|\s*\S", l)}
        if directives & skip: continue
        code = "\n".join(l for l in lines if not l.startswith("#|")).strip()
        if code: parts.append(f"```python\n{code}\n```")
        out = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream": out.append(text(o["text"]))
            elif "data" in o and "text/plain" in o["data"]: out.append(text(o["data"]["text/plain"]) + "\n")
        if "".join(out).strip(): parts.append("    " + "".join(out).rstrip("\n").replace("\n", "\n    "))
    header = "<!-- Generated from nbs/index.ipynb by `python .ci/readme.py`: edit the notebook, not this file. -->\n\n"
    return header + "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    if "--execute" in sys.argv: execute()
    md = render()
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != md:
            sys.exit("README.md is out of date: run `python .ci/readme.py` and commit it")
        print("README.md is up to date")
    else: readme.write_text(md); print(f"wrote {readme.relative_to(root)}")
