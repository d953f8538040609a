"""Show the committed results in the notebooks' markdown, so that a reader sees them without running anything.

The notebooks are committed clean (`nbdev_clean` strips every output), so a table or a figure that only a code
cell shows is invisible on GitHub or in JupyterLab until the notebook is run. Markdown survives the cleaning:

- figures: each notebook's markdown shows `results/*.png` with `![...](../../results/NAME.png)`;
- tables: a markdown cell holds a block `<!-- results: KEY -->` ... `<!-- /results -->`, which this script fills
  from the committed CSV of `results/`, through the same `meo` function the notebook calls on it (`TABLES` below);
  a table not made yet says which command makes it, and its figure is shown inside the block once it exists.

    python .ci/results_md.py             # rewrite every block from results/
    python .ci/results_md.py --check     # exit 1 if a block is not what results/ gives, or a figure is not shown
    python .ci/results_md.py --print KEY # print one block
"""
import json, math, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
R = root / "results"
BLOCK = re.compile(r"(<!-- results: (?P<key>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)

def md_table(df, index: bool = True) -> str:
    "A DataFrame as a GitHub markdown table: index columns left-aligned, the others right-aligned."
    n_index = df.index.nlevels if index else 0
    if index: df = df.reset_index()
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)): return ""
        return (f"{v:g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(":---" if i < n_index else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)

def _csv(name):
    import pandas as pd
    return pd.read_csv(R / name)

def _glue():
    import meo.experiments.tables as E
    return E.summary_table("glue", _csv("glue_offline.csv"))

def _task(name):
    import meo.experiments.tables as E
    return E.summary_table(name, _csv(f"{name}_offline.csv"), _csv(f"{name}_offline_speed.csv"))

def _flops_bert():
    import pandas as pd
    bert = _csv("flops_bert.csv")
    wide = bert.pivot_table(index=["size", "method", "convention"], columns="k", values="gflops", sort=False)
    rows = [(s, m, c) for s in dict.fromkeys(bert["size"]) for m, c in (("moe", "paper"), ("meo", "paper"), ("meo", "exact"))]
    out = wide.loc[rows].map(lambda v: f"{v:.2f}")                          # the MoE once: the same in both conventions
    out.index = pd.MultiIndex.from_tuples([(s, "moe" if m == "moe" else f"meo ({c})") for s, m, c in rows], names=["size", "method"])
    return out

def _flops_models():
    models = _csv("flops_models.csv")
    at = models[models.authors_k].pivot_table(index=["model", "level", "n_experts", "k"], columns="method", values="gflops", sort=False)
    at["dense"] = models.groupby("model", sort=False).dense_gflops.first().reindex(at.index.get_level_values(0)).to_numpy()
    at["moe / meo"] = at.moe / at.meo
    return at[["dense", "moe", "meo", "moe / meo"]].map(lambda v: f"{v:.2f}")

def _bench_layer():
    layer = _csv("bench_layer.csv")
    return layer.pivot_table(index=["pass", "level", "method"], columns="k", values="ratio_to_dense", sort=False).map(lambda v: f"{v:.2f}")

def _formatted(df, index, fmt):
    "Columns `fmt` of `df` formatted (missing: –), indexed by `index`; only the columns the CSV has."
    fmt = {c: f for c, f in fmt.items() if c in df.columns}
    out = df[[*index, *fmt]].set_index(index).astype(object)
    for c, f in fmt.items(): out[c] = ["–" if v != v else f.format(v) for v in df[c]]
    return out

def _bench_layer_bound():
    layer = _csv("bench_layer.csv")
    layer["of_bound"] = layer.ms / layer.roofline_ms
    return layer.pivot_table(index=["pass", "level", "method"], columns="k", values="of_bound", sort=False).map(lambda v: f"{v:.2f}")

def _bench_model():
    model = _csv("bench_model.csv").sort_values(["level", "k", "pass"], kind="stable", ignore_index=True)
    return _formatted(model, ["level", "method", "k", "pass"], dict(
        ms="{:,.0f}", ratio_to_dense="{:.2f}", roofline_ms="{:,.0f}", roofline_ratio="{:.2f}", samples_per_s="{:.2f}",
        saved_mb="{:,.0f}", peak_mb="{:,.0f}", params_mb="{:,.0f}"))

def _bench_serving():
    serving = _csv("bench_serving.csv")
    return _formatted(serving, ["method", "mode"], dict(ms="{:,.0f}", samples_per_s="{:.2f}", ratio_to_dense="{:.2f}",
                                                        ratio_to_eager="{:.2f}", setup_s="{:.1f}"))

def _bench_parts():
    from meo.bench.cpu import parts_table
    return parts_table(_csv("bench_parts.csv")).map(lambda v: f"{v:.2f}")

def _bench_smollm():
    from meo.bench.cpu import smollm_speed
    return smollm_speed(_csv("bench_smollm.csv")).map(lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}")

def _bench_generate():
    g = _csv("bench_generate.csv")
    g = g[g.blocks == "all"].assign(level=lambda d: d.level.fillna("–"), k=lambda d: d.k.fillna(0).astype(int))
    return g.pivot_table(index=["decoding", "level", "k", "method"], columns="batch", values="tok_s",
                         sort=False).map(lambda v: "–" if v != v else f"{v:.1f}")

def _bench_kernel_ffn():
    f = _csv("bench_kernel_ffn.csv")
    f = f.assign(routing=[f"{l}" if l == "sequence" else f"task ({t} per batch)" for l, t in zip(f.level, f.tasks)])
    t = f[f.method != "dense"].pivot_table(index=["pass", "routing", "method"], columns=["threads", "k"],
                                           values="ratio_to_dense", sort=False)
    t.columns = [f"{th} thr, k={k}" for th, k in t.columns]
    return t.map(lambda v: "–" if v != v else f"{v:.2f}")

def _bench_kernel_model():
    m = _csv("bench_kernel_model.csv")
    m = m.assign(routing=[f"{l}" if l == "sequence" else f"task ({t} per batch)" for l, t in zip(m.level, m.tasks)])
    t = m[m.method != "dense"].pivot_table(index=["pass", "routing"], columns="threads",
                                           values=["ratio_to_dense", "roofline_ratio"], sort=False)
    t.columns = [f"{'vs dense' if v == 'ratio_to_dense' else 'bound vs dense'}, {th} thr" for v, th in t.columns]
    return t.map(lambda v: f"{v:.2f}")

def _bench_kernel_smollm():
    s = _csv("bench_kernel_smollm.csv").rename(columns={"pass_": "pass"})
    t = s.pivot_table(index=["pass", "method", "k"], columns="threads", values="vs_dense", sort=False)
    t.columns = [f"throughput vs dense, {th} thr" for th in t.columns]
    return t.map(lambda v: f"{v:.2f}")

def _smollm(name, csv):
    import meo.experiments.tables as E
    return E.summary_table(name, _csv(f"{csv}.csv"), _csv(f"{csv}_speed.csv"))

def _examples(csv):
    ex = _csv(csv).fillna("")
    ex["source"] = [s[:200] + " ..." for s in ex.source]
    return ex.map(lambda v: " ".join(str(v).split())).set_index("source")   # one line per cell

# key: (what made the CSV, how the table is computed, the function[, {"needs": files of results/, "figure": PNG}])
# a block whose files do not exist yet says what makes them; a figure is shown inside the block once it exists
_SMOLLM_CMD = "`meo-run smollm --full --csv results/smollm_offline.csv`"
_SUMM_CMD = "`meo-run smollm-summ --full --csv results/smollm_summ_offline.csv`"
TABLES = {
    "glue": ("`results/glue_offline.csv`, made by `meo-run glue --full`", "`meo.experiments.tables.summary_table`", _glue),
    "wikitext": ("`results/wikitext_offline.csv` and `wikitext_offline_speed.csv`, made by `meo-run wikitext --full`",
                 "`meo.experiments.tables.summary_table`", lambda: _task("wikitext")),
    "squad": ("`results/squad_offline.csv` and `squad_offline_speed.csv`, made by `meo-run squad --full`",
              "`meo.experiments.tables.summary_table`", lambda: _task("squad")),
    "xsum": ("`results/xsum_offline.csv` and `xsum_offline_speed.csv`, made by `meo-run xsum --full`",
             "`meo.experiments.tables.summary_table`", lambda: _task("xsum")),
    "flops-bert": ("`results/flops_bert.csv`, made by `python -m meo.flops results`",
                   "GFLOPs; MEO's merge counted as the paper's figure (`paper`) and exactly (`exact`); the MoE merges nothing", _flops_bert),
    "flops-abstract": ("`results/flops_abstract.csv`, made by `python -m meo.flops results`",
                       "BERT-base, 128 tokens, $k = 4$, $n = 16$: GFLOPs under each candidate convention (`meo.flops.abstract_conventions`)",
                       lambda: _csv("flops_abstract.csv").set_index("convention").map(lambda v: f"{v:.2f}")),
    "flops-models": ("`results/flops_models.csv`, made by `python -m meo.flops results`", "GFLOPs at the authors' $k$", _flops_models),
    "bench-layer": ("`results/bench_layer.csv`, made by `python -m meo.bench.cpu` (the command: `results/bench_machine.json`)",
                    "time relative to the dense block", _bench_layer),
    "bench-layer-bound": ("`results/bench_layer.csv`, made by `python -m meo.bench.cpu` (the command: `results/bench_machine.json`)",
                          "measured time over the roofline bound (`ms / roofline_ms`)", _bench_layer_bound),
    "bench-model": ("`results/bench_model.csv`, made by `python -m meo.bench.cpu` (the command: `results/bench_machine.json`)",
                    "whole BERT-base, batch 16, 128 tokens", _bench_model),
    "bench-serving": ("`results/bench_serving.csv`, made by `python -m meo.bench.cpu` (the command: `results/bench_machine.json`)",
                      "whole BERT-base, sequence level, k = 4, batch 16, 128 tokens, `no_grad`", _bench_serving),
    "bench-parts": ("`results/bench_parts.csv`, made by `python -m meo.bench.cpu --threads 1 --no-layer --no-model "
                    "--no-serving --parts`", "one sequence-level projection, batch 16, 128 tokens, $n = 16$: time "
                    "relative to the dense projection", _bench_parts, {"needs": ["bench_parts.csv"]}),
    "bench-smollm": ("`results/bench_smollm.csv`, made by `python -m meo.bench.cpu --threads 2 --repeats 4 --no-layer "
                     "--no-model --no-serving --smollm --smollm-blocks all every:6`",
                     "SmolLM2-135M's shape, float32, two threads, random weights, n = 8: tokens/s of a training step "
                     "on 4 x 256 tokens and of generate() (8 x 48 new tokens), `meo.bench.cpu.smollm_speed`", _bench_smollm,
                     {"needs": ["bench_smollm.csv"]}),
    "bench-kernel-ffn": ("`results/bench_kernel_ffn.csv`, made by `python -m meo.bench.cpu --kernel --repeats 2`",
                         "BERT-base FFN block (768 -> 3072 -> 768), batch 16, 128 tokens, n = 16: time relative to the "
                         "dense block at 1 and 2 threads (`meo` = the torch backend, `meo-cpp` = the compiled kernel)",
                         _bench_kernel_ffn, {"needs": ["bench_kernel_ffn.csv"]}),
    "bench-kernel-model": ("`results/bench_kernel_model.csv`, made by `python -m meo.bench.cpu --kernel --repeats 2`",
                           "whole BERT-base, k = 4, n = 16, batch 8, 128 tokens, one timing each: the compiled "
                           "kernel's time relative to dense, and its roofline bound's", _bench_kernel_model,
                           {"needs": ["bench_kernel_model.csv"]}),
    "bench-kernel-smollm": ("`results/bench_kernel_smollm.csv`, made by `python -m meo.bench.cpu --kernel --repeats 2`",
                            "SmolLM2-135M's shape (all 30 blocks, 576 <-> 1536 gated), n = 8, sequence level, 2 x 128 "
                            "tokens: throughput relative to dense (`vs_dense`: dense's time over the row's, higher is faster)", _bench_kernel_smollm, {"needs": ["bench_kernel_smollm.csv"]}),
    "bench-generate": ("`results/bench_generate.csv`, made by `python -m meo.bench.cpu --generate --gen-committed`",
                       "SmolLM2-135M's shape cut to 8 blocks, float32, random weights and routers, n = 8, 48-token "
                       "prompts, 64 new tokens: generate() tokens/s (`meo.bench.cpu.bench_generate`)", _bench_generate,
                       {"needs": ["bench_generate.csv"]}),
    "smollm": (f"`results/smollm_offline.csv` and `smollm_offline_speed.csv`, made by {_SMOLLM_CMD}",
               "`meo.experiments.tables.summary_table`", lambda: _smollm("smollm", "smollm_offline"),
               {"needs": ["smollm_offline.csv", "smollm_offline_speed.csv"], "figure": "smollm_offline.png"}),
    "smollm-summ": (f"`results/smollm_summ_offline.csv` and `smollm_summ_offline_speed.csv`, made by {_SUMM_CMD}",
                    "`meo.experiments.tables.summary_table`", lambda: _smollm("smollm-summ", "smollm_summ_offline"),
                    {"needs": ["smollm_summ_offline.csv", "smollm_summ_offline_speed.csv"],
                     "figure": "smollm_summ_offline.png"}),
    "smollm-summ-examples": (f"`results/smollm_summ_offline_examples.csv`, made by {_SUMM_CMD}",
                             "the first evaluation articles: reference, lead baseline and each row's summary (seed 42)",
                             lambda: _examples("smollm_summ_offline_examples.csv"),
                             {"needs": ["smollm_summ_offline_examples.csv"]}),
}

def block(key: str) -> str:
    made, how, fn, *more = TABLES[key]
    opts = more[0] if more else {}
    if missing := [f for f in opts.get("needs", ()) if not (R / f).exists()]:
        return (f"\n*Not made yet: `results/{missing[0]}` does not exist. It is made by {made.split(', made by ')[-1]}; "
                f"then `python .ci/results_md.py` writes the table here.*\n\n")
    fig = opts.get("figure")
    shown = f"\n\n![{key}](../../results/{fig})" if fig and (R / fig).exists() else ""
    return f"\n*From {made}; {how}; written here by `python .ci/results_md.py`.*\n\n{md_table(fn())}{shown}\n\n"

def notebooks():
    return sorted(p for p in (root / "nbs").rglob("*.ipynb") if not {".ipynb_checkpoints", "_proc"} & set(p.parts))

def update(check: bool) -> list:
    "Rewrite (or, `check`, compare) every results block; return the problems found."
    problems, seen, shown = [], set(), set()
    for path in notebooks():
        nb, changed = json.loads(path.read_text()), False
        for c in nb["cells"]:
            if c["cell_type"] != "markdown": continue
            src = "".join(c["source"])
            for m in re.finditer(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", src):
                base = root if path == root / "nbs" / "index.ipynb" else path.parent   # index.ipynb renders to ./README.md
                img = (base / m.group(1)).resolve()
                if not img.exists(): problems.append(f"{path.relative_to(root)}: shows {m.group(1)}, which does not exist")
                shown.add(img)
            def fill(m):
                key = m.group("key")
                if key not in TABLES: problems.append(f"{path.relative_to(root)}: unknown results block {key!r}"); return m.group(0)
                seen.add(key)
                return m.group(1) + block(key) + m.group(4)
            new = BLOCK.sub(fill, src)
            if new != src:
                if check: problems.append(f"{path.relative_to(root)}: a results block is out of date")
                else: c["source"] = [l + "\n" for l in new.split("\n")[:-1]] + ([new.split("\n")[-1]] if new.split("\n")[-1] else []); changed = True
        if changed:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {path.relative_to(root)}")
    problems += [f"no notebook has a results block {k!r}" for k in TABLES if k not in seen]
    problems += [f"results/{p.name} is shown in no notebook's markdown" for p in sorted(R.glob("*.png")) if p.resolve() not in shown]
    return problems

if __name__ == "__main__":
    sys.path.insert(0, str(root))
    if "--print" in sys.argv: print(block(sys.argv[sys.argv.index("--print") + 1])); sys.exit()
    problems = update(check="--check" in sys.argv)
    if problems:
        sys.exit("\n".join(problems) + ("\nrun `python .ci/results_md.py` and commit the notebooks" if "--check" in sys.argv else ""))
    if "--check" in sys.argv: print("the notebooks show the committed results")
