// Drover console: the one script. It follows the page's live stream (Server-Sent Events)
// and applies what arrives: `replace` swaps a region, `append` adds to one. The first line
// of each event's data names the region's id; the rest is server-rendered HTML.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="drover-live"]');
  if (!meta || !window.EventSource) return;
  const source = new EventSource(meta.content);
  function split(data) {
    const at = data.indexOf("\n");
    return [data.slice(0, at), data.slice(at + 1)];
  }
  source.addEventListener("replace", function (event) {
    const [id, html] = split(event.data);
    const region = document.getElementById(id);
    if (region) region.innerHTML = html;
  });
  source.addEventListener("append", function (event) {
    const [id, html] = split(event.data);
    const region = document.getElementById(id);
    if (!region) return;
    const empty = document.getElementById(id + "-empty");
    if (empty) empty.remove();
    const follow = region.scrollTop + region.clientHeight >= region.scrollHeight - 4;
    region.insertAdjacentHTML("beforeend", html);
    if (follow) region.scrollTop = region.scrollHeight;
  });
  document.documentElement.dataset.live = "connecting";
  let opened = false;
  source.addEventListener("open", function () {
    // A stream that reconnects sends the logs again from the start.
    if (opened) document.querySelectorAll(".log-line").forEach(function (line) { line.remove(); });
    opened = true;
    document.documentElement.dataset.live = "open";
  });
  source.addEventListener("error", function () {
    document.documentElement.dataset.live = "retrying";
  });
})();
