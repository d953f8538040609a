"""Sphinx configuration of the documentation site: built by `python docs/build.py` (see there), not by hand."""
import configparser, os, sys
from pathlib import Path

root = Path(os.environ.get("MEO_DOCS_ROOT", Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(root))                       # autodoc imports this checkout's meo
cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(root / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

project, author, copyright = cfg["title"], cfg["author"], cfg["copyright"]
release = version = cfg["version"]
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_static/**"]

# notebooks: shown with their committed outputs, never executed here (the tests execute them)
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_dmath_double_inline = True
myst_heading_anchors = 4

# math: MathJax 3 served from the site itself (docs/build.py puts it in _static/mathjax), no CDN
mathjax_path = "mathjax/tex-chtml.js"

# the API reference: docstrings of the model library (nbdev style: a line of prose, `code` in backticks)
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False                  # not torch's "Define the computation performed at every call"
default_role = "code"
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = f"{cfg['title']}: {cfg['description'].split(':')[0]}"
html_static_path = [str(root / "_site" / "src" / "_static")]   # docs/_static and MathJax, staged by build.py
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "light"}
html_css_files = ["meo.css"]
html_show_sourcelink = False
html_theme_options = {
    "repository_url": cfg["git_url"], "repository_branch": cfg["branch"], "path_to_docs": cfg["nbs_path"],
    "use_repository_button": True, "show_toc_level": 2, "home_page_in_toc": True,
    "navigation_with_keys": False,
}
html_baseurl = cfg["doc_host"] + cfg["doc_baseurl"] + "/"
