"""Look and feel: the theme, the style sheet and the keyboard-shortcut script (passed to launch())."""

from __future__ import annotations

from typing import Any

import gradio as gr

CSS = """
.gradio-container {max-width: 1400px !important; margin: auto;}
#rl-header {display:flex; align-items:baseline; gap:14px; padding:6px 2px 0 2px;}
#rl-header h1 {font-size: 1.7rem; margin: 0; letter-spacing: -0.02em;}
#rl-header .tag {color: var(--body-text-color-subdued); font-size: 0.95rem;}
#rl-status {font-size: 0.85rem; color: var(--body-text-color-subdued);}
#rl-status ul {margin: 0; padding-left: 1.1em;}
.rl-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px;
  background: var(--block-background-fill);}
.rl-route-choice {font-size: 1.35rem; font-weight: 650;}
.rl-route-meta {color: var(--body-text-color-subdued); font-size: 0.85rem; margin-top: 4px;}
.rl-conf {display:inline-block; min-width: 3.2em; padding: 1px 8px; border-radius: 999px; font-weight: 600;
  background: var(--color-accent-soft); color: var(--color-accent);}
.rl-panel {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px; min-height: 150px;}
.rl-panel.rl-picked {border: 2px solid var(--color-accent); box-shadow: 0 0 0 3px var(--color-accent-soft);}
.rl-panel-head {display:flex; justify-content: space-between; align-items: baseline; gap: 8px;}
.rl-panel-name {font-weight: 650; font-size: 1.02rem;}
.rl-kind {font-size: 0.72rem; padding: 1px 7px; border-radius: 999px; border: 1px solid var(--border-color-primary);
  text-transform: uppercase; letter-spacing: 0.04em;}
.rl-kind.vlm {background: #e8f1ff; color: #1f4fa3; border-color: #b9cff5;}
.rl-kind.vlmllm {background: #f3ebff; color: #5b2ea6; border-color: #d4c1f3;}
.rl-pick-badge {font-size: 0.72rem; padding: 1px 7px; border-radius: 999px; background: var(--color-accent); color: white;}
.rl-meta {color: var(--body-text-color-subdued); font-size: 0.78rem; margin: 2px 0 8px 0;}
.rl-answer {font-size: 1.15rem; font-weight: 600; margin: 6px 0; word-break: break-word;}
.rl-error {color: #b42318; background: #fef3f2; border: 1px solid #fecdca; border-radius: 8px; padding: 6px 8px;
  font-size: 0.9rem; word-break: break-word;}
.rl-wait {color: var(--body-text-color-subdued); display:flex; align-items:center; gap:8px; margin: 10px 0;}
.rl-spinner {width: 16px; height: 16px; border: 2px solid var(--border-color-primary); border-top-color: var(--color-accent);
  border-radius: 50%; animation: rl-spin 0.8s linear infinite;}
@keyframes rl-spin {to {transform: rotate(360deg);}}
.rl-bar {height: 7px; border-radius: 4px; background: var(--color-accent); opacity: 0.75;}
.rl-scores {width: 100%; font-size: 0.85rem; border-collapse: collapse; border: none !important; margin: 4px 0;}
.rl-scores tr, .rl-scores td {border: none !important; background: transparent !important;}
.rl-scores td {padding: 2px 4px !important; vertical-align: middle;}
.rl-scores td.s {width: 44%;}
.rl-scores td.v {text-align: right; width: 3.5em; color: var(--body-text-color-subdued);}
.rl-notice {font-size: 0.85rem; color: #8a5a00;}
.rl-progress {height: 10px; border-radius: 5px; background: var(--border-color-primary); overflow: hidden;}
.rl-progress > div {height: 100%; background: var(--color-accent);}
.rl-keys kbd {border: 1px solid var(--border-color-primary); border-bottom-width: 2px; border-radius: 4px;
  padding: 0 5px; font-size: 0.8rem;}
footer {display: none !important;}
#rl-header .rl-api-link {margin-left:auto; font-size:0.9rem; padding:3px 10px; border-radius:999px;
  border:1px solid var(--border-color-primary); text-decoration:none;}
/* Phone: one column, panels stacked, charts that fit, no sideways scrolling. Gradio prefixes every
   selector here with ".gradio-container .contain", so these name what is inside the page, never the
   container itself (a selector that starts with .gradio-container would never match). */
@media (max-width: 700px) {
  .row, .form {flex-direction: column !important; flex-wrap: nowrap !important;}
  .column, .block, .form > *, .row > * {min-width: 0 !important; width: 100% !important; max-width: 100% !important;
    flex: 1 1 auto !important;}
  .js-plotly-plot, .plot-container, .svg-container, .main-svg {max-width: 100% !important; overflow: hidden;}
  .modebar-container {display: none !important;}
  table {display: block; max-width: 100%; overflow-x: auto;}
  .tab-wrapper, [role=tablist] {flex-wrap: wrap !important; overflow-x: auto; max-width: 100%;}
  #rl-header {flex-wrap: wrap;}
  #rl-header .tag {white-space: normal;}
  pre, code {white-space: pre-wrap; word-break: break-word;}
}
"""

