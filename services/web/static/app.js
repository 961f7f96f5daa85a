// zerolens upload page: choose, drop, paste or take photos; each is classified through the JSON API on its own.
// Without JavaScript the form still posts to /uploader and the server renders the same cards with the same words
// (templates/_words.html, which this script reads from the form's data-words attribute).
(function () {
  "use strict";

  const form = document.getElementById("upload-form");
  if (!form || !window.fetch || !window.FormData || !window.URL || !("content" in document.createElement("template"))) {
    return;
  }

  const MAX_PARALLEL = 4; // requests in flight at once: more photos wait their turn, each still its own request
  const words = JSON.parse(form.dataset.words);
  const input = document.getElementById("image-input");
  const camera = document.getElementById("camera");
  const cameraInput = document.getElementById("camera-input");
  const dropzone = document.getElementById("dropzone");
  const button = document.getElementById("classify-button");
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const grid = document.getElementById("result-grid");
  const cardTemplate = document.getElementById("card-template");
  const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
  let batch = 0; // the latest batch of photos: answers for an earlier one are dropped
  let thumbnails = [];

  function errorTitle(code) {
    return words.errorTitles[String(code)] || words.errorTitles[code >= 500 ? "5xx" : "4xx"];
  }

  // "the upload is larger than the 20 MB limit" → "The upload is larger than the 20 MB limit." (as the template)
  function sentence(text) {
    text = String(text || "").trim();
    if (!text) return "";
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  function part(card, selector) {
    return card.querySelector(selector);
  }

  function newCard(file) {
    const card = cardTemplate.content.firstElementChild.cloneNode(true);
    part(card, ".result-name").textContent = file.name || "Pasted photo";
    part(card, ".result-pending").hidden = false;
    const thumb = part(card, ".thumb");
    const url = URL.createObjectURL(file);
    thumbnails.push(url);
    thumb.addEventListener("error", function () {
      thumb.hidden = true; // not decodable by the browser: the server will say whether it can read it
    });
    thumb.src = url;
    thumb.hidden = false;
    return card;
  }

  function showCardError(card, code, title, message) {
    part(card, ".result-pending").hidden = true;
    part(card, ".error-title").textContent = title;
    part(card, ".error-message").textContent = sentence(message);
    part(card, ".error-code").textContent = code ? "Error " + code : "";
    part(card, ".result-error").hidden = false;
  }

  function prediction(p) {
    const pct = (p.probability * 100).toFixed(1);
    const item = document.createElement("li");
    item.className = "prediction";
    const label = document.createElement("span");
    label.className = "prediction-label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.className = "prediction-pct";
    value.textContent = pct + " %";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    item.append(label, value, bar);
    return item;
  }

  function timing(text) {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }

  function showResult(card, payload, browserMs) {
    part(card, ".result-pending").hidden = true;
    const top = payload.predictions[0];
    part(card, ".unsure").hidden = !top || top.probability >= words.unsureBelow;
    part(card, ".predictions").replaceChildren.apply(part(card, ".predictions"), payload.predictions.map(prediction));
    const t = payload.timings_ms || {};
    part(card, ".timings summary").textContent =
      t.total !== undefined ? "Took " + Number(t.total).toFixed(0) + " ms" : "Timings";
    const list = words.timings
      .filter(function (entry) { return t[entry[0]] !== undefined; })
      .map(function (entry) { return timing(entry[1] + ": " + Number(t[entry[0]]).toFixed(1) + " ms"); });
    list.push(timing("From your browser, there and back: " + browserMs.toFixed(1) + " ms"));
    part(card, ".timings-list").replaceChildren.apply(part(card, ".timings-list"), list);
    part(card, ".model").textContent = "Model " + payload.model + ", batch of " + payload.batch_size + ".";
    part(card, ".result-body").hidden = false;
  }

  // One photo, one request: its card shows its own labels or its own error.
  async function classifyOne(file, card) {
    const body = new FormData();
    body.append("image", file, file.name || "pasted-photo");
    const start = performance.now();
    try {
      const response = await fetch(form.dataset.api, {
        method: "POST",
        body: body,
        headers: { Accept: "application/json" },
      });
      const elapsed = performance.now() - start;
      let payload = null;
      try {
        payload = await response.json();
      } catch (_) {
        payload = null; // e.g. a proxy's HTML error page
      }
      if (response.ok && payload && payload.predictions) {
        showResult(card, payload, elapsed);
        return payload.predictions[0] ? payload.predictions[0].label : "";
      }
      const err = payload && payload.error;
      const message = err && err.message ? err.message : "The server answered " + response.status;
      showCardError(card, response.status, errorTitle(response.status), message);
    } catch (err) {
      showCardError(card, 0, "Could not reach the service", "Check the connection and try again");
    }
    return null;
  }

  // Bring the answer into view (it is below the form, often below the fold) and give it the focus, so that a
  // screen reader reads it next.
  function reveal() {
    results.focus({ preventScroll: true });
    results.scrollIntoView({ block: "start", behavior: reducedMotion.matches ? "auto" : "smooth" });
  }

  function plural(n) {
    return n === 1 ? "1 photo" : n + " photos";
  }

  async function classifyAll(fileList) {
    const files = Array.prototype.slice.call(fileList || []);
    if (!files.length) return;
    const mine = ++batch;
    thumbnails.forEach(function (url) { URL.revokeObjectURL(url); });
    thumbnails = [];
    const cards = files.map(newCard);
    grid.replaceChildren.apply(grid, cards);
    results.hidden = false;
    status.textContent = "Classifying " + plural(files.length) + "…";
    const labels = [];
    let next = 0;
    let revealed = false;
    async function worker() {
      while (next < files.length && mine === batch) {
        const i = next++;
        labels[i] = await classifyOne(files[i], cards[i]);
        if (mine !== batch) return;
        if (!revealed) {
          revealed = true;
          reveal();
        }
      }
    }
    const workers = [];
    for (let i = 0; i < Math.min(MAX_PARALLEL, files.length); i++) workers.push(worker());
    await Promise.all(workers);
    if (mine !== batch) return;
    const failed = labels.filter(function (label) { return label === null; }).length;
    if (files.length === 1) {
      status.textContent = failed ? "Done: it could not be classified." : "Done: " + (labels[0] || "no labels") + ".";
    } else {
      status.textContent = "Done: " + plural(files.length) + (failed ? ", " + failed + " could not be classified." : ".");
    }
  }

  function imagesIn(transfer) {
    if (!transfer) return [];
    const files = Array.prototype.slice.call(transfer.files || []);
    return files.filter(function (file) { return !file.type || file.type.indexOf("image/") === 0; });
  }

  button.hidden = true; // with JavaScript, a photo is classified as soon as it is chosen, dropped or pasted
  camera.hidden = false; // style.css shows it only on touch screens, where a camera is at hand
  [input, cameraInput].forEach(function (picker) {
    picker.addEventListener("change", function () {
      classifyAll(picker.files); // reads the list at once
      picker.value = ""; // so that choosing the same photo again classifies it again
    });
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    classifyAll(input.files);
  });

  // Drop anywhere on the page (a missed drop would otherwise open the photo in place of the page).
  document.addEventListener("dragover", function (event) {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  document.addEventListener("dragleave", function (event) {
    if (!event.relatedTarget) dropzone.classList.remove("dragging");
  });
  document.addEventListener("drop", function (event) {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    classifyAll(event.dataTransfer && event.dataTransfer.files);
  });

  // Paste a photo copied from another page or app.
  document.addEventListener("paste", function (event) {
    const files = imagesIn(event.clipboardData);
    if (!files.length) return; // text: nothing to do here
    event.preventDefault();
    classifyAll(files);
  });
})();
