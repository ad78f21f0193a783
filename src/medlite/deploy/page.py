"""The one HTML page `medlite serve` shows: inline CSS and JS only (no CDN, no fonts, no trackers)."""

from __future__ import annotations

import html
import json


def _fmt_ci(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    ci = (metrics.get("ci") or {}).get(key)
    if not isinstance(value, (int, float)):
        return "not recorded"
    text = f"{value:.3f}"
    if isinstance(ci, list) and len(ci) == 2:
        text += f" ({metrics.get('confidence', 0.95) * 100:.0f}% CI {ci[0]:.3f}–{ci[1]:.3f})"
    return text


def card_rows(info: dict) -> list[tuple[str, str]]:
    card = info.get("card") or {}
    metrics = card.get("metrics") or {}
    data = card.get("dataset") or {}
    images = data.get("images") or {}
    rows = [
        ("Model", f"{card.get('model') or info['file'].rsplit('/', 1)[-1]} ({card.get('arch', '?')}, {card.get('format', '?')})"),
        ("Intended use", card.get("intended_use") or "No model card with this file: intended use not stated."),
        ("Classes", ", ".join(card.get("classes") or (info.get("preprocess") or {}).get("class_names") or [])),
        ("Training data", f"{data.get('name', '?')} ({data.get('source', '?')}): "
                          + ", ".join(f"{k} {v}" for k, v in images.items()) if data else "not recorded"),
        (f"Test AUC ({metrics.get('split', 'test')}, n={metrics.get('n', '?')})", _fmt_ci(metrics, "auc")),
        ("Accuracy", _fmt_ci(metrics, "accuracy")),
        ("File size", f"{info['file_bytes'] / 1024:.1f} KiB ({len(info['files'])} file{'s' if len(info['files']) > 1 else ''})"),
        ("Latency here", f"{info['latency']['p50_ms']:.2f} ms median (batch 1, {info['latency']['threads']} threads)"),
        ("Runtime", info["runtime"]),
        ("Input", "{image_size}px, {channels} channel(s)".format(**info["preprocess"]) if info.get("preprocess") else "?"),
    ]
    for warning in card.get("warnings") or []:  # a model no better than chance says so where it is used
        rows.insert(0, ("Warning", warning))
    op = info.get("operating_point")
    multilabel = ((info.get("preprocess") or {}).get("activation") == "sigmoid")
    if multilabel:  # the labels and their thresholds, as the model card lists them
        thresholds = (op or {}).get("thresholds")
        rows.append(("Decision", "each label positive when its probability ≥ its threshold "
                     + (f"(chosen on validation, {op['source']}): " + ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items())
                        if thresholds else "0.5 (no thresholds stored)")))
    else:
        rows.append(("Decision", f"{op['positive_class']} when p ≥ {op['threshold']:.3f} (operating point, {op['source']})"
                     if op else "highest probability"))
    if card.get("recipe"):
        rows.append(("Recipe", f"{card['recipe'].get('name')} sha256 {str(card['recipe'].get('sha256'))[:12]}…"))
    if card.get("medlite_version"):
        rows.append(("medlite", str(card["medlite_version"])))
    return rows


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medlite · {title}</title>
<style>
:root {{ --fg:#1d2330; --muted:#5b6473; --line:#dde2ea; --accent:#1f6feb; --warn:#9a6700; --bad:#b42318; }}
* {{ box-sizing:border-box; }}
body {{ font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); margin:0; background:#f6f8fb; }}
header {{ background:#fff; border-bottom:1px solid var(--line); padding:14px 24px; }}
header h1 {{ font-size:19px; margin:0; }} header p {{ margin:2px 0 0; color:var(--muted); font-size:13px; }}
main {{ display:grid; grid-template-columns:minmax(0,1fr) 360px; gap:20px; padding:20px 24px; max-width:1200px; }}
@media (max-width:900px) {{ main {{ grid-template-columns:1fr; }} }}
section {{ background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px; }}
h2 {{ font-size:16px; margin:0 0 10px; }}
tr.warnrow td {{ color:var(--bad); font-weight:600; }}
#drop {{ border:2px dashed #b8c2d0; border-radius:8px; padding:22px; text-align:center; color:var(--muted); cursor:pointer; }}
#drop.over {{ border-color:var(--accent); background:#eef4ff; }}
button {{ background:var(--accent); color:#fff; border:0; border-radius:6px; padding:8px 16px; font-size:14px; cursor:pointer; margin-top:10px; }}
button:disabled {{ background:#9bb6e0; cursor:default; }}
.result {{ display:grid; grid-template-columns:160px 160px minmax(0,1fr); gap:14px; border-top:1px solid var(--line); padding:14px 0; }}
.result img {{ width:160px; height:160px; object-fit:contain; background:#111; border-radius:4px; }}
.cap {{ font-size:12px; color:var(--muted); text-align:center; }}
.cls {{ font-size:18px; font-weight:600; }}
.bar {{ display:grid; grid-template-columns:110px 1fr 56px; align-items:center; gap:6px; font-size:13px; margin:3px 0; }}
.bar div.track {{ background:#e8ecf2; height:10px; border-radius:5px; overflow:hidden; }}
.bar div.fill {{ background:var(--accent); height:10px; }}
.warn {{ color:var(--warn); font-size:13px; margin:4px 0; }} .err {{ color:var(--bad); font-size:14px; }}
.meta {{ color:var(--muted); font-size:12px; }}
.scale {{ display:grid; grid-template-columns:auto 1fr auto; gap:6px; align-items:center; font-size:12px; color:var(--muted); margin:6px 0; }}
.ramp {{ height:10px; border-radius:3px; }} .result .ramp {{ width:160px; height:6px; margin-top:3px; }}
table {{ border-collapse:collapse; width:100%; font-size:13px; }}
td {{ border-top:1px solid var(--line); padding:6px 4px; vertical-align:top; }} td:first-child {{ color:var(--muted); width:38%; }}
</style></head>
<body>
<header><h1>medlite · {title}</h1><p>{selection}</p></header>
<main>
<section>
  <h2>Classify images</h2>
  <div id="drop" tabindex="0">Drop images here or click to choose (up to {max_files}, {max_mb} MB each)
    <input id="files" type="file" accept="image/*" multiple hidden></div>
  <input id="token" type="password" placeholder="access token" autocomplete="off"{token_hidden}>
  <button id="go" disabled>Classify</button> <span id="status" class="meta"></span>
  <div id="results"></div>
</section>
<section>
  <h2>Model card</h2>
  <table id="card">{card}</table>
  <p class="meta">Heat-map: occlusion sensitivity computed on the deployed file (how much the predicted
  class's score (logit margin) drops when each region is hidden). Bright = the model relied on it.</p>
  <div class="scale" id="heat-scale"><span>low</span><div class="ramp" style="background:{heat_ramp}"></div>
    <span>high</span></div>
  <p class="meta">Each map is scaled to its own largest drop: colours compare regions within one image, not across images.</p>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const input = $("files"), drop = $("drop"), go = $("go"), statusEl = $("status"), out = $("results");
let chosen = [];
function pick(list) {{ chosen = Array.from(list); go.disabled = !chosen.length;
  statusEl.textContent = chosen.length ? chosen.length + " file(s) chosen" : ""; }}
drop.onclick = () => input.click();
input.onchange = () => pick(input.files);
drop.ondragover = (e) => {{ e.preventDefault(); drop.classList.add("over"); }};
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {{ e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); }};
function el(tag, cls, text) {{ const n = document.createElement(tag); if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text; return n; }}
function render(r, file) {{
  const box = el("div", "result");
  const a = el("div"); const img = el("img"); img.src = URL.createObjectURL(file); img.alt = "uploaded image";
  a.append(img, el("div", "cap", "uploaded"));
  const b = el("div"); const heat = el("img"); heat.alt = "occlusion heat-map";
  heat.src = "data:image/png;base64," + r.heatmap_png; const ramp = el("div", "ramp");
  ramp.style.background = {heat_ramp_js};
  b.append(heat, ramp, el("div", "cap", "where the model looked (low → high)"));
  const c = el("div");
  if (r.labels) {{  // multi-label: every label, its probability and its decision at its threshold
    c.append(el("div", "meta", r.filename), el("div", "cls", "positive: " + (r.positive_labels.join(", ") || "none") +
      (r.low_confidence ? " (a label near its threshold)" : "")));
    for (const [name, v] of Object.entries(r.labels)) {{
      const row = el("div", "bar"); const track = el("div", "track"); const fill = el("div", "fill");
      fill.style.width = (100 * v.probability).toFixed(1) + "%"; track.append(fill);
      row.append(el("span", "", (v.positive ? "✓ " : "") + name), track,
        el("span", "", (100 * v.probability).toFixed(1) + "% / " + (100 * v.threshold).toFixed(0) + "%")); c.append(row);
    }}
  }} else {{
  c.append(el("div", "meta", r.filename), el("div", "cls", r.predicted + (r.low_confidence ? " (low confidence)" : "")));
  for (const [name, p] of Object.entries(r.probabilities)) {{
    const row = el("div", "bar"); const track = el("div", "track"); const fill = el("div", "fill");
    fill.style.width = (100 * p).toFixed(1) + "%"; track.append(fill);
    row.append(el("span", "", name), track, el("span", "", (100 * p).toFixed(1) + "%")); c.append(row);
  }}
  }}
  for (const w of r.input.warnings) c.append(el("div", "warn", "⚠ " + w));
  const i = r.input;
  c.append(el("div", "meta", "input " + i.original_size.join("×") + " " + i.original_mode +
    (i.resized_to ? " → " + i.resized_to.join("×") : "") + (i.colour_to_grey ? ", colour → grey" : "") +
    " · " + r.inference_ms.toFixed(2) + " ms"));
  box.append(a, b, c); return box;
}}
go.onclick = async () => {{
  go.disabled = true; statusEl.textContent = "classifying…"; out.innerHTML = "";
  const form = new FormData(); for (const f of chosen) form.append("file", f);
  try {{
    const token = $("token").value.trim();  // the server's token, when it asks for one (never stored)
    const res = await fetch("/predict?heatmap=1", {{ method: "POST", body: form,
      headers: token ? {{ Authorization: "Bearer " + token }} : {{}} }});
    const data = await res.json();
    if (!res.ok) {{ out.append(el("p", "err", data.error || ("error " + res.status))); }}
    else {{
      const byName = new Map(chosen.map((f) => [f.name, f]));
      for (const r of data.results) out.append(render(r, byName.get(r.filename) || chosen[0]));
      for (const e of data.errors) out.append(el("p", "err", e.error));
    }}
    statusEl.textContent = "";
  }} catch (e) {{ out.append(el("p", "err", String(e))); statusEl.textContent = ""; }}
  go.disabled = !chosen.length;
}};
</script>
</body></html>
"""


def render_page(info: dict) -> str:
    warn = ' class="warnrow"'
    rows = "".join(f"<tr{warn if k == 'Warning' else ''}><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in card_rows(info))
    card = info.get("card") or {}
    title = card.get("model") or info["file"].rsplit("/", 1)[-1]
    from medlite.deploy.occlusion import css_gradient  # numpy and Pillow only, like the server

    return PAGE.format(
        heat_ramp=css_gradient(), heat_ramp_js=json.dumps(css_gradient()),
        title=html.escape(str(title)), selection=html.escape(info.get("selection") or ""), card=rows,
        max_files=info["limits"]["max_files"], max_mb=f"{info['limits']['max_upload_mb']:g}",
        token_hidden="" if info.get("auth") else " hidden",
    )