#: Annotate-tab shortcuts (the page shows them: components.annotate_tab.SHORTCUT_HELP): 1-9 select
#: backend panel N (outlined: ``data-rl-selected`` on #annotate-root), then c / w / s set its verdict to
#: correct / wrong / skip; t tie; a all wrong (every answered backend wrong and best = all wrong, in one
#: press); Enter save & next; n skip item; u undo (back to the previous item). Ignored while typing in a
#: text box (Esc leaves it). Implemented by clicking the real controls, so the keyboard and the mouse do
#: exactly the same thing.
SHORTCUTS_JS = """
() => {
  if (window.__routelensKeys) return;
  window.__routelensKeys = true;
  // The header's "Use via API" link opens Gradio's own API page: it clicks the footer's button
  // (the footer itself is hidden by our CSS); the link's href ?view=api is the fallback.
  document.addEventListener('click', (event) => {
    const link = event.target.closest && event.target.closest('#rl-api-link');
    const button = document.querySelector('footer button.show-api');
    if (!link || !button) return;
    event.preventDefault();
    button.click();
  });
  document.addEventListener('keydown', (event) => {
    const root = document.querySelector('#annotate-root');
    if (!root || root.offsetParent === null) return;
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    const typing = target && (target.isContentEditable || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT' ||
      (target.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'submit', 'range'].includes(target.type)));
    if (typing) { if (event.key === 'Escape' && target.blur) target.blur(); return; }
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const click = (selector) => { const el = document.querySelector(selector); if (el) { el.click(); return true; } return false; };
    // choice: 0 correct, 1 wrong, 2 skip (the radio's order, components.answer_grid.VERDICTS)
    const choose = (index, choice) => {
      const inputs = document.querySelectorAll('#ann-verdict-' + index + ' input[type=radio]');
      const input = inputs[choice];
      if (!input || input.disabled) return false;
      if (!input.checked) input.click();
      return true;
    };
    const selected = () => Number(root.dataset.rlSelected || 0);
    let handled = false;
    if (/^[1-9]$/.test(key)) {
      const index = Number(key) - 1;
      if (document.querySelector('#ann-verdict-' + index)) { root.dataset.rlSelected = String(index); handled = true; }
    } else if (key === 'c' || key === 'w' || key === 's') {
      handled = choose(selected(), {c: 0, w: 1, s: 2}[key]);
    } else if (key === 't') {
      handled = click('#ann-best input[value="tie"]');
    } else if (key === 'a') {
      root.querySelectorAll('[id^="ann-verdict-"]').forEach((group) => {
        const index = group.id.slice('ann-verdict-'.length);
        if (!document.querySelector('#ann-panel-' + index + ' .rl-error')) choose(index, 1);
      });
      handled = click('#ann-best input[value="all_wrong"]');
    } else if (key === 'Enter') {
      handled = click('#ann-save');
    } else if (key === 'n') {
      handled = click('#ann-skip');
    } else if (key === 'u') {
      handled = click('#ann-undo');
    }
    if (handled) event.preventDefault();
  });
}
"""


def theme() -> Any:
    # System fonts only: a GoogleFont would be fetched from the internet on every page load.
    fonts = [gr.themes.Font(name) for name in ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif")]
    mono = [gr.themes.Font(name) for name in ("ui-monospace", "SFMono-Regular", "Menlo", "monospace")]
    return gr.themes.Soft(primary_hue="indigo", neutral_hue="slate", font=fonts, font_mono=mono)


#: Page-level rules Gradio's ``css`` cannot express: it prefixes every selector with
#: ".gradio-container .contain", so the page and the container themselves are styled from ``head``.
PHONE_HEAD = """<style>
@media (max-width: 700px) {
  html, body {overflow-x: hidden; max-width: 100vw;}
  .gradio-container, .gradio-container .main, .gradio-container .contain
    {max-width: 100vw !important; min-width: 0 !important; box-sizing: border-box;}
  .gradio-container, .gradio-container .main {padding-left: 0 !important; padding-right: 0 !important;}
  .gradio-container .contain {padding: 0 6px !important;}
}
</style>"""


def launch_kwargs() -> dict[str, Any]:
    """Style arguments for ``Blocks.launch`` (gradio 6 takes them there, not in the constructor)."""
    return {"theme": theme(), "css": CSS, "js": SHORTCUTS_JS, "head": PHONE_HEAD}
