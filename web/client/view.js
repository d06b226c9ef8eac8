// The conversation view shared by the demo page and the Electron app: the live transcript, the bot's
// replies (cut short where the user interrupted) and each turn's latency waterfall, in an <ol>.
// It reads only the client's events, so any page can show a call the same way.

// Each turn's timeline from the end of the user's speech, as bars on one scale: which stage the wait
// went to. The reply starts speculatively at a short pause, so a stage can end before the endpoint.
export const STAGES = [
  ["transcript_ms", "transcript"],
  ["endpoint_ms", "end of turn"],
  ["llm_first_token_ms", "first token"],
  ["tts_first_audio_ms", "first speech"],
  ["first_frame_sent_ms", "first frame sent"],
];
const SCALE_MS = 2000;

export class ConversationView {
  /** @param {HTMLOListElement} list */
  constructor(list) {
    this.list = list;
    this.call = 0; // turn numbers restart with every call
    this.entries = new Map(); // "2:user:3" -> <li>
  }

  /** Shows a new call's turns below the earlier ones. */
  attach(client) {
    this.call += 1;
    client.addEventListener("transcript", (e) => this.showText("user", e.detail));
    client.addEventListener("reply", (e) => this.showText("bot", e.detail));
    client.addEventListener("metrics", (e) => this.showWaterfall(e.detail));
    client.addEventListener("tool_call", (e) => this.showTool(e.detail));
    client.addEventListener("tool_result", (e) => this.showTool(e.detail));
    client.addEventListener("interrupted", (e) => {
      const li = this.entry("bot", e.detail.turn);
      li.firstChild.textContent = e.detail.heard ? `${e.detail.heard} …` : "…";
      li.classList.remove("partial");
      li.classList.add("interrupted");
    });
  }

  entry(kind, turn) {
    const key = `${this.call}:${kind}:${turn}`;
    let li = this.entries.get(key);
    if (!li) {
      li = document.createElement("li");
      li.className = `${kind} partial`;
      li.dataset.turn = turn;
      li.append(document.createElement("span"));
      this.list.append(li);
      this.entries.set(key, li);
    }
    return li;
  }

  showText(kind, { turn, text, final }) {
    const li = this.entry(kind, turn);
    li.firstChild.textContent = text;
    li.classList.toggle("partial", !final);
  }

  /** A tool the model called for a turn's reply, and then how it went, under the reply. */
  showTool(m) {
    const li = this.entry("bot", m.turn);
    const box = li.querySelector(".tools") || li.insertBefore(document.createElement("div"), li.children[1] || null);
    box.className = "tools";
    let row = box.querySelector(`[data-id="${CSS.escape(m.id)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.dataset.id = m.id;
      box.append(row);
    }
    if (m.type === "tool_call") {
      row.textContent = `${m.name}(${JSON.stringify(m.arguments)})`;
    } else {
      const outcome = m.ok ? `${Math.round(m.ms)} ms` : `failed: ${m.error}`;
      row.textContent = `${row.textContent || m.name} → ${m.dropped ? "dropped, " : ""}${outcome}`;
      row.classList.toggle("error", !m.ok);
    }
  }

  showWaterfall(m) {
    const li = this.entry("bot", m.turn);
    const box = li.querySelector(".waterfall") || li.appendChild(document.createElement("div"));
    box.className = "waterfall";
    box.replaceChildren();
    for (const [key, label] of STAGES) {
      if (m[key] === undefined) continue;
      const row = document.createElement("div");
      row.className = "stage";
      row.dataset.stage = key;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.min(100, (Math.max(0, m[key]) / SCALE_MS) * 100)}%`;
      const text = document.createElement("span");
      text.className = "label";
      text.textContent = `${label} ${Math.round(m[key])} ms`;
      row.append(bar, text);
      box.append(row);
    }
  }
}
