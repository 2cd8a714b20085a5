// The in-page scrubber: the step slider, play and the overlay of every step, swapped in the page.
//
// data: {pictures: [URL per step], captions: [caption per step], width, height (the pictures'), step, last,
//        play_ms, report_ms}
// A scrub or a play only swaps the picture and its caption here; the server is told the step chosen
// (the "chosen" trigger) once scrubbing stops: report_ms after the last key or drag, or when play ends.
// Streamlit calls this function again with new data after every rerun of the viewer, in the same parent
// element: the elements and the scrubber's state are made once and kept on it, and only the data changes.

// Streamlit's media files come as root-relative URLs ("/media/ID.jpg"): served under the app's own path, as
// Streamlit serves its own, so that a server with a base path (server.baseUrlPath) serves them too
const served = url => {
  if (!url.startsWith("/")) return url;
  const path = window.location.pathname;
  return (path.endsWith("/") ? path : path + "/") + url.slice(1);
};

const FETCH_RETRIES = 4, FETCH_RETRY_MS = 250;

const TEXT_INPUTS = new Set(["text", "search", "email", "number", "password", "url", "tel"]);

const MARKUP = `
  <div class="glom-scrubber-controls">
    <span class="glom-scrubber-label" aria-hidden="true">Step <output class="glom-scrubber-value"></output></span>
    <input class="glom-scrubber-range" type="range" min="0" step="1" aria-label="Step">
    <button class="glom-scrubber-play" type="button" title="Play the steps (shortcut: p)"
            aria-keyshortcuts="p" aria-pressed="false">▶ Play</button>
  </div>
  <p class="glom-scrubber-help">Step 0 is the initial state; each step is one GLOM iteration. Focus the
    slider and use the arrow keys to scrub.</p>
  <figure class="glom-scrubber-figure">
    <img class="glom-scrubber-picture" alt="">
    <figcaption class="glom-scrubber-caption"></figcaption>
  </figure>`;

class Scrubber {
  constructor(parent) {
    this.root = document.createElement("div");
    this.root.className = "glom-scrubber";
    this.root.innerHTML = MARKUP;
    parent.appendChild(this.root);
    const find = name => this.root.querySelector(`.glom-scrubber-${name}`);
    [this.range, this.value, this.play] = [find("range"), find("value"), find("play")];
    [this.picture, this.caption] = [find("picture"), find("caption")];
    this.step = this.reported = null;
    this.told = new Set(); // the steps reported that the server's data has not answered yet
    this.playing = this.pending = null; // the play and the report timers
    this.range.addEventListener("input", () => { this.pause(); this.show(Number(this.range.value)); this.later(); });
    this.play.addEventListener("click", () => this.toggle());
    this.onKey = event => {
      const target = event.target;
      const typing = target instanceof HTMLTextAreaElement || target?.isContentEditable ||
        (target instanceof HTMLInputElement && TEXT_INPUTS.has(target.type));
      if (event.key === "p" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) this.toggle();
    };
    // a click elsewhere (another control, the view switcher) or a tab away tells the server at once, so
    // the rerun it starts is already for the step the visitor scrubbed to
    this.onPointer = event => { if (this.pending && !this.root.contains(event.target)) this.report(); };
    this.range.addEventListener("blur", () => { if (this.pending) this.report(); });
    document.addEventListener("keydown", this.onKey);
    document.addEventListener("pointerdown", this.onPointer, true);
  }

  update(data, setTriggerValue) {
    this.data = data;
    this.setTriggerValue = setTriggerValue;
    // each step's picture fetched and decoded ahead, so a swap never waits on the network or the decoder;
    // kept while the server's data names it again (every rerun of the viewer sends the same URLs)
    const held = this.decoded ?? new Map();
    this.decoded = new Map(data.pictures.map(url => {
      const image = held.get(url);
      return [url, image && !image.failed ? image : this.fetch(url)];
    }));
    this.range.max = String(data.last);
    [this.picture.width, this.picture.height] = [data.width, data.height]; // its place kept while it loads
    // the server's step, unless it is one this scrubber told it (the visitor may have scrubbed on since,
    // or a rerun for an earlier report arrives late): a step the server chose itself is shown
    if (this.step === null || !this.told.has(data.step)) {
      this.told.clear();
      this.reported = data.step;
      this.show(data.step);
    } else {
      if (data.step === this.reported) this.told.clear(); // the server has caught up
      this.show(this.step);
    }
  }

  // One step's picture, fetched ahead. The server keeps a picture while some page's last script run named
  // it: one this page's rerun names again may be freed by another visitor's run in between, and then this
  // fetch fails. Asked for again a little later (the rerun has named it again by then), a few times, and
  // shown in place where it is the step's.
  fetch(url, attempt = 0) {
    const image = new Image();
    image.onerror = () => {
      image.failed = true;
      if (attempt >= FETCH_RETRIES) return;
      setTimeout(() => {
        if (this.decoded.get(url) !== image) return; // a later update asked for it already
        const again = this.fetch(url, attempt + 1);
        this.decoded.set(url, again);
        if (this.data.pictures[this.step] === url) this.picture.src = again.src;
      }, FETCH_RETRY_MS * (attempt + 1));
    };
    image.src = served(url) + (attempt ? `?attempt=${attempt}` : ""); // not the failed answer again
    return image;
  }

  show(next) {
    const { pictures, captions, last } = this.data;
    this.step = Math.min(Math.max(next, 0), last);
    this.range.value = String(this.step);
    this.range.setAttribute("aria-valuetext", `step ${this.step} of ${last}`);
    this.value.textContent = String(this.step);
    const src = this.decoded.get(pictures[this.step]).src;
    if (this.picture.getAttribute("src") !== src) this.picture.src = src;
    this.picture.alt = captions[this.step];
    this.caption.textContent = captions[this.step];
    this.root.dataset.step = String(this.step);
  }

  report() {
    clearTimeout(this.pending);
    this.pending = null;
    if (this.step !== this.reported) {
      this.reported = this.step;
      this.told.add(this.step);
      this.setTriggerValue("chosen", this.step);
    }
  }

  later() {
    clearTimeout(this.pending);
    this.pending = setTimeout(() => this.report(), this.data.report_ms);
  }

  pause() {
    if (!this.playing) return;
    clearInterval(this.playing);
    this.playing = null;
    this.play.textContent = "▶ Play";
    this.play.setAttribute("aria-pressed", "false");
  }

  toggle() {
    if (this.playing) {
      this.pause();
      this.report();
      return;
    }
    clearTimeout(this.pending);
    this.pending = null;
    if (this.step >= this.data.last) this.show(0); // from the end, play starts over and shows step 0 first
    this.play.textContent = "⏸ Pause";
    this.play.setAttribute("aria-pressed", "true");
    this.playing = setInterval(() => {
      this.show(this.step + 1);
      if (this.step >= this.data.last) {
        this.pause();
        this.report();
      }
    }, this.data.play_ms);
  }

  close() {
    this.pause();
    if (this.pending) this.report();
    document.removeEventListener("keydown", this.onKey);
    document.removeEventListener("pointerdown", this.onPointer, true);
  }
}

export default function ({ data, parentElement, setTriggerValue }) {
  const root = parentElement.querySelector(".glom-scrubber");
  const scrubber = root?.scrubber ?? new Scrubber(parentElement);
  scrubber.root.scrubber = scrubber;
  scrubber.update(data, setTriggerValue);
  // called before each new data too: the scrubber is closed only once its element has left the page
  return () => setTimeout(() => { if (!scrubber.root.isConnected) scrubber.close(); }, 0);
}
