// zerolens upload page: preview, drag and drop, and classification through the JSON API.
// Without JavaScript the form still posts to /uploader and the server renders the same results.
(function () {
  "use strict";

  const form = document.getElementById("upload-form");
  if (!form || !window.fetch || !window.FormData || !window.URL) return;

  const input = document.getElementById("image-input");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("preview");
  const button = document.getElementById("classify-button");
  const status = document.getElementById("status");
  const errorBox = document.getElementById("error");
  const errorTitle = document.getElementById("error-title");
  const errorMessage = document.getElementById("error-message");
  const results = document.getElementById("results");
  const resultName = document.getElementById("result-name");
  const list = document.getElementById("predictions");
  const timings = document.getElementById("timings");
  const maxBytes = Number(form.dataset.maxBytes) || Infinity;
  const TYPES = ["image/jpeg", "image/png"];
  let previewUrl = null;

  function showError(title, message) {
    results.hidden = true; // results on screen belong to an earlier photo
    errorTitle.textContent = title;
    errorMessage.textContent = message;
    errorBox.hidden = false;
    status.textContent = "";
  }

  function clearError() {
    errorBox.hidden = true;
    errorTitle.textContent = "";
    errorMessage.textContent = "";
  }

  // The server checks the bytes anyway; this only saves a round trip for obvious mistakes.
  function problemWith(file) {
    if (!file) return "Choose a JPEG or PNG photo first.";
    if (file.size === 0) return "That file is empty.";
    if (file.size > maxBytes) {
      return "That file is " + (file.size / 1048576).toFixed(1) + " MB; the limit is " +
        (maxBytes / 1048576).toFixed(0) + " MB.";
    }
    if (file.type && TYPES.indexOf(file.type) < 0) return "That file is " + file.type + "; choose a JPEG or PNG photo.";
    return "";
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    preview.hidden = true;
    if (!file || TYPES.indexOf(file.type) < 0) return;
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
  }

  function fileChosen() {
    const file = input.files && input.files[0];
    clearError();
    results.hidden = true;
    showPreview(file);
    const problem = problemWith(file);
    if (file && problem) showError("Cannot use this file", problem);
    else status.textContent = file ? "Ready: press Classify." : "";
  }

  function fmt(ms) {
    return Number(ms).toFixed(1) + " ms";
  }

  function render(payload, name, browserMs) {
    list.replaceChildren();
    payload.predictions.forEach(function (p) {
      const pct = (p.probability * 100).toFixed(1);
      const item = document.createElement("li");
      item.className = "prediction";
      const label = document.createElement("span");
      label.className = "prediction-label";
      label.textContent = p.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = pct + "%";
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "prediction-pct";
      value.textContent = pct + " %";
      item.append(label, bar, value);
      list.appendChild(item);
    });
    const t = payload.timings_ms || {};
    const server = Object.keys(t)
      .filter(function (k) { return k !== "model_roundtrip_ms" && k !== "total_ms"; })
      .map(function (k) { return k + " " + fmt(t[k]); });
    timings.textContent =
      "Model " + payload.model + ", batch of " + payload.batch_size + ". " +
      (server.length ? "Server: " + server.join(", ") + ". " : "") +
      (t.total_ms !== undefined ? "Web tier: " + fmt(t.total_ms) +
        (t.model_roundtrip_ms !== undefined ? " (model round trip " + fmt(t.model_roundtrip_ms) + "). " : ". ") : "") +
      "Round trip from your browser: " + fmt(browserMs) + ".";
    resultName.textContent = name || "your photo";
    results.hidden = false;
    status.textContent = "Done: " + (payload.predictions[0] ? payload.predictions[0].label : "no labels") + ".";
  }

  // "UNSUPPORTED_MEDIA_TYPE" → "Unsupported media type (415)", as the server-rendered page says it.
  function titleFor(code, err) {
    const name = err && err.status ? err.status.replace(/_/g, " ").toLowerCase() : "error";
    return name.charAt(0).toUpperCase() + name.slice(1) + " (" + code + ")";
  }

  async function classify(event) {
    event.preventDefault();
    const file = input.files && input.files[0];
    const problem = problemWith(file);
    if (problem) {
      showError("Cannot classify", problem);
      return;
    }
    clearError();
    const body = new FormData();
    body.append("image", file, file.name);
    button.disabled = true;
    status.textContent = "Classifying…";
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
      if (!response.ok || !payload || !payload.predictions) {
        const err = payload && payload.error;
        const retry = response.headers.get("Retry-After");
        const message = (err ? err.message : "The server answered " + response.status + ".") +
          (retry ? " Try again in " + retry + " s." : "");
        showError(titleFor(response.status, err), message);
        return;
      }
      render(payload, file.name, elapsed);
    } catch (err) {
      showError("Network error", "Could not reach the server: " + err.message);
    } finally {
      button.disabled = false;
    }
  }

  preview.addEventListener("error", function () {
    preview.hidden = true; // not decodable by the browser either: the server will say why
  });
  input.addEventListener("change", fileChosen);
  form.addEventListener("submit", classify);

  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropzone.addEventListener(type, function () {
      dropzone.classList.remove("dragging");
    });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files; // assignable in every current browser; the form then submits this file
    fileChosen();
  });
})();
