// hamode's stand-in for Web Workers on pages opened from disk (file://), where browsers refuse to start a
// Worker. Material's search runs in a Worker; with the `offline` plugin its index is a script
// (search/search_index.js), and this file runs the worker's script in a hidden same-origin iframe instead:
// messages are passed as MessageEvents both ways, importScripts() loads scripts with <script> tags.
// The file name contains "iframe-worker", so Material's offline plugin does not add its remote shim.
(function () {
  "use strict";
  if (location.protocol !== "file:") return;

  class IFrameWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this.pending = [];
      this.ready = false;
      this.frame = document.createElement("iframe");
      this.frame.hidden = true;
      this.frame.setAttribute("aria-hidden", "true");
      document.body.appendChild(this.frame);
      const scope = this.frame.contentWindow;
      const worker = this;
      scope.postMessage = function (data) {
        worker.deliver(new MessageEvent("message", { data: data }));
      };
      scope.importScripts = function (...urls) {
        return urls.reduce(
          (previous, next) => previous.then(() => load(scope, new URL(next, url).href)),
          Promise.resolve(),
        );
      };
      scope.addEventListener("error", (event) => worker.deliver(event));
      load(scope, new URL(url, location.href).href).then(() => {
        worker.ready = true;
        worker.pending.splice(0).forEach((data) => worker.postMessage(data));
      });
    }

    deliver(event) {
      this.dispatchEvent(new event.constructor(event.type, event));
      const handler = event.type === "message" ? this.onmessage : this.onerror;
      if (typeof handler === "function") handler.call(this, event);
    }

    postMessage(data) {
      if (!this.ready) {
        this.pending.push(data);
        return;
      }
      const scope = this.frame.contentWindow;
      scope.dispatchEvent(new scope.MessageEvent("message", { data: data }));
    }

    terminate() {
      this.frame.remove();
    }
  }

  function load(scope, src) {
    return new Promise((resolve, reject) => {
      const script = scope.document.createElement("script");
      script.src = src;
      script.onload = () => resolve();
      script.onerror = () => reject(new Error("could not load " + src));
      scope.document.head.appendChild(script);
    });
  }

  window.Worker = IFrameWorker;
})();
